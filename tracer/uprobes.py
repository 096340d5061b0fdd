"""User-space function probes: `uprobe:PATH:SYMBOL(ARG,...)[:RET]` event specs (bpf/uprobe.bpf.c).

ARG is `TYPE [NAME]`; TYPE is int, uint, long, ulong, ptr, str (NUL-terminated string), buf[N] (N bytes)
or buf[LEN] (as many bytes as argument LEN says; LEN is an argument's name, arg0..arg5 by default).
RET is the return type (default long; void for none). Arguments come from the x86-64 argument registers,
so at most 6, and at most 4 of them str/buf.

Pointer arguments are read at the call: by a sleepable program (bpf_copy_from_user faults absent pages
in) when the read mode and the kernel allow it, else with nofault reads that fail on absent pages. A
uretprobe sends the record at the return, with the return value: calls that never return (longjmp,
exit) are not reported.
"""

from __future__ import annotations

import ctypes as ct
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import bpfsys
from .accounting import Loss, syscall_losses
from .attach import UprobeLink
from .bpfload import load_compiled
from .caps import sleepable_kinds
from .decode import text
from .elfsyms import Resolved, SymbolError, resolve
from .errors import UnknownEvent
from .events import NOTE_NOROOM, read_entry
from .kenv import BCC_CFLAGS, BPF_DIR, bpf_source, prepare_bcc
from .layout import check_layout, const, layout_identity, packer
from .perf import output_rings
from .probes import Filters
from .sleepable import read_mode
from .sources import Source, SourceOptions

PREFIX = "uprobe:"
INT_TYPES = {"int": (32, True), "uint": (32, False), "long": (64, True), "ulong": (64, False),
             "ptr": (64, False)}
_ARG = re.compile(r"^(int|uint|long|ulong|ptr|str|buf\[(\w+)\])(?:\s+([A-Za-z_]\w*))?$")
_REC = packer("uprobe_record", "reads")
_SLOT = packer("read_slot")
_SLOTS_OFF = _REC.size
_DATA_OFF = _SLOTS_OFF + _SLOT.size * const("MAX_READS")
RS_OK, RS_FAULT, RS_TRUNC, RS_NULL, RS_NOROOM = (
    const(n) for n in ("RS_OK", "RS_FAULT", "RS_TRUNC", "RS_NULL", "RS_NOROOM"))
RK_STR, RK_BUF, RK_BUF_LEN = const("RK_STR"), const("RK_BUF"), const("RK_BUF_LEN")
UPF_SLEEPABLE, URF_FAULTED_IN = const("UPF_SLEEPABLE"), const("URF_FAULTED_IN")


class SpecError(UnknownEvent):
    """A uprobe spec that cannot be used; the message says what is wrong (a usage error)."""


@dataclass(frozen=True)
class ArgSpec:
    name: str
    type: str          # int, uint, long, ulong, ptr, str, buf
    size: int = 0      # buf[N]
    lenarg: int = -1   # buf[LEN]: index of the length argument


@dataclass
class UprobeSpec:
    spec: str
    path: str
    symbol: str
    args: list[ArgSpec] = field(default_factory=list)
    ret: str = "long"
    where: Resolved | None = None

    @property
    def reads(self) -> list[int]:
        return [i for i, a in enumerate(self.args) if a.type in ("str", "buf")]


def _split_args(body: str) -> list[str]:
    return [a.strip() for a in body.split(",")] if body.strip() else []


