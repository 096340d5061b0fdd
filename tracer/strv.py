"""execve/execveat `argv` and `envp` (RK_STRV, bpf/strv.h) decoded: a list of strings, the array's and each
element's read status, and where the value came from.

Sources: the caller's memory at entry; at exit of a failed exec, the same (old) memory again; at exit of a
successful exec, the kernel's own copy in the new process (mm->arg_start..arg_end, env_start..env_end),
which is what the new program received — proof of the value (`verified_by: "kernel_copy"`).
"""

from __future__ import annotations

from .events import (
    NOTE_NOROOM,
    VERIFIED_EQUAL,
    VERIFIED_KERNEL_COPY,
    VERIFIED_POINTER,
    read_entry,
    unverified,
    verified,
)
from .layout import const, packer

_HDR = packer("strv")
_ELEM = packer("strv_elem")
RS_OK, RS_FAULT, RS_TRUNC, RS_NULL, RS_NOROOM, RS_NONE = (
    const(n) for n in ("RS_OK", "RS_FAULT", "RS_TRUNC", "RS_NULL", "RS_NOROOM", "RS_NONE"))
_STATUS = {RS_OK: "ok", RS_TRUNC: "truncated", RS_FAULT: "missing"}
KERNEL_COPY = "the new program's memory, as the kernel copied it during the exec"


def text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def parse_block(raw: bytes) -> tuple[int, int, list[tuple[int, int, bytes]]]:
    """(array status, array errno, [(element status, errno, bytes)]) of a struct strv block."""
    if len(raw) < _HDR.size:
        return RS_NOROOM, 0, []
    n, status, _pad, err, size = _HDR.unpack_from(raw)
    elems = []
    pos = _HDR.size
    for _ in range(n):
        if pos + _ELEM.size > min(size, len(raw)):
            break
        st, _p, eerr, ln = _ELEM.unpack_from(raw, pos)
        pos += _ELEM.size
        elems.append((st, -eerr, raw[pos:pos + ln]))
        pos += ln
    return status, -err, elems


def parse_mm(raw: bytes, status: int) -> list[tuple[int, int, bytes]]:
    """Elements of the kernel's NUL-separated copy; the last one cut when the copy was (RS_TRUNC)."""
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"" and raw.endswith(b"\0"):
        parts.pop()
    elems = [(RS_OK, 0, p) for p in parts]
    if status == RS_TRUNC and elems and not raw.endswith(b"\0"):
        elems[-1] = (RS_TRUNC, 0, elems[-1][2])
    return elems


def _values(elems: list[tuple[int, int, bytes]]) -> list[str | None]:
    return [text(b) if st in (RS_OK, RS_TRUNC) else None for st, _, b in elems]


def _info(elems: list[tuple[int, int, bytes]], astatus: int, aerr: int, source: str, addr: int) -> dict:
    """The reads entry of one reading of the array: its status, count, len and elements."""
    worst = "ok"
    if any(st == RS_TRUNC for st, _, _ in elems) or astatus == RS_TRUNC:
        worst = "truncated"
    if any(st == RS_FAULT for st, _, _ in elems) or astatus == RS_FAULT:
        worst = "missing"
    errs = [e for st, e, _ in elems if st == RS_FAULT] + ([aerr] if astatus == RS_FAULT else [])
    info = read_entry(worst, source, addr, errs[0] if errs else None)
    info["count"] = len(elems) if astatus == RS_OK else None
    info["len"] = sum(len(b) for _, _, b in elems)
    info["elements"] = [{"status": _STATUS.get(st, "missing"), "len": len(b),
                         **({"errno": e} if st == RS_FAULT else {})} for st, e, b in elems]
    if astatus == RS_TRUNC:
        info["array_truncated"] = True  # more elements may follow the ones read (STRV_MAX or the data area)
    if astatus == RS_FAULT:
        info["array_errno"] = aerr  # the pointer after the last element read could not be read
    return info


def _recovered(again: dict, entry: dict) -> dict:
    """An exit reading shown in place of an incomplete entry one."""
    again.update(status="recovered" if again["status"] == "ok" else again["status"],
                 entry_status=entry["status"], entry_errno=entry["errno"])
    return again


def decode(slot: tuple, data: bytes, data_off: int, addr: int, ret: int | None,
           recover: bool) -> tuple[object, dict | None]:
    """(value, reads entry) of an RK_STRV slot; entries made by events.read_entry like every other."""
    (_argi, _kind, es, xs, _eerr, _xerr, eoff, elen, xoff, xlen, _same, _src, _p1, _want) = slot
    if es == RS_NONE:
        return addr, None  # not read (e.g. by a sleepable entry program): the pointer is shown
    if es == RS_NULL:
        return None, verified(read_entry("null", "enter", addr, None, b""), VERIFIED_POINTER)
    if es == RS_NOROOM:
        e = read_entry("missing", "enter", addr)
        e["note"] = NOTE_NOROOM
        return None, unverified(e, "missing")
    astatus, aerr, elems = parse_block(data[data_off + eoff: data_off + eoff + elen])
    entry: list[str | None] | None = _values(elems)
    info = _info(elems, astatus, aerr, "enter", addr)
    whole = info["status"] == "ok"
    if astatus == RS_FAULT and not elems:
        entry = None  # the array itself was unreadable
    exit_raw = data[data_off + xoff: data_off + xoff + xlen]
    if ret == 0 and xs in (RS_OK, RS_TRUNC):  # a successful exec: the kernel's copy
        kelems = parse_mm(exit_raw, xs)
        kernel = _values(kelems)
        if whole and entry == kernel:
            return entry, verified(info, VERIFIED_KERNEL_COPY)
        if whole:
            info.update(status="changed", value_at_exit=kernel, exit_from=KERNEL_COPY)
            return entry, unverified(info, "exec_other")
        k = _recovered(_info(kelems, RS_OK if xs == RS_OK else RS_TRUNC, 0, "exit", addr), info)
        k["exit_from"] = KERNEL_COPY
        return kernel, verified(k, VERIFIED_KERNEL_COPY)
    if ret == 0:
        return entry, unverified(info, "exec_copy_unread")
    if xs == RS_OK and recover:  # a failed exec: the old memory again
        xstatus, xerr2, xelems = parse_block(exit_raw)
        again = _values(xelems)
        x = _info(xelems, xstatus, xerr2, "exit", addr)
        if whole and again == entry:
            return entry, verified(info, VERIFIED_EQUAL)
        if whole:
            info.update(status="changed", value_at_exit=again)
            return entry, unverified(info, "changed")
        if x["status"] in ("ok", "truncated"):
            return again, unverified(_recovered(x, info), "recovered")
    why = "missing" if info["status"] == "missing" else "no_exit" if not recover else "exit_fault"
    return entry, unverified(info, why)
