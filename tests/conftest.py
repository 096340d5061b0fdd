"""Shared fixtures: C workloads compiled once per session, and the requirements of live BPF tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CI = os.environ.get("CI") == "true"
WORKLOADS = Path(__file__).parent / "workloads"
CFLAGS = ("-O0", "-g", "-Wall", "-Wextra", "-Werror", "-pthread")
# The program cache (tracer/bpfcache.py) of this test session, inherited by every tracer it starts: the
# suite's first BPF loads compile (cold path), later ones load the cache (warm path).
# The VM lane passes one cache for all its steps in a VM (TRACER_LANE_CACHE_DIR; doctor and demo filled it), so
# that the compiles software emulation makes slow happen once per kernel, not once per parallel tracer.
LANE_CACHE = os.environ.get("TRACER_LANE_CACHE_DIR")
CACHE_DIR = LANE_CACHE or tempfile.mkdtemp(prefix="tracer-cache-")
os.environ["TRACER_CACHE_DIR"] = CACHE_DIR  # (TRACER_NO_CACHE=1 makes every load in the suite cold)


# Test files whose results depend on the kernel: the VM lane (tests/vm/lane.py) runs exactly these (pytest -m
# kernel) on each kernel it boots; everything else runs on the host only. Add a file here when its tests
# load BPF programs or probe kernel features.
KERNEL_FILES = ("test_trace_live.py", "test_sleepable.py", "test_caps.py", "test_user_events_live.py",
                "test_uprobes.py", "test_monitor_live.py", "test_kenv.py", "test_truth_live.py",
                "test_record_live.py", "test_attach_raw.py", "test_command_live.py", "test_console_live.py",
                "test_symbols_live.py", "test_ringbuf.py")
# Set by the VM lane: the features the booted kernel is known to have (e.g. "user_events,fentry.s"). A test
# that needs one of them fails there when it is missing, instead of skipping.
EXPECTED = frozenset(filter(None, os.environ.get("TRACER_EXPECT_FEATURES", "").split(",")))
# Set by the VM lane under software emulation, where bcc compiles run 5-10 times slower.
TIMEOUT_SCALE = max(1.0, float(os.environ.get("TRACER_TIMEOUT_SCALE") or 1))


def scaled(seconds: float) -> float:
    """A timeout that covers BPF compiles: longer where the lane says the machine is slow."""
    return seconds * TIMEOUT_SCALE


def wait_for(pred: Callable[[], object], timeout: float = 10) -> None:
    """Poll pred until it is true; fail after `timeout` seconds (scaled)."""
    end = time.monotonic() + scaled(timeout)
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def blocked_in(pid: int, nr: int) -> bool:
    """Task `pid` sleeps inside syscall `nr` (/proc/PID/syscall starts with the number only while blocked)."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[:1] == [str(nr)]
    except OSError:
        return False


def workload_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A workload's environment: its directory, and how long it lingers after its calls (scaled), since
    addresses and dfds are explained from /proc/PID when the events are decoded, not at the call."""
    return {"WORKLOAD_DIR": str(tmp), "LINGER_MS": str(round(scaled(1000))), **extra}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in KERNEL_FILES:
            item.add_marker(pytest.mark.kernel)


def need_feature(feature: str, present: bool, why: str) -> None:
    """A kernel feature not every kernel has (user_events, fentry.s, ...): the test runs where it is present;
    where the VM lane expects it (TRACER_EXPECT_FEATURES), its absence is a failure; elsewhere a skip that
    says where the test runs."""
    check_expected(feature, present, why)
    if not present:
        pytest.skip(f"{feature} is not available on {os.uname().release} ({why}): runs in the VM lane")


def check_expected(feature: str, present: bool, why: str) -> None:
    """For tests that check both sides (what tracer reports where a feature is present, and where it is
    refused): fail only when the VM lane expects the feature on this kernel and it is missing."""
    if not present and feature in EXPECTED:
        pytest.fail(f"{feature} is missing on {os.uname().release}, whose VM lane expects it: {why}")


def workload_reports(stderr: str) -> list[dict]:
    """The workloads' JSON reports. A command's stdout goes to the tracer's stderr while events use stdout
    (tracer/streams.py), so they are found among the tracer's own messages there."""
    import json

    return [json.loads(line) for line in stderr.splitlines() if line.startswith('{"kind":"workload"')]


def sb_dev(path: str) -> str:
    """MAJ:MIN of the superblock holding path, from /proc/self/mountinfo (the mount with the longest mount
    point that contains it). stat's st_dev is not always the superblock's: overlayfs and btrfs report
    another device for files."""
    best, dev = "", ""
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        mnt = f[4].encode().decode("unicode_escape")
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, dev = mnt, f[2]
    return dev


def require(present: bool, what: str) -> None:
    """A capability these tests need: a failure when CI=true, else a skip with the reason."""
    if present:
        return
    if CI:
        pytest.fail(f"{what} (CI=true: missing capabilities are failures)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def build_c() -> Iterator[Callable[..., Path]]:
    """build_c(name, *extra_flags) -> Path: tests/workloads/<name>.c compiled with gcc, once per session.

    Binaries go to a world-readable temporary directory (not pytest's 0700 tmp dirs) so that workloads
    can also run as an unprivileged user.
    """
    require(shutil.which("gcc") is not None, "gcc is needed to build the C workloads")
    out = Path(tempfile.mkdtemp(prefix="tracer-workloads-"))
    out.chmod(0o755)
    cache: dict[tuple[str, tuple[str, ...]], Path] = {}

    def build(name: str, *extra_flags: str) -> Path:
        key = (name, extra_flags)
        if key not in cache:
            exe = out / (name if not extra_flags else f"{name}-{len(cache)}")
            proc = subprocess.run(["gcc", *CFLAGS, "-o", str(exe), str(WORKLOADS / f"{name}.c"), *extra_flags],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.fail(f"gcc failed for {name}.c:\n{proc.stderr}")
            cache[key] = exe
        return cache[key]

    yield build
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def bpf_env() -> None:
    """Root (or CAP_BPF + CAP_PERFMON), tracefs, bcc, kernel headers and syscall tracepoints."""
    from tracer import caps

    for check in (caps.check_privileges(), caps.check_tracefs(mount=True), caps.check_bcc(), caps.check_headers(),
                  caps.check_syscall_tracepoints()):
        require(check.ok is True, f"{check.title}: {check.verdict} ({check.detail})")


def pytest_sessionfinish() -> None:
    if not LANE_CACHE:
        shutil.rmtree(CACHE_DIR, ignore_errors=True)
