"""tracer/recjson.py, `--json` lines straight from the record, against the reference: the event Decoder.decode
makes, with its `time`, encoded by jsonenc.dumps (json.dumps's bytes). Every entry x exit read status, slot
order, return value and the records it hands back to the decoder; the statistics key of each line is the
one Stats.add_many gives its event. Records are synthesized as in test_decode.py (no BPF).

Every test runs on both line paths: the C module's (tracer/_recline.c) and the generated Python functions
(TRACER_PY_LINES=1, and where the module is not built); with CI=true the C module must be there."""

from __future__ import annotations

import json
import os
import struct
from typing import ClassVar

import pytest
from test_decode import (
    ACCEPT4,
    AT_FDCWD_U64,
    CONNECT,
    EFAULT,
    EXIT_GROUP,
    FNAME,
    HOW_BYTES,
    OPENAT,
    RK_OPEN_HOW,
    RK_SOCKADDR,
    RK_SOCKADDR_OUT,
    RK_STR,
    SA,
    STATUSES,
    TABLE,
    Data,
    openat2_rec,
    record,
    sin,
    slot,
)

from tracer import layout, recline
from tracer.contract import WallClock
from tracer.decode import Decoder
from tracer.events import Stats
from tracer.recjson import Line, LineEncoder
from tracer.syscalls import Arg, Syscall

OFFSET = 1_764_000_000_123_456_789  # mono -> wall: times in 2025
C = layout.const


def _no_c(*_args: object) -> None:
    return None


@pytest.fixture(autouse=True, params=["c", "c-loop", "python"])
def line_path(request, monkeypatch) -> str:
    """Each test on the C loop and line functions; on the C loop with the Python line functions (as the
    console's); on the Python loop and line functions."""
    if request.param == "python":
        monkeypatch.setattr(recline, "c_encode", _no_c)
    if request.param != "c":
        monkeypatch.setattr(recline, "c_line", _no_c)
    if request.param != "python" and not recline.status()[0]:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: the C line encoder is not available: {recline.status()[1]}")
        pytest.skip(recline.status()[1])
    return request.param


def test_c_module_is_built_in_ci(line_path: str) -> None:
    """CI builds tracer._recline (setup.py; ./bootstrap installs gcc and python3-dev): a missing or stale
    module would silently make --json ~3x slower."""
    if os.environ.get("CI") != "true":
        pytest.skip("CI=true only")
    if line_path != "c":
        pytest.skip("once, on the C path")
    assert recline.status()[0], recline.status()[1]


def compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def check(recs: list[bytes], table: dict | None = None, cpu: int = 1, offset: int = OFFSET) -> list[bool]:
    """Each record's output against the reference; which of them took the line path."""
    ref_dec, dec = Decoder(table or TABLE), Decoder(table or TABLE)
    enc = LineEncoder(dec, offset)
    fast = []
    for _ in range(2):  # and again, from the memos
        got = enc.encode(recs, [cpu] * len(recs))
        fast = []
        for rec, item in zip(recs, got, strict=True):
            ev = ref_dec.decode(rec, cpu)
            WallClock(offset).stamp([ev])
            if type(item) is Line:
                assert item[2] == compact(ev), ev
                assert item[0] == (ev.get("ts_exit") or ev["ts"])
                one, ref = Stats(), Stats()
                one.add_groups({item[1]: 1})
                ref.add_many([ev])
                assert one == ref
                fast.append(True)
            else:
                assert compact(item) == compact({k: v for k, v in ev.items() if k != "time"})
                fast.append(False)
    c = recline.c_line is not _no_c
    # the line functions are the C module's on the C path, Python's otherwise
    assert all(type(fn).__name__ == ("builtin_function_or_method" if c else "function")
               for fn in enc._layouts.values() if fn is not None)
    return fast


