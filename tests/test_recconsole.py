"""tracer/recconsole.py, console lines straight from the record, against the reference: ConsoleOutput's
rendering of the event Decoder.decode makes. Every entry x exit read status, slot order, return value,
escaping case (comm, paths: terminal escapes, bidi overrides, line breaks, quotes, rich markup, bytes that
are not UTF-8), colour system, -T, the resumed marker; each line's statistics key against Stats.add_many's.
Records are synthesized as in test_decode.py (no BPF)."""

from __future__ import annotations

import io
import os
import struct

import pytest
from rich.console import Console
from test_decode import (
    ACCEPT4,
    AT_FDCWD_U64,
    CONNECT,
    EFAULT,
    FNAME,
    HOW,
    HOW_BYTES,
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
from test_opened import kfile
from test_recjson import context_and_strv_records, drained, session_records, several_layouts

from tracer import layout
from tracer.decode import Decoder
from tracer.events import Stats
from tracer.output import ConsoleOutput
from tracer.recconsole import ConsoleLineEncoder
from tracer.recjson import Line
from tracer.syscalls import Arg, Syscall

OFFSET = 1_764_000_000_999_999_000  # mono -> wall: records 1 µs apart cross a second
C = layout.const
COLORS = (None, "standard", "256", "truecolor")
NAMES = (b"/etc/hosts", b"/etc/\xff\xfe", "/tmp/\u00e9\u202e\x1b[2J\n\"\\[red]x[/red]\t".encode(), b"")


def console(color: str | None, durations: bool = False) -> tuple[ConsoleOutput, io.StringIO]:
    f = io.StringIO()
    out = ConsoleOutput(Console(file=f, width=80, color_system=color, force_terminal=color is not None,
                                highlight=False, soft_wrap=True))
    out.mono_to_wall = OFFSET
    out.durations = durations
    return out, f


def check(recs: list[bytes], table: dict | None = None, cpu: int = 1) -> list[bool]:
    """Each record's line against the reference's, in every colour system, with and without -T, in one
    batch (the resumed markers depend on the lines before) and record by record; which records took the
    line path (the same in every case)."""
    fast: list[bool] = []
    for color in COLORS:
        for durations in (False, True):
            ref, ref_text = console(color, durations)
            out, text = console(color, durations)
            ref_dec, dec = Decoder(table or TABLE), Decoder(table or TABLE)
            enc = out.line_encoder(dec)
            assert isinstance(enc, ConsoleLineEncoder)
            for _ in range(2):  # and again, from the memos
                evs = [ref_dec.decode(rec, cpu) for rec in recs]
                got = enc.encode(recs, cpu)
                ref.events(evs)
                out.events([it[2] if type(it) is Line else it for it in got])
                assert text.getvalue() == ref_text.getvalue(), (color, durations)
                fast = []
                for item, ev in zip(got, evs, strict=True):
                    if type(item) is not Line:
                        fast.append(False)
                        continue
                    assert item[0] == item[2][1] == (ev.get("ts_exit") or ev["ts"])
                    assert item[2][0] == ev["ts"]
                    one, st = Stats(), Stats()
                    one.add_groups({item[1]: 1})
                    st.add_many([ev])
                    assert one == st
                    fast.append(True)
            for rec in recs:  # one line per batch: no markers
                ref.overlap = out.overlap = None
                ref.events([ref_dec.decode(rec, cpu)])
                out.events([it[2] if type(it) is Line else it for it in enc.encode([rec], cpu)])
            assert text.getvalue() == ref_text.getvalue()
            if color is None:
                assert "\x1b" not in text.getvalue()  # every process-controlled ESC shown escaped
    return fast


@pytest.mark.parametrize("es", STATUSES)
@pytest.mark.parametrize("xs", STATUSES)
def test_line_equals_reference_for_every_read_status(es: int, xs: int) -> None:
    for same in (0, 1):
        for name in NAMES:
            d = Data()
            f_in, f_out = d.add(name), d.add(name if same else b"/etc/other")
            h_in, h_out = d.add(HOW_BYTES), d.add(HOW_BYTES if same else struct.pack("<QQQ", 1, 0, 0))
            kw = dict(eerr=-EFAULT, xerr=-EFAULT, same=same)
            fs = slot(1, RK_STR, es, xs, enter=f_in, exit=f_out, **kw)
            hs = slot(2, RK_OPEN_HOW, es, xs, enter=h_in, exit=h_out, want=24, **kw)
            recs = [openat2_rec(fs, hs, d, ret=ret, flags=flags, ts=(1_000 + k, 1_500 + k), comm=comm)
                    for k, (ret, flags, comm) in enumerate(
                        (ret, flags, comm) for ret in (3, -2, -4095, 1 << 40)
                        for flags in (0, 4, 4 | C("RF_NORETURN")) for comm in (b"cat", b"\x1b]0;x\x07\xff"))]
            recs += [openat2_rec(hs, fs, d, ret=-2)]  # slots in the other order
            fast = check(recs)
            common = es == C("RS_OK") and (xs == C("RS_NONE") or (same and xs in (C("RS_OK"), C("RS_TRUNC"))))
            if common:  # the line path takes them all, successful opens too (`opened`: test_opened_files)
                assert all(fast)
            else:
                assert not any(fast)
        sa = Data()
        a_in, a_out = sa.add(sin(80, "10.0.0.1")), sa.add(sin(80 if same else 81, "10.0.0.1"))
        short = sa.add(b"\x02")  # shorter than a sockaddr: shown as its raw bytes
        for nr, kind in ((CONNECT.nr, RK_SOCKADDR), (ACCEPT4.nr, RK_SOCKADDR_OUT)):
            kw = dict(eerr=-EFAULT, xerr=-EFAULT, same=same, want=16)
            slots = [slot(1, kind, es, xs, enter=a_in, exit=a_out, **kw), slot(1, kind, es, xs, enter=short,
                                                                                exit=short, **kw)]
            fast = check([record(nr, [3, SA, 16, 0], ret=ret, slots=(s,), data=bytes(sa.buf)) for ret in (0, -1)
                          for s in slots])
            assert fast == [common and kind == RK_SOCKADDR] * 4


def opened_rec(nr: int, name: bytes, kf: bytes | None, *, verified: bool, flags: int = 0,
               resolve: int = 0, ret: int = 3) -> bytes:
    """A successful openat (257) or openat2 (437) of `name` with the kernel's opened file `kf` (a struct
    kfile and its components, test_opened.kfile; None: not in the record), the filename verified at exit
    (the same bytes) or not re-read."""
    d = Data()
    f = d.add(name)
    slots = [slot(1, RK_STR, C("RS_OK"), C("RS_OK") if verified else C("RS_NONE"), enter=f, exit=f, same=1)]
    if nr == 437:
        slots.append(slot(2, RK_OPEN_HOW, C("RS_OK"), enter=d.add(struct.pack("<QQQ", flags, 0, resolve)), want=24))
    data, xoff, rflags = bytes(d.buf), 0, 4
    if kf is not None:
        xoff = (len(data) + 7) & ~7
        data = data.ljust(xoff, b"\0") + kf
        rflags |= C("RF_OPENED")
    rec = bytearray(record(nr, [AT_FDCWD_U64, FNAME, HOW if nr == 437 else flags, 24 if nr == 437 else 0o644],
                           ret=ret, flags=rflags, slots=tuple(slots), data=data))
    struct.pack_into("<I", rec, layout.struct_of("sys_record").field("xoff").offset, xoff)
    return bytes(rec)


def test_opened_files() -> None:
    """Successful opens: ` -> opened ...` for every kfile status, and the filename as the opened file leaves
    it (tracer/opened.py): verified (same), changed (conflict: O_NOFOLLOW, RESOLVE_NO_SYMLINKS) or as it
    was (undecided), with its statistics; names with escapes in the kernel's path too."""
    ok = C("KF_OK")
    files = [(b"/etc/passwd", kfile(ok, [b"passwd", b"etc"])),
             (b"/tmp/harmless", kfile(ok, [b"secret", b"tmp"])),
             (b"f", kfile(ok, [b"f", b"u", b"home"])),
             (b"/tmp/\x1b[31mred\n", kfile(ok, [b"\x1b[31mred\n", b"tmp"], mode=0o40755)),
             (b"/etc/x", kfile(C("KF_TRUNC"), [b"x", b"etc"])),
             (b"/dev/pts/0", kfile(C("KF_UNREACHABLE"), [b"pipe:[77]"], mode=0o10600)),
             (b"/etc/x", kfile(C("KF_NOFILE"), [])),
             (b"/etc/x", kfile(C("KF_FAULT"), [], err=4)),
             (b"/etc/x", kfile(C("KF_FAULT"), [b"x"], err=6)),
             (b"/etc/x", None)]
    recs = [opened_rec(nr, name, kf, verified=verified, flags=flags, resolve=resolve)
            for nr in (257, 437) for name, kf in files for verified in (True, False)
            for flags, resolve in ((0, 0), (os.O_NOFOLLOW, 0), (0, 0x04))]
    assert all(check(recs))
    statuses = set()
    for rec in recs:
        ev = Decoder(TABLE).decode(rec, 1)
        statuses.add((ev["reads"]["filename"]["status"], ev["reads"]["filename"].get("opened_match"),
                      ev["opened"]["status"]))
    assert {("ok", "same", "ok"), ("changed", "conflict", "ok"), ("ok", "undecided", "ok"), ("ok", None, "truncated"),
            ("ok", None, "unavailable")} <= statuses  # every verdict was made


def test_line_equals_reference_without_reads_and_symbols() -> None:
    lseek = Syscall("lseek", 8, (Arg("fd", "unsigned int"), Arg("offset", "off_t"), Arg("whence", "unsigned int")))
    for off in (5, (1 << 64) - 5, 1 << 63, (1 << 63) - 1, 0xFFFF, 0x10000):  # signed 64 bits; hex beyond 0xFFFF
        assert check([record(8, [(1 << 64) - 1, off, 1], ret=-22)], {**TABLE, 8: lseek}) == [True]
    fast = check([record(257, [AT_FDCWD_U64, FNAME, 0o2000000, 0o644], ret=-2),  # symbols: dfd, flags, mode
                  record(257, [5, FNAME, 1 << 40, (1 << 64) - 1], ret=-13, comm=b"\xff\x1bodd\"comm"),
                  record(257, [5, FNAME, 0, 0], ret=-2, comm=b""),  # an empty comm: no codes around it
                  record(231, [(1 << 64) - 1], flags=C("RF_NORETURN")),
                  record(999, [1, 2], ret=0, ts=(5, 0)),  # unknown syscall; no exit time: ordered by entry
                  record(999, [1, 2], ret=(1 << 32) + 1),  # a return value beyond 32 bits: hex
                  record(59, [FNAME, 0, 0], ret=-2)])  # execve: strv slots are decoded
    assert fast == [True] * 7


def test_context_symbols_and_other_kinds_are_decoded() -> None:
    assert check(*context_and_strv_records()) == [False, False]


def test_records_of_several_layouts_and_cpus_across_seconds() -> None:
    for cpu in (0, 7):
        assert all(check(several_layouts(), cpu=cpu))


def test_session_console_lines_deliver_what_the_dict_path_does() -> None:
    """Session.batches(lines=ConsoleOutput.line_encoder)'s drain against the dict path on the same rings:
    two CPUs out of order with each other, a ring's lost marker, records of both paths mixed, calls that
    began before lines printed above them (the resumed marker); same text, same statistics."""
    texts, stats = [], []
    for lines in (False, True):
        out, text = console("truecolor", durations=True)
        got, st = drained(out.line_encoder if lines else False, began=900)
        assert any(type(x) is tuple for x in got) == lines
        out.events(got)
        texts.append(text.getvalue())
        stats.append(st)
    ref, got = texts
    assert got == ref and stats[0] == stats[1]
    assert ref.startswith("\x1b[1;31m!! 4 records lost") and ref.count("\n") == 1 + 2 * len(session_records(0))
    assert "resumed: began before the" in ref
