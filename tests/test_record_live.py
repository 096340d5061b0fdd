"""record / replay / export with the real BPF programs (tracer/capture.py, tracer/export.py).

One recording of the openat2 cases workload (missing, recovered, changed reads, region explanations,
hostile strings, a noreturn exit_group) tees its live `--json` stream; `tracer replay --json` of the file
must print the very same JSON objects, summary included. A recording killed with SIGKILL stays
readable. The API example (examples/api_session.py) runs here too. The three BPF sessions run in
parallel; replays and exports need no BPF.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from schema_check import check_stream
from test_trace_live import ROOT, TIMEOUT, Looper, Run, expect_ok, run_tracer, start_looper, workload_env

from tracer.capture import Capture

pytestmark = pytest.mark.usefixtures("bpf_env")
STREAM_KINDS = ("stream", "syscall", "lost", "summary")


@dataclass
class Recorded:
    live: Run
    capture: Path
    killed: Path
    killed_stderr: str
    looper: Looper
    api: subprocess.CompletedProcess
    api_capture: Path


def record_then_kill(capture: Path, looper: Looper) -> str:
    """`tracer record -p LOOPER`, killed with SIGKILL once a few records are in the file and the looper is
    stopped and the file has stopped growing (a SIGKILL inside a multi-page write(2) can cut a frame: replay
    then says the file is truncated, which is another test's subject)."""
    argv = [sys.executable, "-m", "tracer", "record", "-o", str(capture), "openat2", "-p", str(looper.pid)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if sum(1 for _ in Capture(capture)) >= 5:
                    break
            except Exception:  # not created yet, or the header not written yet
                pass
            time.sleep(0.1)
        assert proc.poll() is None, f"record ended early: {proc.communicate()}"
        os.kill(looper.pid, signal.SIGSTOP)
        sizes = [-1]
        while time.monotonic() < deadline and sizes[-3:] != [capture.stat().st_size] * 3:
            sizes.append(capture.stat().st_size)
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        os.kill(looper.pid, signal.SIGCONT)
    return err


@pytest.fixture(scope="module")
def recorded(build_c, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    cases = build_c("openat2_cases")
    looper = start_looper(build_c("procs"), "recordme")
    tmp = tmp_path_factory.mktemp("record")
    (tmp / "work").mkdir()
    cap, killed, api_cap = tmp / "cases.cap", tmp / "killed.cap", tmp / "api.cap"
    try:
        with ThreadPoolExecutor(3) as pool:
            live = pool.submit(run_tracer, "record", "-o", cap, "--json", "openat2", "openat", "exit_group", "--",
                               cases, "all", env=workload_env(tmp / "work"))
            kill = pool.submit(record_then_kill, killed, looper)
            api = pool.submit(subprocess.run, [sys.executable, "examples/api_session.py", str(api_cap)], cwd=ROOT,
                              capture_output=True, text=True, timeout=TIMEOUT)
            yield Recorded(live.result(), cap, killed, kill.result(), looper, api.result(), api_cap)
    finally:
        looper.proc.kill()
        looper.proc.wait()


def replay(*args: str | os.PathLike) -> Run:
    return run_tracer("replay", *args)


def stream(run: Run) -> list[dict]:
    """The tracer's own JSON objects (every stdout line must be one)."""
    assert all(x.get("kind") in STREAM_KINDS for x in run.lines), run.describe()
    return run.lines


def test_record_round_trip_equals_live_json(recorded: Recorded) -> None:
    expect_ok(recorded.live)
    info = recorded.live.describe()
    live = stream(recorded.live)
    check_stream(live)  # the JSON contract: header first, every line valid against its schema
    events = [x for x in live if x["kind"] == "syscall"]
    assert len(recorded.live.workload) == 14 and live[-1]["kind"] == "summary", info
    # The session exercised what a replay must not recompute: region explanations, every read status.
    statuses = {r["status"] for e in events for r in e["reads"].values()}
    assert {"ok", "recovered", "changed", "missing"} <= statuses, info
    assert any("region" in r and r["region"]["kind"] == "file" for e in events for r in e["reads"].values())
    assert any(e["syscall"] == "exit_group" and e["ret"] is None for e in events)
    assert "recorded" in recorded.live.stderr and str(recorded.capture) in recorded.live.stderr

    run = replay(recorded.capture, "--json")
    expect_ok(run)
    assert len(run.lines) == len(live), f"{info}\n{run.describe()}"
    for replayed, shown in zip(run.lines, live, strict=True):
        assert replayed == shown  # every object, in order, field for field
    assert run.stdout.splitlines() == [json.dumps(x, separators=(",", ":")) for x in live]  # compact, as README
    assert run.stderr == ""


def test_replay_filters_match_live_filtered(recorded: Recorded) -> None:
    live = stream(recorded.live)
    events = [x for x in live if x["kind"] == "syscall"]
    pid = recorded.live.workload[0]["pid"]

    run = replay(recorded.capture, "--json", "--only-missing", "--no-summary")
    expect_ok(run)
    bad = ("missing", "recovered", "changed")
    missing = [e for e in events if any(r["status"] in bad for r in e["reads"].values())]
    assert run.lines[0] == live[0] and run.lines[0]["kind"] == "stream"
    assert len(missing) == 6 and run.lines[1:] == missing

    run = replay(recorded.capture, "openat2", "-p", pid, "--json")
    expect_ok(run)
    mine = [e for e in events if e["syscall"] == "openat2" and e["pid"] == pid]
    assert len(mine) == 14 and run.lines[1:-1] == mine
    assert run.lines[-1]["events"] == 14 and run.lines[-1]["kernel"] == live[-1]["kernel"]

    run = replay(recorded.capture, "--json", "exit*", "--tid", pid)
    expect_ok(run)
    assert [e["syscall"] for e in run.events] == ["exit_group"]


def test_capture_file_and_header(recorded: Recorded) -> None:
    assert recorded.capture.stat().st_mode & 0o777 == 0o600
    cap = Capture(recorded.capture)
    h = cap.header
    assert h["kernel"]["release"] == os.uname().release
    assert h["session"]["events"] == ["openat2", "openat", "exit_group"] and h["session"]["command"][1] == "all"
    (src,) = h["sources"]
    assert sorted(d["name"] for d in src["desc"]["syscalls"]) == ["exit_group", "openat", "openat2"]
    list(cap)
    assert cap.problem is None and cap.trailer is not None and cap.trailer["exit_code"] == 0


def test_export_jsonl_and_chrome(recorded: Recorded, tmp_path: Path) -> None:
    live = stream(recorded.live)
    events = [x for x in live if x["kind"] == "syscall"]
    run = run_tracer("export", recorded.capture, "--format", "jsonl")
    expect_ok(run)
    assert [json.loads(x) for x in run.stdout.splitlines()] == live

    out = tmp_path / "trace.json"
    run = run_tracer("export", recorded.capture, "--format", "chrome", "-o", out)
    expect_ok(run)
    doc = json.loads(out.read_text())
    tes = doc["traceEvents"]
    xs = [t for t in tes if t["ph"] == "X"]
    returning = [e for e in events if "ts_exit" in e]
    assert [(t["name"], t["pid"], t["tid"], t["ts"], t["dur"]) for t in xs] == [
        (e["syscall"], e["pid"], e["tid"], e["ts"] / 1000, e["duration_ns"] / 1000) for e in returning]
    missing = [t for t in tes if t["ph"] == "i" and t["cat"] == "missing"]
    assert len(missing) == 6
    pid = recorded.live.workload[0]["pid"]
    names = {(t["name"], t["tid"]): t["args"]["name"] for t in tes if t["ph"] == "M"}
    assert names[("process_name", pid)] == f"openat2_cases ({pid})"


def test_killed_recording_stays_readable(recorded: Recorded) -> None:
    looper = recorded.looper
    assert recorded.killed.stat().st_mode & 0o777 == 0o600
    run = replay(recorded.killed, "--json")
    assert run.rc == 0 and "Traceback" not in run.stderr, run.describe()
    assert len(run.events) >= 5
    assert {(e["pid"], e["comm"]) for e in run.events} == {(looper.pid, "recordme")}
    assert all(e["args"]["filename"] == "/etc/hostname" and e["ret"] >= 0 for e in run.events)
    assert run.stderr.splitlines() == [f"tracer: {recorded.killed} has no end-of-session trailer: the recording did "
                                       f"not finish cleanly (killed?); all {len(run.events)} records in it were "
                                       "replayed"]
    assert run.summary["events"] == len(run.events) and run.summary["exit_code"] is None


def test_api_example_runs(recorded: Recorded) -> None:
    p = recorded.api
    assert p.returncode == 0, p.stdout + p.stderr
    steps = {x["step"]: x for x in (json.loads(line) for line in p.stdout.splitlines() if line.startswith("{"))}
    assert steps["live"]["events"] == 4 and steps["live"]["exit_code"] == 0
    assert steps["live"]["flagged"] == ["openat2: filename unreadable, ret -14 EFAULT"]
    assert steps["live"]["reads"]["recovered"] == 2 and steps["live"]["reads"]["missing"] == 1
    assert steps["replay"] == {"step": "replay", "events": 4, "identical": True, "with_missing_data": 2,
                               "kernel": os.uname().release, "complete": True}
    assert recorded.api_capture.stat().st_mode & 0o777 == 0o600


def test_record_refuses_existing_file_before_loading_anything(recorded: Recorded) -> None:
    before = recorded.capture.read_bytes()
    started = time.monotonic()
    run = run_tracer("record", "-o", recorded.capture, "openat2", "--count", "1")
    assert run.rc == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [f"tracer: {recorded.capture} exists; choose another file or pass --force "
                                       "to replace it"]
    assert time.monotonic() - started < 10  # no BPF compile happened
    assert recorded.capture.read_bytes() == before
