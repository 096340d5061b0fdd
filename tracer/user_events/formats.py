"""Event layouts from the two places they are written down: a `name_args` registration string (the
kernel's grammar, kernel/trace/trace_events_user.c user_event_parse_field) and a tracefs format file
(`events/user_events*/<name>/format`). Both give the same Fields, with offsets from the start of the
trace record (the 8 bytes of common_* fields come first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .abi import MAX_EVENT_DESC, MAX_FIELD_ARRAY_SIZE, TRACE_ENTRY_SIZE

_INT_SIZES = {"s64": 8, "u64": 8, "s32": 4, "u32": 4, "int": 4, "unsigned int": 4, "s16": 2, "u16": 2,
              "short": 2, "unsigned short": 2, "s8": 1, "u8": 1, "char": 1, "unsigned char": 1}
# Format files may also show the kernel's own spellings for the common fields.
_FORMAT_INTS = {**_INT_SIZES, "unsigned long": 8, "long": 8, "pid_t": 4, "unsigned": 4, "__u32": 4, "__s32": 4,
                "__u64": 8, "__s64": 8, "__u16": 2, "__s16": 2, "__u8": 1, "__s8": 1, "signed char": 1}
_CHAR_ARRAY = re.compile(r"(unsigned )?char\[(\w+)\]")
_LOC_PREFIXES = ("__data_loc unsigned ", "__data_loc ", "__rel_loc unsigned ", "__rel_loc ")


class FormatError(ValueError):
    """name_args the kernel would refuse (it returns EINVAL, or E2BIG for the length)."""


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str      # as registered: "u32", "char[20]", "__rel_loc char[]", "struct point"
    offset: int     # from the start of the trace record (common fields included)
    size: int
    signed: bool

    @property
    def kind(self) -> str:
        """int, chars (char[N]: text), bytes (unsigned char[N], struct), loc_str, loc_bytes."""
        t = self.ctype
        if t.startswith(("__data_loc", "__rel_loc")):
            return "loc_str" if "char" in t else "loc_bytes"
        m = _CHAR_ARRAY.fullmatch(t)
        if m:
            return "bytes" if m.group(1) else "chars"
        if t in _FORMAT_INTS and self.size in (1, 2, 4, 8):
            return "int"
        return "bytes"

    @property
    def rel(self) -> bool:
        return self.ctype.startswith("__rel_loc")

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.ctype, "offset": self.offset, "size": self.size,
                "signed": self.signed, "kind": self.kind}


@dataclass(frozen=True)
class EventFormat:
    system: str
    name: str                    # tracepoint name (multi-format: "<name>.<hex id>")
    id: int | None
    fields: tuple[Field, ...] = field(default=())

    @property
    def tracepoint(self) -> str:
        return f"{self.system}:{self.name}"

    @property
    def reg_name(self) -> str:
        """The registered name: a multi-format tracepoint name without its ".<hex id>"."""
        if self.system.endswith("_multi") and "." in self.name:
            return self.name.rsplit(".", 1)[0]
        return self.name

    @property
    def fixed_size(self) -> int:
        """Bytes of payload (after the common fields) the kernel requires in every write."""
        return max((f.offset + f.size for f in self.fields), default=TRACE_ENTRY_SIZE) - TRACE_ENTRY_SIZE


# -- name_args -------------------------------------------------------------------------------------

def _field_size(ctype: str) -> int:
    if ctype in _INT_SIZES:
        return _INT_SIZES[ctype]
    m = _CHAR_ARRAY.match(ctype)
    if m and ctype.startswith(("char[", "unsigned char[")):
        try:
            n = int(m.group(2), 0)
        except ValueError:
            raise FormatError(f"array size {m.group(2)!r} is not a number") from None
        if n > MAX_FIELD_ARRAY_SIZE:
            raise FormatError(f"array size {n} is over {MAX_FIELD_ARRAY_SIZE}")
        return n
    if ctype.startswith(("__data_loc ", "__rel_loc ")):
        return 4
    if ctype in ("long", "unsigned long"):
        raise FormatError(f"type {ctype!r} is refused by the kernel (its size differs between ABIs); use s64/u64")
    raise FormatError(f"unknown type {ctype!r}")


def _parse_field(text: str, offset: int) -> Field | None:
    text = text.lstrip()
    if not text:
        return None  # the kernel skips empty fields ("a u32 x;")
    is_struct = text.startswith("struct ")
    prefix = next((p for p in ("unsigned ", "struct ", *_LOC_PREFIXES) if text.startswith(p)), None)
    parts: list[str]
    if prefix is not None:
        cut = text.find(" ", len(prefix))
        if cut < 0:
            raise FormatError(f"field {text!r}: no name")
        ctype, parts = text[:cut], text[cut + 1:].split(" ")
    else:
        ctype, *parts = text.split(" ")
    if not parts or len(parts) > 2 or not parts[0]:
        extra = " or `struct type name size`" if is_struct else ""
        raise FormatError(f"field {text!r}: expected `type name`{extra}")
    name = parts[0]
    if len(parts) == 2:
        if not is_struct:
            raise FormatError(f"field {text!r}: only struct fields take a size")
        if not parts[1].isdigit():
            raise FormatError(f"field {text!r}: struct size {parts[1]!r} is not a decimal number")
        size = int(parts[1])
    elif is_struct:
        raise FormatError(f"field {text!r}: a struct field needs its size (`struct type name size`)")
    else:
        size = _field_size(ctype)
    if size == 0:
        raise FormatError(f"field {text!r}: size 0")
    return Field(name, ctype, offset, size, ctype[0] != "u")


def parse_name_args(name_args: str) -> tuple[str, str | None, tuple[Field, ...]]:
    """(name, flags text or None, fields) of a registration string `name[:FLAGS] [field[;field...]]`,
    with the kernel's rules; raises FormatError where the kernel answers EINVAL."""
    if len(name_args.encode()) + 1 > MAX_EVENT_DESC:
        n = len(name_args.encode())
        raise FormatError(f"name_args is {n} bytes; the kernel takes at most {MAX_EVENT_DESC - 1}")
    name, _, args = name_args.partition(" ")
    name, colon, flags = name.partition(":")
    if not name:
        raise FormatError("empty event name")
    fields: list[Field] = []
    offset = TRACE_ENTRY_SIZE
    if args:
        for part in args.split(";"):
            f = _parse_field(part, offset)
            if f is not None:
                fields.append(f)
                offset += f.size
    return name, (flags if colon else None), tuple(fields)


