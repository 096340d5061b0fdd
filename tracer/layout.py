"""The record layout, derived from bpf/record.h so that the C and Python sides cannot drift.

Parses the header's `#define NAME <int>` lines and its structs (fixed-width integer fields and arrays)
into `struct.Struct` formats. tests/test_layout.py checks every offset against the C compiler.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, reduce

from .capture_check import Invalid, check_layout_identity, shown
from .errors import CaptureError
from .kenv import bpf_source
from .layout_texts import TEXT_LAYOUTS

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


def parse_header(text: str, base: Layout | None = None) -> Layout:
    """The #defines and structs `text` defines; array sizes and nested structs it takes from a header it
    includes are looked up in `base` (what that header defines)."""
    consts: dict[str, int] = {}
    for line in text.splitlines():
        m = _DEFINE.match(line.strip())
        if m:
            consts[m.group(1)] = int(m.group(2).strip("()"), 0)
    dims = {**base.consts, **consts} if base else consts
    known = dict(base.structs) if base else {}
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
            count = (dims[dim] if dim in dims else int(dim)) if dim else 1
            if ctype.startswith("struct "):
                inner = known[ctype.split()[1]]
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
        structs[name] = known[name] = Struct(name, off, align, tuple(fields))
    return Layout(consts, structs)


def _merged(a: Layout, b: Layout) -> Layout:
    return Layout({**a.consts, **b.consts}, {**a.structs, **b.structs})


# Headers holding record layouts, in include order: uprobe.h builds on record.h's structs and constants.
HEADERS = ("record.h", "uprobe.h", "uevents_watch.h")


@cache
def headers() -> dict[str, Layout]:
    """What each header of HEADERS defines itself (parsed after the ones before it)."""
    out: dict[str, Layout] = {}
    seen = Layout({}, {})
    for h in HEADERS:
        out[h] = parse_header(bpf_source(h).read_text(), seen)
        seen = _merged(seen, out[h])
    return out


@cache
def layout() -> Layout:
    return reduce(_merged, headers().values(), Layout({}, {}))


def const(name: str) -> int:
    return layout().consts[name]


def struct_of(name: str) -> Struct:
    return layout().structs[name]


def packer(name: str, upto: str | None = None) -> struct.Struct:
    return struct.Struct(struct_of(name).fmt(upto))


# -- identity: what a record's bytes mean, carried by capture files ----------------------------------

# A capture's layout identity is the sha256 of this canonical form of what its header defines, parsed:
# every struct (name, size, alignment, and per field its name, offset, element size, count, struct code,
# nested struct in full) and the #define constants, as sorted compact JSON. Comments, whitespace and the
# order of the text do not change it; anything the decoder reads does. Defines count, all of them but
# the stats counters (ST_*, NSTATS; UE_ST_*, UE_NSTATS): the decoder, the read plans rebuilt at replay
# (caps) and the status/kind/flag tables all read constants by name, so leaving one out would need a
# list to keep right by hand, and a wrong guess decodes wrongly. The counters only index the live
# per-CPU stats maps, which a capture never holds (its trailer names its counters), and they are what
# grows as accounting does (ST_RING_FULL did): counting them would refuse captures whose bytes decode
# alike. tests/test_layout_identity.py checks that the modules which decode captures never use them.
LAYOUT_SCHEME = "parsed-layout/1"  # the value of an identity's "sha256_of"; change it with the form
_COUNTER = re.compile(r"(UE_)?(ST_\w+|NSTATS)")


def layout_digest(own: Layout, context: Layout | None = None) -> str:
    """sha256 of the canonical form of `own` (one header's parse); nested structs it takes from an
    included header are looked up in `context` and serialized in full."""
    structs = {**context.structs, **own.structs} if context else own.structs

    def canon(s: Struct) -> list:
        return [s.size, s.align, [[f.name, f.offset, f.size, f.count, f.code,
                                   canon(structs[f.struct]) if f.struct else None] for f in s.fields]]

    form = {"consts": {k: v for k, v in own.consts.items() if not _COUNTER.fullmatch(k)},
            "structs": {name: canon(s) for name, s in own.structs.items()}}
    return hashlib.sha256(json.dumps(form, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@cache
def _digest(header: str) -> str:
    return layout_digest(headers()[header], layout())


def layout_identity(header: str = "record.h", structs: Sequence[str] = ("sys_record", "read_slot")) -> dict:
    """What a record's bytes mean: the digest of the header's parsed layout, and the struct sizes."""
    return {"header": header, "sha256_of": LAYOUT_SCHEME, "sha256": _digest(header),
            "sizes": {s: struct_of(s).size for s in structs}}


def check_layout(identity: object) -> None:
    """Refuse records whose layout differs from the one this tracer decodes. The header named must be
    one of tracer's own (capture_check.LAYOUTS): a name from the file is never opened as a path.
    An identity without "sha256_of" comes from a tracer that hashed the header's text (before
    LAYOUT_SCHEME): it replays when that text is this tracer's header, or one of the texts tracer shipped
    (layout_texts) whose parse is this layout; any other text is refused, as a text hash cannot tell a
    comment from a field."""
    try:
        header, structs, sha, scheme = check_layout_identity(identity)
    except Invalid as e:
        raise CaptureError(f"the capture's record layout is not valid: {e}") from None
    mine = layout_identity(header, structs)
    if scheme is None:
        same = (sha == hashlib.sha256(bpf_source(header).read_bytes()).hexdigest()
                or TEXT_LAYOUTS.get(header, {}).get(sha) == mine["sha256"])
    else:
        same = scheme == LAYOUT_SCHEME and sha == mine["sha256"]
    if not same or mine["sizes"] != identity["sizes"]:  # type: ignore[index]
        what = {None: "text sha256", LAYOUT_SCHEME: "sha256"}.get(scheme, f"sha256 of {shown(scheme)}")
        raise CaptureError(f"the capture's record layout ({header} {what} {sha[:12]}) differs from this "
                           f"tracer's ({mine['sha256'][:12]}); replay it with the tracer version that recorded it")
