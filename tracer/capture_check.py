"""Captures are untrusted input: the checks a header and a trailer pass before anything uses them.

A capture names what decodes it (a replay class, a record layout header): those names are looked up in
fixed tables (capture.REPLAYERS, LAYOUTS here), never imported or opened as given. Every field the
tracer reads is type-checked (a bool is not an int: `true` is not version 1); a field of the wrong type
is one CaptureError line.
Fields the tracer does not read are left alone (later versions may add some).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

# Record layout headers in bpf/ a capture may name, and the structs whose sizes it may give.
LAYOUTS: dict[str, frozenset[str]] = {
    "record.h": frozenset({"sys_record", "read_slot"}),
    "uprobe.h": frozenset({"uprobe_record"}),
    "uevents_watch.h": frozenset({"ue_record"}),
}
MAX_HEADER = 16 << 20   # bytes of JSON in a header or trailer frame (a %file header is ~0.5 MiB)
MAX_TIME_NS = 1 << 62   # clock values beyond ~2116 are not times
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Invalid(ValueError):
    """A field of the wrong type or value (the caller makes it a CaptureError)."""


def shown(value: object, limit: int = 40) -> str:
    """A value from the file, for a message: repr, cut short (escaped again by the CLI)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(v: object, lo: int = -(1 << 63), hi: int = 1 << 64) -> bool:
    return type(v) is int and lo <= v < hi


def _num(v: object) -> bool:
    return (type(v) is int and abs(v) < 1 << 53) or (type(v) is float and v == v and abs(v) < 1e15)


def _str(v: object) -> bool:
    return type(v) is str


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _list(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: type(v) is list and all(map(check, v))


def _bool(v: object) -> bool:
    return type(v) is bool


def _time(v: object) -> bool:
    return _int(v, 0, MAX_TIME_NS)


# field -> check, for the objects of the header (all optional except where `required` says).
Fields = dict[str, Callable[[Any], bool]]
TOOL: Fields = {"name": _str, "version": _str}
KERNEL: Fields = {"sysname": _str, "release": _str, "version": _str, "machine": _str}
CLOCK: Fields = {"events": _str, "mono_to_wall_ns": _time, "created_wall_ns": _time,
                 "created_monotonic_ns": _time, "boot_wall_ns": _int, "boot_id": _str}
SESSION: Fields = {"events": _list(_str), "pids": _list(_int), "tids": _list(_int), "uid": _opt(_int),
                   "comm": _opt(_str), "follow": _bool, "recover": _bool, "command": _opt(_list(_str)),
                   "duration": _opt(_num), "count": _opt(_int), "only_missing": _bool, "explain": _bool,
                   "pages": _int, "read_mode": _opt(_str)}
TRAILER = {"kernel": lambda v: type(v) is dict and all(_str(k) and _int(n) for k, n in v.items()),
           "elapsed_s": _num, "exit_code": _opt(_int), "events": _int, "lost": _int}


def check_fields(obj: object, fields: Fields, where: str) -> dict:
    if type(obj) is not dict:
        raise Invalid(f"{where} is {type(obj).__name__}, not an object")
    for name, check in fields.items():
        if name in obj and not check(obj[name]):
            raise Invalid(f"{where}.{name} has a wrong type or value ({shown(obj[name])})")
    return obj


def check_header(header: object, versions: tuple[int, ...], replayers: Collection[str]) -> dict:
    """The header as a dict whose every field the tracer reads has its type; Invalid otherwise.
    `replayers`: the names a source's `replay` may give (capture.REPLAYERS)."""
    h = check_fields(header, {"format": lambda v: v == "tracer-capture", "host": _str}, "header")
    version = h.get("version")
    if type(version) is not int or version not in versions:
        raise Invalid(f"capture format {shown(version)} (this tracer reads formats "
                      f"{', '.join(map(str, versions))})")
    for name, fields in (("tool", TOOL), ("kernel", KERNEL), ("clock", CLOCK), ("session", SESSION)):
        if name in h:
            check_fields(h[name], fields, name)
    sources = h.get("sources")
    if type(sources) is not list or not sources:
        raise Invalid("header.sources is missing or empty")
    for i, src in enumerate(sources):
        check_fields(src, {"name": _str, "desc": lambda v: type(v) is dict}, f"sources[{i}]")
        if "name" not in src or "desc" not in src:
            raise Invalid(f"sources[{i}] has no name or no desc")
        if type(src.get("replay")) is not str or src["replay"] not in replayers:
            raise Invalid(f"sources[{i}] names replay class {shown(src.get('replay'))}, which is not one of "
                          "tracer's")
        events = src.get("desc", {}).get("events")
        if events is not None and not _list(_str)(events):
            raise Invalid(f"sources[{i}].desc.events is not a list of strings")
    return h


def check_trailer(trailer: object) -> dict:
    return check_fields(trailer, TRAILER, "trailer")


def check_layout_identity(identity: object) -> tuple[str, tuple[str, ...], str, str | None]:
    """(header, structs, sha256, sha256_of) of a capture's layout identity; Invalid unless the header is
    one of tracer's own and the structs are that header's. sha256_of says what the sha256 is of (None:
    the header's text, as tracers before layout.LAYOUT_SCHEME wrote it)."""
    d = check_fields(identity, {}, "layout")
    header, sizes, sha, scheme = d.get("header"), d.get("sizes"), d.get("sha256"), d.get("sha256_of")
    if type(header) is not str or header not in LAYOUTS:
        raise Invalid(f"layout header {shown(header)} is not one of tracer's ({', '.join(sorted(LAYOUTS))})")
    if type(sizes) is not dict or not all(k in LAYOUTS[header] and _int(v, 0, 1 << 32) for k, v in sizes.items()):
        raise Invalid(f"layout sizes {shown(sizes)} are not {header}'s structs")
    if type(sha) is not str or not _SHA256.fullmatch(sha):
        raise Invalid(f"layout sha256 {shown(sha)} is not a sha256")
    if scheme is not None and type(scheme) is not str:
        raise Invalid(f"layout sha256_of {shown(scheme)} is not a string")
    return header, tuple(sizes), sha, scheme
