"""EventHeader decoding (tracer/user_events/eventheader.py) against the reference decoder's own test data
(tests/fixtures/eventheader: microsoft/LinuxTracepoints TestOutput, MIT), then hostile and big-endian input."""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import pytest

from tracer.user_events import eventheader as eh

FIX = Path(__file__).parent / "fixtures" / "eventheader"


def dat_records() -> list[tuple[str, bytes]]:
    data = (FIX / "EventHeaderInterceptorLE64.dat").read_bytes()
    out, pos = [], 0
    while pos < len(data):
        size = struct.unpack_from("<I", data, pos)[0]
        rec = data[pos + 4:pos + size]
        name, _, event = rec.partition(b"\0")
        out.append((name.decode(), event))
        pos += size
    assert pos == len(data)
    return out


def expected() -> list[list]:
    # The reference writes invalid text as its raw bytes: surrogateescape keeps them for the comparison.
    text = (FIX / "EventHeaderInterceptorLE64.dat.linux.json").read_bytes()[3:].decode("utf-8", "surrogateescape")
    # Not one JSON document ("name": [...]) and with repeated keys: keep every pair in order.
    return json.loads("{" + text + "}", object_pairs_hook=list)[0][1]


class NotText(bytes):
    """A string value that was not valid text: the decoder kept its exact bytes."""


def ref_value(f: dict, v: object, text: object, hx: object, fmt: str) -> object:
    """A decoded value as the reference formatter prints it."""
    if f["encoding"] == "struct":
        return [ref_field(c) for c in v]  # type: ignore[union-attr]
    if hx is not None:
        return NotText(bytes.fromhex(str(hx)))
    if isinstance(v, bool) or (v is None and text is None):
        return v
    if fmt == "hex_int":
        return f"0x{v:X}"
    if fmt == "errno":
        return f"{text}({v})" if not str(text).startswith("ERRNO") else text
    if fmt == "time":
        return text if text is not None else f"TIME({v})"
    if fmt == "float" and v is None:
        return text
    if fmt == "hex_bytes":
        return " ".join(str(v)[i:i + 2] for i in range(0, len(str(v)), 2))
    return v


def ref_field(f: dict) -> tuple[str, object]:
    key = f["name"] + (f";tag=0x{f['tag']:X}" if f.get("tag") else "")
    fmt = f.get("as", f.get("format", eh.DEFAULT_FORMAT[f["encoding"]]))
    if f.get("array"):
        n = len(f["value"])
        texts, hexes = f.get("text") or [None] * n, f.get("hex") or [None] * n
        fmts = fmt if isinstance(fmt, list) else [fmt] * n
        return key, [ref_value(f, *x) for x in zip(f["value"], texts, hexes, fmts, strict=True)]
    return key, ref_value(f, f["value"], f.get("text"), f.get("hex"), fmt)


def same(mine: object, ref: object) -> bool:
    if isinstance(mine, NotText):
        # The reference shows invalid text as U+FFFD, as its own invalid UTF-8 or as Latin-1; ours keeps the bytes.
        assert isinstance(ref, str)
        lossy = "\ufffd" in ref or any("\udc80" <= c <= "\udcff" for c in ref)
        return lossy or mine == ref.encode("utf-8", "surrogateescape") or mine == ref.encode("latin-1", "replace")
    if isinstance(mine, float) and isinstance(ref, float | int):
        return math.isclose(mine, ref, rel_tol=1e-7) or struct.pack("<f", mine) == struct.pack("<f", ref)
    if isinstance(mine, list) and isinstance(ref, list):
        if len(mine) != len(ref):
            return False
        if mine and isinstance(mine[0], tuple):  # a struct's (name, value) pairs
            return all(a[0] == b[0] and same(a[1], b[1]) for a, b in zip(mine, ref, strict=True))
        return all(same(a, b) for a, b in zip(mine, ref, strict=True))
    if isinstance(mine, str) and mine.startswith("TIME(") and isinstance(ref, str) and not ref.startswith("TIME("):
        return int(ref.split("-")[0]) > 9999  # a year past what Python's datetime shows: the number is kept
    return mine == ref


