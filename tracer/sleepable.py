"""Which sleepable BPF attach kinds this kernel accepts, found by loading (and attaching) a tiny program,
and from that the one decision of how pointer arguments are read (read_mode) for syscalls and uprobes.

Sleepable programs may fault user pages in (bpf_copy_from_user), which is why tracer wants one; where the
kernel allows them differs by version and config, so we ask the kernel rather than guess. Results are cached
per boot in /run so `tracer trace` can consult them without re-probing. The readers themselves are loaded by
tracer/bpfload.py and attached by tracer/attach.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from . import bpfsys, btf, kenv
from .bpfload import libbcc
from .errors import EnvironmentProblem, UsageError

CACHE_PATH = Path("/run/tracer/caps.json")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
FENTRY_TARGET = "__x64_sys_openat2"
TP_CATEGORY, TP_NAME = "syscalls", "sys_enter_openat2"
UPROBE_BINARY = "/bin/true"
KINDS = ("tp.s", "fentry.s", "uprobe.s")
CACHE_SCHEMA = 1

READ_MODES = ("auto", "sleepable", "nofault")  # --read-mode
# The sleepable kinds that can read each target's pointer arguments, in order of preference: tp.s reads at
# entry in one program (in place of the nofault one); fentry.s runs beside the nofault entry program.
READERS = {"syscalls": ("tp.s", "fentry.s"), "uprobes": ("uprobe.s",)}


@dataclass
class Probe:
    ok: bool | None  # None: not probed (no privileges)
    errno: int | None
    reason: str
    log_tail: list[str]


def _errname(err: int | None) -> str:
    return errno_mod.errorcode.get(err, str(err)) if err else "?"


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _refused(e: bpfsys.BpfError, why: str = "") -> Probe:
    said = f"verifier: {e.reason}" if e.reason else "empty verifier log (refused before the verifier ran)"
    reason = f"load refused with {_errname(e.errno)}; {said}"
    if why:
        reason += f". {why[:1].upper()}{why[1:]}"
    return Probe(False, e.errno, reason, e.log_tail(3))


def _entry_offset(path: str) -> int:
    """File offset of the ELF entry point: uprobes take file offsets, e_entry is a virtual address."""
    from elftools.elf.elffile import ELFFile

    from tracer.elfsyms import SymbolError, vaddr_to_offset

    with open(path, "rb") as f:
        elf = ELFFile(f)
        try:
            return vaddr_to_offset(elf, elf.header.e_entry, path)
        except SymbolError as e:
            raise ValueError(str(e)) from None


def _perf_attached(attach: Callable[[], int], detach: Callable[[], None], what: str) -> Probe:
    pfd = attach()
    if pfd < 0:
        err = ctypes.get_errno()
        return Probe(False, err or None, f"loaded, but attaching to {what} failed ({_errname(err)})", [])
    libbcc().bpf_close_perf_event_fd(pfd)
    detach()
    return Probe(True, None, f"loaded and attached to {what}", [])


def _load_attach(prog_type: int, prog_name: str, target: Callable[[ctypes.CDLL, int], tuple],
                 why: Callable[[bpfsys.BpfError], str] = lambda e: "") -> Probe:
    """Load `r0 = 0; exit` as a sleepable program of prog_type; if the kernel takes it, attach it through
    libbcc with target(lib, fd) -> (attach, detach, what), then detach and close everything."""
    try:
        fd = bpfsys.prog_load(prog_type, bpfsys.return_zero_prog(), prog_flags=bpfsys.BPF_F_SLEEPABLE,
                              prog_name=prog_name)
    except bpfsys.BpfError as e:
        return _refused(e, why(e))
    with _fd(fd):
        try:
            attach, detach, what = target(libbcc(), fd)
        except (OSError, ValueError) as e:
            return Probe(True, None, f"loaded (attach not tried: {e})", [])
        return _perf_attached(attach, detach, what)


def probe_tp() -> Probe:
    """BPF_PROG_TYPE_TRACEPOINT + BPF_F_SLEEPABLE, attached to a syscall tracepoint if it loads."""

    def target(lib: ctypes.CDLL, fd: int) -> tuple:
        cat, name = TP_CATEGORY.encode(), TP_NAME.encode()
        return lambda: lib.bpf_attach_tracepoint(fd, cat, name), lambda: None, f"{TP_CATEGORY}:{TP_NAME}"

    def why(e: bpfsys.BpfError) -> str:
        # check_attach_btf_id(): the program type may not be sleepable at all
        return "this kernel has no sleepable tracepoint programs" if "can be sleepable" in e.reason else ""

    return _load_attach(bpfsys.BPF_PROG_TYPE_TRACEPOINT, "tracer_tp_s", target, why)


def _fentry_load(btf_id: int, flags: int) -> int:
    return bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_TRACING, bpfsys.return_zero_prog(), prog_flags=flags,
                            expected_attach_type=bpfsys.BPF_TRACE_FENTRY, attach_btf_id=btf_id,
                            prog_name="tracer_fentry_s")


def probe_fentry() -> Probe:
    """BPF_PROG_TYPE_TRACING/BPF_TRACE_FENTRY + BPF_F_SLEEPABLE on the openat2 syscall stub."""
    try:
        btf_id = btf.func_id(FENTRY_TARGET)
    except (OSError, KeyError, btf.BtfError) as e:
        return Probe(False, None, f"no BTF id for {FENTRY_TARGET}: {e}", [])
    # bpf_check_attach_target(): a sleepable fentry target must be on the error-injection list
    # (ALLOW_ERROR_INJECTION, built only with CONFIG_FUNCTION_ERROR_INJECTION), else EINVAL
    # "X is not sleepable".
    fei = {"y": "=y here", None: ": unknown here"}.get(kenv.kernel_config("CONFIG_FUNCTION_ERROR_INJECTION"),
                                                      " is not set here")
    needs = ("sleepable fentry also needs the target on the kernel's error-injection list "
             f"(CONFIG_FUNCTION_ERROR_INJECTION{fei})")
    try:
        fd = _fentry_load(btf_id, bpfsys.BPF_F_SLEEPABLE)
    except bpfsys.BpfError as e:
        if e.errno == errno_mod.EPERM and not e.reason:
            # Tell "no fentry at all" from "no sleepable fentry": try the plain program.
            try:
                os.close(_fentry_load(btf_id, 0))
                plain = "plain (non-sleepable) fentry loads"
            except bpfsys.BpfError as plain_e:
                plain = (f"plain fentry is refused the same way ({_errname(plain_e.errno)}), so this kernel "
                         "refuses BPF_PROG_TYPE_TRACING programs outright")
            return _refused(e, f"{plain}; {needs}")
        return _refused(e, needs)
    with _fd(fd):
        try:
            os.close(bpfsys.raw_tracepoint_open(fd))
        except bpfsys.BpfError as e:
            return Probe(False, e.errno, f"loaded, but attaching failed ({_errname(e.errno)})", [])
        return Probe(True, None, f"loaded and attached to {FENTRY_TARGET}", [])


def probe_uprobe() -> Probe:
    """BPF_PROG_TYPE_KPROBE + BPF_F_SLEEPABLE, attached as a uprobe on /bin/true's entry point."""

    def target(lib: ctypes.CDLL, fd: int) -> tuple:
        path = os.path.realpath(UPROBE_BINARY)
        offset = _entry_offset(path)
        ev_name = f"tracer_caps_{os.getpid()}".encode()
        return (lambda: lib.bpf_attach_uprobe(fd, 0, ev_name, path.encode(), offset, -1, 0),
                lambda: lib.bpf_detach_uprobe(ev_name), f"uprobe {path}+{offset:#x}")

    return _load_attach(bpfsys.BPF_PROG_TYPE_KPROBE, "tracer_uprobe_s", target)


