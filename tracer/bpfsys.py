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
from collections.abc import Iterator
from dataclasses import dataclass

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
FUNC_INFO_SIZE = 8  # struct bpf_func_info

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
    kern_version: int = 0,
    btf_fd: int = 0,
    func_info_addr: int = 0,
    func_info_cnt: int = 0,
) -> bytes:
    """`union bpf_attr` for BPF_PROG_LOAD (prog_ifindex left 0), zero-padded. func_info records are
    struct bpf_func_info (8 bytes: insn_off, type_id in the BTF of btf_fd)."""
    buf = bytearray(PROG_LOAD_ATTR_SIZE)
    struct.pack_into("<IIQQIIQ", buf, 0, prog_type, insn_cnt, insns_addr, license_addr, log_level, log_size,
                     log_buf_addr)
    struct.pack_into("<II", buf, 40, kern_version, prog_flags)
    struct.pack_into(f"{PROG_NAME_LEN}s", buf, 48, _check_name(prog_name))
    struct.pack_into("<II", buf, 68, expected_attach_type, btf_fd)
    if func_info_cnt:
        struct.pack_into("<IQI", buf, 76, FUNC_INFO_SIZE, func_info_addr, func_info_cnt)
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
    kern_version: int = 0,
    btf_fd: int = 0,
    func_info: bytes = b"",
) -> int:
    """BPF_PROG_LOAD; returns the program fd (the caller closes it). Raises BpfError with the verifier log.
    func_info (bpf_func_info records, with btf_fd) names the program's functions for bpftool and the log."""
    if not insns or len(insns) % 8:
        raise ValueError(f"insns must be a non-empty multiple of 8 bytes, got {len(insns)}")
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(license.encode())
    finfo_buf = ctypes.create_string_buffer(func_info, len(func_info)) if func_info else None
    log_size = _LOG_SIZE if log_level else 0
    while True:
        log_buf = ctypes.create_string_buffer(log_size) if log_size else None
        attr = ctypes.create_string_buffer(
            pack_prog_load_attr(
                prog_type, len(insns) // 8, ctypes.addressof(insn_buf), ctypes.addressof(license_buf),
                log_level, log_size, ctypes.addressof(log_buf) if log_buf else 0, prog_flags, prog_name,
                expected_attach_type, attach_btf_id, kern_version, btf_fd,
                ctypes.addressof(finfo_buf) if finfo_buf else 0, len(func_info) // FUNC_INFO_SIZE,
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


# --- maps, BTF and object info: the fd-based map API both load paths share --------------------------------

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_LOAD = 18
BPF_BTF_GET_FD_BY_ID = 19

BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_MAP_TYPES = (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH)

_MAP_INFO = struct.Struct("<IIIIII16sIIQQIII")  # struct bpf_map_info up to btf_value_type_id (76 bytes)
_PROG_INFO_SIZE = 232  # struct bpf_prog_info as of 6.x; the kernel zero-fills or ignores the rest
_PROG_INFO_BTF_ID = 128


def _attr(data: bytes, size: int = PROG_LOAD_ATTR_SIZE) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(data.ljust(size, b"\0"), size)


def _check(ret: int, err: int, what: str) -> int:
    if ret < 0:
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def possible_cpus() -> int:
    """How many CPUs per-CPU maps hold a value for (/sys/devices/system/cpu/possible, e.g. "0-7")."""
    with open("/sys/devices/system/cpu/possible") as f:
        return max(int(part.split("-")[-1]) for part in f.read().strip().split(",")) + 1


def obj_get_info(fd: int, size: int) -> bytes:
    """BPF_OBJ_GET_INFO_BY_FD into a zeroed buffer of `size` bytes (pointers inside left 0)."""
    return obj_get_info_into(fd, ctypes.create_string_buffer(size))


def obj_get_info_into(fd: int, info: ctypes.Array[ctypes.c_char]) -> bytes:
    attr = _attr(struct.pack("<IIQ", fd, len(info), ctypes.addressof(info)), 16)
    _check(*_sys_bpf(BPF_OBJ_GET_INFO_BY_FD, attr), "BPF_OBJ_GET_INFO_BY_FD")
    return info.raw


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says about a map: enough to create the same map again."""
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str
    btf_id: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0

    @classmethod
    def of_fd(cls, fd: int) -> MapInfo:
        (type_, _id, key, value, entries, flags, name, _ifindex, _vmlinux_value, _dev, _ino, btf_id, btf_key,
         btf_value) = _MAP_INFO.unpack_from(obj_get_info(fd, 88))
        return cls(type_, key, value, entries, flags, name.rstrip(b"\0").decode(), btf_id, btf_key, btf_value)


def prog_btf_id(fd: int) -> int:
    """The id of the BTF object a loaded program carries (0: none)."""
    return struct.unpack_from("<I", obj_get_info(fd, _PROG_INFO_SIZE), _PROG_INFO_BTF_ID)[0]


def btf_get_fd_by_id(btf_id: int) -> int:
    return _check(*_sys_bpf(BPF_BTF_GET_FD_BY_ID, _attr(struct.pack("<I", btf_id), 16)), "BPF_BTF_GET_FD_BY_ID")


def btf_data(btf_id: int) -> bytes:
    """The raw BTF blob of a loaded BTF object, as its loader passed it."""
    fd = btf_get_fd_by_id(btf_id)
    try:
        size = struct.unpack_from("<QI", obj_get_info(fd, 32))[1]
        blob = ctypes.create_string_buffer(size)
        info = ctypes.create_string_buffer(struct.pack("<QI", ctypes.addressof(blob), size).ljust(32, b"\0"), 32)
        obj_get_info_into(fd, info)
        return blob.raw
    finally:
        os.close(fd)


def btf_load(data: bytes) -> int:
    """BPF_BTF_LOAD; returns the BTF fd (the caller closes it)."""
    blob = ctypes.create_string_buffer(data, len(data))
    log = ctypes.create_string_buffer(1 << 16)
    attr = _attr(struct.pack("<QQIII", ctypes.addressof(blob), ctypes.addressof(log), len(data), len(log), 1), 32)
    fd, err = _sys_bpf(BPF_BTF_LOAD, attr)
    if fd < 0:
        raise BpfError(err, f"BPF_BTF_LOAD: {os.strerror(err)}", log.value.decode(errors="replace"))
    return fd


def map_create(info: MapInfo, btf_fd: int = 0) -> int:
    """BPF_MAP_CREATE of a map like `info` (with its BTF key/value types when btf_fd is given)."""
    name = _check_name(info.name) if info.name else b""
    buf = bytearray(72)
    struct.pack_into("<IIIII", buf, 0, info.type, info.key_size, info.value_size, info.max_entries, info.flags)
    struct.pack_into("16s", buf, 28, name)
    if btf_fd and info.btf_key_type_id | info.btf_value_type_id:
        struct.pack_into("<III", buf, 48, btf_fd, info.btf_key_type_id, info.btf_value_type_id)
    fd, err = _sys_bpf(BPF_MAP_CREATE, _attr(bytes(buf), 72))
    return _check(fd, err, f"BPF_MAP_CREATE {info.name}")


class Map:
    """Element access to a map by fd, whoever created it (bcc on a cold start, tracer on a warm one).

    Keys and values are bytes of the map's key_size and value_size (values shorter than value_size are
    zero-padded); per-CPU maps read as one value per possible CPU.
    """

    def __init__(self, fd: int, info: MapInfo | None = None) -> None:
        self.fd = fd
        self.info = info or MapInfo.of_fd(fd)
        self.percpu = self.info.type in PERCPU_MAP_TYPES
        self._stride = (self.info.value_size + 7) & ~7
        self._ncpu = possible_cpus() if self.percpu else 1

    def _op(self, cmd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None, flags: int = 0) -> tuple[int, int]:
        if len(key) != self.info.key_size:
            raise ValueError(f"map {self.info.name}: key of {len(key)} bytes, expected {self.info.key_size}")
        kbuf = ctypes.create_string_buffer(key, len(key))
        attr = _attr(struct.pack("<I4xQQQ", self.fd, ctypes.addressof(kbuf),
                                 ctypes.addressof(value) if value is not None else 0, flags), 32)
        return _sys_bpf(cmd, attr)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        size = self.info.value_size
        if len(value) > size:
            raise ValueError(f"map {self.info.name}: value of {len(value)} bytes, at most {size}")
        data = value.ljust(self._stride, b"\0") * self._ncpu if self.percpu else value.ljust(size, b"\0")
        vbuf = ctypes.create_string_buffer(data, len(data))
        _check(*self._op(BPF_MAP_UPDATE_ELEM, key, vbuf, flags), f"update of map {self.info.name}")

    def lookup(self, key: bytes) -> bytes | None:
        """The value (None when the key is absent); for per-CPU maps see lookup_percpu."""
        if self.percpu:
            raise TypeError(f"map {self.info.name} is per-CPU: use lookup_percpu")
        vbuf = ctypes.create_string_buffer(self.info.value_size)
        ret, err = self._op(BPF_MAP_LOOKUP_ELEM, key, vbuf)
        if ret < 0 and err == errno_mod.ENOENT:
            return None
        _check(ret, err, f"lookup in map {self.info.name}")
        return vbuf.raw

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        vbuf = ctypes.create_string_buffer(self._stride * self._ncpu)
        ret, err = self._op(BPF_MAP_LOOKUP_ELEM, key, vbuf)
        if ret < 0 and err == errno_mod.ENOENT:
            return None
        _check(ret, err, f"lookup in map {self.info.name}")
        raw, size = vbuf.raw, self.info.value_size
        return [raw[i * self._stride: i * self._stride + size] for i in range(self._ncpu)]

    def counters(self, n: int) -> list[int]:
        """Keys 0..n-1 of a per-CPU array of u64 counters, each summed over the CPUs."""
        return [sum(int.from_bytes(v[:8], "little") for v in self.lookup_percpu(i.to_bytes(4, "little")) or ())
                for i in range(n)]

    def keys(self) -> Iterator[bytes]:
        """Every key (BPF_MAP_GET_NEXT_KEY from none); a key deleted meanwhile restarts the walk there,
        as the kernel does, so a map changing under the walk may yield a key twice or miss one."""
        size = self.info.key_size
        nbuf = ctypes.create_string_buffer(size)
        key: bytes | None = None
        while True:
            kbuf = ctypes.create_string_buffer(key, size) if key is not None else None
            attr = _attr(struct.pack("<I4xQQ", self.fd, ctypes.addressof(kbuf) if kbuf is not None else 0,
                                     ctypes.addressof(nbuf)), 32)
            ret, err = _sys_bpf(BPF_MAP_GET_NEXT_KEY, attr)
            if ret < 0 and err == errno_mod.ENOENT:
                return
            _check(ret, err, f"walk of map {self.info.name}")
            key = nbuf.raw
            yield key

    def values(self) -> Iterator[bytes]:
        """The value of every key still present (see keys)."""
        for key in self.keys():
            v = self.lookup(key)
            if v is not None:
                yield v

    def delete(self, key: bytes) -> bool:
        ret, err = self._op(BPF_MAP_DELETE_ELEM, key, None)
        if ret < 0 and err == errno_mod.ENOENT:
            return False
        _check(ret, err, f"delete from map {self.info.name}")
        return True
