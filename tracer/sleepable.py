"""Which sleepable BPF attach kinds this kernel accepts, found by loading (and attaching) a tiny program.

Sleepable programs may fault user pages in (bpf_copy_from_user), which is why tracer wants one; where the
kernel allows them differs by version and config, so we ask the kernel rather than guess. Results are cached
per boot in /run so `tracer trace` can consult them without re-probing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import functools
import gzip
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tracer import bpfsys, btf
from tracer.kenv import EnvironmentProblem

CACHE_PATH = Path("/run/tracer/caps.json")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
FENTRY_TARGET = "__x64_sys_openat2"
TP_CATEGORY, TP_NAME = "syscalls", "sys_enter_openat2"
UPROBE_BINARY = "/bin/true"
KINDS = ("tp.s", "fentry.s", "uprobe.s")
CACHE_SCHEMA = 1


@dataclass
class Probe:
    ok: bool | None  # None: not probed (no privileges)
    errno: int | None
    reason: str
    log_tail: list[str]


@functools.cache
def _kernel_config_text() -> str | None:
    with contextlib.suppress(OSError), gzip.open("/proc/config.gz", "rt") as f:
        return f.read()
    with contextlib.suppress(OSError):
        return Path(f"/boot/config-{os.uname().release}").read_text()
    return None


def kernel_config(option: str) -> str | None:
    """'y', 'm' or 'n' for a kernel config option, or None when no config is readable here."""
    text = _kernel_config_text()
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(option + "="):
            return line.split("=", 1)[1].strip('"')
    return "n"


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


@functools.cache
def _libbcc() -> ctypes.CDLL:
    # Our own handle, so our prototypes never touch the ones bcc's Python module set on its handle.
    lib = ctypes.CDLL("libbcc.so.0", use_errno=True)
    # ref_ctr_offset exists in newer libbcc; passing it to an older one is harmless on x86_64.
    lib.bpf_attach_uprobe.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_uint64, ctypes.c_int, ctypes.c_uint32]
    lib.bpf_attach_uprobe.restype = ctypes.c_int
    lib.bpf_detach_uprobe.argtypes = [ctypes.c_char_p]
    lib.bpf_attach_tracepoint.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
    lib.bpf_attach_tracepoint.restype = ctypes.c_int
    lib.bpf_close_perf_event_fd.argtypes = [ctypes.c_int]
    lib.bpf_function_start.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.bpf_function_start.restype = ctypes.c_void_p
    lib.bpf_function_size.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.bpf_function_size.restype = ctypes.c_size_t
    lib.bpf_module_license.argtypes = [ctypes.c_void_p]
    lib.bpf_module_license.restype = ctypes.c_char_p
    return lib


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
    _libbcc().bpf_close_perf_event_fd(pfd)
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
            attach, detach, what = target(_libbcc(), fd)
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
    fei = {"y": "=y here", None: ": unknown here"}.get(kernel_config("CONFIG_FUNCTION_ERROR_INJECTION"),
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


# --- loading bcc-compiled programs with flags bcc's Python API cannot pass ------------------------------


class LoadError(EnvironmentProblem):
    """A program was refused: what, errno, and the verifier log's last lines (in one line, for cli.fail)."""

    def __init__(self, what: str, err: bpfsys.BpfError, tail: int = 6) -> None:
        self.error = err
        self.log_tail = err.log_tail(tail)
        log = f"; verifier log ends: {' | '.join(self.log_tail)}" if self.log_tail else "; empty verifier log"
        super().__init__(f"{what}: {err.strerror} ({_errname(err.errno)}){log}")


def compiled_insns(bpf: object, fn_name: str) -> bytes:
    """The instructions bcc compiled for function fn_name (map references already hold map fds)."""
    lib, name = _libbcc(), fn_name.encode()
    start = lib.bpf_function_start(bpf.module, name)  # type: ignore[attr-defined]
    size = lib.bpf_function_size(bpf.module, name)  # type: ignore[attr-defined]
    if not start or not size:
        raise KeyError(f"bcc compiled no function {fn_name!r}")
    return ctypes.string_at(start, size)


def load_compiled(bpf: object, fn_name: str, prog_type: int, *, sleepable: bool = False,
                  expected_attach_type: int = 0, attach_btf_id: int = 0) -> int:
    """BPF_PROG_LOAD of a bcc-compiled function, sleepable if asked; returns the fd (the caller closes it).
    Raises LoadError carrying the verifier log's tail."""
    license = (_libbcc().bpf_module_license(bpf.module) or b"GPL").decode()  # type: ignore[attr-defined]
    try:
        return bpfsys.prog_load(prog_type, compiled_insns(bpf, fn_name), license=license,
                                prog_flags=bpfsys.BPF_F_SLEEPABLE if sleepable else 0,
                                expected_attach_type=expected_attach_type, attach_btf_id=attach_btf_id,
                                prog_name=fn_name[:bpfsys.PROG_NAME_LEN - 1])
    except bpfsys.BpfError as e:
        raise LoadError(f"{'sleepable ' if sleepable else ''}program {fn_name} refused", e) from None


class UprobeLink:
    """A program fd attached as a uprobe (or uretprobe) at a file offset, through libbcc; close() detaches."""

    def __init__(self, prog_fd: int, path: str, offset: int, retprobe: bool, ev_name: str) -> None:
        lib = _libbcc()
        self.ev_name = ev_name.encode()
        self.pfd = lib.bpf_attach_uprobe(prog_fd, 1 if retprobe else 0, self.ev_name, path.encode(), offset,
                                         -1, 0)
        if self.pfd < 0:
            err = ctypes.get_errno()
            kind = "uretprobe" if retprobe else "uprobe"
            raise OSError(err, f"attaching a {kind} to {path}+{offset:#x} failed: {os.strerror(err)}")

    def close(self) -> None:
        if self.pfd >= 0:
            lib = _libbcc()
            lib.bpf_close_perf_event_fd(self.pfd)
            lib.bpf_detach_uprobe(self.ev_name)  # only matters when libbcc fell back to tracefs
            self.pfd = -1


def syscall_read_mode(read_mode: str, kinds: dict[str, dict]) -> str:
    """How syscall pointer arguments are read for --read-mode: "nofault" (entry read + exit recovery).

    Sleepable syscall reads need tp.s or fentry.s; `sleepable` is refused with the kernel's reasons when
    neither loads, and `auto` falls back to nofault.
    """
    if read_mode in ("auto", "nofault"):
        return "nofault"
    usable = [k for k in ("tp.s", "fentry.s") if kinds.get(k, {}).get("ok")]
    if not usable:
        why = "; ".join(f"{k}: {kinds.get(k, {}).get('reason', 'not probed')}" for k in ("tp.s", "fentry.s"))
        raise EnvironmentProblem(f"--read-mode sleepable: this kernel loads no sleepable syscall programs ({why}); "
                                 "use --read-mode auto (nofault reads with exit recovery)")
    raise EnvironmentProblem(f"--read-mode sleepable: the kernel accepts {', '.join(usable)}, but sleepable syscall "
                             "reads are not implemented yet; use --read-mode auto")