@pytest.mark.parametrize("es", STATUSES)
@pytest.mark.parametrize("xs", STATUSES)
def test_line_equals_reference_for_every_read_status(es: int, xs: int) -> None:
    for same in (0, 1):
        for name in (b"/etc/hosts", b"/etc/\xff\xfe", "/tmp/\u00e9\u202e\x1b\n\"\\".encode()):
            d = Data()
            f_in, f_out = d.add(name), d.add(name if same else b"/etc/other")
            h_in, h_out = d.add(HOW_BYTES), d.add(HOW_BYTES if same else struct.pack("<QQQ", 1, 0, 0))
            kw = dict(eerr=-EFAULT, xerr=-EFAULT, same=same)
            fs = slot(1, RK_STR, es, xs, enter=f_in, exit=f_out, **kw)
            hs = slot(2, RK_OPEN_HOW, es, xs, enter=h_in, exit=h_out, want=24, **kw)
            recs = [openat2_rec(fs, hs, d, ret=ret, flags=flags) for ret in (3, -2, -4095, 1 << 40)
                    for flags in (0, 4, 4 | C("RF_NORETURN"))]
            recs += [openat2_rec(hs, fs, d, ret=-2)]  # slots in the other order
            fast = check(recs)
            common = es == C("RS_OK") and (xs == C("RS_NONE") or (same and xs in (C("RS_OK"), C("RS_TRUNC"))))
            if common and name.isascii():  # the line path takes them all, successful opens too
                assert all(fast)
            elif not common:
                assert not any(fast)
            sa = Data()
            a_in, a_out = sa.add(sin(80, "10.0.0.1")), sa.add(sin(80 if same else 81, "10.0.0.1"))
            for nr, kind in ((42, RK_SOCKADDR), (288, RK_SOCKADDR_OUT)):
                ss = slot(1, kind, es, xs, enter=a_in, exit=a_out, want=16, **kw)
                fast = check([record(nr, [3, SA, 16, 0], ret=ret, slots=(ss,), data=bytes(sa.buf)) for ret in (0, -1)])
                assert fast == ([True, True] if common and kind == RK_SOCKADDR else [False, False])


def test_line_equals_reference_without_reads_and_symbols() -> None:
    lseek = Syscall("lseek", 8, (Arg("fd", "unsigned int"), Arg("offset", "off_t"), Arg("whence", "unsigned int")))
    for off in (5, (1 << 64) - 5, 1 << 63, (1 << 63) - 1):  # a signed 64-bit argument
        assert check([record(8, [(1 << 64) - 1, off, 1], ret=-22)], {**TABLE, 8: lseek}) == [True]
    fast = check([record(257, [AT_FDCWD_U64, FNAME, 0o2000000, 0o644], ret=-2),  # symbols: dfd, flags, mode
                  record(257, [5, FNAME, 1 << 40, (1 << 64) - 1], ret=-13, comm=b"\xff\x1bodd\"comm"),
                  record(231, [(1 << 64) - 1], flags=C("RF_NORETURN")),
                  record(999, [1, 2], ret=0, ts=(5, 0)),  # unknown syscall; no exit time: ordered by entry
                  record(59, [FNAME, 0, 0], ret=-2)])  # execve: strv slots are decoded
    assert fast == [True, True, True, True, True]


def context_and_strv_records() -> tuple[list[bytes], dict]:
    """Records the line path hands to the decoder: a symbol that depends on another argument (fcntl's
    arg, by its cmd) and an execve whose argv is read (strv); and their syscall table."""
    fcntl = Syscall("fcntl", 72, (Arg("fd", "unsigned int"), Arg("cmd", "unsigned int"), Arg("arg", "unsigned long")))
    d = Data()
    name = d.add(b"/bin/true")
    execve = record(59, [FNAME, 0, 0], ret=-2, data=bytes(d.buf), slots=(
        slot(0, RK_STR, C("RS_OK"), enter=name), slot(1, C("RK_STRV"), C("RS_OK"))))
    return [record(72, [3, 4, 2048], ret=0), execve], {**TABLE, 72: fcntl}


def test_context_symbols_and_other_kinds_are_decoded() -> None:
    assert check(*context_and_strv_records()) == [False, False]


