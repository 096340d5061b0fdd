"""A user_events trace record (the RAW bytes of a perf sample: common_* fields, then the payload)
decoded with the event's tracefs format; and the source's samples, which carry such a record or a
discarded write together with what was only true when they were taken (see `SampleDecoder`).

The bytes come from another process, so every length and offset is checked: a field past the end of
the record, a __data_loc/__rel_loc pointing outside it, or a string without its NUL makes that field
null with the reason in `errors`, and the event carries the payload's hex. Never a guessed value.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

from ..layout import layout
from . import eventheader
from .abi import TRACE_ENTRY_SIZE
from .formats import EventFormat, Field, parse_name_args

# A source sample: tag (kind, event index, bytes of the first part), then for KIND_TRACEPOINT the comm
# read from /proc when the sample was drained (NO_COMM: the thread had exited) and the perf sample body
# (TID, TIME, CPU, RAW); for KIND_DISCARDED a struct ue_record and the JSON of the watch's findings.
TAG = struct.Struct("<BxHI")
KIND_TRACEPOINT, KIND_DISCARDED = 1, 2
NO_COMM = 0xFFFFFFFF
_SAMPLE = struct.Struct("<IIQII I")  # pid, tid, time, cpu, res, raw size
# A discarded write as the watch reports it (bpf/uevents_watch.h struct ue_record), up to its name.
_C = layout().consts
UE_RECORD = layout().structs["ue_record"]
UE_HDR = struct.Struct(UE_RECORD.fmt("name"))
_SC = {_C["UE_SC_WRITE"]: "write", _C["UE_SC_WRITEV"]: "writev", _C["UE_SC_IOCTL"]: "ioctl"}


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def loc_span(f: Field, rec: bytes) -> tuple[int, int]:
    """(start, length) of a __data_loc/__rel_loc field's data within the record, unchecked."""
    loc = int.from_bytes(rec[f.offset:f.offset + 4], "little")
    off, length = loc & 0xFFFF, loc >> 16
    start = f.offset + 4 + off if f.rel else off  # data_loc counts from the record start
    return start, length


def decode_field(f: Field, rec: bytes) -> tuple[object, str | None, bytes | None]:
    """(value, error, raw bytes of a string that is not UTF-8)."""
    end = f.offset + f.size
    if end > len(rec):
        return None, f"field at {f.offset}..{end} is past the end of the {len(rec)}-byte record", None
    raw = rec[f.offset:end]
    kind = f.kind
    if kind == "int":
        return int.from_bytes(raw, "little", signed=f.signed), None, None
    if kind == "chars":
        s = raw.split(b"\0", 1)[0]
        return _text(s), None, None if _utf8(s) else s
    if kind == "bytes":
        return raw.hex(), None, None
    start, length = loc_span(f, rec)
    if start < TRACE_ENTRY_SIZE or start + length > len(rec):
        return None, (f"data at {start}..{start + length} (loc 0x{int.from_bytes(raw, 'little'):08x}) is outside "
                      f"the {len(rec)}-byte record"), None
    data = rec[start:start + length]
    if kind == "loc_bytes":
        return data.hex(), None, None
    if length == 0:
        return "", None, None
    if data[-1] != 0:
        return None, f"string of {length} bytes at {start} does not end with a NUL", None
    s = data[:-1].split(b"\0", 1)[0]
    return _text(s), None, None if _utf8(s) else s


def _covered(fmt: EventFormat, rec: bytes) -> int:
    """Where the bytes the format describes end: the fixed fields, and the data of valid dynamic fields."""
    end = min(len(rec), max((f.offset + f.size for f in fmt.fields), default=TRACE_ENTRY_SIZE))
    for f in fmt.fields:
        if f.kind in ("loc_str", "loc_bytes") and f.offset + 4 <= len(rec):
            start, length = loc_span(f, rec)
            if start + length <= len(rec):
                end = max(end, start + length)
    return end


def _perf_padding(rec: bytes, end: int) -> bool:
    """perf rounds a RAW sample up so that its size field and data fill whole u64s, with zero bytes: up to
    7 trailing zeros after the described bytes cannot be told from that padding."""
    tail = rec[end:]
    return (len(rec) + 4) % 8 == 0 and len(tail) < 8 and not any(tail)


