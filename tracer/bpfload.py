"""Loading programs that bcc compiled, with what bcc's Python API cannot pass: BPF_F_SLEEPABLE, the
attach type and BTF id of an fentry program, and kfunc calls (bcc cannot emit them: bpf/reads.h calls
placeholder helpers that resolve_kfuncs() rewrites). Also tracer's one handle on libbcc's C API.

What the kernel accepts is probed in tracer/sleepable.py; the programs loaded here are attached in
tracer/attach.py (or by tracer/bpfcache.py's objects).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import functools
import re
import struct
from collections.abc import Callable

from . import bpfsys, btf
from .errors import LoadError
from .kenv import bpf_source


@functools.cache
def libbcc() -> ctypes.CDLL:
    """libbcc with the prototypes tracer uses: our own handle, so they never touch the ones bcc's Python
    module set on its handle."""
    lib = ctypes.CDLL("libbcc.so.0", use_errno=True)
    vp, sz, cp, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int
    for name, args, res in (
        # ref_ctr_offset (the last) exists in newer libbcc; passing it to an older one is harmless on x86_64.
        ("bpf_attach_uprobe", [i, i, cp, cp, ctypes.c_uint64, i, ctypes.c_uint32], i),
        ("bpf_detach_uprobe", [cp], i),
        ("bpf_attach_tracepoint", [i, cp, cp], i),
        ("bpf_close_perf_event_fd", [i], i),
        ("bpf_num_functions", [vp], sz), ("bpf_function_name", [vp, sz], cp),
        ("bpf_function_start", [vp, cp], vp), ("bpf_function_size", [vp, cp], sz),
        ("bpf_num_tables", [vp], sz), ("bpf_table_name", [vp, sz], cp), ("bpf_table_fd_id", [vp, sz], i),
        ("bpf_module_license", [vp], cp), ("bpf_module_kern_version", [vp], ctypes.c_uint),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


KFUNC_PLACEHOLDERS = {"bpf_copy_from_user_str": "KFUNC_COPY_FROM_USER_STR"}
BPF_PSEUDO_KFUNC_CALL = 2  # call insn src_reg: imm is a BTF FUNC id (off 0: in vmlinux BTF)
_BPF_CALL, _BPF_LD_IMM64 = 0x85, 0x18


@functools.cache
def kfunc_placeholders() -> dict[int, str]:
    """{placeholder helper number: kfunc name}, read from bpf/reads.h (its one definition)."""
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
    return module_insns(bpf.module, fn_name.encode())  # type: ignore[attr-defined]


def module_insns(mod: int, name: bytes) -> bytes:
    """The instructions of function `name` in bcc module `mod` (a BPF object's .module)."""
    lib = libbcc()
    start, size = lib.bpf_function_start(mod, name), lib.bpf_function_size(mod, name)
    if not start or not size:
        raise KeyError(f"bcc compiled no function {name.decode()!r}")
    return ctypes.string_at(start, size)


def load_compiled(bpf: object, fn_name: str, prog_type: int, *, sleepable: bool = False,
                  expected_attach_type: int = 0, attach_btf_id: int = 0) -> int:
    """BPF_PROG_LOAD of a bcc-compiled function, sleepable if asked; returns the fd (the caller closes it).
    Raises LoadError carrying the verifier log's tail."""
    license = (libbcc().bpf_module_license(bpf.module) or b"GPL").decode()  # type: ignore[attr-defined]
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
