"""Records from bpf/trace.bpf.c decoded into events (JSON-ready dicts).

Every pointer argument that was read carries its read outcome in `reads`: a value that could not
be read is None (JSON null) with status "missing", never a zero or an empty string. The layout comes
from bpf/record.h through tracer/layout.py.
"""

from __future__ import annotations

import errno as errno_mod
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from . import opened, strv
from .events import (
    NOTE_NOROOM,
    VERIFIED_AT_EXIT,
    VERIFIED_EQUAL,
    VERIFIED_POINTER,
    read_entry,
    unverified,
    verified,
)
from .layout import const, packer
from .openat2 import bits_str, decode_open_how, mode_str, open_flags_str
from .sockaddr import decode_sockaddr
from .symbols import BY_CONTEXT, STRUCTS, context_symbols, renderer
from .syscalls import OPEN_FAMILY, Arg, Syscall

_HDR = packer("sys_record", "reads")
_SLOT = packer("read_slot")
_SLOTS_OFF = _HDR.size
_DATA_OFF = _SLOTS_OFF + _SLOT.size * const("MAX_READS")

RK_STR, RK_OPEN_HOW, RK_SOCKADDR, RK_SOCKADDR_OUT = (
    const("RK_STR"), const("RK_OPEN_HOW"), const("RK_SOCKADDR"), const("RK_SOCKADDR_OUT"))
RS_NONE, RS_OK, RS_FAULT, RS_TRUNC, RS_NULL, RS_NOROOM, RS_SKIPPED = (
    const(n) for n in ("RS_NONE", "RS_OK", "RS_FAULT", "RS_TRUNC", "RS_NULL", "RS_NOROOM", "RS_SKIPPED"))
RF_NORETURN = const("RF_NORETURN")
RF_EXIT_READS = const("RF_EXIT_READS")
RF_SLEEPABLE = const("RF_SLEEPABLE")  # some slot read by a sleepable program: decoded by decode_generic
RF_OPENED = const("RF_OPENED")
RK_STRV = const("RK_STRV")
RSRC_SLEEPABLE, RSRC_FAULTED_IN = const("RSRC_SLEEPABLE"), const("RSRC_FAULTED_IN")
_READ_OK = (RS_OK, RS_TRUNC)
MAX_READS = const("MAX_READS")
# Header and n read slots in one unpack, for n = 0..MAX_READS.
_HDRS = [struct.Struct(_HDR.format + _SLOT.format[1:] * n) for n in range(MAX_READS + 1)]
# Kinds whose decoded value is a flat dict, cached by the bytes read (plus strings, decoded directly).
_FAST_KINDS = (RK_STR, RK_OPEN_HOW, RK_SOCKADDR)
_MEMO_MAX = 4096
_UNSET = object()

AT_FDCWD = -100
_AT_FLAGS = {0x100: "AT_SYMLINK_NOFOLLOW", 0x200: "AT_REMOVEDIR", 0x400: "AT_SYMLINK_FOLLOW",
             0x800: "AT_NO_AUTOMOUNT", 0x1000: "AT_EMPTY_PATH", 0x2000: "AT_STATX_FORCE_SYNC",
             0x4000: "AT_STATX_DONT_SYNC", 0x8000: "AT_RECURSIVE"}
_AT_FLAG_SYSCALLS = {"unlinkat", "newfstatat", "statx", "linkat", "fchownat", "utimensat", "faccessat2",
                     "fchmodat2", "execveat", "name_to_handle_at", "open_tree", "mount_setattr"}
# Argument C types and how to read the 64-bit slot the tracepoint stores them in.
_SIGNED32 = {"int", "pid_t", "key_serial_t", "clockid_t", "mqd_t", "rwf_t", "timer_t", "__s32", "s32"}
_UNSIGNED32 = {"unsigned int", "uid_t", "gid_t", "u32", "__u32", "qid_t", "unsigned"}
_SIGNED64 = {"long", "off_t", "loff_t", "ssize_t", "__s64", "s64", "time_t"}
_UNSIGNED16 = {"umode_t", "unsigned short"}


_CONV_NONE, _CONV_S32, _CONV_U32, _CONV_U16, _CONV_S64 = range(5)
_CONVS = {**dict.fromkeys(_SIGNED32, _CONV_S32), **dict.fromkeys(_UNSIGNED32, _CONV_U32),
          **dict.fromkeys(_UNSIGNED16, _CONV_U16), **dict.fromkeys(_SIGNED64, _CONV_S64)}


