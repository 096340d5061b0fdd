"""EventHeader events (microsoft/LinuxTracepoints, libeventheader-tracepoint/include/eventheader/eventheader.h),
what the LinuxTracepoints libraries and the OpenTelemetry user_events exporters write.

A tracepoint named `<Provider>_L<level hex>K<keyword hex>[options]` with the six fields `u8 eventheader_flags;
u8 version; u16 id; u16 tag; u8 opcode; u8 level` carries, after those 8 bytes, extension blocks (metadata: the
event's name and its fields' names and types; activity ids) and the payload the metadata describes. Everything
here is written by another process: every length is checked, and content that does not fit the format stops
the decoding with the payload offset and the reason (`Malformed`), keeping what was decoded before it.
"""

from __future__ import annotations

import datetime
import errno as errno_mod
import ipaddress
import re
import struct
from dataclasses import dataclass, field
from typing import Literal

HEADER_FIELDS = (("eventheader_flags", "u8"), ("version", "u8"), ("id", "u16"), ("tag", "u16"), ("opcode", "u8"),
                 ("level", "u8"))
COMMAND_TYPES = "u8 eventheader_flags; u8 version; u16 id; u16 tag; u8 opcode; u8 level"
NAME_MAX = 256
MAX_DEPTH = 32  # struct nesting; the reference decoder stops at 8 levels, hostile metadata could go deeper
FLAG_POINTER64, FLAG_LITTLE_ENDIAN, FLAG_EXTENSION = 0x01, 0x02, 0x04
EXT_METADATA, EXT_ACTIVITY_ID, EXT_CHAIN = 1, 2, 0x8000
ENC_CARRAY, ENC_VARRAY, ENC_CHAIN, FMT_CHAIN = 0x20, 0x40, 0x80, 0x80

ENCODINGS = ("invalid", "struct", "value8", "value16", "value32", "value64", "value128", "zstring_char8",
             "zstring_char16", "zstring_char32", "string_length16_char8", "string_length16_char16",
             "string_length16_char32", "binary_length16_char8")
FORMATS = ("default", "unsigned_int", "signed_int", "hex_int", "errno", "pid", "time", "boolean", "float",
           "hex_bytes", "string8", "string_utf", "string_utf_bom", "string_xml", "string_json", "uuid", "port",
           "ip_address", "ip_address_obsolete")
OPCODES = {0: "info", 1: "activity_start", 2: "activity_stop", 3: "collection_start", 4: "collection_stop",
           5: "extension", 6: "reply", 7: "resume", 8: "suspend", 9: "send", 0xF0: "receive"}
_VALUE_SIZE = {"value8": 1, "value16": 2, "value32": 4, "value64": 8, "value128": 16}
_CHAR_SIZE = {"zstring_char8": 1, "zstring_char16": 2, "zstring_char32": 4, "string_length16_char8": 1,
              "string_length16_char16": 2, "string_length16_char32": 4}
# The sizes each fixed-size format accepts; any other size falls back to the encoding's default format.
_FORMAT_SIZES = {"unsigned_int": (1, 2, 4, 8), "signed_int": (1, 2, 4, 8), "hex_int": (1, 2, 4, 8), "errno": (4,),
                 "pid": (4,), "time": (4, 8), "boolean": (1, 2, 4), "float": (4, 8), "uuid": (16,), "port": (2,),
                 "ip_address": (4, 16), "ip_address_obsolete": (4, 16), "string8": (1,), "string_utf": (2, 4)}
ByteOrder = Literal["little", "big"]  # int.from_bytes order: the EventHeader flags byte says which

DEFAULT_FORMAT = {"struct": "default", "value128": "hex_bytes", "binary_length16_char8": "hex_bytes",
                   **{f"value{n}": "unsigned_int" for n in (8, 16, 32, 64)}, **dict.fromkeys(_CHAR_SIZE, "string_utf")}
_STRING_FORMATS = ("string8", "string_utf", "string_utf_bom", "string_xml", "string_json")
_NAME = re.compile(r"L(?P<level>[0-9a-f]*)K(?P<keyword>[0-9a-f]*)(?P<options>(?:[A-Z][0-9a-z]*)*)")
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


