"""Alert aggregation (tracer/aggregate.py) on synthesized alerts: windows in the calls' own time."""

from __future__ import annotations

from tracer.aggregate import Aggregator
from tracer.monitor import Alert

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
