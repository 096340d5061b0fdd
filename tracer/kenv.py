"""Where the kernel's interfaces live on this machine: tracefs, kernel headers for bcc, bpf/ sources.

One home for these look-ups so doctor, the loader and the tests agree on them.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from .errors import EnvironmentProblem, NoAccess

TRACEFS_ENV = "TRACER_TRACEFS"
TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def shipped_dir(name: str) -> Path:
    """bpf/ or examples/: inside the installed package (a wheel: setup.py copies them there), else beside
    the package (a source checkout, an editable install)."""
    package = Path(__file__).resolve().parent
    inside = package / name
    return inside if inside.is_dir() else package.parent / name


BPF_DIR = shipped_dir("bpf")


NO_ACCESS_FIX = "run tracer as root (sudo tracer ...; ./bootstrap links /usr/local/bin/tracer)"


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
        except PermissionError as e:  # tracefs is mode 0700 root: CAP_BPF/CAP_PERFMON alone do not open it
            raise NoAccess(f"no access to {root} (permission denied, euid {os.geteuid()}): {NO_ACCESS_FIX}") from e
    if mount:
        target = TRACEFS_CANDIDATES[0]
        proc = subprocess.run(["mount", "-t", "tracefs", "nodev", str(target)], capture_output=True, text=True)
        if proc.returncode == 0 and (target / "events").is_dir():
            return target
    raise EnvironmentProblem(
        "tracefs is not mounted; run: mount -t tracefs nodev /sys/kernel/tracing (as root)"
    )


# Kernel headers for bcc, in the order kernel_headers() tries them (see there).
MODULES = Path("/lib/modules")
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")
KHEADERS_CACHE_ENV = "TRACER_KHEADERS_DIR"
KHEADERS_CACHE = Path("/var/cache/tracer/kheaders")
# ./bootstrap links <release> here to the distribution's generic headers when nothing better exists: one
# link per kernel release, so booting another kernel never changes what this one uses.
GENERIC_HEADERS = Path("/var/lib/tracer/kernel-headers/for")
# Set next to BCC_KERNEL_SOURCE when prepare_bcc() chose it, so child processes still tell our choice
# from a user's setting.
CHOSEN_ENV = "TRACER_BCC_KERNEL_SOURCE"
KCONFIG = Path("include/linux/kconfig.h")  # what bcc checks before using a tree


@dataclass(frozen=True)
class Headers:
    """The kernel header tree bcc compiles against.

    kind: "environment" (BCC_KERNEL_SOURCE set by the user), "own" (the running kernel's headers as the
    distribution installed them), "kheaders" (the kernel's /sys/kernel/kheaders.tar.xz, extracted),
    "generic" (another kernel's headers: tracepoint programs compile, kernel struct layouts do not match),
    "none". bcc_env: the BCC_KERNEL_SOURCE to set, or None to leave it unset so bcc finds the running
    kernel's split Debian/Ubuntu tree (build/ + source/) itself: bcc follows source/ only then.
    """
    path: Path | None
    kind: str
    how: str
    bcc_env: str | None = None
    source: Path | None = None  # the split layout's source/ tree (most of the headers), else None

    @property
    def matches_kernel(self) -> bool:
        return self.kind in ("own", "kheaders")

    @property
    def roots(self) -> list[Path]:
        """The trees to look for a header in, as bcc's include path orders them (build/ first)."""
        return [p for p in (self.path, self.source) if p is not None]


def own_headers(release: str, modules: Path = MODULES) -> Path | None:
    """/lib/modules/<release>/build when bcc, left to itself, compiles against the running kernel's headers
    there: Debian/Ubuntu split them between build/ (generated) and source/, Fedora has one tree in build/."""
    kdir = modules / release
    build, source = kdir / "build", kdir / "source"
    if build.is_dir() and source.is_dir():  # bcc's own rule: then source/ holds kconfig.h
        return build if (source / KCONFIG).is_file() else None
    return build if (build / KCONFIG).is_file() else None


def kheaders_cache() -> Path:
    return Path(os.environ.get(KHEADERS_CACHE_ENV) or KHEADERS_CACHE)


def kheaders_key(release: str, version: str) -> str:
    """One cache entry per kernel build: a rebuilt kernel of the same release has another version string."""
    return f"{release}-{hashlib.sha256(version.encode()).hexdigest()[:12]}"


def _load_kheaders_module() -> None:
    # CONFIG_IKHEADERS=m (Debian, Ubuntu): the archive appears when the module is loaded.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["modprobe", "-q", "kheaders"], capture_output=True, timeout=30)


def extract_kheaders(archive: Path, dest: Path) -> Path:
    """Extract the kernel's header archive into dest, once: a complete tree is renamed into place."""
    if (dest / KCONFIG).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        proc = subprocess.run(["tar", "-xJf", str(archive), "-C", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EnvironmentProblem(f"extracting {archive} failed: {proc.stderr.strip()[-300:]}")
        tmp.chmod(0o755)
        try:
            tmp.rename(dest)
        except OSError:  # another process got there first
            if not (dest / KCONFIG).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _kheaders(release: str, version: str, archive: Path, extract: bool) -> Headers | None:
    if not archive.exists() and archive == KHEADERS and extract:
        _load_kheaders_module()
    if not archive.exists():
        return None
    dest = kheaders_cache() / kheaders_key(release, version)
    how = f"the running kernel's own headers from {archive}, extracted to {dest}"
    if not (dest / KCONFIG).is_file():
        if not extract:
            return Headers(dest, "kheaders", f"{how} (not yet extracted)", str(dest))
        try:
            extract_kheaders(archive, dest)
        except (OSError, EnvironmentProblem) as e:
            return Headers(None, "none", f"{archive} exists but could not be extracted: {e}")
    return Headers(dest, "kheaders", how, str(dest))


def kernel_headers(release: str | None = None, *, version: str | None = None, extract: bool = True,
                   modules: Path = MODULES, kheaders: Path = KHEADERS, generic: Path = GENERIC_HEADERS) -> Headers:
    """The kernel header tree bcc should compile against, best first.

    1. BCC_KERNEL_SOURCE set by the user (not by an earlier prepare_bcc()).
    2. The running kernel's own headers as its distribution installed them (own_headers()).
    3. /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS), extracted once per kernel build (unless not `extract`).
    4. The distribution's generic headers that ./bootstrap linked for this release: they compile tracepoint
       programs (argument layouts come from tracefs) but describe another kernel, so nothing may walk kernel
       structs with them (tracer takes struct offsets from BTF).
    A distribution's matching headers package is ./bootstrap's job: once installed it is case 2.
    """
    release = release or os.uname().release
    version = version or os.uname().version
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and env != os.environ.get(CHOSEN_ENV):
        return Headers(Path(env), "environment", "BCC_KERNEL_SOURCE from the environment", env)
    own = own_headers(release, modules)
    if own is not None:
        split = (modules / release / "source").is_dir()
        layout = "build/ + source/, found by bcc itself" if split else "one tree"
        return Headers(own, "own", f"the running kernel's own headers ({layout})",
                       source=modules / release / "source" if split else None)
    found = _kheaders(release, version, kheaders, extract)
    if found is not None and found.kind == "kheaders":
        return found
    link = generic / release
    if (link / KCONFIG).is_file():
        tree = link.resolve()
        return Headers(tree, "generic", f"generic headers for another kernel ({tree.name}), linked by ./bootstrap",
                       str(tree))
    return found or Headers(None, "none", "none found")


def prepare_bcc() -> Headers:
    """Point bcc at usable headers (it reads BCC_KERNEL_SOURCE at each compile) before any BPF()."""
    headers = kernel_headers()
    if headers.path is None:
        raise EnvironmentProblem(f"no kernel headers for bcc ({headers.how}); run ./bootstrap, or set "
                                 "BCC_KERNEL_SOURCE to the running kernel's header tree")
    apply_headers(headers, os.environ)
    return headers


def apply_headers(headers: Headers, env: MutableMapping[str, str]) -> None:
    """Set (or clear) BCC_KERNEL_SOURCE in env for these headers."""
    if headers.kind == "environment":
        return
    if headers.bcc_env is None:
        env.pop("BCC_KERNEL_SOURCE", None)  # bcc finds the split tree only when this is unset
        env.pop(CHOSEN_ENV, None)
    else:
        env["BCC_KERNEL_SOURCE"] = env[CHOSEN_ENV] = headers.bcc_env


# Added to every bcc compile: x86 headers of 6.x kernels mark functions nocf_check, and bcc 0.26 (unlike
# newer bcc) does not pass -fcf-protection, so clang warned on the terminal at every compile.
BCC_CFLAGS = ("-fcf-protection",) if os.uname().machine in ("x86_64", "i686") else ()
COMPILE_TEST = "headers_probe.bpf.c"
_COMPILE = "import sys\nfrom bcc import BPF\nBPF(src_file=sys.argv[1].encode(), cflags=sys.argv[2:]).cleanup()\n"


def compile_test(headers: Headers, timeout: float = 600) -> str | None:
    """None when bcc compiles bpf/headers_probe.bpf.c against these headers, else the compiler's first error.

    In a child process: bcc prints its diagnostics on the C level stderr, and a failed compile must not
    leave this process's environment changed.
    """
    env = dict(os.environ)
    apply_headers(headers, env)
    try:
        proc = subprocess.run([sys.executable, "-c", _COMPILE, str(bpf_source(COMPILE_TEST)), *BCC_CFLAGS],
                              env=env,
                              capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"the compile test did not finish within {timeout:.0f}s"
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or [f"exit status {proc.returncode}"])[0][:300]


def bpf_source(name: str) -> Path:
    path = BPF_DIR / name
    if not path.is_file():
        raise EnvironmentProblem(f"BPF source {path} is missing; reinstall tracer from its source tree")
    return path


@functools.cache
def _kernel_config_text() -> str | None:
    with contextlib.suppress(OSError), gzip.open("/proc/config.gz", "rt") as f:
        return f.read()
    with contextlib.suppress(OSError):
        return Path(f"/boot/config-{os.uname().release}").read_text()
    return None


def kernel_config(option: str) -> str | None:
    """'y', 'm' or 'n' for a kernel config option (/proc/config.gz, else /boot/config-RELEASE), or None
    when no config is readable here."""
    text = _kernel_config_text()
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(option + "="):
            return line.split("=", 1)[1].strip('"')
    return "n"


if __name__ == "__main__":  # ./bootstrap: report (and extract, for kheaders) the tree tracer will use
    found = kernel_headers()
    print(f"bootstrap: kernel headers tracer uses: {found.kind}, {found.path} ({found.how})")
    sys.exit(0 if found.path else 1)
