"""The console's strace-like views, live on tests/workloads/decode_cases.c (its calls are known):
-T durations, -c/-C call table on stderr, -Z failed calls only, the resumed marker on a wait4 that
blocked while its child made a call, and the summary on stderr (stdout holds only calls). And a flood
(tests/workloads/flood.c) into a pipe read slowly, stopped by Ctrl-C: every line whole."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from conftest import scaled
from test_trace_live import TRACER, expect_ok, run_parallel

pytestmark = pytest.mark.usefixtures("bpf_env")
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{6} \S+\[(\d+)/(\d+)\] (\w+)\(")
CONSOLE = {"TERM": "dumb", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def runs(build_c) -> dict:
    exe = build_c("decode_cases")
    return run_parallel({
        "T": (("trace", "kill", "wait4", "-T", "--", exe), CONSOLE),
        "c": (("trace", "socket", "shutdown", "wait4", "kill", "-c", "--", exe), CONSOLE),
        "C_json": (("trace", "socket", "shutdown", "wait4", "kill", "-C", "--json", "--", exe), {}),
        "Z": (("trace", "socket", "shutdown", "wait4", "kill", "-Z", "--json", "--", exe), {}),
    })


def span(line: str) -> tuple[float, float]:
    """A -T line's start and end, in seconds of the day."""
    h, m, sec = line[:15].split(":")
    start = int(h) * 3600 + int(m) * 60 + float(sec)
    return start, start + float(re.search(r"<(\d+\.\d{6})>", line).group(1))


def calls(stdout: str) -> list[tuple[str, str]]:
    return [(m.group(3), line) for line in stdout.splitlines() if (m := LINE.match(line))]


def test_durations_and_the_resumed_wait4(runs) -> None:
    run = runs["T"]
    expect_ok(run)
    lines = calls(run.stdout)
    # parent: kill(SIGUSR1), kill(SIGTERM), wait4(c1), wait4(-1, WNOHANG); child3: kill(0); parent: wait4(c3)
    assert [name for name, _ in lines] == ["kill", "kill", "wait4", "wait4", "kill", "wait4"], run.describe()
    for _, line in lines:
        assert re.search(r" = -?\d+( E[A-Z]+)? <\d+\.\d{6}>", line), line
    last = lines[-1][1]
    assert "options=__WALL" in last and last.endswith("  <... resumed: began before the line above>"), last
    # The wait began before the child's kill(0) and ended after it (line times are the calls' starts).
    (_, kill), (_, wait) = lines[-2], lines[-1]
    assert span(wait)[0] < span(kill)[0] and span(kill)[1] <= span(wait)[1], (kill, wait)
    assert sum("resumed" in line for _, line in lines) == 1
    assert "events, 0 lost" in run.stderr and "events, 0 lost" not in run.stdout  # the summary is on stderr


def table_rows(text: str) -> dict[str, tuple[int, int]]:
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\s*\d+\.\d\d\s+\d+\.\d{6}\s+(?:\d+\s+\d+\s+)?(\d+)\s+(\d+)?\s*(\w+)$", line)
        if m:
            rows[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return rows


def test_summary_only_table_on_stderr(runs) -> None:
    run = runs["c"]
    expect_ok(run)
    assert calls(run.stdout) == [] and calls(run.stderr) == []  # no call lines at all
    assert "% time     seconds  usecs/call  max usecs     calls    errors syscall" in run.stderr
    rows = table_rows(run.stderr)
    # kill: 2 by the parent and 1 by a child; wait4: 3, one ECHILD; shutdown: ENOTCONN
    assert rows == {"socket": (3, 0), "shutdown": (1, 1), "wait4": (3, 1), "kill": (3, 0), "total": (10, 2)}, run.stderr


def test_call_summary_in_json(runs) -> None:
    run = runs["C_json"]
    expect_ok(run)
    assert len(run.events) == 10
    table = run.summary["per_syscall"]
    assert {k: (v["calls"], v["errors"]) for k, v in table.items()} == {
        "socket": (3, 0), "shutdown": (1, 1), "wait4": (3, 1), "kill": (3, 0)}
    wait4 = [e for e in run.events if e["syscall"] == "wait4"]
    assert table["wait4"]["total_ns"] == sum(e["duration_ns"] for e in wait4)
    assert table["wait4"]["max_ns"] == max(e["duration_ns"] for e in wait4)
    assert next(iter(table)) == "wait4"  # by total time: the blocking call first


def test_failed_only(runs) -> None:
    run = runs["Z"]
    expect_ok(run)
    assert [(e["syscall"], e["ret_str"]) for e in run.events] == [("shutdown", "-107 ENOTCONN"),
                                                                  ("wait4", "-10 ECHILD")]
    assert run.summary["events"] == 2
    assert run.summary["filtered"] == {"failed_only": 8}  # of the 10 calls the -C run shows: not lost, left out


def test_ctrl_c_while_lines_go_into_a_full_pipe_leaves_every_line_whole(build_c, tmp_path) -> None:
    """The console writes each batch (thousands of lines) while the reader lags, and Ctrl-C comes in the
    middle: one big write() then cut a line and lost the lines after it (CPython 3.11's BufferedWriter,
    output.fd_writer). Every line is whole, and there are as many call lines as the summary's events."""
    flood = tmp_path / f"fl{os.getpid() % 10_000_000}"  # its own comm: no other test's calls
    shutil.copy(build_c("flood"), flood)
    proc = subprocess.Popen([*TRACER, "trace", "openat2", "-n", flood.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    err = b""
    try:
        while b"Ctrl-C to stop" not in err:  # said once the probes are attached
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, f"tracer exited: {err.decode(errors='replace')}"
            err += chunk
        load = subprocess.Popen([flood, "300000", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = bytearray()
        interrupt_at = time.monotonic() + scaled(1.0)
        interrupted = False
        while chunk := os.read(proc.stdout.fileno(), 4096):
            out += chunk
            if not interrupted and time.monotonic() >= interrupt_at:
                proc.send_signal(signal.SIGINT)  # while the tracer waits in a write to the full pipe
                interrupted = True
            time.sleep(0.0005)  # a slow reader: the pipe stays full
        load.wait(scaled(60))
        _, rest = proc.communicate(timeout=scaled(60))
        err += rest
    finally:
        proc.kill()
    text = err.decode(errors="replace")
    assert proc.returncode == 0 and interrupted, text
    note = r"(?: \[[^]]+\])?"  # a read's outcome other than ok (the first call's page: recovered at exit)
    call = re.compile(rf"^\d\d:\d\d:\d\d\.\d{{6}} {flood.name}\[\d+/\d+\] openat2\(dfd=AT_FDCWD, "
                      rf'filename="/nonexistent-tracer-flood/file"{note}, how=\{{flags=O_RDONLY\|O_CLOEXEC, mode=0, '
                      rf"resolve=0\}}{note}, usize=24\) = -2 ENOENT(?:  <\.\.\. resumed: began before the "
                      r"(?:line|\d+ lines) above>)?$")
    lines = out.decode().splitlines()
    calls = [line for line in lines if call.match(line)]
    cut = [line for line in lines if not call.match(line) and not re.match(r"^!! \d+ records lost .*\)$", line)]
    assert not cut, cut[:3]
    shown = re.search(r"^(\d+) events, (\d+) lost", text, re.M)
    assert shown and int(shown.group(1)) == len(calls) > 0, text
    assert int(shown.group(2)) > 0  # stopped before the end: what was not shown is counted lost
