"""Event sources: each owns some perf rings and turns their raw samples into event dicts.

A session merges every source's events into one stream ordered by time. The syscall source
(bpf/trace.bpf.c) is the first; user_events (perf tracepoints) and uprobes plug in here too, chosen
by the event spec's prefix (see `build_sources`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import syscalls
from .decode import Decoder
from .perf import RingSet
from .probes import Filters, SyscallProbes


@dataclass
class SourceOptions:
    """What every source may need from the session."""
    filters: Filters
    pages: int
    explain: Callable[[int, int], dict] | None  # (pid, addr) -> where addr lives


class Source:
    """Base class. `rings` are polled by the session; `decode(raw, cpu)` returns one event dict with
    at least "kind" and "ts" (CLOCK_MONOTONIC ns); events are ordered by `order_ts`."""

    name = "source"
    rings: RingSet | None = None

    def decode(self, raw: bytes, cpu: int) -> dict:
        raise NotImplementedError

    def add_pid(self, pid: int) -> None:
        """A process the session started (`-- CMD`) joins the pid filter before it runs."""

    def kernel_stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        if self.rings is not None:
            self.rings.close()
            self.rings = None


def order_ts(ev: dict) -> int:
    """Events are shown in the order they completed: a syscall at its exit, a sample when taken."""
    return ev.get("ts_exit") or ev["ts"]


class SyscallSource(Source):
    name = "syscalls"
    STAT_NAMES = ("emitted", "no_state", "state_full", "submit_fail")

    def __init__(self, specs: Sequence[syscalls.Syscall], opts: SourceOptions) -> None:
        self.syscalls = list(specs)
        self.probes: SyscallProbes | None = SyscallProbes(self.syscalls, opts.filters, opts.pages)
        self.rings = self.probes.rings
        self.decoder = Decoder(syscalls.by_nr(), opts.explain)
        self.decode = self.decoder.decode  # type: ignore[method-assign]

    def add_pid(self, pid: int) -> None:
        if self.probes is not None:
            self.probes.add_pid(pid)

    def kernel_stats(self) -> dict[str, int]:
        if self.probes is None:
            return {}
        return dict(zip(self.STAT_NAMES, self.probes.stats(), strict=False))

    def close(self) -> None:
        if self.probes is not None:
            self.probes.close()  # closes the rings too
            self.probes = None
        self.rings = None


# Event-spec prefixes handled by sources other than the syscall one: prefix -> "module:function", a
# function building one Source from all the specs carrying that prefix (imported only when used).
PREFIXED: dict[str, str] = {
    "user_events": "tracer.user_events.source:build",
    "user_events_multi": "tracer.user_events.source:build",
    "uprobe": "tracer.uprobes:build",
}


def builder(target: str) -> Callable[[list[str], SourceOptions], Source]:
    """The build function named by a PREFIXED value."""
    import importlib

    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def split_specs(events: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Syscall specs, and the other specs grouped by the builder of their prefix (see PREFIXED)."""
    plain: list[str] = []
    other: dict[str, list[str]] = {}  # one builder may serve several prefixes: grouped by builder
    for spec in events:
        prefix = spec.split(":", 1)[0] if ":" in spec else ""
        if prefix in PREFIXED:
            other.setdefault(PREFIXED[prefix], []).append(spec)
        else:
            plain.append(spec)
    return plain, other
