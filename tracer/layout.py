"""The record layout, derived from bpf/record.h so that the C and Python sides cannot drift.

Parses the header's `#define NAME <int>` lines and its structs (fixed-width integer fields and arrays)
into `struct.Struct` formats. tests/test_layout.py checks every offset against the C compiler.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from .capture_check import Invalid, check_layout_identity
from .errors import CaptureError
from .kenv import bpf_source

_TYPES = {  # C type -> (struct code, size)
    "__u8": ("B", 1), "__s8": ("b", 1), "char": ("c", 1),
    "__u16": ("H", 2), "__s16": ("h", 2),
    "__u32": ("I", 4), "__s32": ("i", 4), "int": ("i", 4),
    "__u64": ("Q", 8), "__s64": ("q", 8),
}
_DEFINE = re.compile(r"^#define\s+([A-Z_][A-Z0-9_]*)\s+(\(?-?(?:0x[0-9a-fA-F]+|\d+)\)?)\s*(?:/\*.*)?$")
_STRUCT = re.compile(r"struct\s+(\w+)\s*\{(.*?)\};", re.S)
_FIELD = re.compile(r"^(struct\s+\w+|\w+)\s+(\w+)(?:\[(\w+)\])?$")


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int      # of one element
    count: int     # 1 for scalars
    code: str      # struct code of one element, or "" for a nested struct
    struct: str    # nested struct name, or ""


@dataclass(frozen=True)
class Struct:
    name: str
    size: int
    align: int
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def fmt(self, upto: str | None = None) -> str:
        """A little-endian struct format of the fields (byte arrays as 'Ns', other arrays as N
        values, nested structs as pad bytes), stopping before field `upto`."""
        out = ["<"]
        for f in self.fields:
            if f.name == upto:
                break
            if f.struct:
                out.append(f"{f.size * f.count}x")
            elif f.count > 1:
                out.append(f"{f.count}s" if f.code in ("c", "B") else f"{f.count}{f.code}")
            else:
                out.append(f.code.replace("c", "b"))
        return "".join(out)


@dataclass(frozen=True)
class Layout:
    consts: dict[str, int]
    structs: dict[str, Struct]


def parse_header(text: str) -> Layout:
    consts: dict[str, int] = {}
    for line in text.splitlines():
        m = _DEFINE.match(line.strip())
        if m:
            consts[m.group(1)] = int(m.group(2).strip("()"), 0)
    body = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    structs: dict[str, Struct] = {}
    for name, members in _STRUCT.findall(body):
        fields: list[Field] = []
        off = 0
        align = 1
        for decl in (d.strip() for d in members.split(";")):
            if not decl:
                continue
            m = _FIELD.match(" ".join(decl.split()))
            if not m:
                raise ValueError(f"record.h: struct {name}: cannot parse {decl!r}")
            ctype, fname, dim = m.groups()
            count = (consts[dim] if dim in consts else int(dim)) if dim else 1
            if ctype.startswith("struct "):
                inner = structs[ctype.split()[1]]
                code, size, al, sname = "", inner.size, inner.align, inner.name
            else:
                code, size = _TYPES[ctype]
                al, sname = size, ""
            if off % al:
                raise ValueError(f"record.h: {name}.{fname} at {off} needs explicit padding")
            fields.append(Field(fname, off, size, count, code, sname))
            off += size * count
            align = max(align, al)
        if off % align:
            raise ValueError(f"record.h: struct {name} needs tail padding to {align}")
        structs[name] = Struct(name, off, align, tuple(fields))
    return Layout(consts, structs)


# Headers holding record layouts, parsed as one text: uprobe.h builds on record.h's structs.
HEADERS = ("record.h", "uprobe.h", "uevents_watch.h")


@cache
def layout() -> Layout:
    return parse_header("\n".join(bpf_source(h).read_text() for h in HEADERS))


def const(name: str) -> int:
    return layout().consts[name]


def struct_of(name: str) -> Struct:
    return layout().structs[name]


def packer(name: str, upto: str | None = None) -> struct.Struct:
    return struct.Struct(struct_of(name).fmt(upto))


# -- identity: what a record's bytes mean, carried by capture files ----------------------------------


def layout_identity(header: str = "record.h", structs: Sequence[str] = ("sys_record", "read_slot")) -> dict:
    """What a record's bytes mean: the hash of the C header that defines them and the struct sizes."""
    text = bpf_source(header).read_bytes()
    return {"header": header, "sha256": hashlib.sha256(text).hexdigest(),
            "sizes": {s: struct_of(s).size for s in structs}}


def check_layout(identity: object) -> None:
    """Refuse records whose layout differs from the one this tracer decodes. The header named must be
    one of tracer's own (capture_check.LAYOUTS): a name from the file is never opened as a path."""
    try:
        header, structs, sha = check_layout_identity(identity)
    except Invalid as e:
        raise CaptureError(f"the capture's record layout is not valid: {e}") from None
    mine = layout_identity(header, structs)
    if mine["sha256"] != sha or mine["sizes"] != identity["sizes"]:  # type: ignore[index]
        raise CaptureError(f"the capture's record layout ({header} sha256 {sha[:12]}) differs from this tracer's "
                           f"({mine['sha256'][:12]}); replay it with the tracer version that recorded it")
