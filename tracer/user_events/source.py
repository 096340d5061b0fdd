"""The user_events source of a tracing session: `user_events:NAME` / `user_events_multi:NAME` specs.

Data path: one perf event per event and CPU (PERF_TYPE_TRACEPOINT, config = the event's tracefs id,
RAW + TIME + TID + CPU samples, CLOCK_MONOTONIC so times merge with bpf_ktime_get_ns). Opening it is
also what sets the writers' enable bits. The perf events are system-wide, so the session's pid/tid/
uid/comm filters are applied here to each sample (through /proc for descendants, uid and comm).
Writer side: tracer.user_events.watch reports the writes the kernel discarded.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ..errors import EnvironmentProblem, NoSuchUserEvent
from ..kenv import tracefs_root
from ..layout import check_layout, layout_identity
from ..perf import (
    PERF_SAMPLE_CPU,
    PERF_SAMPLE_RAW,
    PERF_SAMPLE_TID,
    PERF_SAMPLE_TIME,
    PERF_TYPE_TRACEPOINT,
    Batch,
    Ring,
    RingSet,
    online_cpus,
    pack_attr,
    perf_event_open,
)
from ..probes import Filters
from ..sources import Source, SourceOptions
from . import require, status
from .decode import SampleDecoder, pack_tracepoint
from .decode import parse_sample as parse_sample  # where it used to live
from .formats import EventFormat, Field
from .watch import Watch

CLOCK_MONOTONIC = 1
_USE_CLOCKID = 1 << 25   # perf_event_attr flag bit
_CLOCKID_OFF = 92        # perf_event_attr.clockid
TRACEFS_MAGIC = 0x74726163


def tracepoint_attr(ev_id: int, wakeup_bytes: int) -> bytes:
    attr = bytearray(pack_attr(PERF_TYPE_TRACEPOINT, ev_id,
                               PERF_SAMPLE_RAW | PERF_SAMPLE_TIME | PERF_SAMPLE_TID | PERF_SAMPLE_CPU, wakeup_bytes))
    flags = struct.unpack_from("<Q", attr, 40)[0] | _USE_CLOCKID
    struct.pack_into("<Q", attr, 40, flags)
    struct.pack_into("<i", attr, _CLOCKID_OFF, CLOCK_MONOTONIC)
    return bytes(attr)


def is_tracefs(root: Path) -> bool:
    """Is `root` a mounted tracefs (and not a fake root from TRACER_TRACEFS)?"""
    real = os.path.realpath(root)
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1:3] == [real, "tracefs"] for line in f)
    except OSError:
        return False


class ProcFilter:
    """The session's filters applied to samples of system-wide perf events, through /proc."""

    def __init__(self, filters: Filters) -> None:
        self.f = filters
        self.pids = set(filters.pids) - {0}
        self.cache: dict[int, bool | None] = {}

    def add_pid(self, pid: int) -> None:
        self.pids.add(pid)
        self.cache.clear()

    @staticmethod
    def _status(pid: int) -> dict[str, str]:
        out = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
        return out

    def _pid_ok(self, pid: int) -> bool | None:
        if not self.f.pids or pid in self.pids:
            return not self.f.pids or pid in self.pids
        if not self.f.follow:
            return False
        seen = pid
        for _ in range(64):  # walk up the parents: a descendant of a traced process is traced
            try:
                seen = int(self._status(seen).get("PPid", "0"))
            except (OSError, ValueError):
                return None
            if seen in self.pids:
                return True
            if seen <= 1:
                return False
        return False

    def __call__(self, pid: int, tid: int) -> bool:
        f = self.f
        if f.tids and tid not in f.tids:
            return False
        if not (f.pids or f.uid is not None or f.comm):
            return True
        key = tid
        if key not in self.cache:
            ok = self._pid_ok(pid)
            try:
                if ok and f.uid is not None:
                    ok = int(self._status(tid).get("Uid", "-1").split()[0]) == f.uid
                if ok and f.comm:
                    ok = open(f"/proc/{pid}/task/{tid}/comm").read().rstrip("\n") == f.comm
            except (OSError, ValueError):
                ok = None
            self.cache[key] = ok
        return bool(self.cache[key])  # None (exited, cannot tell): not shown