def int_value(ctype: str, raw: int) -> int:
    if ctype in _SIGNED32:
        v = raw & 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v
    if ctype in _UNSIGNED32:
        return raw & 0xFFFFFFFF
    if ctype in _UNSIGNED16:
        return raw & 0xFFFF
    if ctype in _SIGNED64:
        return raw - (1 << 64) if raw & (1 << 63) else raw
    return raw


def errno_str(err: int) -> str:
    return errno_mod.errorcode.get(err, f"E{err}")


def ret_str(ret: int) -> str:
    if -4095 <= ret < 0:
        return f"{ret} {errno_str(-ret)}"
    return str(ret)


def at_flags_str(v: int) -> str:
    return bits_str(v, _AT_FLAGS)


def arg_symbol(sc: str, arg: Arg, v: int) -> str | None:
    """A symbolic rendering of an integer argument where one is known (tracer/symbols.py for the
    syscall-specific ones; arguments whose meaning depends on another one: symbols.context_symbols)."""
    n = arg.name
    if n.endswith("dfd") and v == AT_FDCWD:
        return "AT_FDCWD"
    if n == "flags" and sc in ("open", "openat"):
        return open_flags_str(v)
    if n == "mode" and arg.ctype == "umode_t":
        return mode_str(v)
    if n in ("flag", "flags") and sc in _AT_FLAG_SYSCALLS:
        return at_flags_str(v)
    fn = renderer(sc, n)
    return fn(v) if fn is not None else None


def _symbol_fn(sc: str, arg: Arg) -> Callable[[int], str | None] | None:
    """arg_symbol for one argument, or None when it never has a symbol."""
    n = arg.name
    if (n.endswith("dfd") or (n == "flags" and sc in ("open", "openat")) or (n == "mode" and arg.ctype == "umode_t")
            or (n in ("flag", "flags") and sc in _AT_FLAG_SYSCALLS) or renderer(sc, n) is not None):
        return lambda v: arg_symbol(sc, arg, v)
    return None


def _with_context(sc: str, args: dict, syms: dict) -> dict:
    """syms plus the context-dependent symbols of this call, in argument order."""
    more = context_symbols(sc, args)
    if not more:
        return syms
    syms.update(more)
    return {k: syms[k] for k in args if k in syms}


class _Plan(NamedTuple):
    """What `decode` needs per syscall number: names, and per argument (index, name, int conversion,
    symbol memo, symbol function); `context`: some argument's symbol depends on another argument."""
    name: str
    event: str
    sc: Syscall | None
    args: tuple
    context: bool = False


def text(b: bytes) -> str:
    """Bytes as str; bytes that are not UTF-8 survive as surrogates (see escape.escape_bytes)."""
    return b.decode("utf-8", "surrogateescape")