def parse_spec(spec: str) -> UprobeSpec:
    """`uprobe:PATH:SYMBOL(ARGS)[:RET]` -> UprobeSpec (symbol not yet resolved)."""
    if not spec.startswith(PREFIX):
        raise SpecError(f"{spec!r}: not a uprobe spec (uprobe:PATH:SYMBOL(ARGS))")
    rest = spec[len(PREFIX):]
    ret = "long"
    body = ""
    if "(" in rest:
        head, _, tail = rest.partition("(")
        body, close, after = tail.rpartition(")")
        if not close:
            raise SpecError(f"{spec!r}: missing ')' after the argument list")
        if after:
            if not after.startswith(":") or after[1:] not in (*INT_TYPES, "void"):
                raise SpecError(f"{spec!r}: after ')' only :RET may follow, RET one of "
                                f"{', '.join((*INT_TYPES, 'void'))}")
            ret = after[1:]
        rest = head
    path, sep, symbol = rest.rpartition(":")
    if "(" not in spec and symbol in (*INT_TYPES, "void") and ":" in path:
        raise SpecError(f"{spec!r}: :RET needs an argument list before it, e.g. {path}():{symbol}")
    if not sep or not path or not symbol:
        raise SpecError(f"{spec!r}: expected uprobe:PATH:SYMBOL(ARGS), e.g. "
                        "uprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:openat(int,str,int)")
    raw = _split_args(body)
    if len(raw) > 6:
        raise SpecError(f"{spec!r}: at most 6 arguments (the x86-64 argument registers)")
    parsed: list[tuple[str, str | None, str]] = []
    for i, a in enumerate(raw):
        m = _ARG.match(" ".join(a.split()))
        if not m:
            raise SpecError(f"{spec!r}: argument {i} {a!r}: expected TYPE [NAME], TYPE one of int, uint, long, "
                            "ulong, ptr, str, buf[N], buf[LENARG]")
        parsed.append((m[1].split("[")[0], m[2], m[3] or f"arg{i}"))
    names = [n for _, _, n in parsed]
    if len(set(names)) != len(names):
        raise SpecError(f"{spec!r}: argument names repeat")
    args = []
    for t, size, name in parsed:
        if t != "buf" or size is None:  # (buf always has its [SIZE]: _ARG)
            args.append(ArgSpec(name, t))
        elif size.isdigit():
            if not 0 < int(size) <= 0xFFFF:
                raise SpecError(f"{spec!r}: buf[{size}]: the size must be 1..65535")
            args.append(ArgSpec(name, "buf", size=int(size)))
        elif size in names and parsed[names.index(size)][0] in INT_TYPES:
            args.append(ArgSpec(name, "buf", lenarg=names.index(size)))
        else:
            raise SpecError(f"{spec!r}: buf[{size}]: no integer argument named {size!r}")
    out = UprobeSpec(spec, path, symbol, args, ret)
    if len(out.reads) > const("MAX_READS"):
        raise SpecError(f"{spec!r}: at most {const('MAX_READS')} str/buf arguments")
    return out


def _int(bits: int, signed: bool, raw: int) -> int:
    v = raw & ((1 << bits) - 1)
    return v - (1 << bits) if signed and v >> (bits - 1) else v


