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
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tracer import bpfsys, btf
from tracer.errors import EnvironmentProblem, LoadError

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


# bpf/reads.h calls kfuncs through placeholder helper numbers (bcc cannot emit kfunc calls): kfunc name ->
# the placeholder's macro there. resolve_kfuncs() turns those calls into real kfunc calls.
KFUNC_PLACEHOLDERS = {"bpf_copy_from_user_str": "KFUNC_COPY_FROM_USER_STR"}
BPF_PSEUDO_KFUNC_CALL = 2  # call insn src_reg: imm is a BTF FUNC id (off 0: in vmlinux BTF)
_BPF_CALL, _BPF_LD_IMM64 = 0x85, 0x18


@functools.cache
def kfunc_placeholders() -> dict[int, str]:
    """{placeholder helper number: kfunc name}, read from bpf/reads.h (its one definition)."""
    from tracer.kenv import bpf_source

    text = bpf_source("reads.h").read_text()
    out = {}
    for kfunc, macro in KFUNC_PLACEHOLDERS.items():
        m = re.search(rf"^#define {macro} (0x[0-9a-fA-F]+|\d+)\s*$", text, re.M)
        if m is None:
            raise KeyError(f"bpf/reads.h defines no {macro}")
        out[int(m[1], 0)] = kfunc
    return out


def has_kfunc(name: str) -> bool:
    """Whether the running kernel's BTF has kfunc `name` (a FUNC of that name)."""
    try:
        btf.func_id(name)
    except (OSError, KeyError, btf.BtfError):
        return False
    return True


def kfunc_cflags() -> list[str]:
    """bcc cflags enabling the kfunc paths of bpf/reads.h this kernel has (bpf_copy_from_user_str: 6.12+)."""
    return ["-DTRACER_COPY_STR_KFUNC"] if has_kfunc("bpf_copy_from_user_str") else []


def resolve_kfuncs(insns: bytes, func_id: Callable[[str], int] = btf.func_id) -> bytes:
    """Rewrite calls of placeholder helpers (bpf/reads.h) into kfunc calls: src_reg BPF_PSEUDO_KFUNC_CALL,
    imm the kfunc's BTF id in vmlinux. Other instructions are returned unchanged."""
    holders = kfunc_placeholders()
    out = bytearray(insns)
    i = 0
    while i + 8 <= len(out):
        code, regs, _off, imm = struct.unpack_from("<BBhi", out, i)
        if code == _BPF_CALL and regs >> 4 == 0 and imm in holders:
            struct.pack_into("<BBhi", out, i, code, BPF_PSEUDO_KFUNC_CALL << 4, 0, func_id(holders[imm]))
        i += 16 if code == _BPF_LD_IMM64 else 8  # a 64-bit load's second half is not an instruction
    return bytes(out)


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
    return load_insns(compiled_insns(bpf, fn_name), fn_name, prog_type, license=license, sleepable=sleepable,
                      expected_attach_type=expected_attach_type, attach_btf_id=attach_btf_id)


