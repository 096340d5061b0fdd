"""The JSON Lines contract of `trace --json`, `record --json`, `replay --json`, `export --format jsonl`
and `monitor --json`: the stream's first line, wall-clock `time` on every event, and the JSON Schema
of each kind (tracer/schema/<kind>.json, shipped with the package).

The first line is `{"kind": "stream", "version": STREAM_VERSION, "tool": {...}, "clock": {...}}`.
Events carry `ts` (CLOCK_MONOTONIC ns, as the kernel stamped them) and `time`, the same instant as
ISO 8601 UTC to the microsecond (what datetime.fromisoformat, JavaScript and most log tools parse;
`ts` keeps the nanoseconds), computed from the session's monotonic->wall offset (`clock`), which
the summary and a capture's header carry too: a replay prints the times the live session printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from . import __version__
from .events import KINDS as EVENT_KINDS

# Bumped when a field changes meaning or goes away; new fields do not bump it.
STREAM_VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
KINDS = ("stream", *EVENT_KINDS, "summary", "alert")  # every line's kind


def clock_info() -> dict:
    """Events carry CLOCK_MONOTONIC ns; this pins them to wall-clock time as it is now."""
    wall, mono = time.time_ns(), time.monotonic_ns()
    info: dict = {"events": "CLOCK_MONOTONIC", "mono_to_wall_ns": wall - mono, "created_wall_ns": wall,
                  "created_monotonic_ns": mono,
                  "boot_wall_ns": wall - time.clock_gettime_ns(time.CLOCK_BOOTTIME)}
    try:
        info["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        pass
    return info


def stream_header(clock: dict | None) -> dict:
    """The stream's first line. `clock`: the session's clock_info() (or a capture header's)."""
    c = clock or {}
    out = {"events": c.get("events", "CLOCK_MONOTONIC"), "mono_to_wall_ns": c.get("mono_to_wall_ns")}
    if c.get("boot_id"):
        out["boot_id"] = c["boot_id"]
    return {"kind": "stream", "version": STREAM_VERSION, "tool": {"name": "tracer", "version": __version__},
            "clock": out}


class WallClock:
    """CLOCK_MONOTONIC ns -> ISO 8601 UTC ("2026-11-30T14:01:40.123456Z", truncated to the microsecond),
    by a fixed offset. The
    date and time of day are formatted once per second: events come in bursts within one second."""

    __slots__ = ("_prefix", "_sec", "offset")

    def __init__(self, mono_to_wall_ns: int) -> None:
        self.offset = mono_to_wall_ns
        self._sec = -1
        self._prefix = ""

    def iso(self, ts: int) -> str:
        sec, ns = divmod(ts + self.offset, 1_000_000_000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{ns // 1000:06d}Z"

    def stamp(self, events: Iterable[dict]) -> None:
        """Add `time` to each event that has a `ts` (lost-record notices have none). `iso` inlined: this
        runs for every event of a stream."""
        off, last, prefix = self.offset, self._sec, self._prefix
        for ev in events:
            ts = ev.get("ts")
            if ts is None:
                continue
            sec, ns = divmod(ts + off, 1_000_000_000)
            if sec != last:
                last, prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            ev["time"] = f"{prefix}.{ns // 1000:06d}Z"
        self._sec, self._prefix = last, prefix


@cache
def schema(kind: str) -> dict:
    """The JSON Schema (draft 2020-12) of one kind of line."""
    return json.loads((SCHEMA_DIR / f"{kind}.json").read_text())
