"""A thin ctypes wrapper over bpf(2): just enough to load a program with flags bcc's Python API lacks.

bcc's `BPF.load_func()` cannot pass BPF_F_SLEEPABLE, expected_attach_type or attach_btf_id, so capability
probes (and sleepable loaders) call BPF_PROG_LOAD themselves. The verifier log is always captured, since
it is the only place the kernel says why it refused.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import re
import struct

# bpf(2) syscall numbers by machine; only x86_64 is supported for now.
_SYSCALL_NR = {"x86_64": 321}

BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17

BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_TRACING = 26
BPF_PROG_TYPE_LSM = 29

BPF_TRACE_FENTRY = 24

BPF_F_SLEEPABLE = 1 << 4

# Bytes of `union bpf_attr` we pass; the kernel accepts any size as long as bytes it does not know are zero.
PROG_LOAD_ATTR_SIZE = 128
PROG_NAME_LEN = 16  # BPF_OBJ_NAME_LEN, including the NUL

_LOG_SIZE = 1 << 20
_LOG_SIZE_MAX = 1 << 26  # the kernel refuses log_size above UINT_MAX >> 2; 64 MiB is plenty

# Instruction encodings for `r0 = 0; exit`.
_BPF_ALU64_MOV_K = 0x07 | 0xB0 | 0x00
_BPF_JMP_EXIT = 0x05 | 0x90

_STATS_LINE = re.compile(r"^processed \d+ insns")


class BpfError(OSError):
    """bpf(2) failed: errno, a message, and the verifier log (possibly empty)."""

    def __init__(self, errno: int, message: str, verifier_log: str = "") -> None:
        super().__init__(errno, message)
        self.verifier_log = verifier_log

    def log_tail(self, n: int = 1) -> list[str]:
        """The last n non-blank lines of the verifier log."""
        lines = [line for line in self.verifier_log.splitlines() if line.strip()]
        return lines[-n:] if n > 0 else []

    @property
    def reason(self) -> str:
        """The verifier's last word, skipping the "processed N insns" statistics line it always ends with."""
        for line in reversed(self.log_tail(4)):
            if not _STATS_LINE.match(line):
                return line
        return ""

    def __str__(self) -> str:
        base = f"{self.strerror} ({errno_mod.errorcode.get(self.errno or 0, '?')})"
        return f"{base}: {self.reason}" if self.reason else base


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def return_zero_prog() -> bytes:
    """The smallest valid program, `r0 = 0; exit`: two 8-byte instructions."""
    return _insn(_BPF_ALU64_MOV_K, dst=0, imm=0) + _insn(_BPF_JMP_EXIT)


def _check_name(prog_name: str) -> bytes:
    # The kernel accepts only [A-Za-z0-9_.] and at most 15 characters; fail here with a clear message.
    raw = prog_name.encode()
    if len(raw) >= PROG_NAME_LEN or not all(c.isalnum() or c in "_." for c in prog_name) or not raw.isascii():
        raise ValueError(f"prog_name {prog_name!r}: at most 15 characters from [A-Za-z0-9_.]")
    return raw


def pack_prog_load_attr(
    prog_type: int,
    insn_cnt: int,
    insns_addr: int,
    license_addr: int,
    log_level: int = 0,
    log_size: int = 0,
    log_buf_addr: int = 0,
    prog_flags: int = 0,
    prog_name: str = "",
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
) -> bytes:
    """`union bpf_attr` for BPF_PROG_LOAD (kern_version and prog_ifindex left 0), zero-padded."""
    buf = bytearray(PROG_LOAD_ATTR_SIZE)
    struct.pack_into("<IIQQIIQ", buf, 0, prog_type, insn_cnt, insns_addr, license_addr, log_level, log_size,
                     log_buf_addr)
    struct.pack_into("<I", buf, 44, prog_flags)
    struct.pack_into(f"{PROG_NAME_LEN}s", buf, 48, _check_name(prog_name))
    struct.pack_into("<I", buf, 68, expected_attach_type)
    struct.pack_into("<I", buf, 108, attach_btf_id)
    return bytes(buf)


_libc: ctypes.CDLL | None = None


def _sys_bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> tuple[int, int]:
    """Raw bpf(cmd, attr, size): (return value, errno)."""
    global _libc
    machine = os.uname().machine
    nr = _SYSCALL_NR.get(machine)
    if nr is None:
        raise BpfError(errno_mod.ENOSYS, f"bpf(2) wrapper supports x86_64 only, not {machine}")
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    return ret, ctypes.get_errno()


def prog_load(
    prog_type: int,
    insns: bytes,
    license: str = "GPL",
    prog_flags: int = 0,
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
    prog_name: str = "",
    log_level: int = 1,
) -> int:
    """BPF_PROG_LOAD; returns the program fd (the caller closes it). Raises BpfError with the verifier log."""
    if not insns or len(insns) % 8:
        raise ValueError(f"insns must be a non-empty multiple of 8 bytes, got {len(insns)}")
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(license.encode())
    log_size = _LOG_SIZE if log_level else 0
    while True:
        log_buf = ctypes.create_string_buffer(log_size) if log_size else None
        attr = ctypes.create_string_buffer(
            pack_prog_load_attr(
                prog_type, len(insns) // 8, ctypes.addressof(insn_buf), ctypes.addressof(license_buf),
                log_level, log_size, ctypes.addressof(log_buf) if log_buf else 0, prog_flags, prog_name,
                expected_attach_type, attach_btf_id,
            ),
            PROG_LOAD_ATTR_SIZE,
        )
        fd, err = _sys_bpf(BPF_PROG_LOAD, attr)
        log = log_buf.value.decode(errors="replace") if log_buf else ""
        # ENOSPC: the log was truncated, which since 6.4 fails the load itself; grow the log and retry.
        if fd < 0 and err == errno_mod.ENOSPC and log_size and log_size < _LOG_SIZE_MAX:
            log_size *= 4
            continue
        if fd < 0:
            raise BpfError(err, f"BPF_PROG_LOAD: {os.strerror(err)}", log)
        return fd


def raw_tracepoint_open(prog_fd: int, name: str | None = None) -> int:
    """BPF_RAW_TRACEPOINT_OPEN: attaches a raw_tp program to `name`, or a tracing (fentry) one to its BTF
    target when name is None. Returns a link fd; closing it detaches."""
    name_buf = ctypes.create_string_buffer(name.encode()) if name else None
    attr = ctypes.create_string_buffer(
        struct.pack("<QI4x", ctypes.addressof(name_buf) if name_buf else 0, prog_fd), 16
    )
    fd, err = _sys_bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    if fd < 0:
        raise BpfError(err, f"BPF_RAW_TRACEPOINT_OPEN: {os.strerror(err)}")
    return fd
