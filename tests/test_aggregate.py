"""Alert aggregation (tracer/aggregate.py) on synthesized alerts: windows in the calls' own time; alert
lines against their JSON Schema."""

from __future__ import annotations

import os
import threading
import time as clock
from pathlib import Path

import jsonschema
import pytest
from schema_check import check_line
from test_policy import DEFAULT, event

from tracer.aggregate import Aggregator
from tracer.monitor import Alert, Monitor, lost_alert
from tracer.proccontext import ContextReader

S = 1_000_000_000


def alert(rule: str = "shadow-access", exe: str | None = "/usr/bin/cat", unknown: str | None = None,
          time: str = "t") -> Alert:
    proc = {"exe": exe, **({"unknown": unknown} if unknown else {})}
    return Alert(rule, "critical", "d", {}, {"time": time, "process": proc})


def ev(ts: float, path: str | None = "/etc/shadow", pid: int = 7) -> dict:
    return {"ts": int(ts * S), "pid": pid, "target": {"path": path}}


def test_window_counts_repeats_and_closes_in_call_time() -> None:
    agg = Aggregator(10)
    assert agg.offer(ev(0), alert(time="t0")) is True
    assert agg.offer(ev(1), alert(time="t1")) is False
    assert agg.offer(ev(9.9), alert(time="t9")) is False
    assert agg.closed(int(9.99 * S)) == []  # still open
    (last_ev, summary), = agg.closed(10 * S)
    assert last_ev["ts"] == int(9.9 * S)
    assert summary.detail["aggregate"] == {"count": 2, "first_time": "t0", "last_time": "t9", "window_s": 10,
                                           "exe": "/usr/bin/cat", "target": "/etc/shadow"}
    assert agg.offer(ev(10.5), alert()) is True  # a new window
    assert agg.closed() == []  # nothing repeated in it: no summary
    assert agg.folded == 2


def test_what_makes_alerts_identical() -> None:
    agg = Aggregator(60)
    assert agg.offer(ev(0), alert()) is True
    assert agg.offer(ev(1, "/etc/gshadow"), alert()) is True  # another target
    assert agg.offer(ev(1), alert(exe="/usr/bin/less")) is True  # another executable
    assert agg.offer(ev(1), alert(rule="other")) is True  # another rule
    # Unconfirmed executables stand as their pid: one process's flood folds, two processes do not.
    assert agg.offer(ev(2, pid=8), alert(exe=None, unknown="process exited")) is True
    assert agg.offer(ev(3, pid=8), alert(exe=None, unknown="process exited")) is False
    assert agg.offer(ev(3, pid=9), alert(exe=None, unknown="process exited")) is True
    assert agg.offer(ev(4, pid=10), alert(exe="/usr/bin/cat")) is False  # same exe, another pid: alike
    assert agg.folded == 2


def test_alert_lines_follow_the_schema() -> None:
    """Alerts as a run writes them (context from this very process, a folded repeat, a lost-record alert)
    validate against tracer/schema/alert.json; broken ones do not."""
    reader = ContextReader()
    comm = Path("/proc/self/comm").read_text().rstrip("\n")
    ev = {**event("/etc/shadow"), "pid": os.getpid(), "tid": threading.get_native_id(), "comm": comm,
          "ts": clock.monotonic_ns()}
    (first,) = Monitor(DEFAULT, reader).check(ev)
    assert first.context["process"]["exe"]  # this process: identified
    agg = Aggregator(60)
    assert agg.offer(ev, first)
    (again,) = Monitor(DEFAULT, reader).check(dict(ev))
    assert not agg.offer({**ev, "ts": ev["ts"] + 1}, again)
    (_, folded), = agg.closed()
    lost = lost_alert({"kind": "lost", "source": "syscalls", "cpu": 1, "count": 3, "reason": "discarded_at_exit"})
    lost.context = reader.now()
    assert lost.description == "3 records lost on CPU 1 (discarded at exit): those calls were not checked"
    lines = [first.to_dict(ev), folded.to_dict(ev), lost.to_dict(None)]
    for line in lines:
        check_line(line)
    assert folded.detail["aggregate"]["count"] == 1
    for broken in ({**lines[0], "context": {**lines[0]["context"], "time": "14:01:40"}},
                   {**lines[1], "aggregate": {**lines[1]["aggregate"], "count": 0}},
                   {**lines[0], "matched": []}):
        with pytest.raises(jsonschema.ValidationError):
            check_line(broken)