def several_layouts() -> list[bytes]:
    """Records of the line path in several layouts (slots, no slots, noreturn), across second boundaries."""
    d = Data()
    f = d.add(b"/etc/passwd")
    h = d.add(HOW_BYTES)
    fs = slot(1, RK_STR, C("RS_OK"), C("RS_OK"), enter=f, exit=f, same=1)
    hs = slot(2, RK_OPEN_HOW, C("RS_OK"), enter=h, want=24)
    recs = [openat2_rec(fs, hs, d, ret=-2, ts=(1_000 + i * 999_999_937, 2_000 + i * 999_999_937))
            for i in range(5)]  # across second boundaries: the time prefix is made again
    return [*recs, record(257, [AT_FDCWD_U64, FNAME, 0, 0], ret=-2, slots=(fs,), data=bytes(d.buf)),
            record(231, [0], flags=C("RF_NORETURN")), openat2_rec(fs, hs, d, ret=-2, uid=0)]


def test_records_of_several_layouts_and_cpus() -> None:
    for cpu in (0, 7):
        assert all(check(several_layouts(), cpu=cpu))
    assert OPENAT.nr in TABLE and CONNECT.nr in TABLE and ACCEPT4.nr in TABLE and EXIT_GROUP.nr in TABLE


def session_records(cpu: int, began: int = 50) -> list[bytes]:
    """openat2 records of one CPU for a session's ring: every third one's path missing, every fourth one
    a successful open, `began` ns before it ended (every fifth one: 900 with began=900)."""
    d = Data()
    f = d.add(b"/etc/passwd")
    h = d.add(HOW_BYTES)
    fast = slot(1, RK_STR, C("RS_OK"), C("RS_OK"), enter=f, exit=f, same=1)
    missing = slot(1, RK_STR, C("RS_FAULT"), C("RS_FAULT"), eerr=-EFAULT, xerr=-EFAULT)
    hs = slot(2, RK_OPEN_HOW, C("RS_OK"), enter=h, want=24)
    return [openat2_rec(fast if i % 3 else missing, hs, d, ret=-2 if i % 4 else 3,
                        ts=(t - (began if i % 5 == 0 else 50), t))
            for i, t in enumerate(range(1_000 + cpu * 70, 20_000, 150))]


def drained(lines: object, began: int = 50) -> tuple[list, Stats]:
    """What one Session drain (then the end of the session) delivers from two CPUs' rings of
    session_records, out of order with each other, the second with a lost marker, in lines mode `lines`
    (Session.batches's argument); and its statistics."""
    from test_stream import fake_ring, lost, put, sample

    from tracer.ordering import SLACK_NS
    from tracer.session import Session
    from tracer.sources import SyscallSource

    s = Session(["openat2"], explain=False)
    s._wall = WallClock(OFFSET)  # every run: one clock
    src = SyscallSource.__new__(SyscallSource)
    src.decoder = Decoder(TABLE)
    src.decode = src.decoder.decode  # type: ignore[method-assign]
    rings = [fake_ring(pages=16), fake_ring(pages=16)]
    for cpu, ring in enumerate(rings):
        ring.cpu = cpu
        put(ring, [sample(r) for r in session_records(cpu, began)] + ([lost(4)] if cpu else []))
    s.sources, s._rings, s._decoders = [src], [(src, r) for r in rings], {src: src.decode}
    s._lines_mode(lines)  # type: ignore[arg-type]
    assert bool(s._encoders) == bool(lines)
    s._order.order([], [], 10 * SLACK_NS)  # the drain below began long after these records
    return s._drain() + s._deliver([], s._order.flush()), s.stats


def test_session_lines_mode_delivers_what_the_dict_path_does() -> None:
    """Session.batches(lines=True)'s drain against the dict path on the same rings: two CPUs out of order
    with each other, a ring's lost marker, records of both paths mixed; same lines, same statistics."""
    from tracer.jsonenc import dumps

    (ref, ref_stats), (got, got_stats) = drained(False), drained(True)
    ref = [dumps(x) for x in ref]
    got = [x if type(x) is str else dumps(x) for x in got]
    assert got == ref and got_stats == ref_stats
    assert ref[0].startswith('{"kind":"lost"') and len(ref) == 1 + 2 * len(session_records(0))
    ts = [json.loads(x).get("ts_exit") for x in ref[1:]]
    assert ts == sorted(ts)


