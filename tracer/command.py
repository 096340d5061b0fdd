"""The command that `-- CMD` starts, and its end, the way strace treats what it starts.

Started held at a gate until its pid is in the kernel's filter (so its execve is traced), optionally as
another user (-u USER) and with its stdout somewhere else than the event stream. When the tracer stops
first (a signal, --duration, --count, a failure), the command and its descendants get the signal that
stopped the tracer (SIGTERM for a limit), then SIGKILL after KILL_GRACE_S: nothing started by the tracer
is left running, even a command that ignores SIGTERM.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CommandError

KILL_GRACE_S = 2.0  # between the forwarded signal and SIGKILL
PR_SET_PDEATHSIG = 1
RESTORED = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def lookup_user(spec: str) -> User:
    """-u USER: a user name or a numeric uid, as in /etc/passwd (or NSS)."""
    try:
        entry = pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
    except (KeyError, OverflowError):
        raise CommandError(f"-u {spec}: no such user", 2) from None
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (with the pid, it names one process: pids are reused); None once the
    process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def descendants(pid: int) -> dict[int, str | None]:
    """pid -> start time of every live descendant of pid (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: dict[int, str | None] = {}
    todo = list(children.get(pid, ()))
    while todo:
        p = todo.pop()
        if p not in out:
            out[p] = _start_time(p)
            todo.extend(children.get(p, ()))
    return out


class Command:
    """One `-- CMD ARGS` run. `stdout`: an fd the command's stdout is redirected to (None: inherited)."""

    def __init__(self, argv: Sequence[str], *, user: str | None = None, stdout: int | None = None) -> None:
        if not argv:
            raise CommandError("no command given", 2)
        self.argv = list(argv)
        self.user = lookup_user(user) if user is not None else None
        self.stdout = stdout
        self.pid: int | None = None  # until reaped
        self.exit_code: int | None = None  # 128 + N when killed by signal N, as shells report it
        self.ending: tuple[int, float] | None = None  # (signal sent, SIGKILL deadline) once asked to end
        self._family: dict[int, str | None] = {}  # descendants signalled, with their start times

    def spawn(self, admit: Callable[[int], None]) -> int:
        """Fork the command; call admit(pid) (add it to the kernel's filters) before it may exec.
        (subprocess.Popen cannot do this: it waits for the exec before returning the pid.)"""
        gate_r, gate_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child: only async-signal-safe work until exec, and never return
            try:
                os.close(gate_w)
                os.close(err_r)
                self._child_setup(parent)
                os.read(gate_r, 1)
                os.close(gate_r)
                os.execvp(self.argv[0], self.argv)
            except OSError as e:
                os.write(err_w, str(e.errno or 0).encode())
            finally:
                os._exit(127)
        os.close(gate_r)
        os.close(err_w)
        self.pid = pid
        try:
            admit(pid)
            os.write(gate_w, b"x")
        finally:
            os.close(gate_w)
        failed = os.read(err_r, 16)  # EOF once the exec succeeded (close-on-exec)
        os.close(err_r)
        if failed:
            os.waitpid(pid, 0)
            self.pid = None
            what = f" as {self.user.name}" if self.user else ""
            raise CommandError(f"cannot run {self.argv[0]!r}{what}: {os.strerror(int(failed))}")
        return pid

    def _child_setup(self, parent: int) -> None:
        for sig in RESTORED:
            signal.signal(sig, signal.SIG_DFL)
        if self.stdout is not None:
            os.dup2(self.stdout, 1)
        if self.user is not None:
            os.initgroups(self.user.name, self.user.gid)
            os.setgid(self.user.gid)
            os.setuid(self.user.uid)
        # If the tracer dies without ending us (SIGKILL, OOM), the kernel does. Set after setuid, which
        # clears it; if the tracer is already gone, its pid is not our parent any more.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(137)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def poll(self) -> bool:
        """Reap the command if it has exited; True once it has (now or before)."""
        if self.pid is None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._reaped(status)
        return True

    def _reaped(self, status: int) -> None:
        rc = os.waitstatus_to_exitcode(status)
        self.exit_code = 128 - rc if rc < 0 else rc
        self.pid = None

    def end(self, sig: int = signal.SIGTERM) -> None:
        """Send sig to the command and its descendants (once); SIGKILL follows at the deadline (kill_due)."""
        if self.pid is None or self.ending is not None:
            return
        self.ending = (sig, time.monotonic() + KILL_GRACE_S)
        self._family = {self.pid: _start_time(self.pid), **descendants(self.pid)}
        self._signal(self._family, sig)

    def kill_due(self) -> bool:
        """After end(): SIGKILL everything left once the grace period is over. True when it was sent."""
        if self.pid is None or self.ending is None or time.monotonic() < self.ending[1]:
            return False
        self._kill_all()
        return True

    def _kill_all(self) -> None:
        family = {**self._family, **descendants(self.pid)} if self.pid is not None else dict(self._family)
        if self.pid is not None:
            family[self.pid] = family.get(self.pid) or _start_time(self.pid)
        self._signal(family, signal.SIGKILL)

    @staticmethod
    def _alive(family: dict[int, str | None]) -> dict[int, str]:
        """The members of family still running (same pid, same start time: not a reused pid)."""
        return {p: s for p, s in family.items() if s is not None and _start_time(p) == s}

    @classmethod
    def _signal(cls, family: dict[int, str | None], sig: int) -> None:
        for pid in cls._alive(family):
            try:
                os.kill(pid, sig)
                if sig != signal.SIGKILL:  # a stopped process (Ctrl-Z, SIGSTOP) handles it only once continued
                    os.kill(pid, signal.SIGCONT)
            except (ProcessLookupError, PermissionError):
                pass

    def finish(self, sig: int = signal.SIGTERM) -> None:
        """End the command now if it still runs (sig, grace, SIGKILL) and reap it; then SIGKILL the
        descendants signalled by end() that are still alive once the grace period is over. Blocks at
        most KILL_GRACE_S; does nothing for a command that exited by itself."""
        if self.pid is not None:
            self.end(sig)
            while not self.poll():
                if self.kill_due():
                    pid = self.pid
                    if pid is not None:
                        _, status = os.waitpid(pid, 0)
                        self._reaped(status)
                    break
                time.sleep(0.02)
        # Descendants that outlive the command (a shell's children) get the rest of the grace period.
        while self._alive(self._family) and self.ending is not None and time.monotonic() < self.ending[1]:
            time.sleep(0.02)
        self._signal(self._family, signal.SIGKILL)
        self._family = {}
