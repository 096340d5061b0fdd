"""Kernel capability probes: what this machine offers tracer, each as a Check that doctor can show.

Probes look, they do not change the machine (tracefs is mounted only when asked); the sleepable probes
load and attach tiny programs, and their results are cached per boot (see tracer.sleepable).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tracer import btf, kenv, kstructs, pyenv, sleepable
from tracer.errors import EnvironmentProblem, NoAccess

CAP_PERFMON, CAP_BPF = 38, 39
LOCKDOWN = Path("/sys/kernel/security/lockdown")
TRACEFS_FIX = "mount -t tracefs nodev /sys/kernel/tracing"
SECURITYFS_FIX = "mount -t securityfs none /sys/kernel/security"
# What syscall tracing cannot do without; everything else is reported, not required.
REQUIRED = ("privileges", "tracefs", "headers", "syscall_tracepoints", "bcc", "seccomp")
SLEEPABLE_FIX = {
    "tp.s": "needs a newer kernel whose verifier accepts sleepable programs on syscall tracepoints",
    "fentry.s": "needs a kernel that loads fentry programs and has CONFIG_FUNCTION_ERROR_INJECTION=y",
    "uprobe.s": "needs Linux 6.x with CONFIG_UPROBE_EVENTS",
}


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    ok: bool | None  # None: not applicable or could not be determined
    verdict: str
    detail: str
    fix: str | None = None


def _cap_eff() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def is_privileged() -> bool:
    """Root, or CAP_BPF and CAP_PERFMON effective (enough for tracing programs since 5.8)."""
    caps = _cap_eff()
    return os.geteuid() == 0 or bool(caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1)


def check_privileges() -> Check:
    title = "privileges"
    if os.geteuid() == 0:
        return Check("privileges", title, True, "ok", "running as root (euid 0)")
    caps = _cap_eff()
    have = [name for name, bit in (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON)) if caps >> bit & 1]
    if len(have) == 2:
        return Check("privileges", title, True, "ok", "CAP_BPF and CAP_PERFMON are effective")
    have_text = ", ".join(have) or "neither CAP_BPF nor CAP_PERFMON"
    return Check("privileges", title, False, "missing", f"euid {os.geteuid()}, effective: {have_text}",
                 kenv.NO_ACCESS_FIX)


def _tracefs() -> Path | None:
    try:
        return kenv.tracefs_root(mount=False)
    except (EnvironmentProblem, OSError):
        return None


def check_tracefs(mount: bool = False) -> Check:
    try:
        root = kenv.tracefs_root(mount=mount)
    except (PermissionError, NoAccess) as e:
        # tracefs is mode 0700: an unprivileged user cannot even tell whether it is mounted.
        where = e.filename if isinstance(e, PermissionError) else kenv.TRACEFS_CANDIDATES[0]
        return Check("tracefs", "tracefs", False, "no access", f"{where}: permission denied (euid {os.geteuid()})",
                     kenv.NO_ACCESS_FIX)
    except EnvironmentProblem as e:
        fake = os.environ.get(kenv.TRACEFS_ENV)
        return Check("tracefs", "tracefs", False, "missing", str(e),
                     f"fix or unset {kenv.TRACEFS_ENV}" if fake else TRACEFS_FIX)
    how = f" (from ${kenv.TRACEFS_ENV})" if os.environ.get(kenv.TRACEFS_ENV) else ""
    return Check("tracefs", "tracefs", True, "ok", f"mounted at {root}{how}")


def check_btf() -> Check:
    if not btf.VMLINUX.exists():
        return Check("btf", "kernel BTF", False, "missing", f"{btf.VMLINUX} does not exist",
                     "needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    try:
        n = len(btf.vmlinux())
    except (OSError, btf.BtfError) as e:
        return Check("btf", "kernel BTF", False, "unreadable", f"{btf.VMLINUX}: {e}")
    return Check("btf", "kernel BTF", True, "ok", f"{btf.VMLINUX}: {n} types")


def check_opened_file() -> Check:
    """Can the programs read the file an open call installed (bpf/kfile.h)? Needs every struct offset of
    the walk in the running kernel's BTF."""
    title = "kernel's opened file"
    off = kstructs.offsets()
    if not off.ok:
        return Check("opened_file", title, False, "unavailable", f"{off.problem}; events say opened: unavailable",
                     "needs a kernel with BTF (CONFIG_DEBUG_INFO_BTF=y)")
    shown = ", ".join(f"{s}.{m}={off.values[k]}" for k, (s, m) in kstructs.OFFSETS.items())
    return Check("opened_file", title, True, "ok",
                 f"{len(off.values)} struct offsets from {btf.VMLINUX}: {shown}")