class Malformed(ValueError):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"at payload offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class TracepointName:
    provider: str
    level: int
    keyword: int
    options: str

    @property
    def group(self) -> str | None:
        """The `G<name>` option: the provider group."""
        m = re.search(r"G([0-9a-z]*)", self.options)
        return m.group(1) if m else None


def parse_tracepoint_name(name: str) -> TracepointName | None:
    """`<Provider>_L<level>K<keyword><options>`, split at the last underscore as the reference decoder does;
    None when the name does not follow the convention."""
    provider, sep, attrs = name.rpartition("_")
    m = _NAME.fullmatch(attrs)
    if not sep or m is None or len(name) >= NAME_MAX or " " in provider or ":" in provider:
        return None
    level = int(m.group("level") or "0", 16)
    keyword = int(m.group("keyword") or "0", 16)
    if level > 0xFF or keyword > 0xFFFF_FFFF_FFFF_FFFF:
        return None
    return TracepointName(provider, level, keyword, m.group("options"))


def is_eventheader(name: str, fields: list[tuple[str, str]]) -> bool:
    """An EventHeader tracepoint: its name follows the convention and its fields are exactly the header's."""
    return tuple(fields) == HEADER_FIELDS and parse_tracepoint_name(name) is not None


def split_attributes(text: str) -> tuple[str, dict[str, str]]:
    """`name;attr=value;...` (a `;;` inside a value stands for one `;`) -> (name, {attr: value})."""
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == ";" and text[i + 1:i + 2] == ";" and parts:
            cur += ";"
            i += 2
            continue
        if c == ";":
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    attrs = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        attrs[k] = v
    return parts[0], attrs


def uuid_text(b: bytes) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# -- metadata --------------------------------------------------------------------------------------

@dataclass
class FieldDef:
    name: str
    attributes: dict[str, str]
    encoding: str
    format: str
    format_code: int
    tag: int
    array: str | None        # None, "const" (count in the metadata) or "var" (u16 count in the payload)
    count: int
    children: list[FieldDef] = field(default_factory=list)  # struct members


class _Meta:
    def __init__(self, buf: bytes, order: ByteOrder) -> None:
        self.buf, self.order, self.pos = buf, order, 0

    def _u16(self, what: str) -> int:
        if len(self.buf) - self.pos < 2:
            raise Malformed(-1, f"metadata ends inside {what}")
        v = int.from_bytes(self.buf[self.pos:self.pos + 2], self.order)
        self.pos += 2
        return v

    def cstr(self, what: str) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise Malformed(-1, f"{what} in the metadata has no NUL terminator")
        s = self.buf[self.pos:end].decode("utf-8", "replace")
        self.pos = end + 1
        return s

    def fields(self, limit: int | None, depth: int = 0) -> list[FieldDef]:
        if depth > MAX_DEPTH:
            raise Malformed(-1, f"structs nested deeper than {MAX_DEPTH}")
        out: list[FieldDef] = []
        while self.pos < len(self.buf) and (limit is None or len(out) < limit):
            out.append(self.field(depth))
        return out

    def field(self, depth: int) -> FieldDef:
        name, attrs = split_attributes(self.cstr("a field name"))
        if self.pos >= len(self.buf):
            raise Malformed(-1, f"field {name!r}: metadata ends before its encoding")
        enc_byte = self.buf[self.pos]
        self.pos += 1
        fmt_code, tag = 0, 0
        if enc_byte & ENC_CHAIN:
            if self.pos >= len(self.buf):
                raise Malformed(-1, f"field {name!r}: metadata ends before its format")
            fmt_byte = self.buf[self.pos]
            self.pos += 1
            fmt_code = fmt_byte & 0x7F
            if fmt_byte & FMT_CHAIN:
                tag = self._u16(f"field {name!r}'s tag")
        enc = enc_byte & 0x1F
        if enc == 0 or enc >= len(ENCODINGS):
            raise Malformed(-1, f"field {name!r}: {'invalid' if enc == 0 else 'unknown'} encoding {enc}")
        flags = enc_byte & (ENC_CARRAY | ENC_VARRAY)
        array, count = None, 1
        if flags == ENC_CARRAY | ENC_VARRAY:
            raise Malformed(-1, f"field {name!r}: both constant- and variable-length array flags (reserved)")
        if flags == ENC_CARRAY:
            array, count = "const", self._u16(f"field {name!r}'s array length")
            if count == 0:
                raise Malformed(-1, f"field {name!r}: constant-length array of 0 elements")
        elif flags == ENC_VARRAY:
            array = "var"
        encoding = ENCODINGS[enc]
        fmt = FORMATS[fmt_code] if fmt_code < len(FORMATS) else f"format_{fmt_code}"
        f = FieldDef(name, attrs, encoding, "default" if encoding == "struct" else fmt, fmt_code, tag, array, count)
        if encoding == "struct":
            if fmt_code == 0:
                raise Malformed(-1, f"struct {name!r} declares 0 fields")
            f.children = self.fields(fmt_code, depth + 1)
        return f


