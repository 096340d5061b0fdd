"""user_events without kernel support: the uapi ABI, a fake tracefs root shaped like the kernel's
(tests/fixtures/tracefs_user_events: status file, format files of every field type, multi-format
events), the decoder on synthesized and hostile records, the emitter's encoding round-tripped through
the decoder, and the CLI's one-line refusal on a kernel without user_events."""

from __future__ import annotations

import ctypes
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.user_events import abi, status
from tracer.user_events.decode import decode_record
from tracer.user_events.emitter import BadFormat, encode
from tracer.user_events.formats import EventFormat, FormatError, parse_name_args, read_format
from tracer.user_events.source import is_tracefs, parse_sample, tracepoint_attr

REPO = Path(__file__).resolve().parent.parent
FAKE = Path(__file__).parent / "fixtures" / "tracefs_user_events"
ALLKINDS = ("allkinds s8 a;u8 b;s16 c;u16 d;s32 e;u32 f;s64 g;u64 h;int i;unsigned int j;short k;"
            "unsigned short l;char m;unsigned char n;char[8] msg;unsigned char[4] raw;__data_loc char[] dstr;"
            "__rel_loc char[] rstr;__data_loc u8[] dbytes;__rel_loc u8[] rbytes;struct pt p 12")
HAVE_USER_EVENTS = Path("/sys/kernel/tracing/user_events_data").exists()


# -- ABI -------------------------------------------------------------------------------------------

def test_ioctl_numbers_match_the_uapi_header() -> None:
    assert abi.DIAG_IOCSREG == 0xC0082A00
    assert abi.DIAG_IOCSDEL == 0x40082A01
    assert abi.DIAG_IOCSUNREG == 0x40082A02


def test_struct_layouts() -> None:
    assert ctypes.sizeof(abi.UserReg) == abi.USER_REG.size == 28
    assert ctypes.sizeof(abi.UserUnreg) == abi.USER_UNREG.size == 16
    offs = {n: getattr(abi.UserReg, n).offset for n, _ in abi.UserReg._fields_}
    assert offs == {"size": 0, "enable_bit": 4, "enable_size": 5, "flags": 6, "enable_addr": 8, "name_args": 16,
                    "write_index": 24}
    assert {n: getattr(abi.UserUnreg, n).offset for n, _ in abi.UserUnreg._fields_} == {
        "size": 0, "disable_bit": 4, "reserved": 5, "reserved2": 6, "disable_addr": 8}
    reg = abi.UserReg(28, 3, 4, abi.USER_EVENT_REG_MULTI_FORMAT, 0x1000, 0x2000, 7)
    assert abi.USER_REG.unpack(bytes(reg)) == (28, 3, 4, 2, 0x1000, 0x2000, 7)
    assert (abi.USER_EVENT_REG_PERSIST, abi.USER_EVENT_REG_MULTI_FORMAT, abi.USER_EVENT_REG_MAX) == (1, 2, 4)


def test_ioctl_numbers_match_gcc(tmp_path: Path) -> None:
    """The same numbers from <asm-generic/ioctl.h> with the header's own definitions."""
    src = tmp_path / "ioc.c"
    src.write_text('#include <stdio.h>\n#include <linux/ioctl.h>\n#include <linux/types.h>\n'
                   "struct user_reg; struct user_unreg;\n"
                   "int main(void){printf(\"%lu %lu %lu\\n\", (unsigned long)_IOWR('*', 0, struct user_reg *),"
                   "(unsigned long)_IOW('*', 1, char *), (unsigned long)_IOW('*', 2, struct user_unreg *));}\n")
    exe = tmp_path / "ioc"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    assert got == [abi.DIAG_IOCSREG, abi.DIAG_IOCSDEL, abi.DIAG_IOCSUNREG]


# -- name_args and format files --------------------------------------------------------------------