def test_json_output_writes_lines_and_dicts_in_order(tmp_path) -> None:
    """JsonOutput, batched to a file: the header, then each batch (encoded lines as they are, dicts
    encoded) through its large-buffer writer, in the file as soon as events() returns; then what goes
    through the stream itself (a notice, the summary) after them."""
    from tracer.output import JsonOutput

    path = tmp_path / "out.jsonl"
    with open(path, "w") as f:
        out = JsonOutput(f, batched=True, header=lambda: {"kind": "stream"})
        out.events(['{"kind":"syscall","n":1}', {"kind": "lost", "count": 2}, '{"kind":"syscall","n":3}'])
        assert path.read_text().count("\n") == 4  # written, not held in a buffer
        out.event({"kind": "syscall", "n": 4})
        out.events([{"kind": "user_event", "s": "é"}] * 40_000)  # more than one buffer's worth (1.4 MB)
        out.summary({"kind": "summary", "events": 41004})
    lines = path.read_text().splitlines()
    assert lines[:5] == ['{"kind":"stream"}', '{"kind":"syscall","n":1}', '{"kind":"lost","count":2}',
                         '{"kind":"syscall","n":3}', '{"kind":"syscall","n":4}']
    assert lines[5:-1] == ['{"kind":"user_event","s":"\\u00e9"}'] * 40_000
    assert lines[-1] == '{"kind":"summary","events":41004}' and len(lines) == 40_006


def test_json_output_chunks_never_exceed_half_the_buffer(tmp_path, monkeypatch) -> None:
    """Lines go out joined, WRITE_LINES at a time, but never as one write larger than half the writer's
    buffer (a larger write can be garbled by a signal arriving during it): a chunk holding long lines is
    written line by line. The file holds every line, whole and in order, either way."""
    from tracer import output

    sizes: list[int] = []
    real_big = output.JsonOutput._big

    class Spy:
        def __init__(self, big) -> None:
            self.big = big

        def write(self, s: str) -> int:
            sizes.append(len(s))
            return self.big.write(s)

        def writelines(self, lines: list[str]) -> None:
            for s in lines:
                self.write(s)

        def flush(self) -> None:
            self.big.flush()

    monkeypatch.setattr(output.JsonOutput, "_big", lambda self: Spy(real_big(self)))
    short = [f'{{"n":{k}}}' for k in range(1000)]
    long = ['{"s":"%s"}' % ("x" * 100_000)] * 12  # 1.2 MB in one chunk of WRITE_LINES
    path = tmp_path / "out.jsonl"
    with open(path, "w") as f:
        out = output.JsonOutput(f, batched=True)
        out.events(short + long + short)
    assert path.read_text().splitlines() == short + long + short
    assert max(sizes) <= output.WRITE_BUFFER // 2
    assert len(sizes) < 2 * len(short)  # short lines were joined: far fewer writes than lines


def test_opened_files() -> None:
    """Successful opens take the line path too: the filename's entry as the opened file leaves it
    (tracer/opened.py: verified by it, changed by a conflict, undecided) and `opened`, for every kfile
    status, openat and openat2, verified at exit or not, with O_NOFOLLOW / RESOLVE_NO_SYMLINKS."""
    from test_opened import kfile
    from test_recconsole import opened_rec

    ok = C("KF_OK")
    files = [(b"/etc/passwd", kfile(ok, [b"passwd", b"etc"])),
             (b"/tmp/harmless", kfile(ok, [b"secret", b"tmp"])),
             (b"f", kfile(ok, [b"f", b"u", b"home"])),
             (b"/tmp/\x1b[31mred\n", kfile(ok, [b"\x1b[31mred\n", b"tmp"], mode=0o40755)),
             (b"/tmp/\xff", kfile(ok, [b"\xff", b"tmp"])),  # not UTF-8: decoded the reference way
             (b"/etc/x", kfile(C("KF_TRUNC"), [b"x", b"etc"])),
             (b"/dev/pts/0", kfile(C("KF_UNREACHABLE"), [b"pipe:[77]"], mode=0o10600)),
             (b"/etc/x", kfile(C("KF_NOFILE"), [])),
             (b"/etc/x", kfile(C("KF_FAULT"), [], err=4)),
             (b"/etc/x", None)]
    recs = [opened_rec(nr, name, kf, verified=verified, flags=flags, resolve=resolve)
            for nr in (257, 437) for name, kf in files for verified in (True, False)
            for flags, resolve in ((0, 0), (os.O_NOFOLLOW, 0), (0, 0x04))]
    fast = check(recs)
    assert fast == [name.isascii() for _nr in (257, 437) for name, _kf in files for _v in (True, False)
                    for _f in range(3)]
    verdicts = {(ev["reads"]["filename"]["status"], ev["reads"]["filename"].get("opened_match"), ev["opened"]["status"])
                for ev in map(Decoder(TABLE).decode, recs, [1] * len(recs))}
    assert {("ok", "same", "ok"), ("changed", "conflict", "ok"), ("ok", "undecided", "ok"), ("ok", None, "truncated"),
            ("ok", None, "unavailable")} <= verdicts  # every verdict was made