# -- payload ---------------------------------------------------------------------------------------

class _Payload:
    def __init__(self, buf: bytes, order: ByteOrder) -> None:
        self.buf, self.order, self.pos = buf, order, 0

    def take(self, n: int, what: str) -> bytes:
        if len(self.buf) - self.pos < n:
            raise Malformed(self.pos, f"{what} needs {n} bytes, {len(self.buf) - self.pos} left")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), self.order)


def _text(raw: bytes, codec: str) -> tuple[str, bool]:
    try:
        return raw.decode(codec), True
    except UnicodeDecodeError:
        return raw.decode(codec, "replace"), False


def _codec(unit: int, order: ByteOrder) -> str:
    return {1: "utf-8", 2: f"utf-16-{order[0]}e", 4: f"utf-32-{order[0]}e"}[unit]


def _string(raw: bytes, unit: int, fmt: str, order: ByteOrder) -> dict:
    out = _string_value(raw, unit, fmt, order)
    out["as"] = fmt
    return out


def _string_value(raw: bytes, unit: int, fmt: str, order: ByteOrder) -> dict:
    if fmt == "hex_bytes":
        return {"value": raw.hex()}
    if fmt == "string8" and unit == 1:
        return {"value": raw.decode("latin-1")}
    codec = _codec(unit, order)
    if fmt in ("string_utf_bom", "string_xml", "string_json"):
        for bom, bom_codec in _BOMS:
            if raw.startswith(bom) and (len(bom) == unit or (unit == 1 and bom_codec == "utf-8")):
                raw, codec = raw[len(bom):], bom_codec
                break
    text, clean = _text(raw, codec)
    return {"value": text} if clean else {"value": text, "hex": raw.hex()}


def _scalar(raw: bytes, fmt: str, order: ByteOrder) -> dict:
    """A fixed-size value (value8..value128, or a length16 field whose length fits the format), with "as":
    the format it was decoded with (the encoding's default when the declared one does not fit its size)."""
    n = len(raw)
    if fmt == "default" or (fmt in _FORMAT_SIZES and n not in _FORMAT_SIZES[fmt]) or fmt not in FORMATS:
        fmt = "hex_bytes" if n == 16 else "unsigned_int"
    out = _scalar_value(raw, fmt, order)
    out["as"] = fmt
    return out