def check_bcc() -> Check:
    try:
        bcc = pyenv.require("bcc")
    except EnvironmentProblem as e:
        return Check("bcc", "bcc", False, "missing", f"import bcc failed ({e.__cause__})", str(e))
    version = getattr(bcc, "__version__", "?")
    return Check("bcc", "bcc", True, "ok", f"bcc {version} from {Path(str(bcc.__file__)).parent}")


def check_seccomp() -> Check:
    """libseccomp's Python bindings give tracer the syscall numbers (tracer/syscalls.py)."""
    try:
        seccomp = pyenv.require("seccomp")
    except EnvironmentProblem as e:
        return Check("seccomp", "python3-seccomp", False, "missing", f"import seccomp failed ({e.__cause__})",
                     str(e))
    return Check("seccomp", "python3-seccomp", True, "ok", f"from {seccomp.__file__}")


def check_line_encoder() -> Check:
    """Which line encoder `trace --json` uses: the C module (tracer/_recline.c) or Python's (~3x the CPU)."""
    from tracer import recline

    ok, why = recline.status()
    return Check("line_encoder", "--json line encoder", ok, "C" if ok else "Python", why,
                 None if ok else "./bootstrap (installs gcc and python3-dev, then builds it), or pip install -e .")


HEADERS_FIX = ("run ./bootstrap (it installs the distribution's headers package for this kernel, or links "
               "generic headers), or set BCC_KERNEL_SOURCE to the running kernel's header tree")
GENERIC_NOTE = ("generic headers for another kernel: syscall tracepoints work, anything that walks kernel structs "
                "uses BTF")


def check_headers(prove: bool = True) -> Check:
    """Which header tree bcc will use, and (with `prove`) whether bcc really compiles against it: the
    verdict is the tree's kind (own, kheaders, generic, environment), or missing/broken."""
    title = "kernel headers"
    headers = kenv.kernel_headers()
    if headers.path is None:
        return Check("headers", title, False, "missing", f"no header tree ({headers.how})", HEADERS_FIX)
    where = f"{headers.path}: {headers.how}"
    if prove and check_bcc().ok is not True:  # no compile can prove anything (was: bcc's import traceback here)
        return Check("headers", title, None, "unproven", f"{where}; not compiled: bcc cannot be imported", "see bcc")
    if prove:
        error = kenv.compile_test(headers)
        if error is not None:
            fix = ("unset BCC_KERNEL_SOURCE or point it at a complete header tree" if headers.kind == "environment"
                   else HEADERS_FIX)
            return Check("headers", title, False, "broken", f"bcc cannot compile against {where}: {error}", fix)
        where += "; a test program compiled"
    if headers.kind == "generic":
        return Check("headers", title, True, "generic", f"{GENERIC_NOTE} ({where})",
                     f"apt-get install linux-headers-{os.uname().release}, if your distribution has it")
    return Check("headers", title, True, headers.kind, where)