def test_name_args_offsets_match_the_format_file() -> None:
    name, flags, fields = parse_name_args(ALLKINDS)
    assert (name, flags) == ("allkinds", None)
    fmt = read_format(FAKE / "events" / "user_events" / "allkinds")
    assert (fmt.name, fmt.id, fmt.system) == ("allkinds", 1881, "user_events")
    assert [(f.name, f.ctype, f.offset, f.size, f.signed) for f in fields] == \
           [(f.name, f.ctype, f.offset, f.size, f.signed) for f in fmt.fields]
    kinds = {f.name: f.kind for f in fmt.fields}
    assert kinds["a"] == kinds["j"] == kinds["m"] == "int"
    assert (kinds["msg"], kinds["raw"], kinds["p"]) == ("chars", "bytes", "bytes")
    assert (kinds["dstr"], kinds["rstr"], kinds["dbytes"], kinds["rbytes"]) == ("loc_str", "loc_str", "loc_bytes",
                                                                                "loc_bytes")
    assert fmt.fixed_size == 84


@pytest.mark.parametrize("bad, why", [
    ("x long v", "refused"), ("x u32", "expected"), ("x struct s v", "needs its size"),
    ("x u32 v 4", "only struct"), ("x char[2000] v", "over 1024"), ("x float f", "unknown type"),
    ("x u32  v", "expected"), (":FLAG u32 v", "empty event name"), ("x " + "u8 a;" * 120, "at most 511"),
])
def test_name_args_refused_like_the_kernel(bad: str, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        parse_name_args(bad)


def test_name_args_accepted_like_the_kernel() -> None:
    assert parse_name_args("x u32 a;") [2][0].offset == 8        # empty trailing field is skipped
    assert parse_name_args("x char[0x10] s")[2][0].size == 16    # kstrtouint base 0
    assert parse_name_args("x:BPF_ITER u8 a")[1] == "BPF_ITER"  # flags parsed (the kernel refuses them)
    assert parse_name_args("noargs")[2] == ()


def test_status_file() -> None:
    st = status.parse_status((FAKE / "user_events_status").read_text())
    assert st.used_by == {"allkinds": (), "multi.1": ("perf",), "test": ("ftrace", "perf"), "empty": (), "multi.0": ()}
    assert (st.active, st.busy) == (5, 2)


def test_list_events_fake_root() -> None:
    evs = {e["event"]: e for e in status.list_events(FAKE)}
    assert set(evs) == {"user_events:allkinds", "user_events:test", "user_events:empty",
                        "user_events_multi:multi.0", "user_events_multi:multi.1"}
    assert evs["user_events:test"]["enabled"] and evs["user_events:test"]["used_by"] == ["ftrace", "perf"]
    assert not evs["user_events:allkinds"]["enabled"]
    m = evs["user_events_multi:multi.1"]
    assert m["multi_format"] and m["registered_name"] == "multi" and m["id"] == 1884
    assert [f["type"] for f in m["fields"]] == ["u64", "__rel_loc char[]"]
    assert evs["user_events:empty"]["fields"] == []


def test_an_event_deleted_while_listed_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel deletes a non-persistent event once unreferenced, at any time: one whose directory goes
    between the listing and the read of its format (seen in the 6.12 lane) is left out, not a traceback."""
    every = {f.tracepoint for f in status.formats(FAKE)}
    real = status.read_format

    def racing(d: Path) -> object:
        if d.name == "test":
            raise FileNotFoundError(2, "No such file or directory", str(d / "format"))
        return real(d)

    monkeypatch.setattr(status, "read_format", racing)  # formats() reads through the module global
    assert {f.tracepoint for f in status.formats(FAKE)} == every - {"user_events:test"}
    assert "user_events:test" not in {e["event"] for e in status.list_events(FAKE)}


def test_spec_matching() -> None:
    fmts = status.formats(FAKE)
    names = lambda spec: sorted(f.tracepoint for f in status.match(fmts, spec))  # noqa: E731
    assert names("user_events:test") == ["user_events:test"]
    assert names("user_events:*k*") == ["user_events:allkinds"]
    assert names("user_events_multi:multi") == ["user_events_multi:multi.0", "user_events_multi:multi.1"]
    assert names("user_events_multi:multi.1") == ["user_events_multi:multi.1"]
    assert names("user_events:multi") == []


# -- decoding --------------------------------------------------------------------------------------

def record(fmt: EventFormat, payload: bytes) -> bytes:
    return struct.pack("<HBBi", fmt.id or 0, 0, 0, 4242) + payload


@pytest.fixture(scope="module")
def allkinds() -> EventFormat:
    return read_format(FAKE / "events" / "user_events" / "allkinds")


VALUES = dict(a=-5, b=250, c=-30000, d=65000, e=-2_000_000_000, f=4_000_000_000, g=-(1 << 62), h=(1 << 64) - 1,
              i=-7, j=7, k=-2, l=2, m=-1, n=255, msg="hi", raw=b"\x01\x02\x03\x04", dstr="data loc",
              rstr="rel \x1b[31m loc", dbytes=b"\x00\xff", rbytes=b"", p=bytes(range(12)))


def test_emitter_round_trip_every_type(allkinds: EventFormat) -> None:
    payload = encode(allkinds.fields, VALUES)
    out = decode_record(allkinds, record(allkinds, payload))
    assert out["status"] == "ok", out
    want = {**VALUES, "raw": "01020304", "dbytes": "00ff", "rbytes": "", "p": bytes(range(12)).hex()}
    assert out["fields"] == want


def test_rel_loc_offset_counts_from_the_end_of_the_field(allkinds: EventFormat) -> None:
    payload = encode(allkinds.fields, {"rstr": "x"})
    loc = struct.unpack_from("<I", payload, 68 - 8)[0]
    assert loc >> 16 == 2                      # "x\0"
    rec = record(allkinds, payload)
    start = 68 + 4 + (loc & 0xFFFF)            # from the end of the field, in the record
    assert rec[start:start + 2] == b"x\0" and start > 8 + allkinds.fixed_size  # after dstr's "" (1 byte)
    dloc = struct.unpack_from("<I", encode(allkinds.fields, {"dstr": "y"}), 64 - 8)[0]
    assert dloc & 0xFFFF == 8 + allkinds.fixed_size            # data_loc: from the record start


def test_non_utf8_string_keeps_its_bytes(allkinds: EventFormat) -> None:
    out = decode_record(allkinds, record(allkinds, encode(allkinds.fields, {"dstr": b"\xff\xfe"})))
    assert out["fields"]["dstr"] == "\udcff\udcfe" and out["hex"] == {"dstr": "fffe"}


@pytest.mark.parametrize("field, loc, why", [
    ("dstr", 0xFFFF_0000 | 100, "outside"),        # huge length
    ("dstr", (4 << 16) | 5000, "outside"),         # offset past the end
    ("dstr", (4 << 16) | 0, "outside"),            # pointing into the common fields
    ("rstr", (3 << 16) | 0xFFF0, "outside"),
    ("dbytes", (1 << 16) | 0xFFFF, "outside"),
])
def test_hostile_locations(allkinds: EventFormat, field: str, loc: int, why: str) -> None:
    payload = bytearray(encode(allkinds.fields, {}))
    off = next(f.offset for f in allkinds.fields if f.name == field) - 8
    struct.pack_into("<I", payload, off, loc)
    out = decode_record(allkinds, record(allkinds, bytes(payload)))
    assert out["status"] == "malformed"
    assert out["fields"][field] is None and why in out["errors"][field]
    assert out["payload_hex"] == bytes(payload).hex()
    assert out["fields"]["a"] == 0  # the other fields still decode


def test_missing_nul(allkinds: EventFormat) -> None:
    payload = bytearray(encode(allkinds.fields, {"rstr": "abc"}))
    payload[-1] = ord("!")  # the string's NUL
    out = decode_record(allkinds, record(allkinds, bytes(payload)))
    assert out["fields"]["rstr"] is None and "NUL" in out["errors"]["rstr"]


def test_truncated_record(allkinds: EventFormat) -> None:
    out = decode_record(allkinds, record(allkinds, encode(allkinds.fields, VALUES))[:34])
    assert out["status"] == "malformed"
    assert out["fields"]["g"] == VALUES["g"] and out["fields"]["h"] is None
    assert "past the end" in out["errors"]["h"] and "p" in out["errors"]
    assert decode_record(allkinds, b"")["status"] == "malformed"


def test_encode_refusals(allkinds: EventFormat) -> None:
    with pytest.raises(BadFormat, match="does not fit"):
        encode(allkinds.fields, {"b": 256})
    with pytest.raises(BadFormat, match="do not fit"):
        encode(allkinds.fields, {"msg": "123456789"})
    with pytest.raises(BadFormat, match="no field named"):
        encode(allkinds.fields, {"zz": 1})
    with pytest.raises(BadFormat, match="NUL"):
        encode(allkinds.fields, {"dstr": "a\0b"})


def test_perf_sample_and_attr() -> None:
    body = struct.pack("<IIQIII", 10, 11, 12345, 1, 0, 5) + b"abcde\0\0\0"
    assert parse_sample(body) == (10, 11, 12345, 1, b"abcde")
    attr = tracepoint_attr(1880, 4096)
    assert struct.unpack_from("<IIQQQ", attr) == (2, 128, 1880, 1, (1 << 10) | (1 << 2) | (1 << 1) | (1 << 7))
    assert struct.unpack_from("<Q", attr, 40)[0] & (1 << 25)          # use_clockid
    assert struct.unpack_from("<i", attr, 92)[0] == 1                 # CLOCK_MONOTONIC
    assert not is_tracefs(FAKE)


# -- CLI -------------------------------------------------------------------------------------------

def tracer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    if env is None:
        e.pop("TRACER_TRACEFS", None)
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=e)


def one_line(p: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert p.returncode == code, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracer: "), p.stderr
    for w in words:
        assert w in lines[0]


def test_cli_list_fake_root() -> None:
    p = tracer("--tracefs", str(FAKE), "list", "user_events", "--json")
    assert p.returncode == 0, p.stderr
    import json

    assert {json.loads(x)["event"] for x in p.stdout.splitlines()} >= {"user_events:test", "user_events_multi:multi.0"}
    p = tracer("--tracefs", str(FAKE), "list", "user_events")
    assert p.returncode == 0 and "user_events:test id=1880  enabled" in p.stdout


def test_cli_trace_fake_root_refuses_to_trace() -> None:
    one_line(tracer("--tracefs", str(FAKE), "trace", "user_events:test"), 1, "not a mounted tracefs")


@pytest.mark.skipif(HAVE_USER_EVENTS, reason="this kernel has user_events")
@pytest.mark.parametrize("args", [("list", "user_events"), ("trace", "user_events:x", "openat2"),
                                  ("user-events", "emit", "x", "u32 v", "v=1")])
def test_cli_without_user_events_one_line(args: tuple[str, ...]) -> None:
    one_line(tracer(*args), 1, "user_events are not available", "CONFIG_USER_EVENTS")


# -- bytes past the format, EventHeader records, the console line -------------------------------------

def test_extra_bytes_are_reported_not_dropped(allkinds: EventFormat) -> None:
    payload = encode(allkinds.fields, VALUES)
    out = decode_record(allkinds, record(allkinds, payload + b"\x01tail"))
    assert out["status"] == "extra_bytes" and out["fields"]["b"] == 250
    assert out["extra_bytes"] == {"offset": len(payload), "length": 5, "hex": "017461696c"}
    # perf pads a RAW sample to whole u64s with zeros: up to 7 such bytes are padding, not payload
    rec = record(allkinds, payload)
    pad = (-(len(rec) + 4)) % 8 or 8
    assert decode_record(allkinds, rec + bytes(pad))["status"] == ("ok" if pad < 8 else "extra_bytes")
    assert decode_record(allkinds, rec + bytes(12))["status"] == "extra_bytes"


def eh_format(name: str = "Tracer_L4K1") -> EventFormat:
    from tracer.user_events.eventheader import COMMAND_TYPES

    return EventFormat("user_events", name, 9, parse_name_args(f"{name} {COMMAND_TYPES}")[2])


def test_eventheader_record_decoded_from_its_metadata() -> None:
    from tracer.user_events.eh_write import EhField, encode_event

    fmt = eh_format()
    body = encode_event("Req\x1b[2J", [EhField("path\u202e", "zstring_char8", "/srv/\x1b[31ma\n"),
                                       EhField("n", "value32", -1, "signed_int")], level=4)
    out = decode_record(fmt, record(fmt, body))
    assert out["status"] == "ok" and out["fields"]["level"] == 4
    eh = out["eventheader"]
    assert (eh["provider"], eh["event"], eh["keyword"]) == ("Tracer", "Req\x1b[2J", 1)
    assert [(f["name"], f["value"]) for f in eh["fields"]] == [("path\u202e", "/srv/\x1b[31ma\n"), ("n", -1)]
    extra = decode_record(fmt, record(fmt, body + b"\xee"))
    assert extra["status"] == "extra_bytes" and extra["extra_bytes"] == {"offset": len(body), "length": 1, "hex": "ee"}
    bad = decode_record(fmt, record(fmt, body[:-2]))
    assert bad["status"] == "malformed" and bad["malformed"]["offset"] == len(body) - 4
    assert decode_record(eh_format("NotEh"), record(fmt, body))["status"] == "extra_bytes"  # plain: all past 8 bytes


def test_console_line_for_user_events() -> None:
    from rich.console import Console

    from tracer.output import ConsoleOutput
    from tracer.user_events.eh_write import EhField, encode_event

    fmt = eh_format()
    body = encode_event("Req\x1b[2J", [EhField("path\u202e", "zstring_char8", "/srv/\x1b[31ma\n"),
                                       EhField("e", "value32", 2, "errno"), EhField("h", "value16", 255, "hex_int"),
                                       EhField("b", "binary_length16_char8", b"\x01\x02")],
                        level=4, opcode=1, activity=bytes(16))
    ev = {"kind": "user_event", "event": "user_events:Tracer_L4K1", "name": "Tracer_L4K1", "ts": 0, "cpu": 0,
          "pid": 1, "tid": 2, "comm": "w\x1b]0;x\x07", **decode_record(fmt, record(fmt, body + b"!"))}
    con = Console(file=io.StringIO(), width=400, color_system=None)
    ConsoleOutput(con).event(ev)
    line = con.file.getvalue()
    assert line.count("\n") == 1 and "\x1b" not in line and "\u202e" not in line
    assert "Tracer:Req\\x1b[2J [level=4 keyword=0x1 opcode=activity_start activity=00000000-0000-0000-0000-" in line
    assert 'path\\u202e="/srv/\\x1b[31ma\\n", e=2 (ENOENT), h=0xff, b=<hex 0102>)' in line
    assert "! 1 bytes past the described payload at offset" in line and line.rstrip().endswith(": 21")
    plain = {"kind": "user_event", "event": "user_events:x", "name": "x", "ts": 0, "cpu": 0, "pid": 1, "tid": 2,
             "comm": "c", "status": "ok", "fields": {"n": 7, "s": "hi"}}
    con = Console(file=io.StringIO(), width=400, color_system=None)
    ConsoleOutput(con).event(plain)
    assert 'user_events:x(n=7, s="hi")' in con.file.getvalue()


def test_format_with_the_kernels_garbage_array_length() -> None:
    """Seen on 6.12 (4 times in 300 registrations): `__rel_loc char s[-1043189696]`. The field is kept, with
    the registered spelling; a declaration that cannot be parsed is kept as bytes, never dropped."""
    from tracer.user_events.formats import parse_format

    text = ("name: fl_204\nID: 1577\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
            "\tfield:u32 n;\toffset:8;\tsize:4;\tsigned:0;\n"
            "\tfield:__rel_loc char s[-1043189696];\toffset:12;\tsize:4;\tsigned:1;\n"
            "\tfield:???;\toffset:16;\tsize:2;\tsigned:0;\n\nprint fmt: \"n=%u\"\n")
    fmt = parse_format(text, "user_events")
    assert [(f.name, f.ctype, f.offset, f.kind) for f in fmt.fields] == [
        ("n", "u32", 8, "int"), ("s", "__rel_loc char[]", 12, "loc_str"), ("???", "???", 16, "bytes")]