def load_insns(insns: bytes, fn_name: str, prog_type: int, *, license: str = "GPL", sleepable: bool = False,
               expected_attach_type: int = 0, attach_btf_id: int = 0) -> int:
    """BPF_PROG_LOAD of compiled instructions (kfunc placeholders resolved); returns the fd. Raises LoadError
    carrying the verifier log's tail."""
    try:
        insns = resolve_kfuncs(insns)
    except (KeyError, OSError, btf.BtfError) as e:
        raise LoadError(f"program {fn_name}: cannot resolve its kfunc calls",
                        bpfsys.BpfError(errno_mod.ENOENT, str(e))) from None
    try:
        return bpfsys.prog_load(prog_type, insns, license=license,
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


SYSCALL_KINDS = ("tp.s", "fentry.s")  # in order of preference: tp.s reads at entry in one program


def syscall_read_mode(read_mode: str, kinds: dict[str, dict]) -> str:
    """How syscall pointer arguments are read for --read-mode: "tp.s" or "fentry.s" (sleepable readers, see
    SleepableSyscalls) or "nofault" (entry read + exit recovery).

    `auto` takes the best kind the kernel accepts, else nofault; `sleepable` is refused with the kernel's
    reasons when neither loads.
    """
    if read_mode == "nofault":
        return "nofault"
    usable = [k for k in SYSCALL_KINDS if kinds.get(k, {}).get("ok")]
    if usable:
        return usable[0]
    if read_mode == "auto":
        return "nofault"
    why = "; ".join(f"{k}: {kinds.get(k, {}).get('reason', 'not probed')}" for k in SYSCALL_KINDS)
    raise EnvironmentProblem(f"--read-mode sleepable: this kernel loads no sleepable syscall programs ({why}); "
                             "use --read-mode auto (nofault reads with exit recovery)")


def syscall_cflags() -> list[str]:
    """bcc cflags compiling bpf/trace.bpf.c's sleepable readers in (sys_enter_s_N, sys_fentry_s)."""
    return ["-DTRACER_SLEEPABLE", *kfunc_cflags()]


def fentry_target(syscall: str) -> str:
    """The x86_64 syscall stub a fentry.s reader attaches to: it gets the syscall's struct pt_regs *."""
    return f"__x64_sys_{syscall}"


class SleepableSyscalls:
    """The sleepable readers of bpf/trace.bpf.c (compiled with syscall_cflags()) for the syscalls that read
    user memory at entry, loaded with BPF_F_SLEEPABLE and attached; close() detaches and closes them.

    tp.s: sys_enter_s_<nargs> is loaded as a sleepable BPF_PROG_TYPE_TRACEPOINT program and attached to
    syscalls:sys_enter_<name> the way bcc attaches tracepoints (perf_event_open + PERF_EVENT_IOC_SET_BPF,
    the path caps.probe_tp() checks), *instead of* the nofault sys_enter_<nargs> (see `replaces_enter`).
    fentry.s: sys_fentry_s is loaded once per syscall as BPF_PROG_TYPE_TRACING/BPF_TRACE_FENTRY with the
    BTF id of __x64_sys_<name> and attached with BPF_RAW_TRACEPOINT_OPEN; the nofault sys_enter program
    stays and runs first. Syscalls whose stub is not in the kernel's BTF keep nofault reads (`uncovered`).
    `insns(fn)` gives the compiled instructions of function fn.
    """

    def __init__(self, kind: str, syscalls: list, insns: Callable[[str], bytes], license: str = "GPL") -> None:
        if kind not in SYSCALL_KINDS:
            raise ValueError(f"sleepable syscall reader kind {kind!r}: one of {', '.join(SYSCALL_KINDS)}")
        self.kind = kind
        self.fds: list[int] = []
        self.perf_fds: list[int] = []  # tp.s attachments
        self.links: list[int] = []  # fentry.s attachments
        self.covered: list[str] = []
        self.uncovered: list[str] = []
        try:
            for s in syscalls:
                if self.wanted(s):
                    self._load_attach(s, insns, license)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def wanted(s: object) -> bool:
        """Syscalls that return and read user memory at entry (a kernel-filled sockaddr is read at exit)."""
        from tracer.layout import const

        out = const("RK_SOCKADDR_OUT")
        return not s.noreturn and any(r.kind != out for r in s.reads)  # type: ignore[attr-defined]

    def replaces_enter(self, s: object) -> bool:
        """Whether this reader takes the place of the nofault sys_enter program for syscall s (tp.s)."""
        return self.kind == "tp.s" and s.name in self.covered  # type: ignore[attr-defined]

    def attr_for(self, s: object) -> dict:
        """prog_type and attach fields of the BPF_PROG_LOAD for syscall s's reader."""
        if self.kind == "tp.s":
            return {"fn": f"sys_enter_s_{len(s.args)}", "prog_type": bpfsys.BPF_PROG_TYPE_TRACEPOINT}  # type: ignore[attr-defined]
        return {"fn": "sys_fentry_s", "prog_type": bpfsys.BPF_PROG_TYPE_TRACING,
                "expected_attach_type": bpfsys.BPF_TRACE_FENTRY,
                "attach_btf_id": btf.func_id(fentry_target(s.name))}  # type: ignore[attr-defined]

    def _load_attach(self, s: object, insns: Callable[[str], bytes], license: str) -> None:
        name = s.name  # type: ignore[attr-defined]
        try:
            attr = self.attr_for(s)
        except (OSError, KeyError, btf.BtfError):
            self.uncovered.append(name)  # no BTF FUNC for the stub: nofault reads stay
            return
        fn = attr.pop("fn")
        fd = load_insns(insns(fn), fn, attr.pop("prog_type"), license=license, sleepable=True, **attr)
        self.fds.append(fd)
        if self.kind == "tp.s":
            pfd = _libbcc().bpf_attach_tracepoint(fd, b"syscalls", f"sys_enter_{name}".encode())
            if pfd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"attaching sleepable {fn} to syscalls:sys_enter_{name} failed: "
                                   f"{os.strerror(err)}")
            self.perf_fds.append(pfd)
        else:
            try:
                self.links.append(bpfsys.raw_tracepoint_open(fd))
            except bpfsys.BpfError as e:
                raise OSError(e.errno, f"attaching sleepable {fn} to {fentry_target(name)} failed: "
                                       f"{e.strerror}") from None
        self.covered.append(name)

    def close(self) -> None:
        for pfd in self.perf_fds:
            _libbcc().bpf_close_perf_event_fd(pfd)
        for fd in self.links + self.fds:
            os.close(fd)
        self.perf_fds, self.links, self.fds = [], [], []