def test_every_reference_record_decodes_as_the_reference_decoder_says() -> None:
    recs, exp = dat_records(), expected()
    assert len(recs) == len(exp) > 300
    compared = 0
    for (tp, data), pairs in zip(recs, exp, strict=True):
        ref = dict(p for p in pairs if p[0] in ("n", "meta"))
        meta = dict(ref["meta"])
        out = eh.decode(tp, data)
        assert "malformed" not in out, (tp, out)
        assert out["end"] == len(data), tp  # every byte described
        d = out["eventheader"]
        assert f"{d['provider']}:{d['event']}" == ref["n"]
        assert d["level"] == meta["level"]
        assert d["keyword"] == int(meta.get("keyword", "0x0"), 16)
        for k, mine in (("opcode", d["opcode"]), ("id", d["id"]), ("version", d["version"])):
            assert mine == meta.get(k, 0), (tp, k)
        assert d["tag"] == int(meta.get("tag", "0x0"), 16)
        assert d.get("activity_id") == meta.get("activity") and d.get("related_id") == meta.get("relatedActivity")
        fields = [p for p in pairs if p[0] not in ("n", "meta")]
        mine = [ref_field(f) for f in d["fields"]]
        assert [k for k, _ in mine] == [k for k, _ in fields], ref["n"]
        for (k, a), (_, b) in zip(mine, fields, strict=True):
            assert same(a, b), (ref["n"], k, a, b)
            compared += 1
    assert compared > 700


def test_tracepoint_names() -> None:
    n = eh.parse_tracepoint_name("My_Provider_L5K1f0Gmygroup")
    assert n == eh.TracepointName("My_Provider", 5, 0x1F0, "Gmygroup") and n.group == "mygroup"
    assert eh.parse_tracepoint_name("NoLevel_K1") is None
    assert eh.parse_tracepoint_name("Prov_L5K1g") is None  # options start with an upper-case letter
    assert eh.parse_tracepoint_name("Prov_L5KA") == eh.TracepointName("Prov", 5, 0, "A")  # as the reference reads it
    assert eh.parse_tracepoint_name("Prov_L100K0") is None  # level is 8 bits
    assert eh.is_eventheader("P_L4K2", list(eh.HEADER_FIELDS))
    assert not eh.is_eventheader("P_L4K2", [("x", "u32")])
    assert eh.split_attributes("ev;a=1;b=x;;y") == ("ev", {"a": "1", "b": "x;y"})


def _event(order: str, fields_meta: bytes, payload: bytes, *, level: int = 4, ext: bytes = b"") -> bytes:
    o = "<" if order == "little" else ">"
    flags = eh.FLAG_POINTER64 | eh.FLAG_EXTENSION | (eh.FLAG_LITTLE_ENDIAN if order == "little" else 0)
    meta = b"Ev\0" + fields_meta
    return (struct.pack(o + "BBHHBB", flags, 1, 7, 0x1234, 1, level) + ext +
            struct.pack(o + "HH", len(meta), eh.EXT_METADATA) + meta + payload)


