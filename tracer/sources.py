"""Event sources: each owns some perf rings and turns their raw samples into event dicts.

A session merges every source's events into one stream ordered by time. The syscall source
(bpf/trace.bpf.c) is defined here; user_events (perf tracepoints) and uprobes subclass Source in their
own modules, chosen by the event spec's prefix (session.build_source).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import syscalls
from .accounting import Loss, ring_residuals, syscall_losses
from .caps import sleepable_kinds
from .decode import Decoder
from .errors import CaptureError
from .kenv import tracefs_root
from .layout import check_layout, layout_identity
from .perf import RingSet
from .probes import Filters, SyscallProbes
from .sleepable import read_mode


@dataclass
class SourceOptions:
    """What every source may need from the session."""
    filters: Filters
    pages: int
    explain: Callable[[int, int], dict] | None  # (pid, addr) -> where addr lives
    read_mode: str = "auto"  # auto | sleepable | nofault: how pointer arguments are read (README)


_SYSCALL_NAME = re.compile(r"[a-z0-9_]{1,64}")


class Source:
    """Base class. `rings` are polled by the session; `decode(raw, cpu)` returns one event dict with
    at least "kind" and "ts" (CLOCK_MONOTONIC ns); events are ordered by events.order_ts."""

    name = "source"
    rings: RingSet | None = None
    # decode(raw, cpu) -> event dict: a method of the source, or its decoder's, set when it is built
    decode: Callable[[bytes, int], dict]

    def add_pid(self, pid: int) -> None:
        """A process the session started (`-- CMD`) joins the pid filter before it runs."""

    def kernel_stats(self) -> dict[str, int]:
        return {}

    def quiesce(self) -> None:
        """Stop producing records, keep the rings readable: the session then drains what they hold
        and asks `final_losses`. By default the ring events are disabled."""
        if self.rings is not None:
            self.rings.disable()

    def final_losses(self) -> list[Loss]:
        """Losses not reported by the rings' markers (after quiesce and the final drain)."""
        return ring_residuals(self.rings.rings if self.rings is not None else [])

    # -- capture files (tracer/capture.py) --------------------------------------------------------
    def capture_header(self) -> dict:
        """A JSON-able description from which `replay_decoder` rebuilds this source's decoder (formats,
        layout identity): everything a replay needs that is only true on this machine, now."""
        raise CaptureError(f"events of the {self.name} source cannot be recorded yet; trace them live instead")

    @classmethod
    def replay_decoder(cls, desc: dict, explain: Callable[[int, int], dict] | None) -> Callable[[bytes, int], dict]:
        """decode(raw, cpu) for records captured from a source of this class, from its capture_header()."""
        raise CaptureError(f"{cls.name} records cannot be replayed by this tracer")
    # -- end capture files -------------------------------------------------------------------------

    def close(self) -> None:
        if self.rings is not None:
            self.rings.close()
            self.rings = None


class SyscallSource(Source):
    name = "syscalls"
    STAT_NAMES = ("emitted", "no_state", "state_full", "submit_fail", "no_exit", "ring_full")  # record.h ST_*

    def __init__(self, specs: Sequence[syscalls.Syscall], opts: SourceOptions) -> None:
        self.syscalls = list(specs)
        # "nofault", or the sleepable reader kind: tp.s, fentry.s (tracer/sleepable.py decides)
        self.read_mode = read_mode(opts.read_mode, "syscalls", sleepable_kinds)
        sleepable_kind = None if self.read_mode == "nofault" else self.read_mode
        self.probes: SyscallProbes | None = SyscallProbes(self.syscalls, opts.filters, opts.pages, sleepable_kind)
        self.rings = self.probes.rings
        self.decoder = Decoder(syscalls.by_nr(), opts.explain, kfile_problem=self.probes.kfile.problem)
        self.decode = self.decoder.decode

    def add_pid(self, pid: int) -> None:
        if self.probes is not None:
            self.probes.add_pid(pid)

    def kernel_stats(self) -> dict[str, int]:
        if self.probes is None:
            return {}
        return dict(zip(self.STAT_NAMES, self.probes.stats(), strict=False))

    def quiesce(self) -> None:
        if self.probes is not None:
            self.probes.stop()  # programs off: counters and in-flight table final, rings kept

    def final_losses(self) -> list[Loss]:
        if self.probes is None or self.rings is None:
            return []
        per_cpu = dict(zip(self.STAT_NAMES, self.probes.stats_per_cpu(), strict=False))
        return syscall_losses(self.rings.rings, per_cpu, self.probes.in_flight())

    def close(self) -> None:
        if self.probes is not None:
            self.probes.close()  # closes the rings too
            self.probes = None
        self.rings = None

    # -- capture files ---------------------------------------------------------------------------
    def capture_header(self) -> dict:
        return syscall_capture_desc(self.syscalls)

    @classmethod
    def replay_decoder(cls, desc: dict, explain: Callable[[int, int], dict] | None) -> Callable[[bytes, int], dict]:
        check_layout(desc["layout"])
        return Decoder({s.nr: s for s in syscalls_from_capture(desc)}, explain).decode


def syscall_capture_desc(specs: Sequence[syscalls.Syscall], root: Path | None = None) -> dict:
    """The tracefs format text of each traced syscall's enter and exit events, its number, and the
    record layout: a replay parses these exactly as the live tracer parsed tracefs."""
    base = (root or tracefs_root()) / "events" / "syscalls"

    def fmt(event: str) -> str | None:
        try:
            return (base / event / "format").read_text()
        except OSError:
            return None

    return {"layout": layout_identity(),
            "syscalls": [{"name": s.name, "nr": s.nr, "noreturn": s.noreturn, "exec": s.exec_,
                          "enter_format": fmt(f"sys_enter_{s.name}"), "exit_format": fmt(f"sys_exit_{s.name}")}
                         for s in specs]}


def syscalls_from_capture(desc: dict) -> list[syscalls.Syscall]:
    """The syscalls of a capture header (untrusted: every field type-checked, ValueError otherwise)."""
    out = []
    entries = desc["syscalls"]
    if type(entries) is not list:
        raise ValueError("syscalls is not a list")
    for d in entries:
        if type(d) is not dict:
            raise ValueError("a syscall entry is not an object")
        name, nr, fmt = d.get("name"), d.get("nr"), d.get("enter_format")
        if type(name) is not str or not _SYSCALL_NAME.fullmatch(name):
            raise ValueError(f"syscall name {name!r:.40} is not a tracepoint name")
        if type(nr) is not int or not 0 <= nr < 1024:
            raise ValueError(f"syscall {name}: number {nr!r:.40} is not a syscall number")
        flags = (d.get("noreturn", False), d.get("exec", False))
        if not (fmt is None or type(fmt) is str) or any(type(f) is not bool for f in flags):
            raise ValueError(f"syscall {name}: a field has a wrong type")
        args = syscalls.parse_format(fmt) if fmt is not None else []
        out.append(syscalls.Syscall(name, nr, tuple(args), syscalls.plan_reads(name, args),
                                    d.get("noreturn", False), d.get("exec", False)))
    return out
    # -- end capture files -------------------------------------------------------------------------