def named(name: bytes, **kw) -> bytes:
    """A failing openat2 whose filename read (at entry, the same at exit) is `name`."""
    d = Data()
    f, h = d.add(name), d.add(HOW_BYTES)
    return openat2_rec(slot(1, RK_STR, C("RS_OK"), C("RS_OK"), enter=f, exit=f, same=1),
                       slot(2, RK_OPEN_HOW, C("RS_OK"), enter=h, want=24), d, **kw)


def test_strings_are_escaped_as_json_escapes_them() -> None:
    """Every control character, DEL, quotes and backslashes, non-ASCII text (BMP and astral: \\uXXXX and
    surrogate pairs), in paths and comms: the bytes json.dumps writes."""
    texts = ["".join(map(chr, range(0x80))), "\u00e9\u202e\u2028\ufeff\uffff", "\U0001f600 \U0010ffff \U00010000",
             "\"\\/\b\f\n\r\t\x00\x1f\x7f", "plain"]
    recs = [named(t.encode(), comm=c) for t in texts
            for c in (b"cat", "\u00e9\x7f\"".encode(), b"\xff\xfe", b"sixteen-bytes-xx")]
    recs += [named(b"\x01" * 4000), named("\U0001f600".encode() * 2000)]  # lines of 25-30 kB (C: off its stack)
    assert all(check(recs))