PROBES: dict[str, Callable[[], Probe]] = {
    "tp.s": probe_tp, "fentry.s": probe_fentry, "uprobe.s": probe_uprobe,
}


def _boot_key() -> dict[str, str | int]:
    boot_id = BOOT_ID.read_text().strip() if BOOT_ID.exists() else ""
    # schema: bump when the stored results change shape or wording, so old caches are re-probed.
    return {"schema": CACHE_SCHEMA, "boot_id": boot_id, "release": os.uname().release}


def _read_cache(path: Path) -> dict[str, dict] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    key = _boot_key()
    if not key["boot_id"] or any(data.get(k) != v for k, v in key.items()):
        return None
    kinds = data.get("sleepable")
    return kinds if isinstance(kinds, dict) and set(kinds) == set(KINDS) else None


def _write_cache(path: Path, kinds: dict[str, dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({**_boot_key(), "sleepable": kinds}, indent=1))
        tmp.chmod(0o644)
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:
        tmp.unlink(missing_ok=True)


def sleepable_kinds(
    refresh: bool = False, privileged: bool = True, cache: Path = CACHE_PATH
) -> dict[str, dict]:
    """{kind: {"ok", "errno", "reason", "log_tail"}} for tp.s, fentry.s and uprobe.s.

    Served from the per-boot cache unless `refresh`. Without privileges nothing is probed (the kernel would
    only say EPERM) and nothing is cached.
    """
    if not refresh and (cached := _read_cache(cache)) is not None:
        return cached
    if not privileged:
        skipped = Probe(None, None, "not probed: needs root or CAP_BPF+CAP_PERFMON", [])
        return {kind: asdict(skipped) for kind in KINDS}
    kinds = {kind: asdict(probe()) for kind, probe in PROBES.items()}
    _write_cache(cache, kinds)
    return kinds


def read_mode(requested: str, target: str, kinds: Callable[[], dict[str, dict]]) -> str:
    """How `target` ("syscalls" or "uprobes") reads pointer arguments for --read-mode `requested`: the
    first kind of READERS[target] the kernel accepts (kinds(): sleepable_kinds()' results, only asked when
    a sleepable reader may be used), else "nofault" (entry reads that fail on absent pages; syscalls
    re-read at exit). `auto` falls back to nofault; `sleepable` is refused with the kernel's reasons.
    """
    if requested not in READ_MODES:
        raise UsageError(f"--read-mode {requested!r}: one of {', '.join(READ_MODES)}")
    if requested == "nofault":
        return "nofault"
    readers, found = READERS[target], kinds()
    usable = [k for k in readers if found.get(k, {}).get("ok")]
    if usable:
        return usable[0]
    if requested == "auto":
        return "nofault"
    why = "; ".join(f"{k}: {found.get(k, {}).get('reason', 'not probed')}" for k in readers)
    raise EnvironmentProblem(f"--read-mode sleepable: no sleepable reader for {target} loads on this kernel "
                             f"({why}); use --read-mode auto or nofault")
