"""Alert volume: identical alerts — same rule, same executable, same target — within a time window are
shown once, then counted; when the window closes one alert says how many more there were.

2,000 calls of one process on one file are one incident, not 6,000 lines that bury the next incident.
Nothing is dropped: every alert counts in the summary and the exit status, and the closing alert carries
the count, the first and last times and the last call. Times are the calls' own (CLOCK_MONOTONIC ns from
the kernel), so a burst decoded late is still one burst. A window closes at the first alert after it
ends, when the session's clock passes its end (checked every poll cycle, 100 ms), or at the end of the
run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class _Alert(Protocol):
    """What is read of tracer.monitor.Alert here (monitor imports this module, not the other way)."""

    rule: str
    detail: dict
    context: dict | None


Alert = TypeVar("Alert", bound=_Alert)


@dataclass
class _Window(Generic[Alert]):
    first_ts: int
    first_time: str | None
    count: int = 0  # repeats after the alert that was shown
    last: tuple[dict, Alert] | None = None  # (event, Alert) of the last repeat


def key(ev: dict, alert: _Alert) -> tuple:
    """rule + executable + target. An executable /proc could not confirm stands as the pid: two unknown
    processes are never merged, one process's flood still is."""
    proc = (alert.context or {}).get("process") or {}
    who = proc.get("exe") if proc.get("exe") and not proc.get("unknown") else f"pid {ev['pid']}"
    target = ((ev.get("opened") or {}).get("path"), (ev.get("target") or {}).get("path"))
    return alert.rule, who, target


class Aggregator(Generic[Alert]):
    def __init__(self, window_s: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self.window_s = window_s
        self.open: dict[tuple, _Window[Alert]] = {}
        self.folded = 0  # alerts counted into a window instead of shown

    def offer(self, ev: dict, alert: Alert) -> bool:
        """True: show this alert now (the first of its kind in the window); False: it was counted."""
        k = key(ev, alert)
        w = self.open.get(k)
        if w is not None and ev["ts"] - w.first_ts < self.window_ns:
            w.count += 1
            w.last = (ev, alert)
            self.folded += 1
            return False
        self.open[k] = _Window(ev["ts"], (alert.context or {}).get("time"))
        return True

    def closed(self, now_ts: int | None = None) -> list[tuple[dict, Alert]]:
        """(last event, alert with the count) for every window that has ended by now_ts (None: all)."""
        out = []
        for k, w in list(self.open.items()):
            if now_ts is not None and now_ts - w.first_ts < self.window_ns:
                continue
            del self.open[k]
            if w.count and w.last is not None:
                ev, a = w.last
                folded = copy.copy(a)
                folded.detail = {**a.detail, "aggregate": {
                    "count": w.count, "first_time": w.first_time, "last_time": (a.context or {}).get("time"),
                    "window_s": self.window_s, "exe": k[1], "target": k[2][0] or k[2][1]}}
                out.append((ev, folded))
        return out
