"""The JSON contract (tracer/contract.py): the schema of every kind is a valid JSON Schema and ships with
the package; events from every decoder path, the summary, lost notices, alerts and the stream header
validate; a line that breaks the contract does not; `time` is exactly ts + the session's offset."""

from __future__ import annotations

import configparser
import datetime
import io
import json
from pathlib import Path

import jsonschema
import pytest
from schema_check import check_line, check_stream
from test_decode import (
    ACCEPT4,
    EXIT_GROUP,
    HOW_BYTES,
    RK_OPEN_HOW,
    RK_SOCKADDR_OUT,
    RK_STR,
    RS_FAULT,
    RS_NONE,
    RS_NULL,
    RS_OK,
    RS_TRUNC,
    TABLE,
    Data,
    record,
    sin,
    slot,
)

from tracer.contract import KINDS, SCHEMA_DIR, STREAM_VERSION, WallClock, clock_info, schema, stream_header
from tracer.decode import Decoder
from tracer.events import Stats, summary_of
from tracer.monitor import Alert
from tracer.output import JsonOutput

ROOT = Path(__file__).resolve().parent.parent
WALL = WallClock(1_795_000_000_000_000_000)


def test_every_kind_has_a_valid_schema_shipped_with_the_package() -> None:
    assert sorted(p.stem for p in SCHEMA_DIR.glob("*.json")) == sorted(KINDS)
    for kind in KINDS:
        jsonschema.Draft202012Validator.check_schema(schema(kind))
        assert schema(kind)["properties"]["kind"] == {"const": kind}
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "schema/*.json" in cfg["options.package_data"]["tracer"]


def synthesized_events() -> list[dict]:
    d = Data()
    f, g = d.add(b"/etc/hostname"), d.add(b"/etc/\xff")
    how = d.add(HOW_BYTES)
    recs = [
        record(437, [(1 << 64) - 100, 0x1000, 0x2000, 24], slots=(
            slot(1, RK_STR, RS_OK, RS_OK, enter=f, exit=f, same=1), slot(2, RK_OPEN_HOW, RS_OK, enter=how, want=24)),
            data=bytes(d.buf)),
        record(437, [5, 0x1000, 0x2000, 24], ret=-14, slots=(
            slot(1, RK_STR, RS_FAULT, RS_FAULT, eerr=-14, xerr=-14), slot(2, RK_OPEN_HOW, RS_NULL)),
            data=bytes(d.buf)),
        record(437, [5, 0x1000, 0x2000, 24], slots=(
            slot(1, RK_STR, RS_FAULT, RS_OK, eerr=-14, exit=g), slot(2, RK_OPEN_HOW, RS_TRUNC, enter=how, want=99)),
            data=bytes(d.buf)),
        record(257, [(1 << 64) - 100, 0x1000, 0o2000101, 0o644], slots=(slot(1, RK_STR, RS_OK, RS_OK, enter=f,
                                                                             exit=g, same=0),), data=bytes(d.buf)),
        record(231, [1], flags=1, ret=0),
    ]
    sa = Data()
    a = sa.add(sin(80, "10.0.0.1"))
    recs.append(record(ACCEPT4.nr, [3, 0x3000, 0x4000, 0], ret=5, slots=(
        slot(1, RK_SOCKADDR_OUT, RS_NONE, RS_OK, exit=a, want=16),), data=bytes(sa.buf)))
    dec = Decoder(TABLE, lambda pid, addr: {"kind": "stack", "addr": addr})
    events = [dec.decode(r, 0) for r in recs]
    WALL.stamp(events)
    return events



def test_synthesized_events_validate() -> None:
    events = synthesized_events()
    assert {s for e in events for s in (r["status"] for r in e["reads"].values())} >= {
        "ok", "missing", "recovered", "changed", "truncated", "null"}
    assert any(e["ret"] is None for e in events) and EXIT_GROUP.noreturn
    for ev in events:
        check_line(json.loads(json.dumps(ev)))


def test_summary_lost_alert_and_header_validate() -> None:
    events = synthesized_events()
    stats = Stats()
    stats.add_many(events)
    lost = [{"kind": "lost", "source": "syscalls", "cpu": 1, "count": 3, "reason": "ring_full"},
            {"kind": "lost", "source": "syscalls", "cpu": None, "count": 1, "reason": "in_flight_at_exit"}]
    for x in lost:
        stats.add_lost(x)
    clock = clock_info()
    lines = [stream_header(clock), *events, *lost,
             Alert("sensitive-write", "high", "a write", {"matched": ["entry"]}).to_dict(events[0]),
             Alert("lost-records", "critical", "3 lost").to_dict(None),
             summary_of(stats, {"emitted": 9}, 1.5, 0, clock["mono_to_wall_ns"])]
    check_stream(json.loads(json.dumps(lines)))
    assert lines[0]["version"] == STREAM_VERSION and lines[0]["clock"]["mono_to_wall_ns"] == clock["mono_to_wall_ns"]