# -- tracefs format files --------------------------------------------------------------------------

_FMT_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
                        r"(?:\s*signed:(?P<signed>\d+);)?")
# The dimension may be garbage: 6.12 prints `__rel_loc char s[-1043189696]` now and then (an
# uninitialised length in the kernel), so any text between the brackets is accepted.
_DECL = re.compile(r"(?P<type>.*?)\s*(?P<name>\w+)\s*(?P<dim>\[[^\]]*\])?")


def parse_format_fields(text: str) -> tuple[Field, ...]:
    """Every non-common field of a format file. An array is written `TYPE NAME[N]` (or `NAME[]`), a
    __data_loc array `__data_loc TYPE[] NAME`; both come back with the registered spelling
    ("char[20]", "__rel_loc char[]")."""
    out = []
    for m in _FMT_FIELD.finditer(text):
        decl = " ".join(m.group("decl").split())
        d = _DECL.fullmatch(decl)
        if d is None:  # never dropped: kept as bytes under its declaration
            out.append(Field(decl, decl, int(m.group("off")), int(m.group("size")), False))
            continue
        ctype, name, dim = d.group("type"), d.group("name"), d.group("dim")
        if name.startswith("common_"):
            continue
        if dim is not None:
            if ctype.startswith(("__data_loc", "__rel_loc")):
                dim = "[]"  # the kernel may print a meaningless length here
            elif _CHAR_ARRAY.fullmatch(f"{ctype}[0]"):
                dim = f"[{m.group('size')}]"  # the size column is authoritative
            ctype += dim
        signed = m.group("signed")
        out.append(Field(name, ctype, int(m.group("off")), int(m.group("size")),
                         bool(int(signed)) if signed is not None else ctype[0] != "u"))
    return tuple(out)


def parse_format(text: str, system: str) -> EventFormat:
    name = re.search(r"^name:\s*(\S+)", text, re.M)
    ev_id = re.search(r"^ID:\s*(\d+)", text, re.M)
    return EventFormat(system, name.group(1) if name else "", int(ev_id.group(1)) if ev_id else None,
                       parse_format_fields(text))


def read_format(event_dir: Path) -> EventFormat:
    """The format of one event directory (events/<system>/<name>/)."""
    fmt = parse_format((event_dir / "format").read_text(), event_dir.parent.name)
    if fmt.id is None and (event_dir / "id").exists():
        fmt = EventFormat(fmt.system, fmt.name, int((event_dir / "id").read_text().strip()), fmt.fields)
    if not fmt.name:
        fmt = EventFormat(fmt.system, event_dir.name, fmt.id, fmt.fields)
    return fmt
