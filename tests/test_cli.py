"""The `tracer` command line as users run it (`python -m tracer` in a subprocess): usage errors exit 2
with one `tracer: ...` line and no traceback; help mentions `-- CMD`; doctor --json is JSON.

Only test_command_not_found needs BPF (the session starts before the command is run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI") == "true"


def tracer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80"}  # as narrow as a default terminal, and the same everywhere
    env.pop("TRACER_TRACEFS", None)
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_error_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {proc.stderr!r}"
    assert lines[0].startswith("tracer: "), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert proc.stdout == ""
    return lines[0]


def test_unknown_syscall() -> None:
    assert_one_error_line(tracer("trace", "nosuchsyscall"), 2, "'nosuchsyscall'")


def test_unknown_syscall_with_hint_is_still_one_line() -> None:
    """The did-you-mean hint makes the message longer than 80 columns; it must not be wrapped."""
    line = assert_one_error_line(tracer("trace", "xattr"), 2, "'xattr'", "did you mean", "getxattr")
    assert len(line) > 80


def test_unknown_group() -> None:
    assert_one_error_line(tracer("trace", "%foo"), 2, "'%foo'", "%file")


def test_buffer_pages_not_power_of_two() -> None:
    assert_one_error_line(tracer("trace", "--buffer-pages", "3", "openat2"), 2, "--buffer-pages 3", "power of two")


def test_nothing_after_double_dash() -> None:
    assert_one_error_line(tracer("trace", "openat2", "--"), 2, "nothing after `--`")


def test_count_zero_is_a_usage_error() -> None:
    proc = tracer("trace", "--count", "0", "openat2")
    assert proc.returncode == 2
    assert "--count" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_help() -> None:
    for args in (["--help"], ["-h"], ["trace", "--help"]):
        proc = tracer(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stdout.startswith("Usage: tracer"), args
        assert "-- CMD" in proc.stdout, f"`tracer {' '.join(args)}` does not mention `-- CMD`:\n{proc.stdout}"


def test_trace_help_lists_options() -> None:
    out = tracer("trace", "--help").stdout
    for opt in ("--pid", "--comm", "--count", "--duration", "--no-recover", "--buffer-pages", "--json"):
        assert opt in out, opt


def test_command_not_found() -> None:
    if os.geteuid() != 0:
        if CI:
            pytest.fail("tracing a command needs root (CI=true)")
        pytest.skip("tracing a command needs root")
    proc = tracer("trace", "openat2", "--", "/nonexistent/cmd")
    line = assert_one_error_line(proc, 1, "/nonexistent/cmd")
    assert "No such file or directory" in line


def test_user_needs_a_command_and_a_real_user() -> None:
    assert_one_error_line(tracer("trace", "openat2", "-u", "nobody"), 2, "-u/--user", "`--`")
    assert_one_error_line(tracer("trace", "openat2", "-u", "no-such-user-x", "--", "true"), 2,
                          "-u no-such-user-x: no such user")


def test_output_file_that_cannot_be_created() -> None:
    assert_one_error_line(tracer("trace", "openat2", "-o", "/nonexistent-dir/ev.jsonl", "--", "true"), 1,
                          "cannot write /nonexistent-dir/ev.jsonl: No such file or directory")


def test_doctor_json() -> None:
    proc = tracer("doctor", "--json")
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert {"user_events", "sleepable", "ok", "checks"} <= set(doc)
    assert isinstance(doc["user_events"]["available"], bool)
    assert isinstance(doc["sleepable"], dict)
    assert proc.returncode == (0 if doc["ok"] else 1)
    assert proc.returncode == 0, "syscall tracing should be possible on this machine (we run as root)"


class _FakeSession:
    """What cli.drive uses of a Session; `fail_start` makes start() fail as bcc's compile does."""

    probes = None

    def __init__(self, fail_start: bool) -> None:
        self.fail_start = fail_start
        self.closed = 0

    def start(self) -> None:
        if self.fail_start:
            raise Exception("/virtual/main.c:12:3: error: use of undeclared identifier 'x'")

    def stop(self, sig: int = 15) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("fail_start", [True, False], ids=["loading", "tracing"])
def test_a_failure_is_named_by_when_it_happened(fail_start: bool) -> None:
    """bcc failing while the programs load is a load error (with its last line); anything failing once
    tracing runs (a decoder or output bug) is tracer's internal error, not "could not load" — and the
    session is closed either way."""
    from tracer.cli import drive
    from tracer.errors import EnvironmentProblem, TracerError

    session = _FakeSession(fail_start)

    def body() -> None:
        raise KeyError("function")

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(TracerError) as caught:
            drive(session, body)  # type: ignore[arg-type]
    finally:
        for sig, handler in saved.items():  # drive installed its stop handlers
            signal.signal(sig, handler)
    msg = caught.value.report()
    if fail_start:
        assert isinstance(caught.value, EnvironmentProblem)
        assert msg == "tracer: could not load the BPF programs: /virtual/main.c:12:3: error: use of undeclared " \
                      "identifier 'x' (see `tracer doctor`)"
    else:
        assert not isinstance(caught.value, EnvironmentProblem) and caught.value.code == 1
        assert msg.startswith("tracer: internal error while tracing: KeyError: 'function' (") and "\n" not in msg
    assert session.closed >= 1
