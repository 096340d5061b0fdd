"""openat2 and the open family: struct open_how, O_* flags, RESOLVE_* flags, modes.

`struct open_how { u64 flags; u64 mode; u64 resolve; }` (include/uapi/linux/openat2.h), 24 bytes;
callers may pass a larger `usize` whose extra bytes must be zero (else E2BIG): those are kept as `ext`.
"""

from __future__ import annotations

import os
import struct

OPEN_HOW_SIZE = 24
_HOW = struct.Struct("<QQQ")

RESOLVE_FLAGS = {
    0x01: "RESOLVE_NO_XDEV", 0x02: "RESOLVE_NO_MAGICLINKS", 0x04: "RESOLVE_NO_SYMLINKS",
    0x08: "RESOLVE_BENEATH", 0x10: "RESOLVE_IN_ROOT", 0x20: "RESOLVE_CACHED",
}
_ACCMODE = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR", 3: "O_ACCMODE"}
# Bits from the os module (the C library's values); O_LARGEFILE is 0 in 64-bit user space but the
# kernel's __O_LARGEFILE bit appears in flags it forces (open(2) on 64-bit).
_O_LARGEFILE_KERNEL = 0o100000
_OPEN_BITS: list[tuple[int, str]] = [
    (getattr(os, n), n) for n in (
        "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_DSYNC", "O_ASYNC",
        "O_DIRECT", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_PATH")
    if getattr(os, n, 0)
] + [(_O_LARGEFILE_KERNEL, "O_LARGEFILE")]
_O_SYNC_ONLY = os.O_SYNC & ~os.O_DSYNC  # __O_SYNC
_O_TMPFILE_ONLY = os.O_TMPFILE & ~os.O_DIRECTORY  # __O_TMPFILE


def open_flags_str(flags: int) -> str:
    parts = [_ACCMODE[flags & 3]]
    rest = flags & ~3
    if rest & _O_TMPFILE_ONLY:
        parts.append("O_TMPFILE")
        rest &= ~os.O_TMPFILE
    if rest & _O_SYNC_ONLY:
        parts.append("O_SYNC")
        rest &= ~os.O_SYNC
    for bit, name in _OPEN_BITS:
        if rest & bit:
            parts.append(name)
            rest &= ~bit
    if rest:
        parts.append(f"{rest:#x}")
    return "|".join(parts)


def bits_str(value: int, names: dict[int, str]) -> str:
    """`A|B|0x40` for a value made of single-bit flags; unknown bits in hex, "0" for none."""
    parts = [name for bit, name in names.items() if value & bit]
    rest = value & ~sum(names)
    if rest:
        parts.append(f"{rest:#x}")
    return "|".join(parts) or "0"


def resolve_str(resolve: int) -> str:
    return bits_str(resolve, RESOLVE_FLAGS)


def mode_str(mode: int) -> str:
    return f"0{mode:o}" if mode else "0"


def decode_open_how(raw: bytes, usize: int) -> dict:
    """The open_how the caller passed, from the bytes read (min(usize, cap) of them)."""
    if len(raw) < OPEN_HOW_SIZE:
        # The kernel refuses usize < 24 with EINVAL; show what was passed, decode nothing.
        return {"short": True, "raw": raw.hex()}
    flags, mode, resolve = _HOW.unpack_from(raw)
    how = {"flags": flags, "mode": mode, "resolve": resolve,
           "flags_str": open_flags_str(flags), "resolve_str": resolve_str(resolve)}
    if usize > OPEN_HOW_SIZE:
        how["ext"] = raw[OPEN_HOW_SIZE:].hex()
        how["ext_nonzero"] = any(raw[OPEN_HOW_SIZE:])
        if len(raw) < usize:
            how["ext_truncated"] = True
    return how