def decode_record(fmt: EventFormat, rec: bytes) -> dict:
    """{"fields": {...}, "status": "ok"|"extra_bytes"|"malformed", "errors"?: {field: why}, "payload_hex"?: ...,
    "hex"?: {field: exact bytes of strings that are not UTF-8}, "extra_bytes"?: {offset, length, hex},
    "eventheader"?: {...}, "malformed"?: {offset, reason}}. Offsets of extra_bytes and malformed count from the
    start of the payload (the bytes written after the write_index)."""
    fields: dict = {}
    errors: dict = {}
    hexes: dict = {}
    for f in fmt.fields:
        val, err, raw = decode_field(f, rec)
        fields[f.name] = val
        if err:
            errors[f.name] = err
        if raw is not None:
            hexes[f.name] = raw.hex()
    out: dict = {"status": "malformed" if errors else "ok", "fields": fields}
    if errors:
        out["errors"] = errors
        out["payload_hex"] = rec[TRACE_ENTRY_SIZE:].hex()
    if hexes:
        out["hex"] = hexes
    end = _covered(fmt, rec)
    if not errors and eventheader.is_eventheader(fmt.reg_name, [(f.name, f.ctype) for f in fmt.fields]):
        got = eventheader.decode(fmt.reg_name, rec[TRACE_ENTRY_SIZE:])
        out["eventheader"] = got["eventheader"]
        if "malformed" in got:
            out["status"] = "malformed"
            out["malformed"] = got["malformed"]
            out["payload_hex"] = rec[TRACE_ENTRY_SIZE:].hex()
            return out
        end = TRACE_ENTRY_SIZE + got["end"]
    if end < len(rec) and not errors and not _perf_padding(rec, end):
        tail = rec[end:]
        out["extra_bytes"] = {"offset": end - TRACE_ENTRY_SIZE, "length": len(tail), "hex": tail.hex()}
        out["status"] = "extra_bytes"
    return out


def parse_sample(body: bytes) -> tuple[int, int, int, int, bytes]:
    """(pid, tid, time, cpu, raw) of a sample with TID, TIME, CPU and RAW, in the kernel's order."""
    pid, tid, ts, cpu, _res, n = _SAMPLE.unpack_from(body)
    return pid, tid, ts, cpu, bytes(body[_SAMPLE.size:_SAMPLE.size + n])


def pack_tracepoint(index: int, comm: bytes | None, body: bytes) -> bytes:
    return TAG.pack(KIND_TRACEPOINT, index, NO_COMM if comm is None else len(comm)) + (comm or b"") + body


def pack_discarded(rec: bytes, found: dict) -> bytes:
    return TAG.pack(KIND_DISCARDED, 0, len(rec)) + rec + json.dumps(found).encode()


class SampleDecoder:
    """decode(sample, cpu) of the user_events source, live and at replay: a function of the sample's
    bytes and the event formats only (no /proc, no tracefs), so a replay decodes what the live run did."""

    def __init__(self, formats: Sequence[EventFormat]) -> None:
        self.formats = list(formats)

    def __call__(self, sample: bytes, cpu: int) -> dict:
        kind, index, n = TAG.unpack_from(sample)
        rest = sample[TAG.size:]
        if kind == KIND_DISCARDED:
            return discarded_event(bytes(rest[:n]), cpu, json.loads(bytes(rest[n:])))
        if kind != KIND_TRACEPOINT:
            raise ValueError(f"unknown user_events sample kind {kind}")
        fmt = self.formats[index]
        comm = None if n == NO_COMM else bytes(rest[:n]).decode("utf-8", "surrogateescape")
        pid, tid, ts, scpu, raw = parse_sample(rest if n == NO_COMM else rest[n:])
        out = {"kind": "user_event", "event": fmt.tracepoint, "name": fmt.reg_name, "ts": ts, "cpu": scpu,
               "pid": pid, "tid": tid, "comm": comm}
        out.update(decode_record(fmt, raw))
        return out


def discarded_event(raw: bytes, cpu: int, found: dict) -> dict:
    """The event of a discarded write: its ue_record and the watch's findings (Watch.findings)."""
    rec = UE_HDR.unpack_from(raw)
    (_t, sc, flags, pid, tid, fd, ts, ret, addr, count, data_addr, idx, err, _nl, _p0, _eid, comm) = rec
    ev: dict = {"kind": "user_event", "status": "discarded", "event": None, "name": None, "ts": ts,
                "cpu": cpu, "pid": pid, "tid": tid,
                "comm": comm.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"),
                "fd": fd, "syscall": _SC.get(sc, str(sc)), "ret": ret, "errno": -ret,
                "write_index": None, "fields": None, "missing": ["payload"],
                "recognised": "kernel" if flags & _C["UE_F_MARKED"] else "proc"}
    if flags & _C["UE_F_INDEX"]:
        ev["write_index"] = idx
        name_args = found.get("name_args")
        if found.get("named_by") == "kernel":  # the kernel's own write_index table, read by the watch
            ev.update({"event": found["event"], "name": found["name"], "event_id": found["event_id"],
                       "named_by": "kernel"})
        elif name_args is not None:
            try:
                name = parse_name_args(name_args)[0]
            except ValueError:
                name = name_args.split(" ", 1)[0]
            ev["name"] = name
            ev["name_args"] = name_args
            ev["event"] = f"user_events:{name}"
        else:
            ev["name_reason"] = found.get("name_reason")
    elif flags & _C["UE_F_SPLIT"]:
        ev["name_reason"] = "the first iovec is shorter than the 4-byte write_index"
    else:
        ev["name_reason"] = f"write_index unreadable: errno {-err} at {data_addr or addr:#x}"
    ev["addr"] = addr
    ev["count" if sc == _C["UE_SC_WRITE"] else "iovcnt"] = count
    return ev