@pytest.mark.parametrize("order", ["little", "big"])
def test_both_byte_orders(order: str) -> None:
    o = "<" if order == "little" else ">"
    meta = (b"n\0\x84\x02" + b"s\0\x0b" + b"w\0\x08" + b"arr\0\x44" + b"f\0\x85\x08" + b"p\0\x83\x10" +
            b"c\0\x23" + struct.pack(o + "H", 2))
    payload = (struct.pack(o + "i", -5) + struct.pack(o + "H", 2) + "hé".encode("utf-16-" + order[0] + "e") +
               "ok".encode("utf-16-" + order[0] + "e") + b"\0\0" + struct.pack(o + "H", 2) + struct.pack(o + "II", 1, 2)
               + struct.pack(o + "d", 2.5) + struct.pack(">H", 443) + struct.pack(o + "HH", 9, 10))
    act = struct.pack(o + "HH", 16, eh.EXT_ACTIVITY_ID | eh.EXT_CHAIN) + bytes(range(16))
    out = eh.decode("Prov_L4K3", _event(order, meta, payload, ext=act))
    assert "malformed" not in out
    d = out["eventheader"]
    assert (d["id"], d["tag"], d["opcode_name"], d["byte_order"], d["activity_id"]) == (
        7, 0x1234, "activity_start", order, "00010203-0405-0607-0809-0a0b0c0d0e0f")
    vals = {f["name"]: f["value"] for f in d["fields"]}
    assert vals == {"n": -5, "s": "hé", "w": "ok", "arr": [1, 2], "f": 2.5, "p": 443, "c": [9, 10]}


def test_malformed_content_says_where_and_why() -> None:
    meta = b"n\0\x04" + b"s\0\x07"
    good = struct.pack("<I", 1) + b"abc\0"
    assert eh.decode("P_L4K0", _event("little", meta, good)).get("malformed") is None
    out = eh.decode("P_L4K0", _event("little", meta, struct.pack("<I", 1) + b"abc"))
    assert out["malformed"] == {"offset": 8 + 4 + 3 + 6 + 4, "reason": "field 's': string without its terminating zero"}
    assert out["eventheader"]["fields"] == [{"name": "n", "value": 1, "encoding": "value32"}]  # kept
    out = eh.decode("P_L4K0", _event("little", meta, b"\1"))
    assert out["malformed"]["reason"] == "field 'n' (value32) needs 4 bytes, 1 left"
    assert eh.decode("P_L4K0", b"\3\0")["malformed"] == {
        "offset": 0, "reason": "2 bytes: shorter than the 8-byte eventheader"}
    other_level = eh.decode("P_L5K0", _event("little", meta, good))
    assert "differs from the tracepoint name" in other_level["malformed"]["reason"]
    bad_meta = eh.decode("P_L4K0", _event("little", b"n\0\x1f", good))
    assert bad_meta["malformed"]["reason"] == "metadata: field 'n': unknown encoding 31"
    unknown_ext = struct.pack("<HH", 3, 9 | eh.EXT_CHAIN) + b"\xaa\xbb\xcc"
    out = eh.decode("P_L4K0", _event("little", meta, good, ext=unknown_ext))
    assert out["eventheader"]["extensions"] == [{"kind": 9, "size": 3, "hex": "aabbcc"}]
    nested = b"".join(f"s{i}\0".encode() + b"\x81\x01" for i in range(5000)) + b"v\0\x02"
    deep = eh.decode("P_L4K0", _event("little", nested, b"\x01"))
    assert deep["malformed"]["reason"] == "metadata: structs nested deeper than 32"
    # Random bytes never raise: each cut of a valid event is either decoded or malformed with a reason.
    full = _event("little", meta, good)
    for cut in range(len(full)):
        r = eh.decode("P_L4K0", full[:cut])
        assert "malformed" in r or r["end"] == cut