@dataclass
class Decoder:
    syscalls: dict[int, Syscall]
    # Called with (pid, addr) for reads that failed or were recovered; returns where addr lives.
    explain: Callable[[int, int], dict] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    # Why the programs cannot read the kernel's opened file (tracer/kstructs.py), or None when they can.
    kfile_problem: str | None = None
    # Caches of the hot path (see `decode`); bounded by _MEMO_MAX entries each.
    _plans: dict[int, _Plan] = field(default_factory=dict, repr=False)
    _steps: dict[object, tuple] = field(default_factory=dict, repr=False)  # (nr, slot args) -> (plan, steps)
    _comms: dict[bytes, str] = field(default_factory=dict, repr=False)
    _rets: dict[int, str] = field(default_factory=dict, repr=False)
    _values: dict[tuple, dict] = field(default_factory=dict, repr=False)

    def value(self, kind: int, raw: bytes, want: int) -> object:
        if kind == RK_STR:
            return text(raw)
        if kind == RK_OPEN_HOW:
            return decode_open_how(raw, want)
        if kind in (RK_SOCKADDR, RK_SOCKADDR_OUT):
            return decode_sockaddr(raw)
        return raw.hex()

    def struct_value(self, sc: Syscall | None, argi: int, kind: int, raw: bytes, want: int) -> object:
        """`value`, or the decoded struct where tracer/symbols.py knows the argument (clone3's uargs)."""
        if sc is not None and argi < len(sc.args):
            fn = STRUCTS.get((sc.name, sc.args[argi].name))
            if fn is not None:
                val = fn(raw)
                if val is not None:
                    return val
        return self.value(kind, raw, want)

    def read(self, rec: bytes, slot: tuple, sc: Syscall | None, args: list[int], pid: int,
             ret: int | None, flags: int = 0) -> tuple[object, dict | None]:
        """(value, reads entry) of one read slot, every outcome (the common one also in `_read_ok`)."""
        (argi, kind, es, xs, eerr, xerr, eoff, elen, xoff, xlen, same, src, _p1, want) = slot
        addr = args[argi]
        if kind == RK_STRV:  # execve argv/envp (tracer/strv.py)
            return strv.decode(slot, rec, _DATA_OFF, addr, ret, bool(flags & RF_EXIT_READS))
        # the entry read was made by a sleepable program (tp.s, fentry.s), or the nofault one
        source = "sleepable" if src & RSRC_SLEEPABLE else "enter"
        is_text, size = kind == RK_STR, want or None

        def data(off: int, n: int) -> bytes:
            return rec[_DATA_OFF + off: _DATA_OFF + off + n]

        output = kind == RK_SOCKADDR_OUT
        size_unknown = False
        len_errno = None
        if output:
            if ret is None or ret < 0 or xs == RS_NONE:
                return addr, None  # the kernel filled nothing: the call failed
            if es == RS_FAULT:  # *addrlen (the caller's buffer size) was unreadable at entry
                size_unknown = True
                len_errno = -eerr
            es, eerr, eoff, elen, xs = xs, xerr, xoff, xlen, RS_NONE
            source = "exit"
        if es == RS_NULL:  # the pointer itself is the value, from the tracepoint's arguments
            return None, verified(read_entry("null", source, addr, None, b"", len_errno=len_errno), VERIFIED_POINTER)
        if es == RS_NONE:
            return addr, None
        if es == RS_NOROOM:
            info = read_entry("missing", source, addr, len_errno=len_errno)
            info["note"] = NOTE_NOROOM
            return None, unverified(info, "missing")
        if es in _READ_OK:
            raw = data(eoff, elen)
            info = read_entry("ok", source, addr, None, raw, size, is_text, len_errno)
            val: object = self.struct_value(sc, argi, kind, raw, want)
            if es == RS_TRUNC:
                info["status"] = "truncated"
                info["truncated"] = True
            if xs in _READ_OK and not same:
                info["status"] = "changed"
                info["value_at_exit"] = self.struct_value(sc, argi, kind, data(xoff, xlen), want)
                info["len_at_exit"] = xlen
            elif xs == RS_FAULT:
                info["exit_errno"] = -xerr
            elif xs == RS_SKIPPED:
                info["exit"] = "skipped: the address space was replaced"
            if xs in _READ_OK and same:
                verified(info, VERIFIED_EQUAL)
            else:
                unverified(info, "output_size" if size_unknown else "output" if output else "changed"
                           if xs in _READ_OK else "exit_fault" if xs == RS_FAULT else "skipped" if xs == RS_SKIPPED
                           else "noreturn" if flags & RF_NORETURN else "no_exit")
            if src & RSRC_FAULTED_IN:  # a nofault read failed: the sleepable copy faulted the page in
                info["faulted_in"] = True
                if self.explain is not None:
                    info["region"] = self.explain(pid, addr)
            return val, info
        # es == RS_FAULT: the entry read failed.
        val = None
        if xs in _READ_OK:
            raw = data(xoff, xlen)
            info = read_entry("recovered", "exit", addr, -eerr, raw, size, is_text, len_errno)
            if xs == RS_TRUNC:
                info["truncated"] = True
            unverified(info, "recovered")
            val = self.struct_value(sc, argi, kind, raw, want)
        else:
            info = read_entry("missing", source, addr, -eerr, len_errno=len_errno)
            if xs == RS_FAULT:
                info["exit_errno"] = -xerr
            elif xs == RS_SKIPPED:
                info["exit"] = "skipped: the address space was replaced"
            unverified(info, "missing")
        if self.explain is not None:
            info["region"] = self.explain(pid, addr)
        return val, info

    def decode(self, rec: bytes, cpu: int) -> dict:
        """The event for one record. Hot path: one precompiled unpack of the header and its slots,
        per-syscall argument plans, and caches of repeated values; uncommon read outcomes go through
        `read`. The result is the same dict, key for key and in the same order, as `decode_generic`."""
        n = rec[6]  # sys_record.nreads
        if n > MAX_READS or len(rec) < _HDRS[n].size or rec[7] & RF_SLEEPABLE:
            return self.decode_generic(rec, cpu)
        h = _HDRS[n].unpack_from(rec)
        nr = h[2]
        # The plan for this syscall and this set of read slots (which argument each slot reads).
        pkey = (nr, h[19:19 + 14 * n:14]) if n else nr
        steps = self._steps.get(pkey)
        if steps is None:
            steps = self.steps_for(nr, pkey[1] if n else ())
            if len(self._steps) < _MEMO_MAX:
                self._steps[pkey] = steps
        plan = steps[0]
        comm = self._comms.get(h[18])
        if comm is None:
            comm = self._comm(h[18])
        ts_enter = h[9]
        if h[4] & RF_NORETURN:
            ev: dict = {"kind": "syscall", "syscall": plan.name, "event": plan.event, "ts": ts_enter, "cpu": cpu,
                        "pid": h[5], "tid": h[6], "comm": comm, "uid": h[7]}
            the_ret = None
        else:
            ts_exit = h[10]
            ev = {"kind": "syscall", "syscall": plan.name, "event": plan.event, "ts": ts_enter, "cpu": cpu,
                  "pid": h[5], "tid": h[6], "comm": comm, "uid": h[7], "ts_exit": ts_exit,
                  "duration_ns": ts_exit - ts_enter}
            the_ret = h[11]
        out_args: dict = {}
        syms: dict = {}
        reads: dict = {}
        missing: list[str] = []
        for i, aname, conv, memo, symf, k in steps[1]:
            if k:
                s = h[k:k + 14]
                # (arg, kind, es, xs, eerr, xerr, eoff, elen, xoff, xlen, same, _, _, want)
                xs = s[3]
                if s[2] == RS_OK and s[1] in _FAST_KINDS and (xs == RS_NONE or (s[10] and xs in _READ_OK)):
                    val: object
                    info: dict | None
                    if s[1] == RK_STR:  # inline: the most common read
                        start = _DATA_OFF + s[6]
                        raw = rec[start: start + s[7]]
                        val = raw.decode("utf-8", "surrogateescape")
                        info = read_entry("ok", "enter", h[12 + i], None, raw)
                    else:
                        val, info = self._read_ok(rec, s, h[12 + i])
                    if xs != RS_NONE:
                        info.update(VERIFIED_AT_EXIT)
                    else:
                        unverified(info, "noreturn" if h[4] & RF_NORETURN else "no_exit")
                    out_args[aname] = val
                    reads[aname] = info
                    continue
                val, info = self.read(rec, s, plan.sc, list(h[12:18]), h[5], the_ret, h[4])
                out_args[aname] = val
                if info is not None:
                    reads[aname] = info
                    if info["status"] == "missing":
                        missing.append(aname)
                continue
            v = h[12 + i]
            if conv == _CONV_S32:
                v &= 0xFFFFFFFF
                if v & 0x80000000:
                    v -= 1 << 32
            elif conv == _CONV_U32:
                v &= 0xFFFFFFFF
            elif conv == _CONV_U16:
                v &= 0xFFFF
            elif conv == _CONV_S64 and v & (1 << 63):
                v -= 1 << 64
            out_args[aname] = v
            if symf is not None:
                sym = memo.get(v, _UNSET)
                if sym is _UNSET:
                    sym = symf(v)
                    if len(memo) < _MEMO_MAX:
                        memo[v] = sym
                if sym is not None:
                    syms[aname] = sym
        ev["args"] = out_args
        if plan.context:
            syms = _with_context(plan.name, out_args, syms)
        if syms:
            ev["args_str"] = syms
        ev["ret"] = the_ret
        if the_ret is None:
            ev["ret_str"] = None
        else:
            rs = self._rets.get(the_ret)
            if rs is None:
                rs = ret_str(the_ret)
                if len(self._rets) < _MEMO_MAX:
                    self._rets[the_ret] = rs
            ev["ret_str"] = rs
        ev["reads"] = reads
        ev["missing"] = missing
        if h[4] & RF_EXIT_READS:
            ev["recovery"] = True
        if plan.name in OPEN_FAMILY and the_ret is not None and the_ret >= 0:
            self._opened(ev, rec, h[4], h[8])
        return ev

    def _opened(self, ev: dict, rec: bytes, flags: int, xoff: int) -> None:
        """`opened`: the file the kernel installed at fd = ret (successful open-family calls)."""
        raw = opened.unpack_xoff(rec, _DATA_OFF, xoff) if flags & RF_OPENED else None
        opened.attach(ev, raw, self.kfile_problem)

    def _read_ok(self, rec: bytes, s: tuple, addr: int) -> tuple[object, dict]:
        """`read` for an entry read that succeeded whole (status ok), the common case: flat values are
        cached by their bytes."""
        kind = s[1]
        start = _DATA_OFF + s[6]
        raw = rec[start: start + s[7]]
        if kind == RK_STR:
            return text(raw), read_entry("ok", "enter", addr, None, raw)
        want = s[13]
        info = read_entry("ok", "enter", addr, None, raw, want or None, False)
        key = (kind, raw, want)
        val = self._values.get(key)
        if val is None:
            val = cast(dict, self.value(kind, raw, want))  # _FAST_KINDS decode to flat dicts
            if len(self._values) < _MEMO_MAX:
                self._values[key] = val
        return dict(val), info  # a copy: events never share a dict

    def _plan(self, nr: int) -> _Plan:
        sc = self.syscalls.get(nr)
        name = sc.name if sc else f"syscall_{nr}"
        args: list[tuple] = []
        for i, a in enumerate(sc.args if sc else ()):
            conv = _CONV_NONE if a.is_pointer else _CONVS.get(a.ctype, _CONV_NONE)
            symf = None if a.is_pointer else _symbol_fn(name, a)
            args.append((i, a.name, conv, {}, symf))
        return _Plan(name, f"syscalls:sys_enter_{name}", sc, tuple(args), name in BY_CONTEXT)

    def steps_for(self, nr: int, slot_args: tuple) -> tuple[_Plan, tuple]:
        """The syscall's plan, and its arguments each with the index in the unpacked header of the read
        slot that reads it (0: no slot; a repeated argument uses its last slot, as a dict would)."""
        plan = self._plans.get(nr)
        if plan is None:
            plan = self._plans[nr] = self._plan(nr)
        slot_at = {a: 19 + 14 * j for j, a in enumerate(slot_args)}
        return plan, tuple((*a, slot_at.get(a[0], 0)) for a in plan.args)

    def _comm(self, raw: bytes) -> str:
        comm = text(raw.split(b"\0", 1)[0])
        if len(self._comms) >= _MEMO_MAX:
            self._comms.clear()
        self._comms[raw] = comm
        return comm

    def decode_generic(self, rec: bytes, cpu: int) -> dict:
        """The reference decoder, field by field (records with unusual slot counts come here)."""
        h = _HDR.unpack_from(rec)
        (_type, _size, nr, nreads, flags, pid, tid, uid, _pad, ts_enter, ts_exit, ret) = h[:12]
        args = list(h[12:18])
        comm = text(h[18].split(b"\0", 1)[0])
        sc = self.syscalls.get(nr)
        name = sc.name if sc else f"syscall_{nr}"
        noreturn = bool(flags & RF_NORETURN)
        ev: dict = {"kind": "syscall", "syscall": name, "event": f"syscalls:sys_enter_{name}",
                    "ts": ts_enter, "cpu": cpu, "pid": pid, "tid": tid, "comm": comm, "uid": uid}
        if not noreturn:
            ev["ts_exit"] = ts_exit
            ev["duration_ns"] = ts_exit - ts_enter
        out_args: dict = {}
        syms: dict = {}
        reads: dict = {}
        missing: list[str] = []
        the_ret = None if noreturn else ret
        slots = [_SLOT.unpack_from(rec, _SLOTS_OFF + i * _SLOT.size) for i in range(nreads)]
        by_arg = {s[0]: s for s in slots}
        for i, a in enumerate(sc.args if sc else ()):
            if i in by_arg:
                val, info = self.read(rec, by_arg[i], sc, args, pid, the_ret, flags)
                out_args[a.name] = val
                if info is not None:
                    reads[a.name] = info
                    if info["status"] == "missing":
                        missing.append(a.name)
                continue
            v = args[i] if a.is_pointer else int_value(a.ctype, args[i])
            out_args[a.name] = v
            sym = None if a.is_pointer else arg_symbol(name, a, v)
            if sym is not None:
                syms[a.name] = sym
        ev["args"] = out_args
        syms = _with_context(name, out_args, syms)
        if syms:
            ev["args_str"] = syms
        ev["ret"] = the_ret
        ev["ret_str"] = None if noreturn else ret_str(ret)
        ev["reads"] = reads
        ev["missing"] = missing
        if flags & RF_EXIT_READS:
            ev["recovery"] = True
        if name in OPEN_FAMILY and the_ret is not None and the_ret >= 0:
            self._opened(ev, rec, flags, h[8])
        return ev