class UprobeSource(Source):
    name = "uprobes"
    STAT_NAMES = ("emitted", "no_state", "state_full", "submit_fail", "no_exit")  # record.h ST_*

    def __init__(self, specs: list[UprobeSpec], opts: SourceOptions, use_sleepable: bool) -> None:
        self.specs = specs
        self.explain = opts.explain
        self.sleepable = use_sleepable
        self.fds: list[int] = []
        self.links: list[UprobeLink] = []
        self.bpf: Any = None  # bcc's BPF object (untyped) once compiled
        prepare_bcc()
        from .pyenv import require

        BPF = require("bcc").BPF

        try:
            self.bpf = BPF(src_file=str(bpf_source("uprobe.bpf.c")).encode(),
                           cflags=[*BCC_CFLAGS, f"-I{BPF_DIR}", "-Wno-unused-function"])
            self._configure(opts.filters)
            self.rings = output_rings(opts.pages)
            events = self.bpf[b"up_events"]
            for cpu, fd in self.rings.per_cpu():
                events[ct.c_int(cpu)] = ct.c_int(fd)
            self._attach()
            self._tracing(True)  # every probe attached: calls are traced from this instant
        except BaseException:
            self.close()
            raise

    def _configure(self, f: Filters) -> None:
        flags = sum(const(n) for n, on in (("CF_PID", f.pids), ("CF_TID", f.tids), ("CF_UID", f.uid is not None),
                                           ("CF_COMM", f.comm), ("CF_FOLLOW", f.follow)) if on)
        self._filter = (flags, os.getpid(), f.uid or 0, 0, (f.comm or "").encode()[:15])
        self._tracing(False)  # CF_OFF until every probe is attached: no call half seen
        one = ct.c_uint8(1)
        for pid in f.pids:
            self.bpf[b"up_pids"][ct.c_uint32(pid)] = one
        for tid in f.tids:
            self.bpf[b"up_tids"][ct.c_uint32(tid)] = one
        nmax = const("MAX_READS")
        for idx, s in enumerate(self.specs):
            reads = s.reads
            kinds = [RK_STR if s.args[i].type == "str" else RK_BUF if s.args[i].lenarg < 0 else RK_BUF_LEN
                     for i in reads]
            sizes = [const("STR_CAP") if s.args[i].type == "str" else s.args[i].size or const("READ_CAP")
                     for i in reads]
            lenargs = [max(s.args[i].lenarg, 0) for i in reads]
            pad = [0] * (nmax - len(reads))
            self._set(b"up_conf", idx, packer("sc_conf").pack(
                1, len(s.args), len(reads), 0, bytes(reads + pad), bytes(kinds + pad), bytes(lenargs + pad),
                *(sizes + pad)))

    def _tracing(self, on: bool) -> None:
        """One conf write starts or stops every program at once (CF_OFF, as for syscalls)."""
        flags, *rest = self._filter
        self._set(b"up_filter", 0, packer("tracer_conf").pack(flags | (0 if on else const("CF_OFF")), *rest))

    def quiesce(self) -> None:
        if self.bpf is not None:
            self._tracing(False)  # counters and the in-flight table are final from here
        super().quiesce()

    def final_losses(self) -> list[Loss]:
        """As for syscalls (accounting.syscall_losses): failed outputs, a full in-flight table, calls whose
        record a recursive call replaced; and the calls still in the function when tracing stopped —
        `no_exit` if their thread is gone (it exited or was killed inside the function), otherwise
        `in_flight_at_exit`."""
        if self.bpf is None or self.rings is None:
            return []
        t = self.bpf[b"up_stats"]
        per_cpu = {n: list(t[t.Key(i)]) for i, n in enumerate(self.STAT_NAMES)}
        gone = running = 0
        for rec in self.bpf[b"up_inflight"].values():
            if rec.flags & const("UPF_ACTIVE"):
                if os.path.exists(f"/proc/{rec.pid}/task/{rec.tid}"):
                    running += 1
                else:
                    gone += 1
        losses = syscall_losses(self.rings.rings, per_cpu, running)
        return losses + ([(None, "no_exit", gone)] if gone else [])

    def _set(self, table: bytes, key: int, value: bytes) -> None:
        t = self.bpf[table]
        t[t.Key(key)] = t.Leaf.from_buffer_copy(value.ljust(ct.sizeof(t.Leaf), b"\0"))

    def _attach(self) -> None:
        kprobe = bpfsys.BPF_PROG_TYPE_KPROBE
        for idx, s in enumerate(self.specs):
            assert s.where is not None
            enter = f"up_enter_s_{idx}" if self.sleepable else f"up_enter_{idx}"
            progs = ((enter, self.sleepable, False), (f"up_ret_{idx}", False, True))
            for fn, sleeps, ret in progs:
                fd = load_compiled(self.bpf, fn, kprobe, sleepable=sleeps)
                self.fds.append(fd)
                ev = f"tracer_{os.getpid()}_{idx}_{'r' if ret else 'p'}"
                self.links.append(UprobeLink(fd, s.where.path, s.where.offset, ret, ev))

    def add_pid(self, pid: int) -> None:
        if self.bpf is not None:
            self.bpf[b"up_pids"][ct.c_uint32(pid)] = ct.c_uint8(1)

    def kernel_stats(self) -> dict[str, int]:
        if self.bpf is None:
            return {}
        t = self.bpf[b"up_stats"]
        return {f"uprobe_{n}": sum(t[t.Key(i)]) for i, n in enumerate(self.STAT_NAMES)}

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.links = []
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None
        super().close()

    # -- decoding ----------------------------------------------------------------------------------
    def decode(self, rec: bytes, cpu: int) -> dict:
        return decode_record(rec, cpu, self.specs, self.explain)

    # -- capture files (tracer/capture.py) -----------------------------------------------------------
    def capture_header(self) -> dict:
        """The probes as parsed and resolved at record time (the binary may change or vanish later),
        and the identity of the record layout."""
        return {"layout": layout_identities(), "events": [s.spec for s in self.specs],
                "probes": [spec_to_json(s) for s in self.specs]}

    @classmethod
    def replay_decoder(cls, desc: dict, explain: Callable[[int, int], dict] | None) -> Callable[[bytes, int], dict]:
        for identity in desc["layout"]:
            check_layout(identity)
        specs = [spec_from_json(d) for d in desc["probes"]]
        return lambda rec, cpu: decode_record(rec, cpu, specs, explain)


def layout_identities() -> list[dict]:
    """uprobe.h builds on record.h (read slots, RS_*/RK_* constants): both must match at replay."""
    return [layout_identity("record.h", ("read_slot",)), layout_identity("uprobe.h", ("uprobe_record",))]


def spec_to_json(s: UprobeSpec) -> dict:
    return {"spec": s.spec, "path": s.path, "symbol": s.symbol, "ret": s.ret,
            "args": [asdict(a) for a in s.args], "where": asdict(s.where) if s.where else None}