def check_syscall_tracepoints() -> Check:
    title = "syscall tracepoints"
    root = _tracefs()
    if root is None:
        return Check("syscall_tracepoints", title, None, "unknown", "tracefs is not available", "see tracefs")
    event = root / "events" / "syscalls" / "sys_enter_openat2"
    if event.is_dir():
        return Check("syscall_tracepoints", title, True, "ok", f"{event} present")
    if not event.parent.is_dir():
        return Check("syscall_tracepoints", title, False, "missing", f"{event.parent} does not exist",
                     "needs a kernel built with CONFIG_FTRACE_SYSCALLS=y")
    return Check("syscall_tracepoints", title, False, "missing",
                 f"{event} does not exist (kernel before 5.6?)", "needs Linux 5.6+ for openat2")


def _release() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def check_user_events() -> Check:
    title = "user_events"
    root = _tracefs()
    if root is None:
        return Check("user_events", title, None, "unknown", "tracefs is not available", "see tracefs")
    data = root / "user_events_data"
    if data.exists():
        return Check("user_events", title, True, "ok", f"{data} present")
    config = kenv.kernel_config("CONFIG_USER_EVENTS")
    if _release() < (6, 4):
        reason = f"needs Linux 6.4+; this kernel is {os.uname().release}"
    elif config in ("y", "m"):
        reason = f"CONFIG_USER_EVENTS={config} but {data} is missing"
    else:
        reason = "kernel built without CONFIG_USER_EVENTS (Linux 6.4+)"
    return Check("user_events", title, False, "absent", reason,
                 "needs a kernel built with CONFIG_USER_EVENTS=y")


def _securityfs_mounted() -> bool:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return any(line.split()[1:3] == ["/sys/kernel/security", "securityfs"] for line in mounts)


def check_lockdown() -> Check:
    title = "kernel lockdown"
    if LOCKDOWN.exists():
        m = re.search(r"\[(\w+)\]", LOCKDOWN.read_text())
        mode = m[1] if m else "unknown"
        if mode == "confidentiality":
            return Check("lockdown", title, False, mode,
                         "confidentiality mode blocks tracefs, perf and bpf_probe_read_kernel",
                         "boot with lockdown=integrity or lockdown=none (it cannot be lowered at runtime)")
        what = {"integrity": "bpf_probe_write_user is blocked; tracing is unaffected",
                "none": "not locked down"}
        return Check("lockdown", title, mode in what, mode, what.get(mode, LOCKDOWN.read_text().strip()))
    if _securityfs_mounted():
        return Check("lockdown", title, True, "none", "no lockdown LSM in this kernel")
    return Check("lockdown", title, None, "unknown", "securityfs is not mounted, so the mode cannot be read",
                 SECURITYFS_FIX)


def sleepable_kinds(refresh: bool = False) -> dict[str, dict]:
    """{"tp.s": {"ok": False, "errno": 22, "reason": "...", "log_tail": [...]}, ...}, cached per boot."""
    return sleepable.sleepable_kinds(refresh=refresh, privileged=is_privileged())


def sleepable_checks(kinds: dict[str, dict]) -> list[Check]:
    """One Check per sleepable kind, from sleepable_kinds()' results."""
    checks = []
    for kind, res in kinds.items():
        verdict = {True: "accepted", False: "refused", None: "not probed"}[res["ok"]]
        checks.append(Check(f"sleepable.{kind}", f"sleepable {kind}", res["ok"], verdict, res["reason"],
                            None if res["ok"] else SLEEPABLE_FIX.get(kind)))
    return checks


def base_checks(mount: bool = False) -> list[Check]:
    """Every check but the sleepable probes; tracefs comes first so `mount` helps the checks that read it."""
    return [
        check_privileges(), check_tracefs(mount), check_bcc(), check_seccomp(), check_headers(),
        check_syscall_tracepoints(), check_btf(), check_opened_file(), check_lockdown(), check_user_events(),
        check_line_encoder(),
    ]


def all_checks(refresh: bool = False, mount: bool = False) -> list[Check]:
    return base_checks(mount) + sleepable_checks(sleepable_kinds(refresh))