@pytest.mark.parametrize("breakage", ["no time", "bad status", "time not ISO", "bad severity", "ret a string",
                                      "lost without reason"])
def test_lines_that_break_the_contract_fail(breakage: str) -> None:
    ev = synthesized_events()[0]
    if breakage == "no time":
        del ev["time"]
    elif breakage == "bad status":
        ev["reads"]["filename"]["status"] = "fine"
    elif breakage == "time not ISO":
        ev["time"] = "14:01:40"
    elif breakage == "ret a string":
        ev["ret"] = "3"
    elif breakage == "lost without reason":
        ev = {"kind": "lost", "source": "syscalls", "cpu": 0, "count": 1}
    else:
        ev = Alert("x", "urgent", "y").to_dict(None)
    with pytest.raises(jsonschema.ValidationError):
        check_line(ev)


def test_time_is_ts_plus_the_session_offset() -> None:
    w = WallClock(1_000_000_000_000_000_000)  # 2001-09-09T01:46:40Z
    assert w.iso(0) == "2001-09-09T01:46:40.000000Z"
    assert w.iso(1_999_999_999) == "2001-09-09T01:46:41.999999Z"  # truncated, never rounded into the next second
    assert w.iso(3_600_000_001_000) == "2001-09-09T02:46:40.000001Z"
    assert w.iso(5_000) == "2001-09-09T01:46:40.000005Z"  # back within a second already formatted
    now = clock_info()
    w = WallClock(now["mono_to_wall_ns"])
    iso = w.iso(now["created_monotonic_ns"])
    parsed = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    assert 0 <= now["created_wall_ns"] - round(parsed.timestamp() * 1e6) * 1000 < 1000


def test_json_output_writes_the_header_first_and_once() -> None:
    buf = io.StringIO()
    calls = []
    out = JsonOutput(buf, batched=True, header=lambda: calls.append(1) or stream_header(clock_info()))
    assert calls == []  # made at the first line, when the session's clock is final
    out.events([{"kind": "lost", "source": "syscalls", "cpu": 0, "count": 1, "reason": "ring_full"}])
    out.event({"kind": "lost", "source": "syscalls", "cpu": 0, "count": 2, "reason": "ring_full"})
    out.summary({"kind": "summary"})
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [x["kind"] for x in lines] == ["stream", "lost", "lost", "summary"] and calls == [1]


def test_readme_samples_follow_the_schemas() -> None:
    """The README's JSON samples of tracer's own kinds are valid lines of the contract."""
    import re

    text = (ROOT / "README.md").read_text()
    samples = [json.loads(b) for b in re.findall(r"^```json\n(.*?)^```$", text, re.S | re.M)]
    ours = [x for x in samples if isinstance(x, dict) and x.get("kind") in KINDS]
    assert {x["kind"] for x in ours} >= {"stream", "syscall"}
    for obj in ours:
        check_line(obj)


def test_summaries_with_a_call_table_and_of_the_monitor_validate() -> None:
    from tracer.summary import CallTable

    table = CallTable()
    table.add_many(synthesized_events())
    s = summary_of(Stats(), {}, 0.5, 0, 0)
    check_line({**s, "per_syscall": table.to_dict()})
    check_line({**s, "syscalls": ["open", "openat"], "alerts": 2, "alerts_by_rule": {"x": 2}})
    with pytest.raises(jsonschema.ValidationError):
        check_line({**s, "per_syscall": {"openat": {"calls": 1}}})


def test_stamp_is_iso_for_every_event() -> None:
    """WallClock.stamp (the inlined hot path) gives what WallClock.iso gives, across second boundaries."""
    w = WallClock(1_000_000_000_000_000_000)
    evs = [{"ts": t} for t in range(0, 5_000_000_000, 7_777_777)] + [{"kind": "lost"}, {"ts": 3}]
    w.stamp(evs)
    ref = WallClock(w.offset)
    assert [e.get("time") for e in evs] == [ref.iso(e["ts"]) if "ts" in e else None for e in evs]
