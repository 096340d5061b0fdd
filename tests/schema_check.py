"""Validation of tracer's JSON Lines against the JSON Schemas it ships (tracer/schema/*.json)."""

from __future__ import annotations

from functools import cache

from jsonschema import Draft202012Validator

from tracer.contract import KINDS, schema


@cache
def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(schema(kind))


def check_line(obj: dict) -> None:
    """Raises jsonschema.ValidationError unless obj is a valid line of its kind."""
    kind = obj.get("kind")
    assert kind in KINDS, f"unknown kind {kind!r}: {obj}"
    validator(kind).validate(obj)


def check_stream(lines: list[dict]) -> None:
    """A whole stream: the header line first, then valid lines of known kinds (workload reports that
    share stdout with the stream in tests are skipped)."""
    ours = [obj for obj in lines if obj.get("kind") != "workload"]
    assert ours and ours[0]["kind"] == "stream", ours[:1]
    assert [obj["kind"] for obj in ours].count("stream") == 1
    for obj in ours:
        check_line(obj)
