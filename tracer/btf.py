"""Minimal reader of kernel BTF (/sys/kernel/btf/vmlinux): enough to turn a function name into the type id
that BPF_PROG_LOAD wants as attach_btf_id for fentry/fexit.

Layout (include/uapi/linux/btf.h): a header, then a type section of `struct btf_type` records (type ids
start at 1, id 0 is void), each followed by kind-specific trailing data, then a NUL-separated string table.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F

KIND_NAMES = (
    "UNKN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE", "CONST",
    "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG", "TYPE_TAG", "ENUM64",
)
BTF_KIND_STRUCT = 4
BTF_KIND_FUNC = 12
_MODIFIERS = (8, 9, 10, 11, 18)  # TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG: look through to the type
_STRUCT_KINDS = (4, 5)  # STRUCT, UNION

# Bytes after the 12-byte btf_type, per kind: (fixed, per vlen item). A kind missing here cannot be
# skipped, so the walk stops rather than misread everything after it.
_TRAILER = {
    1: (4, 0),  # INT: u32 encoding/offset/bits
    2: (0, 0),  # PTR
    3: (12, 0),  # ARRAY: struct btf_array
    4: (0, 12),  # STRUCT: btf_member[vlen]
    5: (0, 12),  # UNION: btf_member[vlen]
    6: (0, 8),  # ENUM: btf_enum[vlen]
    7: (0, 0),  # FWD
    8: (0, 0),  # TYPEDEF
    9: (0, 0),  # VOLATILE
    10: (0, 0),  # CONST
    11: (0, 0),  # RESTRICT
    12: (0, 0),  # FUNC: vlen is the linkage, not a count
    13: (0, 8),  # FUNC_PROTO: btf_param[vlen]
    14: (4, 0),  # VAR: struct btf_var
    15: (0, 12),  # DATASEC: btf_var_secinfo[vlen]
    16: (0, 0),  # FLOAT
    17: (4, 0),  # DECL_TAG: struct btf_decl_tag
    18: (0, 0),  # TYPE_TAG
    19: (0, 12),  # ENUM64: btf_enum64[vlen]
}


class BtfError(ValueError):
    """The BTF blob is malformed or uses an encoding this reader does not know."""


@dataclass(frozen=True)
class BtfType:
    id: int
    kind: int
    name: str
    vlen: int
    size_or_type: int

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind] if self.kind < len(KIND_NAMES) else f"KIND{self.kind}"


class Btf:
    """Parsed type and string sections; types are decoded lazily from recorded offsets."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob shorter than its header")
        magic = struct.unpack_from("<H", data)[0]
        if magic == BTF_MAGIC:
            self._end = "<"
        elif magic == struct.unpack("<H", struct.pack(">H", BTF_MAGIC))[0]:
            self._end = ">"
        else:
            raise BtfError(f"bad BTF magic {magic:#x}")
        _, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            self._end + "HBBIIIII", data
        )
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        types_at, strs_at = hdr_len + type_off, hdr_len + str_off
        if types_at + type_len > len(data) or strs_at + str_len > len(data):
            raise BtfError("BTF sections run past the end of the blob")
        self._data = data
        self._strs = data[strs_at : strs_at + str_len]
        self._offsets = self._walk(types_at, types_at + type_len)

    def _walk(self, pos: int, end: int) -> list[int]:
        """Offsets of every btf_type record; index i is type id i + 1."""
        offsets: list[int] = []
        unpack = struct.Struct(self._end + "III").unpack_from
        data = self._data
        while pos < end:
            offsets.append(pos)
            _, info, _ = unpack(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            trailer = _TRAILER.get(kind)
            if trailer is None:
                raise BtfError(f"type id {len(offsets)}: unknown BTF kind {kind}; cannot skip its data")
            pos += 12 + trailer[0] + trailer[1] * vlen
        if pos != end:
            raise BtfError(f"type section ends mid-record ({pos} != {end})")
        return offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def name_at(self, off: int) -> str:
        stop = self._strs.find(b"\0", off)
        return self._strs[off : stop if stop >= 0 else None].decode(errors="replace")

    def type(self, type_id: int) -> BtfType:
        if not 1 <= type_id <= len(self._offsets):
            raise KeyError(f"no BTF type id {type_id}")
        name_off, info, size_or_type = struct.unpack_from(self._end + "III", self._data,
                                                          self._offsets[type_id - 1])
        return BtfType(type_id, (info >> 24) & 0x1F, self.name_at(name_off), info & 0xFFFF, size_or_type)

    def _named(self, kind: int) -> dict[str, int]:
        """Name -> type id of the first named type of `kind` (one pass over all types)."""
        found: dict[str, int] = {}
        unpack = struct.Struct(self._end + "II").unpack_from
        for i, pos in enumerate(self._offsets):
            name_off, info = unpack(self._data, pos)
            if (info >> 24) & 0x1F == kind and name_off:
                found.setdefault(self.name_at(name_off), i + 1)
        return found

    @functools.cached_property
    def _funcs(self) -> dict[str, int]:
        return self._named(BTF_KIND_FUNC)

    def func_id(self, name: str) -> int:
        """Type id of the BTF_KIND_FUNC called `name`; KeyError when the kernel has none."""
        try:
            return self._funcs[name]
        except KeyError:
            raise KeyError(f"no BTF FUNC named {name!r}") from None

    @functools.cached_property
    def _structs(self) -> dict[str, int]:
        return self._named(BTF_KIND_STRUCT)

    def struct_named(self, name: str) -> BtfType:
        """The STRUCT called `name` (the first one: vmlinux has one per name)."""
        try:
            return self.type(self._structs[name])
        except KeyError:
            raise KeyError(f"no BTF struct named {name!r}") from None

    def _resolved(self, type_id: int) -> BtfType:
        t = self.type(type_id)
        while t.kind in _MODIFIERS:
            t = self.type(t.size_or_type)
        return t

    def member(self, t: BtfType, name: str) -> tuple[int, int]:
        """(byte offset, type id) of member `name` of struct/union `t`, found also inside its anonymous
        struct and union members (offsets add up: `file.f_path` and `dentry.d_name` sit in such unions);
        KeyError for a bitfield or none."""
        found = self._member(t, name)
        if found is None:
            raise KeyError(f"no member {name!r} in {t.name or 'an anonymous struct'}")
        return found

    def _member(self, t: BtfType, name: str) -> tuple[int, int] | None:
        pos = self._offsets[t.id - 1] + 12
        kind_flag = struct.unpack_from(self._end + "I", self._data, self._offsets[t.id - 1] + 4)[0] >> 31
        for k in range(t.vlen):
            name_off, type_id, off = struct.unpack_from(self._end + "III", self._data, pos + 12 * k)
            bits = off & 0xFFFFFF if kind_flag else off
            mname = self.name_at(name_off)
            if mname == name:
                if bits % 8 or (kind_flag and off >> 24):
                    raise KeyError(f"{t.name}.{name} is a bitfield")
                return bits // 8, type_id
            if not mname and not bits % 8:
                inner = self._resolved(type_id)
                if inner.kind in _STRUCT_KINDS:
                    sub = self._member(inner, name)
                    if sub is not None:
                        return bits // 8 + sub[0], sub[1]
        return None

    def offsetof(self, struct_name: str, *path: str) -> int:
        """Byte offset of a (nested) member, as offsetof(struct NAME, a.b) — from the running kernel's
        types, not a header's."""
        t, total = self.struct_named(struct_name), 0
        for name in path:
            t = self._resolved(t.id)
            off, type_id = self.member(t, name)
            total += off
            t = self.type(type_id)
        return total


@functools.cache
def vmlinux(path: Path = VMLINUX) -> Btf:
    """The running kernel's BTF, parsed once per process."""
    return Btf(path.read_bytes())


def func_id(name: str, path: Path = VMLINUX) -> int:
    """Type id of kernel function `name` in vmlinux BTF (cached per process)."""
    return vmlinux(path).func_id(name)