def _scalar_value(raw: bytes, fmt: str, order: ByteOrder) -> dict:
    n = len(raw)
    if fmt in ("unsigned_int", "hex_int"):
        return {"value": int.from_bytes(raw, order)}
    if fmt in ("signed_int", "pid"):
        return {"value": int.from_bytes(raw, order, signed=True)}
    if fmt == "errno":
        v = int.from_bytes(raw, order, signed=True)
        return {"value": v, "text": errno_mod.errorcode.get(v, f"ERRNO({v})")}
    if fmt == "time":
        v = int.from_bytes(raw, order, signed=True)
        try:
            when = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=v)
            return {"value": v, "text": when.isoformat()}
        except OverflowError:
            return {"value": v}  # outside what a calendar date can show: the number alone
    if fmt == "boolean":
        v = int.from_bytes(raw, order, signed=n == 4)
        return {"value": bool(v)} if v in (0, 1) else {"value": v, "text": "not a boolean (0 or 1)"}
    if fmt == "float":
        v = struct.unpack((">" if order == "big" else "<") + ("f" if n == 4 else "d"), raw)[0]
        if v != v or v in (float("inf"), float("-inf")):
            return {"value": None, "text": ("-" if raw[0 if order == "big" else -1] & 0x80 else "") +
                    ("nan" if v != v else "inf")}
        return {"value": v}
    if fmt == "uuid":
        return {"value": uuid_text(raw)}
    if fmt == "port":
        return {"value": int.from_bytes(raw, "big")}
    if fmt in ("ip_address", "ip_address_obsolete"):
        return {"value": str(ipaddress.ip_address(raw))}
    if fmt in ("string8", "string_utf"):
        code = int.from_bytes(raw, order)
        if fmt == "string8":
            return {"value": chr(code)}
        text, clean = _text(raw, _codec(n, order))
        return {"value": text} if clean else {"value": text, "hex": raw.hex()}
    return {"value": raw.hex()}  # hex_bytes


def _element(p: _Payload, f: FieldDef) -> dict:
    """One value (or one struct) of field f at the payload position."""
    enc = f.encoding
    if enc == "struct":
        return {"value": [_field(p, c) for c in f.children], "as": "default"}
    if enc in _VALUE_SIZE:
        return _scalar(p.take(_VALUE_SIZE[enc], f"field {f.name!r} ({enc})"), f.format, p.order)
    if enc.startswith("zstring"):
        unit = _CHAR_SIZE[enc]
        start = p.pos
        at = start
        while True:
            if len(p.buf) - at < unit:
                raise Malformed(start, f"field {f.name!r}: string without its terminating zero")
            if p.buf[at:at + unit] == bytes(unit):
                break
            at += unit
        raw = p.buf[start:at]
        p.pos = at + unit
        return _string(raw, unit, "string_utf" if f.format == "default" else f.format, p.order)
    length = p.u16(f"field {f.name!r}'s length")
    unit = _CHAR_SIZE.get(enc, 1)
    raw = p.take(length * unit, f"field {f.name!r} ({length} units of {unit} bytes)")
    fmt = f.format
    if enc in ("string_length16_char8", "binary_length16_char8") and fmt in _FORMAT_SIZES and \
            fmt not in _STRING_FORMATS:
        if length == 0:
            return {"value": None, "as": fmt}
        if length in _FORMAT_SIZES[fmt]:
            return _scalar(raw, fmt, p.order)
        fmt = "default"
    if fmt not in ("hex_bytes", *_STRING_FORMATS):  # default, or a format this length cannot carry
        fmt = "hex_bytes" if enc == "binary_length16_char8" else "string_utf"
    return _string(raw, unit, fmt, p.order)


def _field(p: _Payload, f: FieldDef) -> dict:
    out: dict = {"name": f.name}
    declared = DEFAULT_FORMAT[f.encoding] if f.format == "default" else f.format
    if f.array is None:
        out.update(_element(p, f))
        if out["as"] == declared:
            del out["as"]
    else:
        n = f.count if f.array == "const" else p.u16(f"field {f.name!r}'s element count")
        elems = [_element(p, f) for _ in range(n)]
        out["value"] = [e["value"] for e in elems]
        texts = [e.get("text") for e in elems]
        if any(t is not None for t in texts):
            out["text"] = texts
        hexes = [e.get("hex") for e in elems]
        if any(h is not None for h in hexes):
            out["hex"] = hexes
        shown = {e["as"] for e in elems} - {declared}
        if shown:  # decoded with another format than declared (its size does not fit): say which
            out["as"] = [e["as"] for e in elems] if len({e["as"] for e in elems}) > 1 else shown.pop()
    out["encoding"] = f.encoding
    if f.format != "default":
        out["format"] = f.format
    if f.array:
        out["array"] = f.array
    if f.tag:
        out["tag"] = f.tag
    if f.attributes:
        out["attributes"] = f.attributes
    return out


# -- the event ---------------------------------------------------------------------------------------

