"""tracer/command.py without BPF: the gate, -u USER, the stdout redirection, and the end of a command
(signal to it and its descendants, SIGKILL after the grace period, SIGCONT for a stopped one).
The same paths run live under the tracer in tests/test_command_live.py."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import wait_for

from tracer.command import KILL_GRACE_S, Command, CommandError, descendants, lookup_user


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def sleeping_child(pid: int) -> int:
    """The shell's one background `sleep`, once it runs sleep: until its exec the shell may not yet have set
    its signal dispositions (a non-interactive shell's background job ignores SIGINT)."""
    def comms() -> list[str]:
        try:
            return [Path(f"/proc/{kid}/comm").read_text().strip() for kid in descendants(pid)]
        except OSError:
            return []
    wait_for(lambda: comms() == ["sleep"])
    (child,) = descendants(pid)
    return child


def test_gate_holds_the_command_until_admitted(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    seen: list[tuple[int, bool]] = []
    cmd = Command(["sh", "-c", f"echo $$ > {marker}"])
    pid = cmd.spawn(lambda p: seen.append((p, marker.exists())))
    wait_for(cmd.poll)
    assert seen == [(pid, False)], "admit() ran before the command could exec"
    assert marker.read_text().strip() == str(pid) and cmd.exit_code == 0


def test_exit_status_and_exec_failure() -> None:
    cmd = Command(["sh", "-c", "exit 7"])
    cmd.spawn(lambda p: None)
    wait_for(cmd.poll)
    assert cmd.exit_code == 7
    with pytest.raises(CommandError, match="cannot run '/nonexistent/x': No such file or directory"):
        Command(["/nonexistent/x"]).spawn(lambda p: None)


def test_stdout_redirected(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        cmd = Command(["echo", "to the fd"], stdout=fd)
        cmd.spawn(lambda p: None)
        wait_for(cmd.poll)
    finally:
        os.close(fd)
    assert out.read_text() == "to the fd\n"


def test_user() -> None:
    assert lookup_user("0").name == "root" and lookup_user("root").uid == 0
    with pytest.raises(CommandError, match="-u no-such-user-x: no such user") as e:
        lookup_user("no-such-user-x")
    assert e.value.code == 2
    if os.geteuid() != 0:
        pytest.skip("running as another user needs root")
    r, w = os.pipe()
    cmd = Command(["id", "-u"], user="nobody", stdout=w)
    cmd.spawn(lambda p: None)
    os.close(w)
    wait_for(cmd.poll)
    assert os.read(r, 100).decode().strip() == str(lookup_user("nobody").uid)
    os.close(r)


def test_sigterm_ignored_by_a_shell_and_its_child_ends_with_sigkill() -> None:
    cmd = Command(["sh", "-c", 'trap "" TERM; sleep 30 & wait'])
    pid = cmd.spawn(lambda p: None)
    child = sleeping_child(pid)
    started = time.monotonic()
    cmd.finish(signal.SIGTERM)
    assert KILL_GRACE_S <= time.monotonic() - started < KILL_GRACE_S + 5
    assert cmd.exit_code == 128 + signal.SIGKILL and not alive(pid)
    wait_for(lambda: not alive(child))


def test_forwarded_signal_ends_a_stopped_command_and_descendants_are_not_left() -> None:
    cmd = Command(["sh", "-c", "sleep 30 & wait"])
    pid = cmd.spawn(lambda p: None)
    child = sleeping_child(pid)
    os.kill(pid, signal.SIGSTOP)
    cmd.end(signal.SIGINT)
    wait_for(cmd.poll)  # continued, then ended by SIGINT: no SIGKILL needed
    assert cmd.exit_code == 128 + signal.SIGINT
    # A non-interactive shell starts background jobs with SIGINT ignored: the sleep outlives the shell,
    # and finish() (what closing the session does) kills it once the grace period is over.
    assert alive(child)
    cmd.finish()
    wait_for(lambda: not alive(child))