def test_invalid_utf8_goes_to_the_decoder() -> None:
    """Bytes bytes.decode('utf-8') refuses (overlong forms, surrogates, beyond U+10FFFF, cut sequences, stray
    continuation bytes) are decoded into their event (kept with `hex`); those it accepts take the line."""
    bad = [b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
           b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xe2\x82", b"a\x80", b"\xff", b"\xc2"]
    good = [b"\xc2\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xf0\x90\x80\x80", b"\xe2\x82\xac"]
    assert check([named(b"/tmp/" + b + b"/x") for b in bad + good]) == [False] * len(bad) + [True] * len(good)


def test_numbers_times_and_records_out_of_the_ordinary() -> None:
    """Negative return values and arguments, each integer conversion at its edges, noreturn, the `time`
    field's microseconds zero-padded and across a second boundary, times beyond 63 bits, pid/uid at
    2**32-1; and records the line cannot hold: shorter than their slots, data offsets beyond the record."""
    lseek = Syscall("lseek", 8, (Arg("fd", "unsigned int"), Arg("offset", "off_t"), Arg("whence", "int")))
    table = {**TABLE, 8: lseek}
    edges = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    recs = [record(8, [a, b, b], ret=ret) for a in edges for b in edges[::2] for ret in (-1, -4095, 0, 1 << 62)]
    recs += [record(8, [1, 2, 3], ts=ts, pid=(1 << 32) - 1, tid=0, uid=(1 << 32) - 1)
             for ts in ((999_999_000 - OFFSET % 10**9, 999_999_001 - OFFSET % 10**9 + 10**9),  # .999999 -> .000000
                        (1_000 - OFFSET % 10**9 + 10**9, 2_000), (5, 0), ((1 << 63) + 5, (1 << 63) + 9),
                        (1, (1 << 64) - 1), (1 << 40, 1))]  # duration negative
    recs += [record(231, [(1 << 64) - 1], flags=C("RF_NORETURN"), ret=0, ts=(7, 0))]
    assert all(check(recs, table))
    assert all(check(recs[:8], table, offset=-(10**18)))  # times before 1970
    d = Data()
    f = d.add(b"/etc/hosts")
    beyond = slot(1, RK_STR, C("RS_OK"), enter=(f[0] + 4000, 20))  # past the record's end: sliced as Python does
    assert check([record(257, [AT_FDCWD_U64, FNAME, 0, 0], ret=-2, slots=(beyond,), data=bytes(d.buf))])


def encoded(recs: list[bytes], c: bool) -> list:
    """Each record's Line, decoded event or exception, through one LineEncoder on the C or Python path."""
    import unittest.mock

    with unittest.mock.patch.object(recline, "c_line", recline.c_line if c else _no_c), \
            unittest.mock.patch.object(recline, "c_encode", recline.c_encode if c else _no_c):
        enc = LineEncoder(Decoder(TABLE), OFFSET)
        out: list = []
        for rec in recs:
            try:
                out += enc.encode([rec], 1)
            except Exception as e:  # what the Python path raises on a malformed record, the C path must too
                out.append(type(e))
    return out


def test_malformed_records_give_what_the_python_path_gives(line_path: str) -> None:
    """Records are untrusted (capture files replay through this path): cut short at every length, and with
    random bytes written over their header, slots and data, the C path gives what the Python path gives."""
    import random

    if line_path != "c":
        pytest.skip("compares the C path with the Python path")
    rng = random.Random(18)
    base = [named(b"/etc/hosts"), named("/tmp/\u00e9".encode(), ret=3), several_layouts()[-2]]
    recs = [r[:n] for r in base for n in range(0, len(r) + 1, 7)]
    for _ in range(3000):
        r = bytearray(rng.choice(base))
        for _k in range(rng.randrange(1, 6)):
            r[rng.randrange(len(r))] = rng.choice((0, 1, 3, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        recs.append(bytes(r))
    assert encoded(recs, True) == encoded(recs, False)


def test_c_module_refuses_another_record_layout(monkeypatch) -> None:
    """A module built from another bpf/record.h (an editable install not rebuilt) is not used: it would
    read records at the old offsets."""
    if not recline.status()[0]:
        pytest.skip(recline.status()[1])
    from tracer import _recline

    monkeypatch.setitem(_recline.OFFSETS, "sys_record.pid", _recline.OFFSETS["sys_record.pid"] + 4)
    recline._load.cache_clear()
    try:
        ok, why = recline.status()
        assert not ok and "sys_record.pid" in why
    finally:
        monkeypatch.undo()
        recline._load.cache_clear()
    assert recline.status()[0]


def test_doctor_says_which_line_encoder(monkeypatch) -> None:
    """`tracer doctor` names the line encoder in use, and why the C one is not."""
    from tracer import caps

    if recline.status()[0]:
        check = caps.check_line_encoder()
        assert (check.ok, check.verdict) == (True, "C") and "_recline" in check.detail
    monkeypatch.setenv("TRACER_PY_LINES", "1")
    recline._load.cache_clear()
    try:
        check = caps.check_line_encoder()
        assert (check.ok, check.verdict) == (False, "Python") and "TRACER_PY_LINES=1" in check.detail
    finally:
        monkeypatch.undo()
        recline._load.cache_clear()


class _CommFrag(str):
    """A comm's fragment that drops its memo's reference to itself when the line asks whether it is empty
    (`COMMS.get(raw) or ...`), and says when it is freed."""

    freed: ClassVar[list[str]] = []
    encoder: ClassVar[LineEncoder | None] = None

    def __bool__(self) -> bool:
        assert self.encoder is not None
        self.encoder._comms.clear()
        return True

    def __del__(self) -> None:
        self.freed.append(str(self))


class _CommObj:
    """A comm's fragment that is no str (the line falls back to Python's) and refers to its encoder."""

    def __init__(self, text: str, encoder: LineEncoder) -> None:
        self.text, self.encoder = text, encoder

    def __str__(self) -> str:
        return self.text


def test_memo_values_are_held_while_the_line_uses_them(line_path: str) -> None:
    """A memo's value is held before anything about it runs Python: here its truth test frees it (the C line
    used it after that: a use after free, found by ASan with PYTHONMALLOC=malloc)."""

    class Enc(LineEncoder):
        def _comm_text(self, comm: str) -> str:
            return _CommFrag(super()._comm_text(comm))

    recs = [named(b"/etc/hosts", comm=c, ret=-2) for c in (b"a", b"b", b"a", b"b")]  # a memo hit after a miss
    ref = [x[2] for x in LineEncoder(Decoder(TABLE), OFFSET).encode(recs, 1)]
    _CommFrag.encoder = enc = Enc(Decoder(TABLE), OFFSET)
    _CommFrag.freed.clear()
    got = []
    for r, comm in zip(recs, ("a", "b", "a", "b"), strict=True):
        _CommFrag.freed.clear()
        got += [x[2] for x in enc.encode([r], 1)]
        # the line was made with the value it read: that was not freed before, or while, it was in use
        assert line_path != "c" or json.dumps(comm) not in _CommFrag.freed
    assert got == ref
    _CommFrag.encoder = None


def test_encoder_with_lines_made_is_garbage_collected(line_path: str) -> None:
    """The C Line tells the garbage collector about every object it holds, the values it keeps from the
    last record included: a value that refers back to its encoder makes a cycle gc must be able to free."""
    import gc
    import weakref

    class Enc(LineEncoder):
        def _comm_text(self, comm: str) -> str:
            return _CommObj(super()._comm_text(comm), self)  # type: ignore[return-value]

    enc = Enc(Decoder(TABLE), OFFSET)
    rec = named(b"/etc/hosts", ret=-2)  # a failed call: the C line asks for its comm
    ref = LineEncoder(Decoder(TABLE), OFFSET).encode([rec], 1)
    assert enc.encode([rec], 1) == ref
    gone = weakref.ref(enc)
    del enc
    gc.collect()
    assert gone() is None


def test_c_line_refuses_a_spec_it_cannot_follow(line_path: str, monkeypatch) -> None:
    """A Line whose __init__ failed refuses to make lines (it crashed on what init left half-made); a spec
    naming an argument twice in its integers is refused (each took a place in an array of MAX_ARGS)."""
    if line_path != "c":
        pytest.skip("the C module's Line")
    from tracer import _recline

    half = _recline.Line.__new__(_recline.Line)
    with pytest.raises(KeyError):
        half.__init__({})
    with pytest.raises(RuntimeError):
        half.line(named(b"/etc/hosts", ret=-2), 1)
    specs: list[dict] = []
    real = recline.c_line
    monkeypatch.setattr(recline, "c_line", lambda spec: specs.append(spec) or real(spec))
    rec = record(257, [AT_FDCWD_U64, FNAME, 0o2000000, 0o644], ret=-2)  # dfd, flags, mode: 3 symbols
    line = LineEncoder(Decoder(TABLE), OFFSET).encode([rec], 1)[0]
    assert type(line) is Line and len(specs) == 1 and len(specs[0]["ints"]) == 4
    again = _recline.Line(specs[0]).line(rec, 1)
    assert again == line
    with pytest.raises(ValueError, match="twice"):
        _recline.Line({**specs[0], "ints": specs[0]["ints"] * 2})


def test_c_module_says_every_record_h_name_it_uses() -> None:
    """_recline.OFFSETS holds every field offset and constant of bpf/record.h that _recline.c reads, so that
    recline refuses a module built from another record.h than the one tracer/layout.py parses."""
    import re
    from pathlib import Path

    if not recline.status()[0]:
        pytest.skip(recline.status()[1])
    from tracer import _recline

    src = (Path(recline.__file__).parent / "_recline.c").read_text()
    used = {f"{s}.{f}" for s, f in re.findall(r"offsetof\(struct (sys_record|read_slot), (\w+)\)", src)}
    used |= {f"sys_record.{f}" for f in re.findall(r"\bh\.(\w+)", src)}
    used |= {f"read_slot.{f}" for f in re.findall(r"(?:\bsl->|\bh\.reads\[(?:[^][]|\[[^]]*\])*\]\.)(\w+)", src)}
    used |= set(re.findall(r"\b((?:RS|RF|RK)_[A-Z_]+|MAX_ARGS|MAX_READS|TASK_COMM_LEN)\b", src))
    assert "read_slot.arg" in used and "RF_SLEEPABLE" in used and "sys_record.ts_enter" in used
    assert used - set(_recline.OFFSETS) == set()
