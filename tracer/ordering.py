"""Events from several rings in the order they completed (events.order_ts: a syscall at its exit).

Each CPU writes to its own perf ring and a drain reads them one after another, so a record written to
ring A just after A was read waits for the next drain while a later record written to ring B is read
now: shown as it comes, a blocking call (wait4) could print before the child's call it waited for.
So a drain shows only what completed before the drain began (its watermark), less SLACK_NS for a record
whose time was taken just before it reached its ring, and nothing after the last record read from a
ring that still holds more (a bounded drain); the rest is held for the next drain (POLL_MS at most)
or the end of the session.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from operator import le

from .events import order_ts

# A record's time is taken in its BPF program before the record reaches the ring; a program preempted
# in between (syscall tracepoints may fault, so they run preemptible) is late by that much.
SLACK_NS = 2_000_000


def in_time_order(runs: list[list], key: Callable[[object], int] | None = None) -> list:
    """The events of several rings as one list ordered by events.order_ts (its key is inlined here), as
    a stable sort by that key would; `key`: the order key of items that are not all event dicts
    (recjson.order_key).
    Each ring is nearly always in order already, so the keys are computed once, inline, and the sort
    (on the keys only, in C) runs only when they are not ascending."""
    events = runs[0] if len(runs) == 1 else [ev for run in runs for ev in run]
    if len(events) < 2:
        return events
    keys = [ev.get("ts_exit") or ev["ts"] for ev in events] if key is None else list(map(key, events))
    if all(map(le, keys, islice(keys, 1, None))):
        return events
    return [events[i] for i in sorted(range(len(keys)), key=keys.__getitem__)]


class TimeOrder:
    """Merges each drain's rings with what earlier drains held back (see the module docstring)."""

    def __init__(self, key: Callable[[object], int] | None = None) -> None:
        self.held: list = []
        self.key = key  # in_time_order's

    def order(self, runs: list[list[dict]], partial: list[bool], began_ns: int) -> list[dict]:
        """The events that can be shown now, in order. `runs[i]` holds one ring's decoded events,
        `partial[i]` says that ring still holds records, `began_ns` is CLOCK_MONOTONIC when the drain
        began reading."""
        mark = began_ns - SLACK_NS
        key = self.key or order_ts
        for run, more in zip(runs, partial, strict=True):
            if more and run:
                mark = min(mark, key(run[-1]))
        if self.held:
            runs = [self.held, *runs]
        events = in_time_order(runs, self.key)
        cut = len(events)
        while cut and key(events[cut - 1]) > mark:
            cut -= 1
        self.held = events[cut:]
        return events if cut == len(events) else events[:cut]

    def flush(self) -> list[dict]:
        """What is held: all of it, once no ring can add anything earlier (the end of the session)."""
        held, self.held = self.held, []
        return held
