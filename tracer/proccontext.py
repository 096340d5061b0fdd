"""Who made a call, for alerts a SOC can act on: wall-clock time, host, user, and the process (exe,
cmdline, parent, cgroup/container) as /proc shows it when the alert is raised.

The event itself carries what the kernel recorded at the call (pid, tid, uid, comm, CLOCK_MONOTONIC
time). Everything read from /proc is read after the call (the records are decoded up to ~100 ms later)
and is therefore **best effort**: the process may have exited, exec'd another program or (rarely) its
pid been reused. Two checks catch most of that and make the facts `unknown` instead of wrong: the
process must have started before the call (/proc/PID/stat start time), and the thread's name must still
be the one the kernel recorded (an exec renames it). What no check can catch: an exec of a program with
the same name in between. `exe` is the kernel's own link (/proc/PID/exe, the mm's exe_file).
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import time
from datetime import datetime, timezone
from functools import lru_cache

CMDLINE_MAX = 4096  # bytes of /proc/PID/cmdline kept (the kernel's own page-sized view is longer)
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")  # docker-, cri-containerd-, libpod-<id>
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
CACHE_NS = 100_000_000  # as old as the facts may be anyway: records are decoded up to ~100 ms late


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str | None:
    """The name of uid in this host's user database (None when it has none: a container's own user)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _read(path: str, limit: int = 4096) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in CLOCK_BOOTTIME ns) from /proc/PID/stat; None when it is gone or a zombie
    (exited: its exe and cmdline are no longer there)."""
    raw = _read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()  # after "pid (comm) ": comm may hold spaces and ')'
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[19]) * _TICK_NS


def container_id(cgroup: str | None) -> str | None:
    """The 64-hex container id that docker, containerd, CRI-O and podman put in their cgroup names."""
    if not cgroup:
        return None
    for part in reversed(cgroup.split("/")):
        m = _CONTAINER_ID.search(part)
        if m:
            return m.group(1)
    return None


def iso(wall_ns: int) -> str:
    """ISO-8601 UTC with microseconds: 2026-11-30T14:04:28.758098Z."""
    # exact, no float; timezone.utc, not datetime.UTC: Python 3.10 has no datetime.UTC
    t = datetime.fromtimestamp(wall_ns // 10**9, timezone.utc).replace(microsecond=wall_ns // 1000 % 10**6)
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


class ContextReader:
    """Alert context for events; clocks are pinned once, when the monitor starts."""

    def __init__(self) -> None:
        self.host = socket.gethostname()
        mono = time.monotonic_ns()
        self.mono_to_wall = time.time_ns() - mono
        self.mono_to_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - mono
        self.cache: dict[tuple, tuple[int, dict, int]] = {}  # (pid, tid, comm) -> (read at, facts, call ts)

    def wall_time(self, ev: dict) -> str:
        if isinstance(ev.get("time"), str):  # the decoder's own wall-clock time, when it gives one
            return ev["time"]
        return iso(ev["ts"] + self.mono_to_wall)

    def now(self) -> dict:
        """The context of an alert about no single call (lost records)."""
        return {"time": iso(time.time_ns()), "host": self.host}

    def process(self, ev: dict) -> dict:
        """The calling process as /proc shows it now, checked against the event (see the module doc).
        Kept for CACHE_NS per thread and name: a flood of calls reads /proc once, not once per call."""
        key = (ev["pid"], ev["tid"], ev["comm"])
        now = time.monotonic_ns()
        hit = self.cache.get(key)
        if hit is not None and now - hit[0] < CACHE_NS and ev["ts"] >= hit[2]:
            return hit[1]
        facts = self._process(ev)
        if len(self.cache) >= 4096:
            self.cache.clear()
        self.cache[key] = (now, facts, ev["ts"])
        return facts

    def _process(self, ev: dict) -> dict:
        pid, tid = ev["pid"], ev["tid"]
        out: dict = {"best_effort": True, "source": "/proc after the call"}
        st = _stat(pid)
        if st is None:
            return {**out, "unknown": "process exited"}
        ppid, started = st
        if started > ev["ts"] + self.mono_to_boot:
            return {**out, "unknown": "pid reused: this process started after the call"}
        comm = _read(f"/proc/{pid}/task/{tid}/comm")
        if comm is not None and comm.rstrip(b"\n").decode("utf-8", "surrogateescape") != ev["comm"]:
            return {**out, "unknown": "the thread was renamed or exec'd another program since the call"}
        raw = _read(f"/proc/{pid}/cmdline", CMDLINE_MAX + 1)
        args = None if raw is None else raw[:CMDLINE_MAX].split(b"\0")
        if args and raw is not None and raw[:CMDLINE_MAX].endswith(b"\0"):
            args.pop()  # the terminating NUL, not an empty last argument
        cgroup = _read(f"/proc/{pid}/cgroup")
        cg = None
        if cgroup:  # cgroup v2: "0::/path"; v1 lines come first on hybrid systems
            lines = cgroup.decode("utf-8", "surrogateescape").splitlines()
            cg = next((x[3:] for x in lines if x.startswith("0::")), lines[-1].split(":", 2)[-1] if lines else None)
        out.update({
            "exe": _link(f"/proc/{pid}/exe"),
            "cmdline": None if args is None else [a.decode("utf-8", "surrogateescape") for a in args],
            "cmdline_truncated": raw is not None and len(raw) > CMDLINE_MAX,
            "ppid": ppid,
            "parent_exe": _link(f"/proc/{ppid}/exe") if ppid > 0 else None,
            "cgroup": cg,
            "container_id": container_id(cg),
        })
        if comm is None:  # the thread itself is gone: its process is all there is to check against
            out["note"] = "the calling thread exited; facts are its process's"
        return out

    def __call__(self, ev: dict, process: dict | None = None) -> dict:
        return {"time": self.wall_time(ev), "host": self.host, "uid": ev["uid"], "user": user_name(ev["uid"]),
                "process": process if process is not None else self.process(ev)}