def every_kind() -> list:
    from tracer.user_events.eh_write import EhField as F

    return [
        F("u8", "value8", 200), F("i16", "value16", -2, "signed_int"), F("h32", "value32", 0xBEEF, "hex_int", tag=5),
        F("u64", "value64", (1 << 64) - 1), F("f32", "value32", 0.5, "float"), F("f64", "value64", -1.25, "float"),
        F("ok", "value8", 1, "boolean"), F("err", "value32", 2, "errno"), F("pid", "value32", 4242, "pid"),
        F("t", "value64", 86400, "time"), F("port", "value16", 8080, "port"),
        F("ip4", "value32", "10.1.2.3", "ip_address"), F("ip6", "value128", "fe80::1", "ip_address"),
        F("uuid", "value128", "00112233-4455-6677-8899-aabbccddeeff", "uuid"),
        F("ch", "value8", ord("Z"), "string8"), F("wch", "value16", ord("é"), "string_utf"),
        F("z8", "zstring_char8", "zero\u00e9"), F("z16", "zstring_char16", "sixteen"), F("z32", "zstring_char32", "32"),
        F("s8", "string_length16_char8", "counted"), F("s16", "string_length16_char16", "c16"),
        F("s32", "string_length16_char32", "c32"), F("bin", "binary_length16_char8", b"\x00\x01\xff"),
        F("bom", "zstring_char8", b"\xef\xbb\xbfjson", "string_json"),
        F("carr", "value16", [1, 2, 3], array="const"), F("varr", "zstring_char8", ["a", "", "b"], array="var"),
        F("empty", "value32", [], array="var"),
        F("pt", "struct", [F("x", "value32", 3, "signed_int"), F("name", "string_length16_char8", "p")], tag=9),
        F("after", "value8", 7),
    ]


WANT = {"u8": 200, "i16": -2, "h32": 0xBEEF, "u64": (1 << 64) - 1, "f32": 0.5, "f64": -1.25, "ok": True, "err": 2,
        "pid": 4242, "t": 86400, "port": 8080, "ip4": "10.1.2.3", "ip6": "fe80::1",
        "uuid": "00112233-4455-6677-8899-aabbccddeeff", "ch": "Z", "wch": "é", "z8": "zero\u00e9", "z16": "sixteen",
        "z32": "32", "s8": "counted", "s16": "c16", "s32": "c32", "bin": "0001ff", "bom": "json", "carr": [1, 2, 3],
        "varr": ["a", "", "b"], "empty": [], "after": 7}


@pytest.mark.parametrize("order", ["little", "big"])
def test_tracer_writer_round_trips_every_encoding(order: str) -> None:
    from tracer.user_events.eh_write import encode_event

    act, rel = bytes(range(16)), bytes(range(16, 32))
    data = encode_event("AllKinds;note=a;;b", every_kind(), level=3, id=17, version=2, tag=0xABCD, opcode=2,
                        activity=act, related=rel, order=order, extensions=[(7, b"\x01\x02")])
    out = eh.decode("Tracer_Test_L3K10Gtracer", data)
    assert "malformed" not in out and out["end"] == len(data)
    d = out["eventheader"]
    assert (d["provider"], d["event"], d["event_attributes"], d["level"], d["keyword"], d["group"]) == (
        "Tracer_Test", "AllKinds", {"note": "a;b"}, 3, 0x10, "tracer")
    assert (d["id"], d["version"], d["tag"], d["opcode"], d["opcode_name"], d["byte_order"]) == (
        17, 2, 0xABCD, 2, "activity_stop", order)
    assert d["activity_id"] == eh.uuid_text(act) and d["related_id"] == eh.uuid_text(rel)
    assert d["extensions"] == [{"kind": 7, "size": 2, "hex": "0102"}]
    got = {f["name"]: f["value"] for f in d["fields"]}
    pt = got.pop("pt")
    assert got == WANT
    assert [(f["name"], f["value"]) for f in pt] == [("x", 3), ("name", "p")]
    by = {f["name"]: f for f in d["fields"]}
    assert by["h32"]["tag"] == 5 and by["pt"]["tag"] == 9 and by["varr"]["array"] == "var"
    assert by["err"]["text"] == "ENOENT" and by["t"]["text"] == "1970-01-02T00:00:00"