def decode(tracepoint: str, data: bytes) -> dict:
    """An EventHeader event: `data` is the payload (from the eventheader struct on). Returns {"eventheader":
    {...}, "end": offset where the described content ends} and, when the content does not fit the format,
    "malformed": {"offset", "reason"} with everything decoded before that point."""
    name = parse_tracepoint_name(tracepoint)
    if name is None:
        raise ValueError(f"{tracepoint!r} is not an EventHeader tracepoint name")
    eh: dict = {"provider": name.provider, "event": None, "level": name.level, "keyword": name.keyword}
    if name.options:
        eh["options"] = name.options
        if name.group is not None:
            eh["group"] = name.group
    out: dict = {"eventheader": eh, "end": len(data)}
    try:
        out["end"] = _decode_into(eh, name, data)
    except Malformed as e:
        out["malformed"] = {"offset": e.offset, "reason": e.reason}
    return out


def _decode_into(eh: dict, name: TracepointName, data: bytes) -> int:
    if len(data) < 8:
        raise Malformed(0, f"{len(data)} bytes: shorter than the 8-byte eventheader")
    flags, version = data[0], data[1]
    order: ByteOrder = "little" if flags & FLAG_LITTLE_ENDIAN else "big"
    ident, tag = int.from_bytes(data[2:4], order), int.from_bytes(data[4:6], order)
    opcode, level = data[6], data[7]
    eh.update({"id": ident, "version": version, "tag": tag, "opcode": opcode,
               "opcode_name": OPCODES.get(opcode), "byte_order": order,
               "pointer_size": 8 if flags & FLAG_POINTER64 else 4, "flags": flags})
    if flags & ~(FLAG_POINTER64 | FLAG_LITTLE_ENDIAN | FLAG_EXTENSION):
        raise Malformed(0, f"unknown eventheader flags {flags:#04x}")
    if level != name.level:
        raise Malformed(7, f"header level {level} differs from the tracepoint name's level {name.level}")
    pos = 8
    meta: bytes | None = None
    unknown: list[dict] = []
    chain = bool(flags & FLAG_EXTENSION)
    while chain:
        if len(data) - pos < 4:
            raise Malformed(pos, "extension header needs 4 bytes")
        size, kind = int.from_bytes(data[pos:pos + 2], order), int.from_bytes(data[pos + 2:pos + 4], order)
        body_at = pos + 4
        if len(data) - body_at < size:
            raise Malformed(pos, f"extension of kind {kind & 0x7FFF} declares {size} bytes, "
                                 f"{len(data) - body_at} left")
        body = data[body_at:body_at + size]
        k = kind & 0x7FFF
        if k == 0:
            raise Malformed(pos, "extension of kind 0 (invalid)")
        if k == EXT_METADATA:
            if meta is not None:
                raise Malformed(pos, "a second metadata extension")
            meta = body
            meta_at = body_at
        elif k == EXT_ACTIVITY_ID:
            if "activity_id" in eh or size not in (16, 32):
                raise Malformed(pos, f"activity id extension of {size} bytes (16 or 32 expected)"
                                if size not in (16, 32) else "a second activity id extension")
            eh["activity_id"] = uuid_text(body[:16])
            if size == 32:
                eh["related_id"] = uuid_text(body[16:])
        else:
            unknown.append({"kind": k, "size": size, "hex": body.hex()})
        pos = body_at + size
        chain = bool(kind & EXT_CHAIN)
    if unknown:
        eh["extensions"] = unknown
    if meta is None:
        eh["fields"] = None
        eh["no_metadata"] = "no metadata extension: the payload is described by a manifest tracer does not have"
        return pos
    m = _Meta(meta, order)
    try:
        ev_name, ev_attrs = split_attributes(m.cstr("the event name"))
        eh["event"] = ev_name
        if ev_attrs:
            eh["event_attributes"] = ev_attrs
        defs = m.fields(None)
    except Malformed as e:
        raise Malformed(meta_at + m.pos, f"metadata: {e.reason}") from None
    p = _Payload(data[pos:], order)
    fields: list[dict] = []
    eh["fields"] = fields
    try:
        for f in defs:
            fields.append(_field(p, f))
    except Malformed as e:
        raise Malformed(pos + e.offset, e.reason) from None
    return pos + p.pos
