"""Capture files of the uprobe and user_events sources (capture_header / replay_decoder).

Without BPF: user_events samples synthesized through a copy of the fake tracefs root
(tests/fixtures/tracefs_user_events), discarded-write samples with the watch's findings, and uprobe
records (tests/test_uprobes.py builds them) mixed with syscall records in one capture; each replays to
the very events that were delivered, with the root, the probed binary and /proc out of the picture.
Live: `tracer record --json` of uprobes alone (sleepable) and mixed with syscalls (nofault, so region
explanations are recorded); `tracer replay --json` prints the same objects, in the same order, after
the probed binary is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require
from test_capture import FAKE_CLOCK, WALL, fake_session, fake_tracefs, records
from test_decode import EXIT_GROUP, OPENAT2
from test_trace_live import Run, expect_ok, run_tracer
from test_uprobes import FN, FN_ARGS, LIBC, _record

from tracer import elfsyms, uprobes
from tracer.capture import Capture, CaptureError, CaptureWriter
from tracer.contract import stream_header
from tracer.decode import Decoder
from tracer.events import Stats, summary_of
from tracer.layout import const, struct_of
from tracer.session import session_header
from tracer.sources import Source, SyscallSource
from tracer.user_events import status
from tracer.user_events.decode import KIND_DISCARDED, SampleDecoder, pack_discarded, pack_tracepoint
from tracer.user_events.emitter import encode
from tracer.user_events.source import UserEventsSource
from tracer.user_events.watch import C as UE

ROOT = Path(__file__).resolve().parent.parent
FAKE = Path(__file__).parent / "fixtures" / "tracefs_user_events"
UE_SPECS = ["user_events:test", "user_events:allkinds", "user_events_multi:multi"]
REGION = {"kind": "file", "path": "/x/data", "file_offset": 0}


def write(path: Path, sources: list[Source], samples: list[tuple[int, bytes, int]], specs: list[str]) -> list[dict]:
    """Record (source index, raw, cpu) samples the way Session does: decode, deliver, flush per batch."""
    w = CaptureWriter(path)
    w.begin(session_header(fake_session(event_specs=specs)), sources)
    delivered, stats = [], Stats()
    decoders = [w.recording(src) for src in sources]  # as Session decodes while recording
    for i, raw, cpu in samples:
        ev = decoders[i](raw, cpu)
        WALL.stamp([ev])  # as Session does
        w.event(ev)
        w.flush()
        stats.add(ev)
        delivered.append(ev)
    assert w.close(summary_of(stats, {"emitted": len(samples)}, 0.5, 0, FAKE_CLOCK["mono_to_wall_ns"])) is None
    return delivered


def replay_cli(path: Path, *args: str) -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "tracer", "replay", str(path), "--json", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env={**os.environ, "TRACER_TRACEFS": "/nonexistent"})
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert lines[0] == stream_header(FAKE_CLOCK)
    return lines[1:]


# --- user_events, synthesized ----------------------------------------------------------------------


def ue_source(root: Path) -> UserEventsSource:
    """The source as UserEventsSource builds it from a tracefs root, without perf events (no kernel support)."""
    fmts = status.formats(root)
    src = UserEventsSource.__new__(UserEventsSource)
    src.formats = list({f.tracepoint: f for spec in UE_SPECS for f in status.match(fmts, spec)}.values())
    src.decode = SampleDecoder(src.formats)  # type: ignore[method-assign]
    return src


def tp_sample(src: UserEventsSource, tracepoint: str, values: dict, *, pid: int, ts: int, comm: bytes | None,
              payload: bytes | None = None) -> bytes:
    index = [f.tracepoint for f in src.formats].index(tracepoint)
    fmt = src.formats[index]
    payload = payload if payload is not None else encode(fmt.fields, values)
    rec = struct.pack("<HBBi", fmt.id or 0, 0, 0, pid) + payload
    body = struct.pack("<IIQIII", pid, pid + 1, ts, 1, 0, len(rec)) + rec + bytes(-(len(rec) + 4) % 8)
    return pack_tracepoint(index, comm, body)


def ue_record(*, pid: int, ts: int, flags: int, idx: int = 0, sc: int = 1) -> bytes:
    st = struct_of("ue_record")
    buf = bytearray(st.size)
    struct.pack_into("<HBBIIiQqQQQIi", buf, 0, UE["UE_REC_FAULT"], sc, flags, pid, pid, 5, ts, -14, 0x1000, 16,
                     0x1000, idx, -14 if not flags & UE["UE_F_INDEX"] else 0)
    buf[st.field("comm").offset:st.field("comm").offset + 6] = b"writer"
    return bytes(buf)


@pytest.fixture
def ue_capture(tmp_path: Path) -> tuple[Path, list[dict], UserEventsSource]:
    root = tmp_path / "tracefs"
    shutil.copytree(FAKE, root)
    src = ue_source(root)
    fmt = {f.tracepoint: f for f in src.formats}["user_events:allkinds"]
    bad = bytearray(encode(fmt.fields, {}))
    struct.pack_into("<I", bad, next(f.offset for f in fmt.fields if f.name == "dstr") - 8, 0xFFFF_0000 | 100)
    marked, index = UE["UE_F_MARKED"], UE["UE_F_INDEX"]
    samples = [
        tp_sample(src, "user_events:test", {}, pid=100, ts=10, comm=b"app"),
        tp_sample(src, "user_events:allkinds", {"a": -5, "msg": "hi", "dstr": "data \x1b[31m", "rstr": b"\xff"},
                  pid=101, ts=20, comm=b"evil\x1b]0;x\x07\xff"),
        tp_sample(src, "user_events:allkinds", {}, pid=102, ts=30, comm=None, payload=bytes(bad)),  # malformed
        tp_sample(src, "user_events_multi:multi.1", {"v2": 7, "note": "second format"}, pid=103, ts=40, comm=b"m"),
        pack_discarded(ue_record(pid=104, ts=50, flags=marked | index, idx=3), {"name_args": "test u32 n"}),
        pack_discarded(ue_record(pid=105, ts=60, flags=index, idx=9, sc=2), {"name_reason": "not seen"}),
        pack_discarded(ue_record(pid=106, ts=70, flags=marked), {}),
    ]
    path = tmp_path / "ue.cap"
    delivered = write(path, [src], [(0, s, 1) for s in samples], UE_SPECS)
    shutil.rmtree(root)  # replay reads the formats from the header only
    return path, delivered, src


def test_user_events_replay_equals_delivered(ue_capture, monkeypatch: pytest.MonkeyPatch) -> None:
    path, delivered, _ = ue_capture
    monkeypatch.setenv("TRACER_TRACEFS", "/nonexistent")
    events = [e.data for e in Capture(path)]
    assert events == delivered and json.dumps(events) == json.dumps(delivered)
    assert [(e["event"], e["status"]) for e in events] == [
        ("user_events:test", "ok"), ("user_events:allkinds", "ok"), ("user_events:allkinds", "malformed"),
        ("user_events_multi:multi.1", "ok"), ("user_events:test", "discarded"), (None, "discarded"),
        (None, "discarded")]
    # What only the record-time /proc and watch knew is in the file, not looked up again:
    assert [e["comm"] for e in events[:4]] == ["app", "evil\x1b]0;x\x07\udcff", None, "m"]
    assert events[1]["fields"]["a"] == -5 and events[1]["hex"] == {"rstr": "ff"}
    assert "outside" in events[2]["errors"]["dstr"] and events[2]["payload_hex"]
    assert events[3]["name"] == "multi" and events[3]["fields"] == {"v2": 7, "note": "second format"}
    assert (events[4]["name_args"], events[4]["write_index"], events[4]["recognised"]) == ("test u32 n", 3, "kernel")
    assert (events[5]["name_reason"], events[5]["recognised"], events[5]["iovcnt"]) == ("not seen", "proc", 16)
    assert events[6]["name_reason"] == "write_index unreadable: errno 14 at 0x1000"


def test_user_events_header_and_cli_replay(ue_capture) -> None:
    path, delivered, src = ue_capture
    (entry,) = Capture(path).header["sources"]
    assert entry["replay"] == "tracer.user_events.source:UserEventsSource"
    desc = entry["desc"]
    assert desc["events"] == [f.tracepoint for f in src.formats]
    multi = next(d for d in desc["formats"] if d["name"] == "multi.1")
    assert (multi["system"], multi["id"], [f["type"] for f in multi["fields"]]) == (
        "user_events_multi", 1884, ["u64", "__rel_loc char[]"])
    lines = replay_cli(path)
    assert lines[:-1] == delivered
    assert lines[-1]["user_events"] == {"discarded": 3, "discarded:unknown event": 2,
                                        "discarded:user_events:test": 1, "malformed": 1, "ok": 3}
    assert replay_cli(path, "user_events_multi:*") [:-1] == [delivered[3]]
    # A discarded write is selected by its event, not by the writer's call (its `syscall`: write).
    assert replay_cli(path, "user_events:test")[:-1] == [delivered[0], delivered[4]]
    assert replay_cli(path, "user_events:t*", "-p", "104")[:-1] == [delivered[4]]


def test_user_events_console_replay(ue_capture) -> None:
    """`tracer replay` on the console shows every user_event, each on its own escaped line (it crashed on
    the first one, KeyError 'function', when the console guessed an event's shape)."""
    path, delivered, _ = ue_capture
    p = subprocess.run([sys.executable, "-m", "tracer", "replay", str(path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "TRACER_TRACEFS": "/nonexistent", "COLUMNS": "200"})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == len(delivered), p.stdout
    assert "app[100/101] user_events:test(" in lines[0]
    assert "evil\\x1b]0;x\\x07\\xff[101/102] user_events:allkinds(a=-5" in lines[1]
    assert "?[102/103] user_events:allkinds(" in lines[2] and "! malformed payload" in lines[2]
    assert "user_events:test DISCARDED by the kernel: write(fd=5) = -14 EFAULT, write_index=3" in lines[4]
    assert "(name unknown: not seen)" in lines[5]
    assert "\x1b" not in p.stdout and "\x07" not in p.stdout


def test_user_events_replay_refuses_other_layouts(ue_capture) -> None:
    path, _, _ = ue_capture
    desc = Capture(path).header["sources"][0]["desc"]
    with pytest.raises(CaptureError, match="differs from this tracer's"):
        UserEventsSource.replay_decoder({**desc, "watch_layout": {**desc["watch_layout"], "sha256": "0" * 64}}, None)
    with pytest.raises(ValueError, match="unknown user_events sample kind"):
        SampleDecoder([])(b"\x09" + bytes(7), 0)
    assert KIND_DISCARDED != 9


def test_user_events_comm_is_read_at_drain_time() -> None:
    src = UserEventsSource.__new__(UserEventsSource)
    src.comms = {}
    me = Path("/proc/self/comm").read_bytes().rstrip(b"\n")
    assert src._comm(os.getpid()) == me and src.comms[os.getpid()] == me
    assert src._comm(0x7FFF_FFF0) is None  # no such thread: unknown, never guessed


# --- uprobes (and syscalls) synthesized -------------------------------------------------------------


def uprobe_source(explain) -> uprobes.UprobeSource:
    spec = uprobes.parse_spec("uprobe:/x/app:f(int n, str s, buf[4] b):int")
    spec.where = elfsyms.Resolved("/x/app", "f", 0x1100, 0x100, 8, ".symtab")
    src = uprobes.UprobeSource.__new__(uprobes.UprobeSource)
    src.specs, src.explain = [spec], explain
    return src


def test_mixed_synthesized_capture_replays_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACER_TRACEFS", str(fake_tracefs(tmp_path / "tracefs")))
    path = tmp_path / "mixed.cap"
    w = CaptureWriter(path)
    calls = []

    def explainer(pid: int, addr: int) -> dict:
        calls.append((pid, addr))
        return {**REGION, "call": len(calls)}  # differs per call: replay must use the recorded one

    explain = w.wrap_explain(explainer)  # as Session does: one wrapped explain for every source
    sc = SyscallSource.__new__(SyscallSource)
    sc.syscalls = [OPENAT2, EXIT_GROUP]
    sc.decode = Decoder({s.nr: s for s in sc.syscalls}, explain).decode  # type: ignore[method-assign]
    up = uprobe_source(explain)
    w.begin(session_header(fake_session(event_specs=["openat2", "exit_group", up.specs[0].spec])), [sc, up])
    ok, fault = const("RS_OK"), const("RS_FAULT")
    urecs = [_record(0, 0, [1, 0x1000, 0x2000, 0, 0, 0], [(1, const("RK_STR"), ok, 0, 0, 2, 0),
                                                           (2, const("RK_BUF"), fault, -14, 2, 0, 4)], b"hi", 7),
             _record(0, const("UPF_SLEEPABLE"), [2, 0, 0x3000, 0, 0, 0],
                     [(1, const("RK_STR"), const("RS_NULL"), 0, 0, 0, 0), (2, const("RK_BUF"), ok, 0, 0, 4, 4)],
                     b"\x01\x02\x03\x04", -1)]
    srecs = records()
    delivered = []
    decode = {sc: w.recording(sc), up: w.recording(up)}
    for src, raw in [(sc, srecs[0]), (up, urecs[0]), (sc, srecs[1]), (up, urecs[1]), (sc, srecs[3])]:
        ev = decode[src](raw, 1)
        WALL.stamp([ev])  # as Session does
        w.event(ev)
        delivered.append(ev)
    w.flush()
    w.close(summary_of(Stats(), {}, 0.1, 0))
    cap = Capture(path)
    events = [e.data for e in cap]
    assert events == delivered and json.dumps(events) == json.dumps(delivered)
    assert [e["kind"] for e in events] == ["syscall", "uprobe", "syscall", "uprobe", "syscall"]
    assert events[1]["reads"]["b"]["region"] == {**REGION, "call": 1}  # recorded, not recomputed
    assert events[2]["reads"]["filename"]["region"] == {**REGION, "call": 2}
    assert events[1]["args"] == {"n": 1, "s": "hi", "b": None} and events[3]["ret"] == -1
    assert (events[1]["path"], events[1]["offset"]) == ("/x/app", 0x100)
    entry = cap.header["sources"][1]
    assert entry["replay"] == "tracer.uprobes:UprobeSource" and entry["desc"]["events"] == [up.specs[0].spec]
    assert uprobes.spec_from_json(entry["desc"]["probes"][0]) == up.specs[0]
    lines = replay_cli(path, "uprobe:*")
    assert lines[:-1] == [delivered[1], delivered[3]] and lines[-1]["events"] == 2


def test_uprobe_replay_refuses_bad_descriptions() -> None:
    up = uprobe_source(None)
    desc = up.capture_header()
    assert [d["header"] for d in desc["layout"]] == ["record.h", "uprobe.h"]
    bad = {**desc, "layout": [desc["layout"][0], {**desc["layout"][1], "sha256": "0" * 64}]}
    with pytest.raises(CaptureError, match=r"uprobe\.h sha256 000000000000"):
        uprobes.UprobeSource.replay_decoder(bad, None)
    probe = desc["probes"][0]
    with pytest.raises(ValueError, match="argument type 'float'"):
        uprobes.spec_from_json({**probe, "args": [{**probe["args"][0], "type": "float"}]})
    dec = uprobes.UprobeSource.replay_decoder(desc, None)
    null = (const("RK_STR"), const("RS_NULL"), 0, 0, 0, 0)
    assert dec(_record(0, 0, [5, 0, 0, 0, 0, 0], [(1, *null), (2, *null)], b"", 3), 0)["args"]["n"] == 5


# --- live: record and replay through the CLI ---------------------------------------------------------

STREAM = ("stream", "uprobe", "syscall", "lost", "summary")


@dataclass
class Recorded:
    runs: dict[str, Run]
    caps: dict[str, Path]
    target: str


@pytest.fixture(scope="module")
def recorded(bpf_env, build_c, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    from tracer import caps

    kinds = caps.sleepable_kinds()
    require(bool(kinds["uprobe.s"]["ok"]), f"sleepable uprobes: {kinds['uprobe.s']['reason']}")
    tmp = tmp_path_factory.mktemp("record_uprobes")
    exe = tmp / "uprobe_target"  # a private copy, deleted before replaying
    shutil.copy(build_c("uprobe_target", "-fPIE", "-pie"), exe)
    target = f"uprobe:{exe}:{FN}{FN_ARGS}"
    libc = f"uprobe:{LIBC}:openat(int dfd, str path, int flags):int"
    cap = {"uprobes": tmp / "uprobes.cap", "mixed": tmp / "mixed.cap"}
    jobs = {"uprobes": ("--read-mode", "sleepable", target, libc),
            "mixed": ("--read-mode", "nofault", "openat", target)}
    env = {"WORKLOAD_DIR": str(tmp), "LINGER_MS": "300"}
    with ThreadPoolExecutor(2) as pool:
        futs = {k: pool.submit(run_tracer, "record", "-o", cap[k], "--json", *args, "--", exe, env=env)
                for k, args in jobs.items()}
        runs = {k: f.result() for k, f in futs.items()}
    exe.unlink()
    return Recorded(runs, cap, target)


def stream(run: Run) -> list[dict]:
    return [x for x in run.lines if x.get("kind") in STREAM]


@pytest.mark.parametrize("name", ["uprobes", "mixed"])
def test_live_record_replay_equals_live_json(recorded: Recorded, name: str) -> None:
    live_run = recorded.runs[name]
    expect_ok(live_run)
    live = stream(live_run)
    probes = [x for x in live if x["kind"] == "uprobe"]
    assert len([p for p in probes if p["function"] == FN]) == 3, live_run.describe()
    assert live[0]["kind"] == "stream" and live[-1]["kind"] == "summary" and live[-1]["events"] == len(live) - 2 - len(
        [x for x in live if x["kind"] == "lost"])
    run = run_tracer("replay", recorded.caps[name], "--json")
    expect_ok(run)
    assert run.stderr == ""
    assert len(run.lines) == len(live), f"{live_run.describe()}\n{run.describe()}"
    for replayed, shown in zip(run.lines, live, strict=True):
        assert replayed == shown  # every object, in order, field for field


def test_live_mixed_capture_interleaves_sources(recorded: Recorded) -> None:
    live = stream(recorded.runs["mixed"])
    kinds = [x["kind"] for x in live if x["kind"] in ("uprobe", "syscall")]
    assert "syscall" in kinds and "uprobe" in kinds
    first, last = kinds.index("uprobe"), len(kinds) - 1 - kinds[::-1].index("uprobe")
    assert "syscall" in kinds[first:last], "the workload's openat calls fall between its probed calls"
    untouched = next(x for x in live if x["kind"] == "uprobe" and x["args"].get("n") == 2)
    assert untouched["missing"] == ["s", "buf"] and untouched["reads"]["s"]["region"]["kind"] == "file"
    h = Capture(recorded.caps["mixed"]).header
    assert [s["name"] for s in h["sources"]] == ["syscalls", "uprobes"]
    (probe,) = h["sources"][1]["desc"]["probes"]
    assert probe["spec"] == recorded.target and probe["where"]["offset"] == untouched["offset"]
    up = Capture(recorded.caps["uprobes"]).header["sources"][0]["desc"]
    assert up["probes"][1]["where"]["path"] == os.path.realpath(LIBC)


def test_live_uprobe_capture_has_the_sleepable_reads(recorded: Recorded) -> None:
    events = [x for x in stream(recorded.runs["uprobes"]) if x["kind"] == "uprobe"]
    untouched = next(x for x in events if x["function"] == FN and x["args"]["n"] == 2)
    assert untouched["reads"]["s"]["faulted_in"] is True and untouched["missing"] == []
    assert any(x["function"] == "openat" and x["args"]["path"] == "/etc/hostname" for x in events)
