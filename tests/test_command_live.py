"""Live tests of `-- CMD` as strace treats it, and of the event streams (tracer/command.py, tracer/streams.py).

- Stopping the tracer (SIGINT, SIGTERM, SIGHUP, --duration, --count) ends the command it started: the
  command gets the signal, then SIGKILL after command.KILL_GRACE_S; the tracer exits with its status.
- The command's stdout never enters an event stream on stdout (it goes to stderr); with -o FILE the
  events go to FILE and the command keeps its stdout.
- -u USER runs the command as USER.
Each test starts a real tracer on a real command; runs share a module fixture and go in parallel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_trace_live import ROOT, TIMEOUT, Run, expect_ok, finish, run_tracer, tracer_argv

from tracer.command import KILL_GRACE_S

pytestmark = pytest.mark.usefixtures("bpf_env")
NOBODY = 65534
# A shell that ignores the signals the tracer forwards; its background sleep inherits that.
STUBBORN = 'trap "" TERM INT HUP; sleep 31 & echo $!; wait; sleep 31'


def run_plain(*args: str | os.PathLike) -> Run:
    """A tracer run whose stdout is not (only) JSON: -o FILE sends the events elsewhere."""
    argv = tracer_argv(*args)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    return finish(proc, argv, time.monotonic(), as_json=False)


def start_time(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return out


@dataclass
class Stopped:
    """A tracer stopped by a signal while its command ran."""

    rc: int
    stderr: str
    family: dict[int, str]  # pid -> start time of the command (and what it started) when signalled
    after_signal_s: float  # from the signal to the tracer's exit

    def left_running(self) -> list[int]:
        return [pid for pid, started in self.family.items() if start_time(pid) == started]


def stop_with(sig: signal.Signals, command: list[str], comm: str, expect_procs: int = 1,
              sigstop_first: bool = False) -> Stopped:
    """Start `tracer trace openat2 -- command`, wait until `expect_procs` processes named comm run under
    it, send sig to the tracer (after SIGSTOP to those processes: sigstop_first), and wait for it to exit."""
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "trace", "openat2", "--no-summary", "--", *command],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        family: dict[int, str] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            todo, family = children(proc.pid), {}
            while todo:
                pid = todo.pop()
                started = start_time(pid)
                if started is not None and Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    family[pid] = started
                todo += children(pid)
            if len(family) >= expect_procs:
                break
            time.sleep(0.05)
        assert len(family) >= expect_procs, f"{comm} did not start under the tracer: {proc.communicate()[1]}"
        time.sleep(0.3)  # let a shell install its traps
        if sigstop_first:
            for pid in family:
                os.kill(pid, signal.SIGSTOP)
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=TIMEOUT)
        return Stopped(proc.returncode, err, family, time.monotonic() - sent)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("command")
    # The command writes its own pid first: with events on stdout, that line is in the tracer's stderr.
    jobs = {
        "int": (stop_with, signal.SIGINT, ["sleep", "31"], "sleep"),
        "term": (stop_with, signal.SIGTERM, ["sleep", "31"], "sleep"),
        "hup": (stop_with, signal.SIGHUP, ["sleep", "31"], "sleep"),
        "stubborn": (stop_with, signal.SIGTERM, ["sh", "-c", STUBBORN], "sleep"),
        "stopped": (stop_with, signal.SIGTERM, ["sleep", "31"], "sleep", 1, True),
        "duration": (run_tracer, "trace", "openat2", "--json", "--duration", "1", "--", "sh", "-c",
                     "echo $$; exec sleep 31"),
        "count": (run_tracer, "trace", "openat", "--json", "--count", "1", "--", "sh", "-c",
                  "echo $$; cat /etc/hostname >/dev/null; exec sleep 31"),
        "stream": (run_tracer, "trace", "openat", "--json", "--", "sh", "-c",
                   "echo 'not JSON {'; cat /etc/hostname; printf 'no newline'"),
        "output": (run_plain, "trace", "openat", "--json", "-o", tmp / "events.jsonl", "--", "sh", "-c",
                   "echo out-line; cat /etc/hostname"),
        "console": (run_tracer, "trace", "openat", "-o", tmp / "events.txt", "--", "cat", "/etc/hostname"),
        "user": (run_tracer, "trace", "openat", "--json", "-u", "nobody", "--", "sh", "-c",
                 "id -u; id -g; cat /etc/hostname"),
        "monitor": (run_plain, "monitor", "openat2", "--json", "-o", tmp / "alerts.jsonl", "--", "echo", "hi"),
    }
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(fn, *args) for name, (fn, *args) in jobs.items()}
        out: dict[str, object] = {name: f.result() for name, f in futures.items()}
    out["tmp"] = tmp
    return out


@pytest.mark.parametrize("sig", ["int", "term", "hup"])
def test_signal_reaches_the_command_and_its_status_is_ours(runs, sig: str) -> None:
    stopped: Stopped = runs[sig]
    signum = {"int": signal.SIGINT, "term": signal.SIGTERM, "hup": signal.SIGHUP}[sig]
    assert stopped.rc == 128 + signum, stopped.stderr  # died of the forwarded signal, not of the SIGKILL
    assert "Traceback" not in stopped.stderr
    assert stopped.left_running() == []


def test_command_ignoring_sigterm_is_killed_after_the_grace_period(runs) -> None:
    stopped: Stopped = runs["stubborn"]
    assert len(stopped.family) >= 1
    assert stopped.rc == 128 + signal.SIGKILL, stopped.stderr
    assert stopped.left_running() == [], "the shell and its background sleep ignored SIGTERM: SIGKILL ends them"
    assert KILL_GRACE_S <= stopped.after_signal_s < KILL_GRACE_S + 10


def test_stopped_command_is_continued_to_get_the_signal(runs) -> None:
    stopped: Stopped = runs["stopped"]
    assert stopped.rc == 128 + signal.SIGTERM, stopped.stderr  # SIGTERM, not the SIGKILL after the grace period
    assert stopped.left_running() == []


def _pid_line(run: Run) -> int:
    return int(next(line for line in run.stderr.splitlines() if line.isdigit()))


@pytest.mark.parametrize("limit", ["duration", "count"])
def test_limits_end_the_command_with_sigterm(runs, limit: str) -> None:
    run: Run = runs[limit]
    expect_ok(run, 128 + signal.SIGTERM)
    pid = _pid_line(run)
    assert not Path(f"/proc/{pid}").exists() or start_time(pid) is None, "sleep 31 was left running"
    assert run.seconds < 31
    assert run.summary["exit_code"] == 128 + signal.SIGTERM
    if limit == "count":
        assert len(run.events) == 1


def test_command_stdout_never_in_the_json_stream(runs) -> None:
    run: Run = runs["stream"]
    expect_ok(run)
    # Every stdout line is JSON (run_tracer parsed them all); the command's output is on stderr.
    assert all(isinstance(x, dict) and "kind" in x for x in run.lines)
    assert "not JSON {\n" in run.stderr and run.stderr.endswith("no newline")
    assert Path("/etc/hostname").read_text() in run.stderr
    assert [e["args"]["filename"] for e in run.events if e["comm"] == "cat"][-1] == "/etc/hostname"
    jq = subprocess.run(["jq", "-c", ".kind"], input=run.stdout, capture_output=True, text=True) \
        if Path("/usr/bin/jq").exists() else None
    if jq is not None:
        assert jq.returncode == 0 and len(jq.stdout.split()) == len(run.stdout.splitlines()), jq.stderr
        assert {'"syscall"', '"summary"'} <= set(jq.stdout.split())


def test_output_file_gets_the_events_and_the_command_keeps_stdout(runs) -> None:
    run: Run = runs["output"]
    expect_ok(run)
    assert run.stdout == "out-line\n" + Path("/etc/hostname").read_text()
    path: Path = runs["tmp"] / "events.jsonl"
    assert path.stat().st_mode & 0o777 == 0o600
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[-1]["kind"] == "summary" and lines[-1]["exit_code"] == 0
    assert "/etc/hostname" in [x["args"]["filename"] for x in lines if x["kind"] == "syscall"]

    console: Run = runs["console"]
    expect_ok(console)
    assert console.stdout == Path("/etc/hostname").read_text()
    text = (runs["tmp"] / "events.txt").read_text()
    assert "\x1b" not in text, "no terminal colours in a file"
    assert any(f"cat[{pid}/{pid}] openat(dfd=AT_FDCWD, filename=\"/etc/hostname\"" in line
               for line in text.splitlines() for pid in [line.split("[", 1)[-1].split("/", 1)[0]])


def test_user_runs_the_command_as_that_user(runs) -> None:
    run: Run = runs["user"]
    expect_ok(run)
    assert run.stderr == f"{NOBODY}\n{NOBODY}\n" + Path("/etc/hostname").read_text()  # id -u; id -g; cat
    (ev,) = [e for e in run.events if e["args"]["filename"] == "/etc/hostname"]
    assert ev["uid"] == NOBODY and ev["comm"] == "cat"


def test_monitor_output_file(runs) -> None:
    run: Run = runs["monitor"]
    expect_ok(run)
    assert run.stdout == "hi\n"
    lines = [json.loads(x) for x in (runs["tmp"] / "alerts.jsonl").read_text().splitlines()]
    assert lines[-1]["kind"] == "summary" and lines[-1]["alerts"] == 0 and lines[-1]["exit_code"] == 0


def test_replay_output_file(tmp_path: Path) -> None:
    cap = tmp_path / "run.cap"
    expect_ok(run_tracer("record", "-o", cap, "openat", "--", "cat", "/etc/hostname"))
    shown = run_tracer("replay", cap, "--json")
    expect_ok(shown)
    written = run_plain("replay", cap, "--json", "-o", tmp_path / "replay.jsonl")
    expect_ok(written)
    assert written.stdout == "" and (tmp_path / "replay.jsonl").read_text() == shown.stdout
    bad = run_plain("replay", cap, "-o", tmp_path / "no-such-dir" / "x")
    assert bad.rc == 1 and bad.stderr.startswith("tracer: cannot write") and len(bad.stderr.splitlines()) == 1
    assert os.path.exists(cap)
