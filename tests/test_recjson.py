"""tracer/recjson.py, `--json` lines straight from the record, against the reference: the event Decoder.decode
makes, with its `time`, encoded by jsonenc.dumps (json.dumps's bytes). Every entry x exit read status, slot
order, return value and the records it hands back to the decoder; the statistics key of each line is the
one Stats.add_many gives its event. Records are synthesized as in test_decode.py (no BPF)."""

from __future__ import annotations

import json
import os
import struct

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

from tracer import layout
from tracer.contract import WallClock
from tracer.decode import Decoder
from tracer.events import Stats
from tracer.recjson import Line, LineEncoder
from tracer.syscalls import Arg, Syscall

OFFSET = 1_764_000_000_123_456_789  # mono -> wall: times in 2025
C = layout.const


def compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def check(recs: list[bytes], table: dict | None = None, cpu: int = 1) -> list[bool]:
    """Each record's output against the reference; which of them took the line path."""
    ref_dec, dec = Decoder(table or TABLE), Decoder(table or TABLE)
    enc = LineEncoder(dec, OFFSET)
    fast = []
    for _ in range(2):  # and again, from the memos
        got = enc.encode(recs, [cpu] * len(recs))
        fast = []
        for rec, item in zip(recs, got, strict=True):
            ev = ref_dec.decode(rec, cpu)
            WallClock(OFFSET).stamp([ev])
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
