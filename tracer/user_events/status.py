"""What is registered: `user_events_status` (one line per event, `NAME[ # Used by ftrace perf other]`,
then `Active: N` and `Busy: N`) and the event directories `events/user_events*/<name>/`."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from .abi import USER_EVENTS_MULTI_SYSTEM, USER_EVENTS_SYSTEM
from .eventheader import is_eventheader, parse_tracepoint_name
from .formats import EventFormat, read_format

SYSTEMS = (USER_EVENTS_SYSTEM, USER_EVENTS_MULTI_SYSTEM)


@dataclass(frozen=True)
class Status:
    used_by: dict[str, tuple[str, ...]]  # tracepoint name -> ("ftrace", "perf", "other"); () when idle
    active: int | None
    busy: int | None


def parse_status(text: str) -> Status:
    used: dict[str, tuple[str, ...]] = {}
    counts: dict[str, int] = {}
    lines = text.splitlines()
    i = 0
    for i, line in enumerate(lines):  # noqa: B007 - the index is used after the loop
        if not line.strip():
            break
        name, _, rest = line.partition(" #")
        note = rest.strip()
        used[name.strip()] = tuple(note[len("Used by"):].split() if note.startswith("Used by") else [])
    for line in lines[i:]:
        key, sep, val = line.partition(":")
        if sep and val.strip().isdigit():
            counts[key.strip()] = int(val)
    return Status(used, counts.get("Active"), counts.get("Busy"))


def read_status(root: Path) -> Status | None:
    try:
        return parse_status((root / "user_events_status").read_text())
    except FileNotFoundError:
        return None


def formats(root: Path) -> list[EventFormat]:
    """The events' formats now. Events come and go at run time (the kernel deletes a non-persistent one
    once unreferenced): one deleted while it is listed is left out, not an error."""
    out = []
    for system in SYSTEMS:
        base = root / "events" / system
        try:
            entries = sorted(base.iterdir())
        except FileNotFoundError:
            continue
        for d in entries:
            try:
                out.append(read_format(d))
            except (FileNotFoundError, NotADirectoryError):
                continue  # not an event directory, or deleted since it was listed
    return out


def _enabled_file(root: Path, fmt: EventFormat) -> bool:
    try:
        return (root / "events" / fmt.system / fmt.name / "enable").read_text().strip() not in ("", "0")
    except OSError:
        return False


def _eventheader(fmt: EventFormat) -> dict | None:
    """What an EventHeader tracepoint's name says (provider, level, keyword, options); None for others."""
    if not is_eventheader(fmt.reg_name, [(f.name, f.ctype) for f in fmt.fields]):
        return None
    n = parse_tracepoint_name(fmt.reg_name)
    assert n is not None
    return {"provider": n.provider, "level": n.level, "keyword": n.keyword, "options": n.options}


def list_events(root: Path) -> list[dict]:
    """Every registered event with its fields and whether any tracer has it enabled."""
    status = read_status(root)
    out = []
    seen = set()
    for fmt in formats(root):
        users = status.used_by.get(fmt.name, ()) if status else ()
        seen.add(fmt.name)
        out.append({
            "event": fmt.tracepoint, "system": fmt.system, "name": fmt.name, "registered_name": fmt.reg_name,
            "multi_format": fmt.system == USER_EVENTS_MULTI_SYSTEM, "id": fmt.id,
            "enabled": bool(users) or _enabled_file(root, fmt), "used_by": list(users),
            "fields": [f.to_json() for f in fmt.fields], "eventheader": _eventheader(fmt),
        })
    # Listed in the status file but without a directory (being created or deleted right now).
    for name, users in (status.used_by.items() if status else ()):
        if name not in seen:
            out.append({"event": None, "system": None, "name": name, "registered_name": name, "multi_format": None,
                        "id": None, "enabled": bool(users), "used_by": list(users), "fields": None,
                        "note": "in user_events_status but no events/ directory"})
    return out


def match(formats_: list[EventFormat], spec: str) -> list[EventFormat]:
    """Events named by `user_events:NAME`, `user_events_multi:NAME` (every format of NAME, or one
    `NAME.<id>`), with globs in NAME."""
    system, _, pattern = spec.partition(":")
    out = []
    for fmt in formats_:
        if fmt.system != system:
            continue
        if fnmatch.fnmatchcase(fmt.name, pattern) or (
                system == USER_EVENTS_MULTI_SYSTEM and fnmatch.fnmatchcase(fmt.reg_name, pattern)):
            out.append(fmt)
    return out
