"""Writing EventHeader events (the layout tracer.user_events.eventheader decodes), for tracer's emitter:

    with UserEvents() as ue:
        ev = ue.register_eventheader("MyProvider", level=4, keyword=0x2)   # MyProvider_L4K2
        if ev.enabled:
            ev.write_payload(encode_event("Request", [EhField("id", "value32", 7, "signed_int"),
                                                      EhField("path", "zstring_char8", "/srv/a")], level=4))

Both byte orders can be written (the flags byte says which), so decoders can be tested on either.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .eventheader import (
    ENC_CARRAY,
    ENC_CHAIN,
    ENC_VARRAY,
    ENCODINGS,
    EXT_ACTIVITY_ID,
    EXT_CHAIN,
    EXT_METADATA,
    FLAG_EXTENSION,
    FLAG_LITTLE_ENDIAN,
    FLAG_POINTER64,
    FMT_CHAIN,
    FORMATS,
    ByteOrder,
)

_VALUE_SIZE = {"value8": 1, "value16": 2, "value32": 4, "value64": 8, "value128": 16}
_UNIT = {"8": 1, "16": 2, "32": 4}


@dataclass(frozen=True)
class EhField:
    """One field: for "struct", `value` is a sequence of EhField (its members); for arrays ("const" or
    "var"), `value` is a sequence of element values."""
    name: str
    encoding: str
    value: object
    format: str = "default"
    tag: int = 0
    array: str | None = None


def _codec(unit: int, order: ByteOrder) -> str:
    return {1: "utf-8", 2: f"utf-16-{order[0]}e", 4: f"utf-32-{order[0]}e"}[unit]


def _scalar(enc: str, fmt: str, v: object, order: ByteOrder) -> bytes:
    n = _VALUE_SIZE[enc]
    if isinstance(v, bytes | bytearray):
        if len(v) != n:
            raise ValueError(f"{len(v)} bytes for a {n}-byte {enc}")
        return bytes(v)
    if fmt == "float":
        return struct.pack(("<" if order == "little" else ">") + ("f" if n == 4 else "d"), float(v))  # type: ignore[arg-type]
    if fmt in ("ip_address", "ip_address_obsolete") and isinstance(v, str):
        return ipaddress.ip_address(v).packed
    if fmt == "uuid" and isinstance(v, str):
        return bytes.fromhex(v.replace("-", ""))
    if fmt == "port":
        return int(v).to_bytes(2, "big")  # type: ignore[call-overload]
    iv = int(v)  # type: ignore[call-overload]
    return iv.to_bytes(n, order, signed=iv < 0)


def _element(f: EhField, v: object, order: ByteOrder) -> bytes:
    enc = f.encoding
    if enc in _VALUE_SIZE:
        return _scalar(enc, f.format, v, order)
    if enc == "binary_length16_char8":
        data = bytes(v)  # type: ignore[call-overload]
        return len(data).to_bytes(2, order) + data
    unit = _UNIT[enc.rsplit("char", 1)[1]]
    data = v.encode(_codec(unit, order)) if isinstance(v, str) else bytes(v)  # type: ignore[call-overload]
    if enc.startswith("zstring"):
        return data + bytes(unit)
    return (len(data) // unit).to_bytes(2, order) + data


def _field(f: EhField, order: ByteOrder) -> tuple[bytes, bytes]:
    """(metadata, payload) of one field."""
    enc = ENCODINGS.index(f.encoding)
    fmt = FORMATS.index(f.format) if f.format in FORMATS else int(f.format)
    if f.encoding == "struct":
        members = list(f.value)  # type: ignore[call-overload]
        fmt = len(members)
    flags = {None: 0, "const": ENC_CARRAY, "var": ENC_VARRAY}[f.array]
    meta = f.name.encode() + b"\0"
    if fmt or f.tag:
        meta += bytes([enc | flags | ENC_CHAIN, fmt | (FMT_CHAIN if f.tag else 0)])
        if f.tag:
            meta += f.tag.to_bytes(2, order)
    else:
        meta += bytes([enc | flags])
    if f.encoding == "struct":
        parts = [_field(m, order) for m in members]
        return meta + b"".join(m for m, _ in parts), b"".join(p for _, p in parts)
    if f.array is None:
        return meta, _element(f, f.value, order)
    values = list(f.value)  # type: ignore[call-overload]
    count = len(values).to_bytes(2, order)
    body = b"".join(_element(f, v, order) for v in values)
    return (meta + count, body) if f.array == "const" else (meta, count + body)


def encode_event(name: str, fields: Sequence[EhField], *, level: int, id: int = 0, version: int = 0, tag: int = 0,
                 opcode: int = 0, activity: bytes | None = None, related: bytes | None = None,
                 order: ByteOrder = "little", extensions: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """The bytes to write after the write_index: eventheader, extensions (activity id, any `extensions`
    given as (kind, data), then the metadata), payload."""
    parts = [_field(f, order) for f in fields]
    meta = name.encode() + b"\0" + b"".join(m for m, _ in parts)
    exts: list[tuple[int, bytes]] = []
    if activity is not None:
        exts.append((EXT_ACTIVITY_ID, activity + (related or b"")))
    exts += list(extensions)
    exts.append((EXT_METADATA, meta))
    flags = FLAG_POINTER64 | FLAG_EXTENSION | (FLAG_LITTLE_ENDIAN if order == "little" else 0)
    out = bytes([flags, version]) + id.to_bytes(2, order) + tag.to_bytes(2, order) + bytes([opcode, level])
    for i, (kind, data) in enumerate(exts):
        chain = EXT_CHAIN if i < len(exts) - 1 else 0
        out += len(data).to_bytes(2, order) + (kind | chain).to_bytes(2, order) + data
    return out + b"".join(p for _, p in parts)


def tracepoint_name(provider: str, level: int, keyword: int = 0, options: str = "") -> str:
    return f"{provider}_L{level:x}K{keyword:x}{options}"


# Short names for `tracer user-events emit-eventheader NAME:TYPE=VALUE`: (encoding, format).
FIELD_TYPES: dict[str, tuple[str, str]] = {
    **{f"i{n}": (f"value{n}", "signed_int") for n in (8, 16, 32, 64)},
    **{f"u{n}": (f"value{n}", "unsigned_int") for n in (8, 16, 32, 64)},
    **{f"x{n}": (f"value{n}", "hex_int") for n in (8, 16, 32, 64)},
    "f32": ("value32", "float"), "f64": ("value64", "float"), "bool": ("value8", "boolean"),
    "errno": ("value32", "errno"), "pid": ("value32", "pid"), "time": ("value64", "time"),
    "str": ("zstring_char8", "string_utf"), "str16": ("zstring_char16", "string_utf"),
    "str32": ("zstring_char32", "string_utf"), "cstr": ("string_length16_char8", "string_utf"),
    "bin": ("binary_length16_char8", "hex_bytes"), "uuid": ("value128", "uuid"),
    "ipv4": ("value32", "ip_address"), "ipv6": ("value128", "ip_address"), "port": ("value16", "port"),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _value(text: str, encoding: str, fmt: str) -> object:
    if fmt in ("hex_bytes",) or encoding == "binary_length16_char8":
        return bytes.fromhex(text)
    if fmt == "boolean":
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{text!r} is not a boolean (true/false/1/0)")
        return int(text.lower() in _TRUE)
    if fmt == "float":
        return float(text)
    if encoding in _VALUE_SIZE and fmt not in ("uuid", "ip_address", "ip_address_obsolete"):
        return int(text, 0)
    return text


def parse_field(spec: str) -> EhField:
    """`NAME:TYPE=VALUE` (TYPE one of FIELD_TYPES, or ENCODING[/FORMAT] as the spec names them), with `[]`
    after TYPE for a variable-length array of comma-separated values: `n:i32=-5`, `msg:str=hello`,
    `ids:u16[]=1,2,3`, `raw:value32/hex_int=0x10`. ValueError says what is wrong."""
    head, sep, text = spec.partition("=")
    name, colon, typ = head.partition(":")
    if not sep or not colon or not name:
        raise ValueError(f"{spec!r}: expected NAME:TYPE=VALUE (e.g. n:i32=5, msg:str=hello)")
    array = typ.endswith("[]")
    typ = typ.removesuffix("[]")
    if typ in FIELD_TYPES:
        encoding, fmt = FIELD_TYPES[typ]
    else:
        encoding, _, fmt = typ.partition("/")
        fmt = fmt or "default"
        if encoding not in ENCODINGS or encoding in ("invalid", "struct") or fmt not in FORMATS:
            raise ValueError(f"{spec!r}: unknown type {typ!r}; types: {', '.join(FIELD_TYPES)}, or ENCODING[/FORMAT]"
                             f" with ENCODING one of {', '.join(ENCODINGS[2:])}")
    try:
        value: object = ([_value(v, encoding, fmt) for v in text.split(",")] if text else []) if array else \
            _value(text, encoding, fmt)
        field = EhField(name, encoding, value, fmt, array="var" if array else None)
        _field(field, "little")  # values that do not fit their type fail here, not at write time
    except OverflowError:
        raise ValueError(f"{spec!r}: a value does not fit {typ}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{spec!r}: {e}") from None
    return field
