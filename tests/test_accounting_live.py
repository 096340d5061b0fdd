"""Every call accounted for (tracer/accounting.py), with the real BPF programs: for the openat2 calls of a
traced `-- CMD`, delivered events + reported lost == calls made, exactly, at any ring size, for `trace`,
`record` (its capture replayed) and `monitor`. The calls made are known from the workload itself
(tests/workloads/flood.c makes exactly N and says so); its calls are its only openat2 calls.

Each lost-records line carries its reason, the summary's `lost_by_reason` adds up to `lost`, and
nothing is counted twice (the kernel's ring markers and submit_fail counter describe the same drops).
The flood runs start in parallel once for the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import blocked_in, wait_for
from test_trace_live import ROOT, TIMEOUT, Run, expect_ok, finish, run_parallel, start_looper, tracer_argv

from tracer.accounting import REASONS

pytestmark = pytest.mark.usefixtures("bpf_env")

CALLS = 100_000   # per flood run, in two threads: a 1- or 8-page ring loses most of them
SIZES = {"1": ("--buffer-pages", "1"), "8": ("--buffer-pages", "8"), "default": ()}


def made(run: Run) -> int:
    """The calls the workload says it made (its stderr report)."""
    reports = [json.loads(line) for line in run.stderr.splitlines() if line.startswith('{"kind":"workload"')]
    assert len(reports) == 1, run.describe()
    return reports[0]["calls"]


def check_lost_lines(lost: list[dict], summary: dict) -> None:
    """Lines with a known reason, never a zero count; the summary adds them up, by reason and by CPU."""
    assert all(x["reason"] in REASONS and x["count"] > 0 and x["source"] == "syscalls" for x in lost), lost
    by_reason: Counter = Counter()
    per_cpu: Counter = Counter()
    for x in lost:
        by_reason[x["reason"]] += x["count"]
        if x["cpu"] is not None:
            per_cpu[str(x["cpu"])] += x["count"]
    assert summary["lost"] == sum(by_reason.values())
    assert summary["lost_by_reason"] == {r: by_reason.get(r, 0) for r in REASONS}
    assert summary["lost_per_cpu"] == dict(per_cpu)


@dataclass
class Floods:
    runs: dict[str, Run]
    captures: dict[str, Path]


@pytest.fixture(scope="module")
def floods(build_c, tmp_path_factory: pytest.TempPathFactory) -> Floods:
    flood = build_c("flood")
    tmp = tmp_path_factory.mktemp("accounting")
    cmd = ("--", flood, CALLS, 2)
    jobs: dict[str, tuple[tuple, dict]] = {}
    captures = {}
    for size, opt in SIZES.items():
        jobs[f"trace-{size}"] = (("trace", "openat2", "--json", *opt, *cmd), {})
        jobs[f"monitor-{size}"] = (("monitor", "openat2", "--json", *opt, *cmd), {})
        captures[size] = tmp / f"flood-{size}.cap"
        jobs[f"record-{size}"] = (("record", "-o", captures[size], "openat2", *opt, *cmd), {})
    runs = run_parallel(jobs)
    for size, cap in captures.items():
        runs[f"replay-{size}"] = run_replay(cap)
    return Floods(runs, captures)


def run_replay(capture: Path) -> Run:
    argv = tracer_argv("replay", "--json", capture)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return finish(proc, argv, time.monotonic(), True)


@pytest.mark.parametrize("size", SIZES)
def test_trace_delivered_plus_lost_is_calls_made(floods: Floods, size: str) -> None:
    run = floods.runs[f"trace-{size}"]
    expect_ok(run)
    calls = made(run)
    assert calls == CALLS
    s = run.summary
    check_lost_lines(run.lost, s)
    assert len(run.events) == s["events"]
    assert s["events"] + s["lost"] == calls, f"{s}"
    k = s["kernel"]
    assert k["emitted"] == s["events"]  # every record written to a ring was read, none discarded
    # The kernel's two views of a full ring are one loss: submit_fail holds every failed output.
    assert s["lost_by_reason"]["ring_full"] + s["lost_by_reason"]["submit_error"] == k["submit_fail"]
    if size != "default":
        assert s["lost_by_reason"]["ring_full"] > 0, f"a {size}-page ring lost nothing: {s}"


@pytest.mark.parametrize("size", SIZES)
def test_record_and_replay_account_for_every_call(floods: Floods, size: str) -> None:
    rec, rep = floods.runs[f"record-{size}"], floods.runs[f"replay-{size}"]
    expect_ok(rec)
    expect_ok(rep)
    calls = made(rec)
    s = rep.summary
    check_lost_lines(rep.lost, s)
    assert len(rep.events) + sum(x["count"] for x in rep.lost) == calls
    assert s["events"] + s["lost"] == calls, f"{s}"


@pytest.mark.parametrize("size", SIZES)
def test_monitor_counts_each_lost_call_once(floods: Floods, size: str) -> None:
    run = floods.runs[f"monitor-{size}"]
    assert run.rc in (0, 3), run.describe()
    assert "Traceback" not in run.stderr
    calls = made(run)
    s = run.summary
    lost_alerts = [x for x in run.lines if x.get("kind") == "alert" and x["rule"] == "lost"]
    assert sum(a["lost"]["count"] for a in lost_alerts) == s["lost"]
    assert all(a["lost"]["reason"] in REASONS for a in lost_alerts)
    assert s["events"] + s["lost"] == calls, f"{s}"
    assert (run.rc == 3) == bool(s["alerts"]) and (s["lost"] == 0 or run.rc == 3)


# --- the end of a session -----------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def interrupt(tmp: Path, args: tuple, settle: float) -> tuple[Run, float]:
    """Start a tracer, SIGINT it `settle` seconds after its -- CMD started. Output goes to files: a pipe
    nobody reads while waiting would stall the tracer."""
    argv = tracer_argv(*args)
    out, err = tmp / "stdout", tmp / "stderr"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            kids = children(proc.pid)
            if kids:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the tracer ended early (exit {proc.poll()}): {err.read_text()[-2000:]}"
        time.sleep(settle)
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"tracer did not finish within {TIMEOUT}s after SIGINT: {' '.join(argv)}")
        seconds = time.monotonic() - began
    finally:
        for pid in kids:  # the command got SIGINT too; never left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    run = Run(argv, proc.returncode, out.read_text(), err.read_text(), seconds)
    run.lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return run, seconds


@pytest.fixture(scope="module")
def interrupted(build_c, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Run, float]]:
    """SIGINT to a tracer whose command floods: records pile up faster than they are shown (the command
    gets the SIGINT too). With -Z (every flood call fails: all shown) each event is decoded (~5 µs):
    `trace --json` alone makes its lines from the records in C, ~2 µs per event, and keeps up."""
    return {"flood": interrupt(tmp_path_factory.mktemp("flood"),
                               ("trace", "openat2", "--json", "-Z", "--", build_c("flood"), 50_000_000, 2), 3.0)}


def test_interrupt_drains_for_a_bounded_time_and_counts_the_rest_discarded(interrupted) -> None:
    from tracer.session import FINAL_DRAIN_S

    run, seconds = interrupted["flood"]
    assert run.rc == 128 + signal.SIGINT and "Traceback" not in run.stderr, run.describe()  # the command's
    s = run.summary
    check_lost_lines(run.lost, s)
    assert s["lost_by_reason"]["discarded_at_exit"] > 0, s
    assert s["events"] == len(run.events)
    # The drain stops after FINAL_DRAIN_S; shutting down takes a little more.
    assert seconds < FINAL_DRAIN_S + 10, seconds


def test_call_in_flight_when_tracing_stops_is_counted() -> None:
    """A process traced by pid goes to sleep (clock_nanosleep) after tracing started and is still asleep
    when the session stops (it is not ours to stop): that call is lost, as in_flight_at_exit, no CPU."""
    from tracer.session import Session

    code = "import sys, time; sys.stdin.readline(); time.sleep(120)"
    sleeper = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
    try:
        with Session(["clock_nanosleep"], pids=[sleeper.pid]) as s:
            sleeper.stdin.write("go\n")
            sleeper.stdin.flush()
            wait_for(lambda: blocked_in(sleeper.pid, 230))  # clock_nanosleep (x86_64)
            s.stop()
            out = [ev.data for ev in s]
        summary = s.summary()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert out == [{"kind": "lost", "source": "syscalls", "cpu": None, "count": 1, "reason": "in_flight_at_exit"}]
    assert summary["events"] == 0 and summary["lost"] == summary["lost_by_reason"]["in_flight_at_exit"] == 1


def test_calls_begun_before_tracing_are_not_lost_calls(build_c) -> None:
    """Exits without an entry are calls that began before tracing did: the -- CMD child's read at its start
    gate (it joins the filter while blocked in it), the children's returns from clone, the calls a -p
    process is in when tracing starts. Counted in kernel.no_state, never lost; and tracing starts at one
    instant for every program, so no call of a running process is half traced while they attach."""
    procs = build_c("procs")
    looper = start_looper(procs, "accountme", interval_ms=1)
    try:
        runs = run_parallel({
            "read": (("trace", "read", "--json", "--", "sh", "-c", "exec 0</dev/null; read x || true"), {}),
            "clone": (("trace", "clone", "--json", "--", procs, "fork", "0"), {}),
            "pid": (("trace", "openat2", "--json", "-p", looper.pid, "--duration", "2"), {}),
        })
    finally:
        looper.proc.kill()
        looper.proc.wait()
    for run in runs.values():
        expect_ok(run)
    # The gate read's exit has no entry when the child was already blocked in it (a race).
    assert runs["read"].summary["lost"] == 0 and runs["read"].summary["kernel"]["no_state"] <= 1
    clones = runs["clone"]
    # The child's and grandchild's returns from clone; and the command's own return from the tracer's
    # fork when its pid joined the filter first (a race).
    assert clones.summary["lost"] == 0 and clones.summary["kernel"]["no_state"] in (2, 3), clones.summary
    assert len(clones.events) == 2 and all(e["ret"] > 0 for e in clones.events), clones.events
    s = runs["pid"].summary
    assert s["events"] > 100 and s["kernel"]["no_exit"] == 0, s
    # Only a call in progress when tracing stopped may be lost (one per thread at most).
    assert s["lost"] == s["lost_by_reason"]["in_flight_at_exit"] <= 2, s


def test_start_is_once_so_each_call_is_shown_once() -> None:
    """Session.start() inside `with` (which started it) attaches nothing more: each call is one event, not
    one per set of attached programs (a second start showed every openat2 twice)."""
    from tracer.session import Session

    code = "import os, sys; sys.stdin.readline(); [os.path.exists('/nonexistent-twice') for _ in range(5)]"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
    try:
        with Session(["newfstatat", "statx", "newstat"], pids=[proc.pid], duration=1.5) as s:
            sources = list(s.sources)
            s.start()
            assert s.sources == sources
            proc.stdin.write("go\n")
            proc.stdin.flush()
            got = [ev.data for ev in s if ev.data.get("kind") == "syscall"
                   and (ev.data.get("args") or {}).get("filename") == "/nonexistent-twice"]
    finally:
        proc.kill()
        proc.wait()
    assert len(got) == 5, got
