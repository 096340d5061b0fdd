"""The event model (tracer/events.py): the one constructor of read entries and its vocabularies."""

from __future__ import annotations

import json
from pathlib import Path

from tracer.events import (
    READ_SOURCES,
    READ_STATUSES,
    UNVERIFIED,
    VERIFIED_EQUAL,
    VERIFIED_POINTER,
    read_entry,
    unverified,
    verified,
)

SCHEMA = Path(__file__).resolve().parent.parent / "tracer" / "schema"


def test_read_entry_fields_in_contract_order() -> None:
    e = read_entry("ok", "enter", 0x1000, None, b"/etc/hostname")
    assert list(e.items()) == [("status", "ok"), ("source", "enter"), ("errno", None), ("addr", 0x1000), ("len", 13)]
    assert list(verified(e, VERIFIED_EQUAL))[-3:] == ["verified_at_exit", "verified", "verified_by"]


def test_text_that_is_not_utf8_carries_its_exact_bytes() -> None:
    assert read_entry("ok", "enter", 1, None, b"a\xffb")["hex"] == "61ff62"
    assert "hex" not in read_entry("ok", "enter", 1, None, "é".encode())  # UTF-8, not ASCII: no hex


def test_buffers_carry_the_size_asked_for_text_never_does() -> None:
    assert read_entry("ok", "enter", 1, None, b"\xff\x00", 4, False) == {
        "status": "ok", "source": "enter", "errno": None, "addr": 1, "len": 2, "size": 4}
    assert "size" not in read_entry("ok", "enter", 1, None, b"\x01", None, False)  # size unknown: not shown
    assert "size" not in read_entry("ok", "enter", 1, None, b"x", 8)  # text


def test_missing_null_and_output_entries() -> None:
    assert read_entry("missing", "enter", 8, 14) == {"status": "missing", "source": "enter", "errno": 14, "addr": 8}
    null = verified(read_entry("null", "enter", 0, None, b""), VERIFIED_POINTER)
    assert null == {"status": "null", "source": "enter", "errno": None, "addr": 0, "len": 0, "verified": True,
                    "verified_by": "pointer"}
    out = unverified(read_entry("ok", "exit", 8, None, b"\x02\x00", 16, False, len_errno=14), "output_size")
    assert list(out)[:6] == ["status", "source", "errno", "addr", "len_errno", "len"]
    assert out["unverified_reason"] == UNVERIFIED["output_size"] and out["verified"] is False


def read_enums(node: object) -> list[tuple[list, list]]:
    """(status enum, source enum) of every read-entry object in a JSON Schema."""
    if isinstance(node, dict):
        props = node.get("properties", {})
        entry = {"status", "source", "addr"} <= set(props)
        here = [(props["status"]["enum"], props["source"]["enum"])] if entry else []
        return here + [x for v in node.values() for x in read_enums(v)]
    if isinstance(node, list):
        return [x for v in node for x in read_enums(v)]
    return []


def test_vocabularies_are_the_schemas() -> None:
    """The JSON Schemas of syscall and uprobe events list exactly the statuses and sources named here."""
    for name in ("syscall.json", "uprobe.json"):
        found = read_enums(json.loads((SCHEMA / name).read_text()))
        assert found and all((st, src) == (list(READ_STATUSES), list(READ_SOURCES)) for st, src in found), name


def test_event_kinds_are_the_schemas() -> None:
    """Each kind's TypedDict names exactly the fields its JSON Schema describes, and so does ReadEntry."""
    from tracer import events
    from tracer.contract import KINDS

    types = {"syscall": events.SyscallEvent, "uprobe": events.UprobeEvent, "user_event": events.UserEvent,
             "lost": events.LostEvent}
    assert set(types) == set(events.KINDS) and set(events.KINDS) <= set(KINDS)
    for kind, td in types.items():
        props = json.loads((SCHEMA / f"{kind}.json").read_text())["properties"]
        assert set(td.__required_keys__ | td.__optional_keys__) == set(props), kind
    for name in ("syscall.json", "uprobe.json"):
        text = json.loads((SCHEMA / name).read_text())
        entry = text["properties"]["reads"]["additionalProperties"]["properties"]
        assert set(events.ReadEntry.__optional_keys__) >= set(entry), name
    sc = json.loads((SCHEMA / "syscall.json").read_text())["properties"]["reads"]["additionalProperties"]
    assert set(events.ReadEntry.__optional_keys__) == set(sc["properties"])
