"""Shared fixtures: C workloads compiled once per session, and the requirements of live BPF tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CI = os.environ.get("CI") == "true"
WORKLOADS = Path(__file__).parent / "workloads"
CFLAGS = ("-O0", "-g", "-Wall", "-Wextra", "-Werror", "-pthread")
# The program cache (tracer/bpfcache.py) of this test session, inherited by every tracer it starts: the
# suite's first BPF loads compile (cold path), later ones load the cache (warm path).
CACHE_DIR = tempfile.mkdtemp(prefix="tracer-cache-")
os.environ["TRACER_CACHE_DIR"] = CACHE_DIR  # (TRACER_NO_CACHE=1 makes every load in the suite cold)


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
    shutil.rmtree(CACHE_DIR, ignore_errors=True)