class _TpRing(Ring):
    """A tracepoint ring whose drain keeps only the samples the filters want, each with its event's
    index and the thread's comm as it is now (decode.pack_tracepoint): a replay cannot ask /proc."""

    def __init__(self, index: int, keep: ProcFilter, counts: Counter, comm: Callable[[int], bytes | None],
                 *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.index = index
        self.keep = keep
        self.counts = counts
        self.comm = comm

    def drain(self, max_bytes: int = 0) -> Batch:
        b = super().drain(max_bytes)
        kept = []
        for body in b.samples:
            pid, tid = struct.unpack_from("<II", body)
            if self.keep(pid, tid):
                kept.append(pack_tracepoint(self.index, self.comm(tid), body))
            else:
                self.counts["filtered"] += 1
        return Batch(b.cpu, kept, b.lost)


class UserEventsSource(Source):
    name = "user_events"

    def __init__(self, specs: list[str], opts: SourceOptions, root: Path | None = None) -> None:
        root = root or tracefs_root()
        require(root)
        if not is_tracefs(root):
            raise EnvironmentProblem(f"{root} is not a mounted tracefs (TRACER_TRACEFS?): its user_events can be "
                                     "listed (`tracer list user_events`) but not traced")
        all_formats = status.formats(root)
        chosen: dict[str, EventFormat] = {}
        for spec in specs:
            found = status.match(all_formats, spec)
            if not found:
                names = ", ".join(f.tracepoint for f in all_formats[:6]) or "none are registered"
                raise NoSuchUserEvent(f"no registered user event matches {spec!r} (registered: {names}; "
                                      "see `tracer list user_events`)")
            for f in found:
                chosen[f.tracepoint] = f
        self.formats = list(chosen.values())
        self.keep = ProcFilter(opts.filters)
        self.counts: Counter = Counter()
        self.comms: dict[int, bytes | None] = {}
        self.decode = SampleDecoder(self.formats)
        self.watch = None
        rings: list = []
        # Rings per event and CPU: the session's budget is sized for syscall rates; user_events are
        # written by the programs themselves, far rarer. 1 MiB per event and CPU at most.
        pages = max(8, min(opts.pages // 4, 256))
        try:
            for index, fmt in enumerate(self.formats):
                if fmt.id is None:
                    raise EnvironmentProblem(f"{fmt.tracepoint} has no id in tracefs")
                attr = tracepoint_attr(fmt.id, pages * 4096 // 4)
                for cpu in online_cpus():
                    fd = perf_event_open(attr, -1, cpu)
                    try:
                        rings.append(_TpRing(index, self.keep, self.counts, self._comm, cpu, fd, pages, False))
                    except Exception:
                        os.close(fd)
                        raise
            self.watch = Watch(root / "user_events_data", pages, self.keep)
            rings += self.watch.cpu_rings
        except Exception:
            for r in rings:
                r.close()
            if self.watch is not None:
                self.watch.close()
            raise
        self.rings = RingSet(rings)

    def add_pid(self, pid: int) -> None:
        self.keep.add_pid(pid)

    def _comm(self, tid: int) -> bytes | None:
        if tid not in self.comms:
            try:
                with open(f"/proc/{tid}/comm", "rb") as f:
                    self.comms[tid] = f.read().rstrip(b"\n")
            except OSError:
                self.comms[tid] = None  # exited before we looked: unknown, not guessed
        return self.comms[tid]

    def kernel_stats(self) -> dict[str, int]:
        out = {f"user_events_{k}": v for k, v in self.counts.items()}
        if self.watch is not None:
            out.update(self.watch.kernel_stats())
        return out

    def close(self) -> None:
        super().close()
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    # -- capture files (tracer/capture.py) -----------------------------------------------------------
    def capture_header(self) -> dict:
        """The formats the samples were decoded with, as parsed at start: events come and go, so a
        replay must not look them up again."""
        return {"events": [f.tracepoint for f in self.formats],
                "formats": [{"system": f.system, "name": f.name, "id": f.id, "fields": [x.to_json() for x in f.fields]}
                            for f in self.formats],
                "watch_layout": layout_identity("uevents_watch.h", ("ue_record",))}

    @classmethod
    def replay_decoder(cls, desc: dict, explain: Callable[[int, int], dict] | None) -> Callable[[bytes, int], dict]:
        check_layout(desc["watch_layout"])
        return SampleDecoder([EventFormat(str(d["system"]), str(d["name"]), None if d["id"] is None else int(d["id"]),
                                          tuple(Field(str(f["name"]), str(f["type"]), int(f["offset"]),
                                                      int(f["size"]), bool(f["signed"])) for f in d["fields"]))
                              for d in desc["formats"]])


def build(specs: list[str], opts: SourceOptions) -> Source:
    return UserEventsSource(specs, opts)
