"""Where the kernel's interfaces live on this machine: tracefs, kernel headers for bcc, bpf/ sources.

One home for these look-ups so doctor, the loader and the tests agree on them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

TRACEFS_ENV = "TRACER_TRACEFS"
TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# Where ./bootstrap merges the distribution's generic headers when the running kernel has no package.
MERGED_HEADERS = Path("/var/lib/tracer/kernel-headers/current")
BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"


class EnvironmentProblem(RuntimeError):
    """Something about the machine stops us; the message says what and how to fix it."""


def tracefs_root(mount: bool = True) -> Path:
    """The tracefs root: $TRACER_TRACEFS if set (a fake root in tests), else the mounted one.

    Mounts tracefs on /sys/kernel/tracing when nothing is mounted and `mount` is true.
    """
    env = os.environ.get(TRACEFS_ENV)
    if env:
        root = Path(env)
        if not (root / "events").is_dir():
            raise EnvironmentProblem(f"tracefs root {env} (--tracefs or {TRACEFS_ENV}) has no events/ directory; "
                                     "point it at a tracefs root such as /sys/kernel/tracing")
        return root
    for root in TRACEFS_CANDIDATES:
        try:
            if (root / "events").is_dir():
                return root
        except PermissionError as e:  # tracefs is mode 0700
            raise EnvironmentProblem(f"no access to {root}: run as root (or with CAP_BPF and CAP_PERFMON)") from e
    if mount:
        target = TRACEFS_CANDIDATES[0]
        proc = subprocess.run(["mount", "-t", "tracefs", "nodev", str(target)], capture_output=True, text=True)
        if proc.returncode == 0 and (target / "events").is_dir():
            return target
    raise EnvironmentProblem(
        "tracefs is not mounted; run: mount -t tracefs nodev /sys/kernel/tracing (as root)"
    )


@dataclass(frozen=True)
class Headers:
    path: Path | None
    how: str  # "BCC_KERNEL_SOURCE (environment)", "running kernel's", "generic merged", "none"


def kernel_headers() -> Headers:
    """The kernel header tree bcc will compile against, and how it was chosen."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return Headers(Path(env), "BCC_KERNEL_SOURCE from the environment")
    own = Path("/lib/modules") / os.uname().release / "build"
    if (own / "include").is_dir():
        return Headers(own, "the running kernel's own headers")
    if (MERGED_HEADERS / "include").is_dir():
        return Headers(MERGED_HEADERS.resolve(), "distribution's generic headers merged by ./bootstrap")
    return Headers(None, "none found")


def prepare_bcc() -> Headers:
    """Point bcc at usable headers (it reads BCC_KERNEL_SOURCE at each compile) before any BPF()."""
    headers = kernel_headers()
    if headers.path is None:
        raise EnvironmentProblem(
            "no kernel headers for bcc; run ./bootstrap, or set BCC_KERNEL_SOURCE to a kernel header tree"
        )
    os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    return headers


def bpf_source(name: str) -> Path:
    path = BPF_DIR / name
    if not path.is_file():
        raise EnvironmentProblem(f"BPF source {path} is missing; reinstall tracer from its source tree")
    return path
