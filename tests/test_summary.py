"""tracer/summary.py without BPF: the -c call table, the resumed marker's count, the read-status table
at narrow widths, and the console's -T and marker segments."""

from __future__ import annotations

import io

from rich.console import Console

from tracer.output import ConsoleOutput
from tracer.summary import CallTable, Overlap, read_status_rows


def sc(name: str, ts: int, dur: int | None, ret: int | None = 0, tid: int = 1) -> dict:
    ev = {"kind": "syscall", "syscall": name, "event": f"syscalls:sys_enter_{name}", "ts": ts, "cpu": 0,
          "pid": 1, "tid": tid, "comm": "t", "uid": 0, "args": {"fd": 3}, "ret": ret,
          "ret_str": None if ret is None else str(ret), "reads": {}, "missing": []}
    if dur is not None:
        ev.update(ts_exit=ts + dur, duration_ns=dur)
    return ev


def test_call_table_values_and_layout() -> None:
    t = CallTable()
    t.add_many([sc("read", 0, 3_000), sc("read", 10, 5_000, -11), sc("wait4", 20, 2_000_000),
                sc("exit_group", 30, None, None), {"kind": "lost", "cpu": 0, "count": 4},
                {"kind": "uprobe", "function": "f", "ts": 5, "ts_exit": 6, "duration_ns": 1, "ret": -1}])
    assert t.to_dict() == {
        "wait4": {"calls": 1, "errors": 0, "total_ns": 2_000_000, "avg_ns": 2_000_000, "max_ns": 2_000_000},
        "read": {"calls": 2, "errors": 1, "total_ns": 8_000, "avg_ns": 4_000, "max_ns": 5_000},
        "f": {"calls": 1, "errors": 0, "total_ns": 1, "avg_ns": 1, "max_ns": 1},  # a uprobe's -1 is not an errno
        "exit_group": {"calls": 1, "errors": 0, "total_ns": 0, "avg_ns": None, "max_ns": None}}
    lines = t.render().splitlines()
    assert lines[2] == " 99.60    0.002000        2000       2000         1           wait4"
    assert lines[3] == "  0.40    0.000008           4          5         2         1 read"
    assert lines[5] == "  0.00    0.000000                                1           exit_group"
    assert lines[-1] == "100.00    0.002008                                5         1 total"
    assert max(map(len, lines)) <= 79


def test_overlap_counts_lines_printed_since_a_call_began() -> None:
    o = Overlap()
    assert o.add(sc("wait4", 100, None)) == 0  # noreturn-like: no exit
    assert o.add(sc("read", 200, 10, tid=2)) == 0
    assert o.add(sc("write", 220, 10, tid=2)) == 0
    assert o.add(sc("wait4", 150, 200)) == 2  # began at 150: read and write completed after that
    assert o.add(sc("close", 400, 1)) == 0
    assert o.add(sc("late", 215, 5)) == 3  # completions 230, 350, 401 came after 215
    assert o.done == sorted(o.done)


def test_read_status_table_fits_and_keeps_names_whole() -> None:
    by_arg = {"openat2.filename": {"ok": 12345, "recovered": 3, "missing": 1}, "openat2.how": {"ok": 12346},
              "connect.uservaddr": {"ok": 5, "truncated": 2}}
    for width in (60, 45):
        table, rows = read_status_rows(by_arg, width)
        text = ["".join(t for t, _ in row) for row in rows]
        assert table and all(len(line) <= width for line in text)
        assert [line.split()[0] for line in text[1:]] == list(by_arg)  # whole, distinct names
    _, rows = read_status_rows(by_arg, 60)
    # no all-zero column ("changed", "null")
    assert "".join(t for t, _ in rows[0]) == "syscall.arg           ok  recovered  missing  truncated"
    _, rows = read_status_rows(by_arg, 45)
    assert "".join(t for t, _ in rows[0]) == "syscall.arg           ok  recov  miss  trunc"
    table, rows = read_status_rows(by_arg, 30)
    assert not table and ["".join(t for t, _ in row) for row in rows] == [
        "openat2.filename: ok 12345 recovered 3 missing 1", "openat2.how: ok 12346",
        "connect.uservaddr: ok 5 truncated 2"]


def test_console_durations_and_resumed_marker() -> None:
    buf = io.StringIO()
    out = ConsoleOutput(Console(file=buf, width=200, color_system=None, highlight=False))
    out.mono_to_wall = 0
    out.durations = True
    out.events([sc("read", 200, 1_500, tid=2), sc("wait4", 100, 250_000_500, 42)])
    first, second = buf.getvalue().splitlines()
    assert first.endswith("read(fd=3) = 0 <0.000002>")
    assert second.endswith("wait4(fd=3) = 42 <0.250001>  <... resumed: began before the line above>")