def test_cli_field_specs_round_trip() -> None:
    """`emit-eventheader`'s NAME:TYPE=VALUE specs: every short type, an array and a raw ENCODING/FORMAT,
    written and decoded back to the values given; bad specs are one ValueError each, naming the spec."""
    from tracer.user_events.eh_write import FIELD_TYPES, encode_event, parse_field

    specs = {"i8:i8=-8": -8, "u64:u64=18446744073709551615": 2**64 - 1, "x16:x16=0x1f": 0x1F, "f32:f32=0.5": 0.5,
             "f64:f64=-2.25": -2.25, "b:bool=false": False, "e:errno=2": 2, "p:pid=42": 42, "t:time=86400": 86400,
             "s:str=h\u00e9": "h\u00e9", "s16:str16=wide": "wide", "s32:str32=w": "w", "c:cstr=counted": "counted",
             "bin:bin=00ff": "00ff", "id:uuid=00112233-4455-6677-8899-aabbccddeeff":
             "00112233-4455-6677-8899-aabbccddeeff", "v4:ipv4=192.0.2.1": "192.0.2.1", "v6:ipv6=2001:db8::1":
             "2001:db8::1", "port:port=443": 443, "arr:i16[]=-1,2": [-1, 2], "none:u8[]=": [],
             "raw:value32/hex_int=16": 16}
    sample = {"bool": "true", "bin": "00", "uuid": "00112233-4455-6677-8899-aabbccddeeff", "ipv4": "10.0.0.1",
              "ipv6": "::1", "f32": "1.5", "f64": "1.5", "str": "a", "str16": "a", "str32": "a", "cstr": "a"}
    for typ in FIELD_TYPES:  # every short type is written and read back as one field
        one = eh.decode("Prov_L4K0", encode_event("One", [parse_field(f"v:{typ}={sample.get(typ, '1')}")], level=4))
        assert "malformed" not in one and len(one["eventheader"]["fields"]) == 1, typ
    data = encode_event("Cli", [parse_field(s) for s in specs], level=4)
    out = eh.decode("Prov_L4K0", data)
    assert "malformed" not in out and out["end"] == len(data)
    assert [f["value"] for f in out["eventheader"]["fields"]] == list(specs.values())
    for bad, why in (("n", "expected NAME:TYPE=VALUE"), ("n:i8=128000", "a value does not fit i8"),
                     ("n:nope=1", "unknown type 'nope'"), ("n:bool=maybe", "not a boolean"),
                     ("n:struct=1", "unknown type 'struct'"), ("n:bin=xyz", "non-hexadecimal")):
        with pytest.raises(ValueError, match=why):
            parse_field(bad)


def test_mutated_events_never_raise() -> None:
    """Every byte of real events flipped, cut and extended: decoded, or malformed with an offset and a reason."""
    import random

    rng = random.Random(13)
    recs = dat_records()
    for _ in range(3000):
        tp, data = rng.choice(recs)
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        b = b[:rng.randint(0, len(b))] if rng.random() < 0.3 else b
        out = eh.decode(tp, bytes(b))
        bad = out.get("malformed")
        assert bad is None or (isinstance(bad["offset"], int) and bad["reason"]), out
        assert bad is not None or out["end"] <= len(b)


def test_every_reference_record_renders_on_one_console_line() -> None:
    """Struct arrays, nested structs, invalid text, NaN...: each record is one escaped line on the console."""
    from rich.console import Console

    from tracer.output import ConsoleOutput

    con = Console(file=io.StringIO(), width=100000, color_system=None)
    out = ConsoleOutput(con)
    recs = dat_records()
    for tp, data in recs:
        out.event({"kind": "user_event", "event": f"user_events:{tp}", "name": tp, "ts": 0, "cpu": 0, "pid": 1,
                   "tid": 1, "comm": "c", "status": "ok", "fields": {}, **eh.decode(tp, data)})
    lines = con.file.getvalue().splitlines()
    assert len(lines) == len(recs) and not any("\x1b" in x or "\u202e" in x for x in lines)
    packed = next(x for x in lines if "TestProviderC:Packed [" in x)
    assert 'StructArray=[{Struct2={K="A", NChar16=<hex 68006a006b006c00>}}, {Struct2={K="B", ' in packed