def spec_from_json(d: dict) -> UprobeSpec:
    """The inverse of spec_to_json; ValueError for what this tracer could not decode."""
    args = [ArgSpec(str(a["name"]), str(a["type"]), int(a["size"]), int(a["lenarg"])) for a in d["args"]]
    for a in args:
        if a.type not in (*INT_TYPES, "str", "buf"):
            raise ValueError(f"argument type {a.type!r}")
    if d["ret"] not in (*INT_TYPES, "void") or len(args) > 6:
        raise ValueError(f"probe {d['spec']!r}")
    w = d.get("where")
    where = None if w is None else Resolved(str(w["path"]), str(w["symbol"]), int(w["vaddr"]), int(w["offset"]),
                                            int(w["size"]), str(w["table"]))
    return UprobeSpec(str(d["spec"]), str(d["path"]), str(d["symbol"]), args, str(d["ret"]), where)


def _read(rec: bytes, slot: tuple, rflag: int, addr: int, source: str, pid: int,
          explain: Callable[[int, int], dict] | None) -> tuple[object, dict]:
    """(value, reads entry) of one argument read at the call (no exit re-read: nothing to verify with)."""
    (_a, kind, st, _xs, err, _xe, off, n, *_rest, want) = slot
    if st == RS_NULL:
        return None, read_entry("null", source, addr, None, b"")
    if st == RS_NOROOM:
        info = read_entry("missing", source, addr)
        info["note"] = NOTE_NOROOM
        return None, info
    if st == RS_FAULT:
        info = read_entry("missing", source, addr, -err)
        if explain is not None:
            info["region"] = explain(pid, addr)
        return None, info
    raw = rec[_DATA_OFF + off: _DATA_OFF + off + n]
    info = read_entry("ok", source, addr, None, raw, want, kind == RK_STR)
    if st == RS_TRUNC:
        info.update(status="truncated", truncated=True)
    if rflag & URF_FAULTED_IN:
        info["faulted_in"] = True
    return (text(raw) if kind == RK_STR else raw.hex()), info


def decode_record(rec: bytes, cpu: int, specs: list[UprobeSpec],
                  explain: Callable[[int, int], dict] | None = None) -> dict:
    """One struct uprobe_record (bpf/uprobe.h) -> the event dict of the JSON contract."""
    h = _REC.unpack_from(rec)
    (_type, _size, probe, nreads, flags, pid, tid, uid, _pad, ts_enter, ts_exit, ret) = h[:12]
    regs, comm, rflags = list(h[12:18]), text(h[18].split(b"\0", 1)[0]), h[19]
    s = specs[probe]
    source = "sleepable" if flags & UPF_SLEEPABLE else "nofault"  # the event's reader (--read-mode)
    read_source = "sleepable" if flags & UPF_SLEEPABLE else "enter"  # each read's, as syscalls say it
    slots = {sl[0]: (sl, rflags[k]) for k in range(nreads)
             for sl in [_SLOT.unpack_from(rec, _SLOTS_OFF + k * _SLOT.size)]}
    args: dict = {}
    reads: dict = {}
    missing: list[str] = []
    for i, a in enumerate(s.args):
        if i in slots:
            val, info = _read(rec, slots[i][0], slots[i][1], regs[i], read_source, pid, explain)
            args[a.name], reads[a.name] = val, info
            if info["status"] == "missing":
                missing.append(a.name)
        else:
            args[a.name] = _int(*INT_TYPES[a.type], regs[i])
    the_ret = None if s.ret == "void" else _int(*INT_TYPES[s.ret], ret)
    return {"kind": "uprobe", "event": s.spec, "path": s.where.path if s.where else s.path,
            "function": s.symbol, "offset": s.where.offset if s.where else None,
            "ts": ts_enter, "ts_exit": ts_exit, "duration_ns": ts_exit - ts_enter, "cpu": cpu, "pid": pid,
            "tid": tid, "comm": comm, "uid": uid, "args": args, "ret": the_ret,
            "ret_str": None if the_ret is None else str(the_ret), "reads": reads, "missing": missing,
            "source": source}


def build(specs: list[str], opts: SourceOptions) -> UprobeSource:
    """The uprobe source for every `uprobe:` spec of a session (see session.build_source)."""
    parsed = [parse_spec(s) for s in specs]
    if len(parsed) > const("UP_MAX_PROBES"):
        raise SpecError(f"at most {const('UP_MAX_PROBES')} uprobe specs per session")
    for p in parsed:
        try:
            p.where = resolve(p.path, p.symbol)
        except SymbolError as e:
            raise SpecError(f"{p.spec!r}: {e}") from None
    return UprobeSource(parsed, opts, read_mode(opts.read_mode, "uprobes", sleepable_kinds) == "uprobe.s")
