"""What bench/run.py measures with, kept apart from what it measures: CPU time of a process (all its
threads), the BPF programs a process holds and their bpf_stats, and a traced process run as a user runs
it (a consumer whose CPU time is taken from the moment it is attached to the moment it is idle again).

CPU time, not wall time: eight people may share this machine's two cores, and wall time then measures
them. A figure is given with the load average it was taken at.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tracer import bpfsys

BPF_PROG_GET_FD_BY_ID = 13
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
# struct bpf_prog_info: name[16] at 64, run_time_ns and run_cnt (u64) at 192 and 200 (uapi/linux/bpf.h).
_INFO_SIZE, _NAME, _RUN = 232, 64, 192


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_ns(pid: int) -> int:
    """CPU time used so far by every thread of `pid` (schedstat: nanoseconds on a CPU), 0 once it is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def enable_bpf_stats() -> int | None:
    """BPF_ENABLE_STATS: run_time_ns/run_cnt are kept while the returned fd is open (None: refused)."""
    ret, _err = bpfsys._sys_bpf(BPF_ENABLE_STATS, bpfsys._attr(struct.pack("<I", BPF_STATS_RUN_TIME), 4))
    return ret if ret >= 0 else None


def prog_ids(pid: int) -> list[int]:
    """Ids of the BPF programs whose fds `pid` holds (from /proc/PID/fdinfo)."""
    ids = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return []
    for fd in fds:
        try:
            for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except (OSError, ValueError):
            pass
    return sorted(ids)


def prog_stats(ids: list[int]) -> dict[int, tuple[str, int, int]]:
    """id -> (name, run_time_ns, run_cnt) of each program still loaded."""
    out = {}
    for pid in ids:
        fd, _err = bpfsys._sys_bpf(BPF_PROG_GET_FD_BY_ID, bpfsys._attr(struct.pack("<I", pid), 12))
        if fd < 0:
            continue
        try:
            info = bpfsys.obj_get_info_into(fd, ctypes.create_string_buffer(_INFO_SIZE))
        finally:
            os.close(fd)
        name = info[_NAME:_NAME + 16].split(b"\0", 1)[0].decode()
        run_ns, runs = struct.unpack_from("<QQ", info, _RUN)
        out[pid] = (name, run_ns, runs)
    return out


def per_run_ns(before: dict, after: dict) -> float:
    """BPF ns per program run (all programs together), from two prog_stats snapshots."""
    ns = sum(v[1] - before.get(k, (0, 0, 0))[1] for k, v in after.items())
    runs = sum(v[2] - before.get(k, (0, 0, 0))[2] for k, v in after.items())
    return ns / runs if runs else 0.0


def per_call_ns(before: dict, after: dict, calls: int) -> dict[str, float]:
    """BPF time per traced call by program name (enter/exit), from two prog_stats snapshots. Divided by
    the traced calls, not by run_cnt: a program that runs for every task and filters (bpftrace's comm
    predicate) costs its filtering too."""
    out: dict[str, float] = {}
    for pid, (name, ns, _runs) in after.items():
        ns0 = before.get(pid, (name, 0, 0))[1]
        side = "enter" if "enter" in name else "exit" if "exit" in name else None
        if side is None:  # tracer's fork follower (sched_process_fork): not run by openat2 calls
            continue
        out[side] = out.get(side, 0.0) + (ns - ns0) / max(calls, 1)
    return out


class Traced:
    """A consumer process (tracer or bpftrace) writing to a file, started and then fed by the bench."""

    def __init__(self, cmd: list[str], out: Path, env: dict | None = None) -> None:
        self.out = out
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=open(out, "wb"), stderr=subprocess.PIPE, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_attached(self, poke: Callable[[], None], timeout: float = 60) -> float:
        """Seconds from start until output appears while `poke()` makes traced calls (start to first event)."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')[-400:]}")
            if self.out.stat().st_size > 0:
                return time.perf_counter() - self.t0
            poke()
            time.sleep(0.01)
        raise RuntimeError("no output")

    def settle(self, quiet_ns: int = 5_000_000, step: float = 0.25, timeout: float = 120) -> int:
        """Wait until the consumer is idle (under quiet_ns CPU in `step` s: its rings are drained); its CPU ns."""
        end = time.monotonic() + timeout
        last = cpu_ns(self.pid)
        while time.monotonic() < end:
            time.sleep(step)
            now = cpu_ns(self.pid)
            if now - last < quiet_ns:
                return now
            last = now
        return last

    def stop(self, timeout: float = 30) -> float:
        """SIGINT; seconds until the process has exited (killed after `timeout`)."""
        t = time.perf_counter()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - t

    def lines(self, needle: bytes = b"") -> int:
        with open(self.out, "rb") as f:
            return sum(1 for line in f if needle in line)
