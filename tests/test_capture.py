"""Capture files without BPF (tracer/capture.py, tracer/export.py): a capture written from synthesized
syscall records (tests/test_decode.py builds them at record.h's offsets) replays to the very events that
were delivered; the header is self-describing; the file is 0600; truncation at every offset and damage at
every byte never raise; the chrome export has Trace Event Format's shape.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_decode import EXIT_GROUP, OPENAT2, RK_STR, RS_FAULT, RS_OK, Data, ok_how, openat2_rec, record, slot

from tracer import capture as cap_mod
from tracer.capture import MAGIC, Capture, CaptureError, CaptureExists, CaptureWriter, Filter
from tracer.contract import WallClock, clock_info, stream_header
from tracer.decode import Decoder
from tracer.events import Event, Stats, summary_of
from tracer.export import write_chrome, write_jsonl
from tracer.layout import layout_digest, parse_header
from tracer.perf import Batch
from tracer.probes import Filters
from tracer.session import session_header
from tracer.sources import Source, SyscallSource

REPO = Path(__file__).resolve().parent.parent
ENTER_FORMAT = """name: {name}
ID: 1
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
{fields}
print fmt: "..."
"""
FIELDS = {"openat2": ["int dfd", "const char * filename", "struct open_how * how", "size_t usize"],
          "exit_group": ["int error_code"]}
REGION = {"kind": "unmapped", "where": "NULL page"}


def fake_tracefs(root: Path) -> Path:
    for name, fields in FIELDS.items():
        body = "\n".join(f"\tfield:{f};\toffset:{16 + 8 * i};\tsize:8;\tsigned:0;" for i, f in enumerate(fields))
        for kind in ("enter", "exit"):
            if kind == "exit" and name == "exit_group":
                continue
            d = root / "events" / "syscalls" / f"sys_{kind}_{name}"
            d.mkdir(parents=True)
            (d / "format").write_text(ENTER_FORMAT.format(name=f"sys_{kind}_{name}", fields=body))
    return root


def records() -> list[bytes]:
    """openat2 ok, openat2 with an unreadable path (explained), a recovered one, exit_group."""
    out = []
    d = Data()
    f = d.add(b"/etc/hostname")
    out.append(openat2_rec(slot(1, RK_STR, RS_OK, RS_OK, enter=f, exit=(0, f[1]), same=1), ok_how(d), d,
                           ts=(1_000, 2_000)))
    d = Data()
    out.append(openat2_rec(slot(1, RK_STR, RS_FAULT, RS_FAULT, eerr=-14, xerr=-14), ok_how(d), d, ret=-14,
                           ts=(3_000, 3_500), pid=50, tid=51, comm=b"evil\x1b"))
    d = Data()
    f = d.add(b"/tmp/x")
    out.append(openat2_rec(slot(1, RK_STR, RS_FAULT, RS_OK, eerr=-14, exit=f), ok_how(d), d, ts=(4_000, 4_800)))
    out.append(record(231, [7], flags=1, ts=(5_000, 0)))
    return out


# A session's clock (contract.clock_info()): events' `time` = ts + mono_to_wall_ns, as ISO 8601 UTC.
FAKE_CLOCK = clock_info()
WALL = WallClock(FAKE_CLOCK["mono_to_wall_ns"])


def fake_session(**over: object) -> SimpleNamespace:
    base = dict(filters=Filters([42], [], None, None, True, True), event_specs=["openat2", "exit_group"],
                command=["./app", "x"], duration=None, count=None, only_missing=False, explain=True, pages=256,
                read_mode="auto", clock=FAKE_CLOCK)
    return SimpleNamespace(**{**base, **over})


@pytest.fixture
def tracefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = fake_tracefs(tmp_path / "tracefs")
    monkeypatch.setenv("TRACER_TRACEFS", str(root))
    return root


def write_capture(path: Path, *, trailer: bool = True, explain: bool = True, force: bool = False) -> list[dict]:
    """Records a fake session the way Session does; returns the events it delivered, lost included."""
    w = CaptureWriter(path, force)
    calls: list[tuple[int, int]] = []

    def explainer(pid: int, addr: int) -> dict:
        calls.append((pid, addr))
        return {**REGION, "call": len(calls)}  # differs per call: replay must use the recorded one

    src = SyscallSource.__new__(SyscallSource)
    src.syscalls = [OPENAT2, EXIT_GROUP]
    src.decode = Decoder({s.nr: s for s in src.syscalls}, w.wrap_explain(explainer) if explain else None).decode
    w.begin(session_header(fake_session(explain=explain)), [src])
    decode = w.recording(src)  # as Session decodes while recording
    delivered: list[dict] = []
    recs = records()
    for i, raw in enumerate(recs):
        ev = decode(raw, 1)
        WALL.stamp([ev])  # as Session does
        if i == 2:  # a lost-records report between two batches
            w.lost(src, 1, 9, "ring_full")
            delivered.append({"kind": "lost", "source": "syscalls", "cpu": 1, "count": 9, "reason": "ring_full"})
        w.event(ev)
        delivered.append(ev)
        w.flush()
    ev = decode(recs[0], 0)  # decoded but not delivered (filtered, or past --count): not written
    w.flush()
    stats = Stats()
    for e in delivered:
        if e["kind"] == "syscall":
            stats.add(e)
    stats.add_lost(delivered[2])
    # No trailer: as if killed.
    w.close(summary_of(stats, {"emitted": 5}, 1.25, 0, FAKE_CLOCK["mono_to_wall_ns"]) if trailer else None)
    return delivered


@pytest.fixture
def capfile(tmp_path: Path, tracefs: Path) -> tuple[Path, list[dict]]:
    path = tmp_path / "run.cap"
    return path, write_capture(path)


def test_replay_equals_delivered_events(capfile) -> None:
    path, delivered = capfile
    cap = Capture(path)
    events = [ev.data for ev in cap]
    assert events == delivered
    assert json.dumps(events) == json.dumps(delivered)  # same key order: same JSON Lines
    assert [e.get("syscall", e["kind"]) for e in events] == ["openat2", "openat2", "lost", "openat2", "exit_group"]
    assert events[1]["reads"]["filename"]["region"] == {**REGION, "call": 1}  # recorded, not recomputed
    assert events[3]["reads"]["filename"]["region"] == {**REGION, "call": 2}
    assert events[1]["comm"] == "evil\x1b" and events[1]["missing"] == ["filename"]
    assert events[4]["syscall"] == "exit_group" and events[4]["ret"] is None
    assert cap.problem is None and cap.records == 4
    s = cap.summary()
    assert s["events"] == 4 and s["lost"] == 9 and s["lost_per_cpu"] == {"1": 9}
    assert s["lost_by_reason"]["ring_full"] == 9 and sum(s["lost_by_reason"].values()) == 9
    assert s["kernel"] == {"emitted": 5} and s["elapsed_s"] == 1.25 and s["exit_code"] == 0
    assert s["reads"]["missing"] == 1 and s["reads"]["recovered"] == 1


def test_header_is_self_describing(capfile, tracefs: Path) -> None:
    path, _ = capfile
    h = Capture(path).header
    assert h["format"] == "tracer-capture" and h["version"] == cap_mod.FORMAT_VERSION
    assert h["tool"]["version"] == __import__("tracer").__version__
    assert h["kernel"]["release"] == os.uname().release and h["host"] == os.uname().nodename
    clock = h["clock"]
    assert clock["events"] == "CLOCK_MONOTONIC"
    assert abs(clock["mono_to_wall_ns"] - (time.time_ns() - time.monotonic_ns())) < 5e9
    assert clock["boot_wall_ns"] < clock["created_wall_ns"]
    assert h["session"]["pids"] == [42] and h["session"]["command"] == ["./app", "x"]
    (src,) = h["sources"]
    assert src["name"] == "syscalls" and src["replay"] == "tracer.sources:SyscallSource"
    desc = src["desc"]
    assert desc["layout"]["sha256_of"] == "parsed-layout/1"  # tests/test_layout_identity.py: what it covers
    assert desc["layout"]["sha256"] == layout_digest(parse_header((REPO / "bpf" / "record.h").read_text()))
    assert desc["layout"]["sizes"]["sys_record"] > 0 and desc["layout"]["sizes"]["read_slot"] > 0
    sc = {d["name"]: d for d in desc["syscalls"]}
    assert sc["openat2"]["nr"] == 437 and "field:const char * filename" in sc["openat2"]["enter_format"]
    assert sc["openat2"]["exit_format"].startswith("name: sys_exit_openat2")
    assert sc["exit_group"]["noreturn"] is True and sc["exit_group"]["exit_format"] is None
    assert path.read_bytes().startswith(MAGIC)


def test_mode_0600_whatever_the_umask(tmp_path: Path, tracefs: Path) -> None:
    old = os.umask(0)
    try:
        write_capture(tmp_path / "a.cap")
    finally:
        os.umask(old)
    assert (tmp_path / "a.cap").stat().st_mode & 0o777 == 0o600


def test_existing_file_needs_force(capfile, tracefs: Path) -> None:
    path, _ = capfile
    before = path.read_bytes()
    with pytest.raises(CaptureExists, match="exists; choose another file or pass --force"):
        CaptureWriter(path)
    assert path.read_bytes() == before
    w = CaptureWriter(path, force=True)
    w.close()
    assert path.read_bytes() == before, "a session that never started keeps the file it would have replaced"
    assert [p.name for p in path.parent.iterdir() if "tracer-new" in p.name] == []
    path.write_bytes(b"old")
    assert write_capture(path, force=True) and Capture(path).problem is None  # started: replaced
    assert [p.name for p in path.parent.iterdir() if "tracer-new" in p.name] == []
    with pytest.raises(CaptureExists, match="not a regular file; --force replaces regular files only"):
        CaptureWriter(Path("/dev/null"), force=True)
    fresh = path.with_name("fresh.cap")
    CaptureWriter(fresh).close()
    assert not fresh.exists(), "a new capture whose session never started is removed"
    link = path.with_suffix(".lnk")
    link.symlink_to(path.parent / "target")
    with pytest.raises(CaptureExists):
        CaptureWriter(link)
    assert not (path.parent / "target").exists()


def test_source_without_capture_support_fails_clearly(tmp_path: Path) -> None:
    class Other(Source):
        name = "uprobes"

    w = CaptureWriter(tmp_path / "x.cap")
    with pytest.raises(CaptureError, match="events of the uprobes source cannot be recorded yet"):
        w.begin({}, [Other()])
    w.close()
    assert not (tmp_path / "x.cap").exists()


def frame_ends(data: bytes) -> list[int]:
    """Offsets where frames end, in order (the first is the header's)."""
    pos, ends = len(MAGIC), []
    while pos < len(data):
        _, length, _ = cap_mod.FRAME.unpack_from(data, pos)
        pos += cap_mod.FRAME.size + length
        ends.append(pos)
    return ends


def test_truncated_at_every_offset_replays_every_complete_record(capfile, tmp_path: Path) -> None:
    path, delivered = capfile
    data = path.read_bytes()
    ends = frame_ends(data)
    cut = tmp_path / "cut.cap"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        if n < ends[0]:
            with pytest.raises(CaptureError):
                Capture(cut)
            continue
        cap = Capture(cut)
        events = [ev.data for ev in cap]
        complete = sum(1 for e in ends[1:] if e <= n)  # frames after the header: R, R, L, R, R, T
        assert events == delivered[:complete], n
        if n in ends:
            assert cap.problem is None
        else:
            assert cap.problem is not None and cap.problem.kind == "truncated", n
            assert cap.problem.offset == max(e for e in ends if e <= n)
            assert "is truncated at byte" in cap.problem.message(cut, cap.records)
        assert cap.trailer is None
        cap.summary()


def test_damage_at_every_byte_never_raises(capfile, tmp_path: Path) -> None:
    path, delivered = capfile
    data = path.read_bytes()
    ends = frame_ends(data)
    bad = tmp_path / "bad.cap"
    for i in range(len(data)):
        broken = bytearray(data)
        broken[i] ^= 0x5A
        bad.write_bytes(bytes(broken))
        try:
            cap = Capture(bad)
        except CaptureError:
            assert i < ends[0], i  # only damage in the signature or header makes it unreadable
            continue
        events = [ev.data for ev in cap]
        frame = next(k for k, e in enumerate(ends) if i < e)  # the frame holding the damaged byte
        # A damaged length may point past the end of the file: that reads as a truncation.
        assert cap.problem is not None and cap.problem.kind in ("damaged", "truncated"), i
        assert events == delivered[:frame - 1], i
        cap.summary()


def test_random_bytes_and_other_files_are_refused(tmp_path: Path, tracefs: Path) -> None:
    rng = random.Random(5)
    f = tmp_path / "junk"
    for size in (0, 1, 7, 8, 9, 20, 100, 4096):
        f.write_bytes(bytes(rng.randrange(256) for _ in range(size)))
        with pytest.raises(CaptureError, match="not a tracer capture"):
            Capture(f)
        f.write_bytes(MAGIC + bytes(rng.randrange(256) for _ in range(size)))
        with pytest.raises(CaptureError, match="header"):
            Capture(f)
    with pytest.raises(CaptureError, match="cannot read"):
        Capture(tmp_path / "nope")
    with pytest.raises(CaptureError, match="cannot read"):
        Capture(tmp_path)


def rewrite_header(path: Path, change) -> None:
    """Re-frame the capture with a modified header (valid checksum: only the content is wrong)."""
    data = path.read_bytes()
    end = frame_ends(data)[0]
    header = json.loads(data[len(MAGIC) + cap_mod.FRAME.size: end])
    change(header)
    w = CaptureWriter.__new__(CaptureWriter)
    w.buf = bytearray()
    w._frame(b"H", json.dumps(header).encode())
    path.write_bytes(MAGIC + bytes(w.buf) + data[end:])


@pytest.mark.parametrize(("change", "message"), [
    (lambda h: h["sources"][0]["desc"]["layout"].update(sha256="0" * 64), "record layout .* differs"),
    (lambda h: h["sources"][0].update(replay="os:system"), "'os:system', which is not one of tracer's"),
    (lambda h: h["sources"][0].update(replay="tracer.sources:Nope"), "which is not one of tracer's"),
    (lambda h: h.update(version=99), "format 99"),
    (lambda h: h["sources"][0]["desc"].pop("syscalls"), "cannot rebuild the decoder"),
])
def test_bad_header_contents_are_one_clear_error(capfile, change, message: str) -> None:
    path, _ = capfile
    rewrite_header(path, change)
    with pytest.raises(CaptureError, match=message):
        list(Capture(path))


def test_filters(capfile) -> None:
    path, delivered = capfile
    cap = Capture(path)

    def kept(**kw: object) -> list[dict]:
        return [ev.data for ev in cap.events(**kw)]

    lost = delivered[2]
    assert kept(only_missing=True) == [delivered[1], lost, delivered[3]]
    assert kept(pids=[50]) == [delivered[1], lost]
    assert kept(tids=[43]) == [delivered[0], lost, delivered[3], delivered[4]]
    assert kept(comm="evil\x1b") == [delivered[1], lost]
    assert kept(uid=0) == [lost]
    assert kept(patterns=["exit*"]) == [lost, delivered[4]]
    assert kept(patterns=["syscalls:sys_enter_openat2"]) == [e for i, e in enumerate(delivered) if i != 4]
    assert kept(patterns=["%file"]) == kept(patterns=["openat2"])
    assert cap.summary()["events"] == 3
    with pytest.raises(CaptureError, match="nothing in the capture matches 'connect'"):
        kept(patterns=["connect"])
    with pytest.raises(CaptureError, match="unknown group"):
        Filter(patterns=["%nope"]).bind(cap)


def test_capture_without_explanations_replays_without_regions(tmp_path: Path, tracefs: Path) -> None:
    path = tmp_path / "noexplain.cap"
    delivered = write_capture(path, explain=False)
    events = [ev.data for ev in Capture(path)]
    assert events == delivered and "region" not in events[1]["reads"]["filename"]


def test_chrome_export_shape(capfile, tmp_path: Path) -> None:
    path, _ = capfile
    out = tmp_path / "trace.json"
    with out.open("w") as f:
        write_chrome(Capture(path), f)
    doc = json.loads(out.read_text())
    assert set(doc) == {"traceEvents", "displayTimeUnit", "otherData"}
    evs = doc["traceEvents"]
    for te in evs:
        assert te["ph"] in ("X", "i", "M") and isinstance(te["pid"], int) and isinstance(te["tid"], int)
        assert isinstance(te["name"], str)
        if te["ph"] != "M":
            assert isinstance(te["ts"], (int, float)) and "cat" in te
    xs = [te for te in evs if te["ph"] == "X"]
    assert [(te["name"], te["ts"], te["dur"], te["pid"], te["tid"]) for te in xs] == [
        ("openat2", 1.0, 1.0, 42, 43), ("openat2", 3.0, 0.5, 50, 51), ("openat2", 4.0, 0.8, 42, 43)]
    assert xs[0]["args"]["read_status"] == {"filename": "ok", "how": "ok"}
    assert xs[0]["args"]["args"]["filename"] == "/etc/hostname" and xs[1]["args"]["ret"] == -14
    assert xs[1]["cat"] == "syscall,missing"
    instants = [te for te in evs if te["ph"] == "i"]
    missing = [te for te in instants if te["cat"] == "missing"]
    assert [(te["name"], te["ts"], te["s"], te["cname"]) for te in missing] == [
        ("missing: openat2 filename=missing", 3.0, "t", "terrible"),
        ("recovered: openat2 filename=recovered", 4.0, "t", "yellow")]
    assert missing[0]["args"]["reads"]["filename"]["region"] == {**REGION, "call": 1}
    (lost,) = [te for te in instants if te["cat"] == "lost"]
    assert lost["s"] == "g" and lost["args"]["count"] == 9
    (noreturn,) = [te for te in instants if te["name"] == "exit_group"]
    assert noreturn["s"] == "t" and noreturn["ts"] == 5.0
    meta = {(te["name"], te["pid"], te["tid"]): te["args"]["name"] for te in evs if te["ph"] == "M"}
    assert meta == {("process_name", 42, 42): "cat (42)", ("process_name", 50, 50): "evil\x1b (50)",
                    ("thread_name", 42, 43): "cat (43)", ("thread_name", 50, 51): "evil\x1b (51)"}
    assert doc["otherData"]["summary"]["events"] == 4


def test_jsonl_export_is_the_json_lines_stream(capfile, tmp_path: Path) -> None:
    path, delivered = capfile
    out = tmp_path / "x.jsonl"
    with out.open("w") as f:
        assert write_jsonl(Capture(path), f) == 5
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines.pop(0) == stream_header(FAKE_CLOCK)
    assert lines[:-1] == delivered and lines[-1]["kind"] == "summary" and lines[-1]["events"] == 4
    assert "capture_problem" not in lines[-1]
    cut = tmp_path / "cut.cap"
    cut.write_bytes(path.read_bytes()[:-40])
    with out.open("w") as f:
        write_jsonl(Capture(cut), f)
    last = json.loads(out.read_text().splitlines()[-1])
    assert last["kind"] == "summary" and last["capture_problem"]["kind"] == "truncated"


def test_event_api(capfile) -> None:
    path, _ = capfile
    ev = next(iter(Capture(path)))
    assert isinstance(ev, Event) and ev.syscall == "openat2" and ev.reads["filename"]["status"] == "ok"
    assert json.loads(ev.to_json()) == ev.data


# --- the CLI on damaged files: one line, no traceback --------------------------------------------


def tracer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_cli_replay_and_export_of_cut_and_junk_files(capfile, tmp_path: Path) -> None:
    path, delivered = capfile
    data = path.read_bytes()
    ends = frame_ends(data)
    cut = tmp_path / "cut.cap"
    cut.write_bytes(data[: ends[2] + 5])
    p = tracer("replay", str(cut), "--json")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.splitlines() == [f"tracer: {cut} is truncated at byte {ends[2]} (frame header cut after 5 of 12 "
                                     "bytes); the 2 records before it were replayed"]
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert lines[0]["kind"] == "stream" and lines[1:-1] == delivered[:2] and lines[-1]["kind"] == "summary"

    junk = tmp_path / "junk.cap"
    junk.write_bytes(os.urandom(300))
    for args in (("replay", str(junk)), ("export", str(junk), "--format", "chrome")):
        p = tracer(*args)
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.splitlines() == [f"tracer: {junk} is not a tracer capture (no capture signature at its start)"]

    p = tracer("replay", str(path), "connect")
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "matches 'connect'" in p.stderr

    out = tmp_path / "out.json"
    p = tracer("export", str(path), "--format", "chrome", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert out.stat().st_mode & 0o777 == 0o600 and json.loads(out.read_text())["traceEvents"]
    p = tracer("export", str(path), "--format", "chrome", "-o", str(out))
    assert p.returncode == 2 and "pass --force" in p.stderr


def test_console_replay_uses_recorded_clock(capfile) -> None:
    """Times come from the header's wall-clock offset, not from the replaying machine's clock."""
    path, _ = capfile
    cap = Capture(path)
    ts = 1_000  # the first event's CLOCK_MONOTONIC ns
    sec, ns = divmod(ts + cap.mono_to_wall_ns, 1_000_000_000)  # integers: a float's µs digit can be off by one
    want = time.strftime("%H:%M:%S", time.localtime(sec)) + f".{ns // 1000:06d}"
    p = tracer("replay", str(path), env={"COLUMNS": "300", "TERM": "dumb"})
    assert p.returncode == 0, p.stderr
    first = next(line for line in p.stdout.splitlines() if "openat2(" in line)
    assert first.startswith(want + " cat[42/43] openat2(dfd=AT_FDCWD, filename=\"/etc/hostname\"")
    assert "evil\\x1b[50/51]" in p.stdout and "\x1b" not in p.stdout


def test_replay_views_failed_only_durations_and_call_table(capfile) -> None:
    """-Z, -T, -c and -C on a replay, as on a live trace (tracer/summary.py)."""
    path, _ = capfile
    p = tracer("replay", str(path), "-Z", "--json", "-C")
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [(e["kind"], e.get("ret_str")) for e in lines] == [("stream", None), ("syscall", "-14 EFAULT"),
                                                             ("lost", None), ("summary", None)]
    assert lines[-1]["per_syscall"] == {"openat2": {"calls": 1, "errors": 1, "total_ns": 500, "avg_ns": 500,
                                                 "max_ns": 500}}
    # Left out by -Z, and said so: the two openat2 that succeeded and exit_group (which never returns).
    assert lines[-1]["filtered"] == {"failed_only": 3} and lines[-1]["events"] == 1
    p = tracer("replay", str(path), "-Z", env={"COLUMNS": "300", "TERM": "dumb"})
    assert "1 events, 9 lost (ring full: 9), 3 filtered out (not failed)" in p.stderr, p.stderr
    p = tracer("replay", str(path), "-T", env={"COLUMNS": "300", "TERM": "dumb"})
    calls = [line for line in p.stdout.splitlines() if "openat2(" in line]
    assert [line.rsplit(" ", 1)[-1] for line in calls] == ["<0.000001>", "filename", "<0.000001>"]
    assert "<0.000000>  ! unreadable: filename" in calls[1]  # 500 ns, then the unreadable marker
    p = tracer("replay", str(path), "-c", env={"COLUMNS": "300", "TERM": "dumb"})
    assert "openat2(" not in p.stdout and "openat2(" not in p.stderr
    rows = [line.split() for line in p.stderr.splitlines() if line.endswith(("openat2", "exit_group", "total"))]
    assert [r[-3:] for r in rows if r[-1] != "exit_group"] == [["3", "1", "openat2"], ["4", "1", "total"]]


def test_killed_before_tracing_started_leaves_no_capture(tmp_path: Path, tracefs: Path) -> None:
    """SIGKILL after the file was created and before the session started (BPF still loading): no empty
    capture at the path (the next `record -o` needs no --force), and its staged file is removed by the
    next writer in that directory; a staged file of a live process is left alone."""
    tmp_path = tmp_path / "caps"
    tmp_path.mkdir()
    path = tmp_path / "run.cap"
    code = ("import os, signal, sys; from tracer.capture import CaptureWriter; "
            "CaptureWriter(sys.argv[1]); os.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, timeout=60)
    assert p.returncode == -9, p.stderr
    names = [x.name for x in tmp_path.iterdir()]
    assert not path.exists() and len(names) == 1, names
    assert names[0].startswith(".run.cap.") and names[0].endswith(".tracer-new"), names
    live = tmp_path / f".other.cap.{os.getppid()}.tracer-new"
    live.write_bytes(b"")  # a writer still running (our parent): not ours to remove
    assert write_capture(path) and Capture(path).problem is None  # no --force needed
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["run.cap", live.name])


def test_force_staging_is_cleaned_and_commit_never_clobbers(tmp_path: Path, tracefs: Path) -> None:
    tmp_path = tmp_path / "caps"
    tmp_path.mkdir()
    path = tmp_path / "run.cap"
    w = CaptureWriter(path)
    path.write_bytes(b"someone else's")  # created between our start and our commit
    with pytest.raises(CaptureExists, match="created meanwhile"):
        w.begin(session_header(fake_session()), [])
    w.close()
    assert path.read_bytes() == b"someone else's"
    assert [x.name for x in tmp_path.iterdir()] == ["run.cap"], "the staged file went with the writer"


class _FakeRing:
    """A ring the session can poll (a pipe's read end) holding a fixed list of samples, read once."""

    def __init__(self, cpu: int, samples: list[bytes]) -> None:
        self.cpu, self.samples, self.backlog = cpu, samples, False
        self._r, self._w = os.pipe()
        self.fd = self._r

    def drain(self) -> Batch:
        out, self.samples = self.samples, []
        return Batch(self.cpu, out, 0)

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class _FakeRings:
    def __init__(self, rings: list[_FakeRing]) -> None:
        self.rings = rings

    def disable(self) -> None:
        pass

    def close(self) -> None:
        for r in self.rings:
            r.close()


class _JsonSource(Source):
    """A source whose records are JSON event objects: it decodes what it is given."""

    name = "fake"

    def __init__(self, rings: list[_FakeRing]) -> None:
        self.rings = _FakeRings(rings)  # type: ignore[assignment]

    def decode(self, raw: bytes, cpu: int) -> dict:
        return {**json.loads(raw), "cpu": cpu}

    def capture_header(self) -> dict:
        return {}


def test_session_records_what_it_delivers_held_events_included(tmp_path: Path, monkeypatch) -> None:
    """Recording observes the stream: each delivered event's raw record is written, in delivery order, once;
    an event held back for ordering (it completed after the drain began) keeps its record until it is
    delivered at the end; what the consumer gets never carries the record."""
    from tracer import session as session_mod

    now = time.monotonic_ns()
    late = {"kind": "syscall", "syscall": "late", "ts": now + 10**9, "ts_exit": now + 2 * 10**9}
    early = [{"kind": "syscall", "syscall": f"e{i}", "ts": 100 + i, "ts_exit": 200 + i} for i in range(3)]
    rings = [_FakeRing(0, [json.dumps(late).encode(), json.dumps(early[1]).encode()]),
             _FakeRing(1, [json.dumps(early[0]).encode(), json.dumps(early[2]).encode()])]
    monkeypatch.setattr(session_mod, "build_source", lambda prefix, specs, opts: _JsonSource(rings))
    path = tmp_path / "s.cap"
    got: list[dict] = []
    with session_mod.Session(["uprobe:/fake:f()"], record=path, explain=False, duration=0.3) as s:
        for batch in s.batches():
            got += batch
    assert [e["syscall"] for e in got] == ["e0", "e1", "e2", "late"]
    assert all(type(k) is str for e in got for k in e)  # the record left each event when it was delivered
    data = path.read_bytes()
    pos = data.index(b"\n", 0) + 1
    recorded = []
    while pos < len(data):
        kind, length, _crc = cap_mod.FRAME.unpack_from(data, pos)
        payload = data[pos + cap_mod.FRAME.size: pos + cap_mod.FRAME.size + length]
        if kind == ord("R"):
            _src, cpu, n = cap_mod.REC.unpack_from(payload)
            recorded.append((cpu, json.loads(payload[cap_mod.REC.size: cap_mod.REC.size + n])["syscall"]))
        pos += cap_mod.FRAME.size + length
    assert recorded == [(1, "e0"), (0, "e1"), (1, "e2"), (0, "late")]
