"""`--json` lines straight from the record (bpf/record.h's sys_record), without building the event's dicts.

The consumer's hot path: decoding a record into its event (~6 dicts, ~45 keys) and then encoding it cost
~6 of the ~10 µs per event. For records of the common shape, `LineEncoder` writes the line with a function
made once per (syscall, read-slot layout) that fills one format string: the keys and constant fragments
are in it, and repeated values (comm, symbols, return values, open_how and sockaddr values) come from
memos of their JSON. Any other record is decoded (`Decoder.decode`) as before and the session encodes its
event with jsonenc.dumps. The bytes are the same either way: those of jsonenc.dumps(event) once the
session has added its `time` (tests/test_recjson.py compares them for every entry x exit read status).

The common shape: every read slot read its argument whole at entry (RS_OK) as a valid UTF-8 string, an
open_how or a sockaddr, and either was not re-read or read the same bytes at exit; not a successful
open-family call (its `opened` check may change a read's verdict, tracer/opened.py); not a syscall with a
symbol that depends on another argument; not a record of a sleepable reader.

The per-layout functions are generated Python source (as dataclasses and namedtuple make theirs): straight
-line code is what makes this path ~3x cheaper than decoding. Only integers (offsets, indices) are written
into that source; every name and string is passed in as a value, escaped by json's own encoder.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from itertools import repeat
from json.encoder import encode_basestring_ascii as _enc  # json's escaper: json.dumps's bytes (ensure_ascii)
from typing import NamedTuple

from . import opened, recline
from .decode import (
    _CONV_NONE,
    _CONV_S32,
    _CONV_S64,
    _CONV_U16,
    _CONV_U32,
    _DATA_OFF,
    _HDRS,
    _MEMO_MAX,
    MAX_READS,
    RF_EXIT_READS,
    RF_NORETURN,
    RF_OPENED,
    RF_SLEEPABLE,
    RK_OPEN_HOW,
    RK_SOCKADDR,
    RK_STR,
    RS_NONE,
    RS_OK,
    RS_TRUNC,
    Decoder,
    _Plan,
    ret_str,
    text,
)
from .events import UNVERIFIED, VERIFIED_AT_EXIT, VERIFIED_EQUAL, order_ts, read_entry, unverified
from .jsonenc import json_dumps
from .layout import struct_of
from .syscalls import OPEN_FAMILY

_UNSET = object()
_REC, _SLOT = struct_of("sys_record"), struct_of("read_slot")
_READS_AT = _REC.field("reads").offset
_ADDR_MARK = -0x7E57AD0E5  # an address no read has: where a memoised entry's own address goes
_READ_HEAD = '{"status":"ok","source":"enter","errno":null,"addr":'
_VERIFIED = f',"verified_at_exit":true,"verified":true,"verified_by":{_enc(VERIFIED_EQUAL)}}}'
_UNVERIFIED = {0: f',"verified":false,"unverified_reason":{_enc(UNVERIFIED["no_exit"])}}}',
               RF_NORETURN: f',"verified":false,"unverified_reason":{_enc(UNVERIFIED["noreturn"])}}}'}
# The fragments a line chooses among by the record (the generated code and the C code both take them from here)
_FRAGS = {"MID0": ',"ts_exit":', "MID1": ',"duration_ns":', "RC": ',"recovery":true',
          "NORET_RF": ',"ret":null,"ret_str":null', "SIZE": ',"size":', "ARGS_STR": ',"args_str":{',
          "VERIFIED": _VERIFIED, "UNVERIFIED0": _UNVERIFIED[0], "UNVERIFIED1": _UNVERIFIED[RF_NORETURN]}
_CONV_NAMES = {_CONV_NONE: "none", _CONV_S32: "s32", _CONV_U32: "u32", _CONV_U16: "u16", _CONV_S64: "s64"}

# Decoder's integer conversions (decode.int_value) as the lines `var = <expression>` of generated code,
# given the variable and the expression of the raw 64-bit value.
CONVERSIONS: dict[int, Callable[[str, str], list[str]]] = {
    _CONV_NONE: lambda v, raw: [raw],
    _CONV_S32: lambda v, raw: [f"{raw} & 0xFFFFFFFF", f"{v} - 0x100000000 if {v} & 0x80000000 else {v}"],
    _CONV_U32: lambda v, raw: [f"{raw} & 0xFFFFFFFF"],
    _CONV_U16: lambda v, raw: [f"{raw} & 0xFFFF"],
    _CONV_S64: lambda v, raw: [f"{raw} - 0x10000000000000000 if {raw} & 0x8000000000000000 else {raw}"]}


def _unpacker(fields: list[tuple[int, str, str]]) -> tuple[struct.Struct, list[str]]:
    """One little-endian Struct reading (offset, code, name) fields, the bytes between them skipped;
    and the names in the order it returns them."""
    fmt, at, names = "<", 0, []
    for off, code, name in sorted(fields):
        fmt += (f"{off - at}x" if off > at else "") + code
        at = off + struct.calcsize("<" + code)
        names.append(name)
    return struct.Struct(fmt), names


def _slot_field(j: int, name: str) -> int:
    return _READS_AT + j * _SLOT.size + _SLOT.field(name).offset


# The layout key of a record with n read slots: (nr, the argument each slot reads, ...), one unpack.
_KEYS = [_unpacker([(_REC.field("nr").offset, "H", "nr")]
                   + [(_slot_field(j, "arg"), "B", f"arg{j}") for j in range(n)])[0] for n in range(MAX_READS + 1)]
# Decoder.steps_for gives a slot's place in decode._HDRS's unpacked tuple: _HDR_SLOTS_AT + _HDR_SLOT * j.
_HDR_SLOTS_AT, _HDR_SLOT = 19, 14
_SLOT_FIELDS = ("kind", "enter_status", "exit_status", "enter_off", "enter_len", "exit_same", "want")

# One event as its JSON line: (events.order_ts of the event, events.Stats.add_many's grouping key of the
# event, the line without its newline). A plain tuple: a NamedTuple's constructor costs ~0.2 µs more.
Line = tuple
# (record, cpu) -> its Line, or None: decode the record instead
_LineFn = Callable[[bytes, int], "tuple[int, tuple, object] | None"]


class _Shape(NamedTuple):
    """What every line function of one layout starts with (LineEncoder._shape)."""
    fields: list  # (offset, struct code, local name) of what the one unpack reads
    # source: `noreturn`, checks (return None), `raw{i}` of each read and `v{i}` of a struct's (the encoder's
    # _value), `a{i}` of each integer, `key`
    body: list[str]
    args: list  # per argument: (index, name, the read's kind or None, its symbol function or None)
    names: tuple  # the arguments read, in order
    slots: dict  # argument index -> the index of the read slot that reads it
    convs: dict  # argument index -> its integer conversion (decode._CONV_*), of the arguments not read


class Var(NamedTuple):
    """A value in a line's template (the rest are literal fragments): a local of the generated function
    (or a constant of its namespace), and the C code's value of the same name (LineEncoder._c_spec)."""
    name: str


def _sep(parts: list[list], sep: str = ",") -> list:
    """Templates one after another, `sep` between them."""
    out: list = []
    for n, p in enumerate(parts):
        out += ([sep] if n else []) + p
    return out


def _fstring(tmpl: list) -> str:
    """The f-string source of a template. Its literals are this module's constants, never a name or a
    string from elsewhere (those are Vars: values in the function's namespace)."""
    out = []
    for p in tmpl:
        if isinstance(p, Var):
            out.append("{" + p.name + "}")
        else:
            assert not set(p) & set("'\\\n"), p
            out.append(p.replace("{", "{{").replace("}", "}}"))
    return "f'" + "".join(out) + "'"


def order_key(item: object) -> int:
    """events.order_ts of a Line or an event dict (ordering.TimeOrder's key in lines mode)."""
    return item[0] if type(item) is tuple else order_ts(item)  # type: ignore[arg-type]


class LineEncoder:
    """JSON lines of one Decoder's records, with the session's wall clock (contract.WallClock's offset)."""

    def __init__(self, decoder: Decoder, mono_to_wall_ns: int) -> None:
        self.decoder = decoder
        self.offset = mono_to_wall_ns
        self._layouts: dict[object, _LineFn | None] = {}
        self._comms: dict[bytes, str] = {}
        self._rets: dict[int, str] = {}
        self._values: dict[tuple, str] = {}
        self._clock: list = [-1, ""]  # the second `time` was last made for, and its date and time of day
        self._c_encode = recline.c_encode()  # encode's loop in C (tracer/_recline.c), or None
        self._by_key: dict[int, _LineFn | None] = {}  # its layouts, by the C code's int key (_layout_of)

    def encode(self, samples: list[bytes], cpus: Iterable[int] | int) -> list[tuple | dict]:
        """Each record of one ring drain as its Line, or as its decoded event dict where it is not of the
        common shape (see the module's docstring); `cpus`: each record's CPU (perf.Batch.sample_cpus), or
        one CPU for all."""
        if self._c_encode is not None and type(samples) is list:  # the same loop in C: ~0.4 µs less per record
            return self._c_encode(samples, cpus, self._by_key, self._layout_of, self.decoder.decode)
        if isinstance(cpus, int):
            cpus = repeat(cpus)
        decode = self.decoder.decode
        layouts = self._layouts
        out: list[tuple | dict] = []
        append = out.append
        for rec, cpu in zip(samples, cpus, strict=False):  # cpus may be itertools.repeat
            n = rec[6]  # sys_record.nreads
            if n > MAX_READS or len(rec) < _HDRS[n].size or rec[7] & RF_SLEEPABLE:
                append(decode(rec, cpu))
                continue
            pkey = _KEYS[n].unpack_from(rec)
            try:
                fn = layouts[pkey]
            except KeyError:
                fn = self._layout(pkey, rec)
            line = None if fn is None else fn(rec, cpu)
            append(decode(rec, cpu) if line is None else line)
        return out

    def _layout_of(self, rec: bytes, key: int) -> _LineFn | None:
        """The C loop's miss: the line function of `rec`'s layout (whose int key is `key`), or None."""
        pkey = _KEYS[rec[6]].unpack_from(rec)
        try:
            fn = self._layouts[pkey]
        except KeyError:
            fn = self._layout(pkey, rec)
        if len(self._by_key) < _MEMO_MAX:
            self._by_key[key] = fn
        return fn

    def _when(self, sec: int) -> str:
        """The date and time of day of `sec` (wall clock), as the event's `time` starts; made once per second."""
        self._clock[0] = sec
        self._clock[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return self._clock[1]

    # -- the fragments of repeated values (a subclass's line renders its own) -----------------------------
    def _ret_text(self, ret: int) -> str:
        return f',"ret":{ret},"ret_str":{_enc(ret_str(ret))}'

    def _comm_text(self, comm: str) -> str:
        return _enc(comm)

    def _value_text(self, val: object, want: int) -> str:
        return json_dumps(val)

    # -- memos the generated functions call on a miss ----------------------------------------------------
    def _ret(self, ret: int) -> str:
        frag = self._ret_text(ret)
        if len(self._rets) < _MEMO_MAX:
            self._rets[ret] = frag
        return frag

    def _comm(self, raw: bytes) -> str:
        if len(self._comms) >= _MEMO_MAX:
            self._comms.clear()
        comm = self._comms[raw] = self._comm_text(text(raw.split(b"\0", 1)[0]))
        return comm

    def _value(self, kind: int, raw: bytes, want: int) -> str:
        val = self._value_text(self.decoder.value(kind, raw, want), want)
        if len(self._values) < _MEMO_MAX:
            self._values[(kind, raw, want)] = val
        return val

    def _layout(self, pkey: tuple, rec: bytes) -> _LineFn | None:
        """The line function of one (syscall, read slots) layout, for records whose slots read the kinds
        this first record's did; None: its records are always decoded."""
        plan, steps = self.decoder.steps_for(pkey[0], pkey[1:])
        fn = None if plan.context else self._generate(plan, steps, rec)
        if len(self._layouts) < _MEMO_MAX:
            self._layouts[pkey] = fn
        return fn

    def _shape(self, plan: _Plan, steps: tuple, rec: bytes, opened: bool = False) -> _Shape | None:
        """What every line function of this layout starts with, whatever line it makes (this one's JSON,
        recconsole's console line); None: a slot reads a kind the line path does not take. `steps`:
        Decoder.steps_for's. `opened`: the caller makes successful open-family calls' lines too (with
        their `opened`); otherwise they are decoded."""
        r = {n: _REC.field(n).offset for n in ("flags", "pid", "tid", "uid", "ts_enter", "ts_exit", "ret", "comm")}
        fields = [(r["flags"], "B", "flags"), (r["pid"], "I", "pid"), (r["tid"], "I", "tid"), (r["uid"], "I", "uid"),
                  (r["ts_enter"], "Q", "ts"), (r["ts_exit"], "Q", "te"), (r["ret"], "q", "ret"),
                  (r["comm"], f"{_REC.field('comm').count}s", "comm_raw")]
        args_at = _REC.field("args").offset
        codes = {f.name: f.code for f in _SLOT.fields}
        body = [f"    noreturn = flags & {RF_NORETURN}"]
        if plan.name in OPEN_FAMILY and not opened:  # a successful call carries `opened`: decoded
            body.append("    if not noreturn and ret >= 0: return None")
        args: list[tuple] = []
        names = []
        slots, convs = {}, {}
        for i, aname, conv, _memo, symf, k in steps:
            fields.append((args_at + 8 * i, "Q", f"r{i}"))
            if k:
                j = slots[i] = (k - _HDR_SLOTS_AT) // _HDR_SLOT  # the slot's index in the record
                kind = rec[_slot_field(j, "kind")]
                if kind not in (RK_STR, RK_OPEN_HOW, RK_SOCKADDR):
                    return None
                fields += [(_slot_field(j, f), codes[f], f"{f}{i}") for f in _SLOT_FIELDS]
                names.append(aname)
                body += [f"    if enter_status{i} != {RS_OK} or kind{i} != {kind} or (exit_status{i} != {RS_NONE} "
                         f"and not (exit_same{i} and (exit_status{i} == {RS_OK} or exit_status{i} == {RS_TRUNC}))):",
                         "        return None",
                         f"    raw{i} = rec[{_DATA_OFF} + enter_off{i}:{_DATA_OFF} + enter_off{i} + enter_len{i}]"]
                if kind != RK_STR:  # a struct's rendering, memoised by its bytes
                    vkey = f"({kind}, raw{i}, want{i})"
                    body.append(f"    v{i} = VALUES.get({vkey}) or value_frag{vkey}")
                args.append((i, aname, kind, None))
                continue
            body += [f"    a{i} = {line}" for line in CONVERSIONS[conv](f"a{i}", f"r{i}")]
            convs[i] = conv
            args.append((i, aname, None, symf))
        body.append("    key = ts if noreturn else te or ts")
        return _Shape(fields, body, args, tuple(names), slots, convs)

    def _compile(self, ns: dict, shape: _Shape, plan: _Plan, body: list[str], ret: list[str]) -> _LineFn:
        """`line(rec, cpu)`: one unpack into locals, the shape's checks and values, `body`, the comm and the
        time of day (`day`, `ns`), then `ret`, which returns (key, statistics key, the line)."""
        unpack, order = _unpacker(shape.fields)
        names = shape.names
        ns.update({"UNPACK": unpack.unpack_from, "RETS": self._rets, "ret_frag": self._ret, "COMMS": self._comms,
                   "comm_frag": self._comm, "VALUES": self._values, "value_frag": self._value, "CLOCK": self._clock,
                   "when": self._when, "UNSET": _UNSET,
                   "GROUP": ("syscall", "ok", plan.event, plan.name if names else None, names, ("ok",) * len(names))})
        src = ["def line(rec, cpu):", f"    {', '.join(order)}, = UNPACK(rec)", *shape.body, *body,
               "    comm = COMMS.get(comm_raw) or comm_frag(comm_raw)",
               f"    sec, ns = divmod(ts + {int(self.offset)}, 1000000000)",
               "    day = CLOCK[1] if sec == CLOCK[0] else when(sec)", *ret]
        # only integers are written into src
        exec(compile("\n".join(src) + "\n", f"<{type(self).__name__} {plan.name}>", "exec"), ns)
        return ns["line"]

    def _opened_source(self, ns: dict, plan: _Plan, shape: _Shape,
                       frag: Callable[..., tuple]) -> tuple[list[str], int | None]:
        """Source (inside `if not noreturn and ret >= 0:`) setting `o` to `frag`'s fragments of a successful
        open-family call (the layout's _shape was made with opened=True), memoised by what decides the
        opened file's verdict (tracer/opened.py): the filename's bytes and whether they were verified at
        exit, the open flags (openat2: how's bytes), the struct kfile's bytes. `frag(plan, names, raw,
        verified, flags, want, kraw)`; the index of the filename argument read as a string, or None."""
        reads = {aname: (i, kind) for i, aname, kind, _symf in shape.args if kind is not None}
        ints = {aname: i for i, aname, kind, _symf in shape.args if kind is None}
        shape.fields.append((_REC.field("xoff").offset, "I", "xoff"))
        fname = reads.get("filename")
        if fname is not None and fname[1] != RK_STR:
            fname = None
        how = reads.get("how") if plan.name == "openat2" else None
        if how is not None and how[1] != RK_OPEN_HOW:
            how = None
        fi = fname[0] if fname else None
        key = ", ".join([f"raw{fi}, exit_status{fi} != {RS_NONE}" if fname else "None, False",
                         f"raw{how[0]}, want{how[0]}" if how else
                         f"a{ints['flags']}, 0" if "flags" in ints and plan.name != "openat2" else "None, 0"])
        memo: dict = {}

        def made(*k: object) -> tuple:
            got = frag(plan, shape.names, *k)
            if len(memo) < _MEMO_MAX:
                memo[k] = got
            return got

        ns.update({"OPENED": memo, "DATA_OFF": _DATA_OFF, "unpack_xoff": opened.unpack_xoff, "opened_frag": made})
        return [f"        kraw = unpack_xoff(rec, DATA_OFF, xoff) if flags & {RF_OPENED} else None",
                f"        k = ({key}, kraw)",
                "        o = OPENED.get(k) or opened_frag(*k)"], fi

    def _opened_event(self, plan: _Plan, names: tuple, raw: bytes | None, verified: bool, fl: object, want: int,
                      kraw: bytes | None, addr: int) -> tuple[dict, tuple]:
        """A successful open's event as far as opened.attach looks at it (the filename read at `addr`, its
        verification at exit, the flags), attached by the reference code; and its statistics key."""
        args: dict = {}
        reads: dict = {}
        if raw is not None:
            info = read_entry("ok", "enter", addr, None, raw)
            if verified:
                info.update(VERIFIED_AT_EXIT)
            else:
                unverified(info, "no_exit")
            args["filename"], reads["filename"] = text(raw), info
        if plan.name == "openat2":
            args["how"] = self.decoder.value(RK_OPEN_HOW, fl, want) if isinstance(fl, bytes) else 0
        elif fl is not None:
            args["flags"] = fl
        ev: dict = {"syscall": plan.name, "args": args, "reads": reads}
        opened.attach(ev, kraw, self.decoder.kfile_problem)
        statuses = tuple(reads["filename"]["status"] if n == "filename" else "ok" for n in names)
        return ev, ("syscall", "ok", plan.event, plan.name if names else None, names, statuses)

    @staticmethod
    def _symbol(ns: dict, i: int, symf: Callable, var: str, frag: Callable[[int, object], object]) -> list[str]:
        """Source setting `var` to the fragment of argument i's symbol, memoised by a{i} in SYM{i} (a miss:
        symmiss{i}, which the C line function calls too); `frag(a, sym)` makes it from the symbol (None
        where the value has none)."""
        memo: dict = {}

        def miss(a: int) -> object:
            got = frag(a, symf(a))
            if len(memo) < _MEMO_MAX:
                memo[a] = got
            return got

        ns[f"SYM{i}"], ns[f"symmiss{i}"] = memo, miss
        return [f"    {var} = SYM{i}.get(a{i}, UNSET)",
                f"    if {var} is UNSET: {var} = symmiss{i}(a{i})"]

    def _generate(self, plan: _Plan, steps: tuple, rec: bytes) -> _LineFn | None:
        """The line function of this layout: the C module's (tracer/_recline.c) where it is built, else
        the generated Python source (`_compile`): checks that send an uncommon record back to the decoder
        (return None), then one f-string. Both follow one template of the line (_template)."""
        is_open = plan.name in OPEN_FAMILY
        shape = self._shape(plan, steps, rec, opened=is_open)
        if shape is None:
            return None
        ns: dict = {"enc": _enc, "UNVERIFIED": _UNVERIFIED, **_FRAGS,
                    "HEAD": f'{{"kind":"syscall","syscall":{_enc(plan.name)},"event":{_enc(plan.event)},"ts":'}
        body: list[str] = []
        args, reads, syms = [], [], []
        for i, aname, kind, symf in shape.args:
            k = ns[f"K{i}"] = _enc(aname) + ":"
            if kind is not None:
                if kind == RK_STR:
                    body += ["    try:", f"        v{i} = enc(raw{i}.decode('utf-8'))",
                             "    except UnicodeDecodeError:", "        return None"]  # kept with `hex`
                    size = []
                else:
                    body.append(f"    z{i} = f'{{SIZE}}{{want{i}}}' if want{i} else ''")
                    size = [Var(f"z{i}")]
                body += [f"    t{i} = VERIFIED if exit_status{i} != {RS_NONE} else UNVERIFIED[noreturn]",
                         f"    l{i} = len(raw{i})"]
                args.append([Var(f"K{i}"), Var(f"v{i}")])
                reads.append((i, [Var(f"K{i}"), _READ_HEAD, Var(f"r{i}"), ',"len":', Var(f"l{i}"), *size,
                                  Var(f"t{i}")]))
                continue
            args.append([Var(f"K{i}"), Var(f"a{i}")])
            if symf is not None:
                body += self._symbol(ns, i, symf, f"s{i}",
                                     lambda a, sym, k=k: None if sym is None else k + _enc(sym))  # type: ignore[misc]
                syms.append(f"s{i}")
        if len(syms) == 1:
            body.append(f"    sy = '' if {syms[0]} is None else ARGS_STR + {syms[0]} + '}}'")
        elif syms:
            body += [f"    sy = ','.join(filter(None, ({', '.join(syms)},)))",
                     "    sy = ARGS_STR + sy + '}' if sy else ''"]
        else:
            body.append("    sy = ''")
        body += ["    if noreturn:",
                 "        mid = ''",
                 "        rf = NORET_RF",
                 "    else:",
                 "        mid = f'{MID0}{te}{MID1}{te - ts}'",
                 "        rf = RETS.get(ret) or ret_frag(ret)"]
        ret = [f"    rc = RC if flags & {RF_EXIT_READS} else ''", "    us = str(ns // 1000).zfill(6)"]
        tmpl = _template(args, [r for _i, r in reads], [])
        if is_open:  # a successful call's line: its filename's entry and `opened` as the reference makes them
            made, fi = self._opened_source(ns, plan, shape, self._opened_frag)
            ok = [[Var(f"K{i}"), Var("o[0]"), Var(f"r{i}"), Var("o[1]")] if i == fi else r for i, r in reads]
            ret += ["    if not noreturn and ret >= 0:", *made,
                    "        return key, o[3], " + _fstring(_template(args, ok, [',"opened":', Var("o[2]")]))]
        ret.append("    return key, GROUP, " + _fstring(tmpl))
        fn = self._compile(ns, shape, plan, body, ret)
        return recline.c_line(self._c_spec(ns, shape, tmpl, fn, is_open)) or fn

    def _c_spec(self, ns: dict, shape: _Shape, tmpl: list, fn: _LineFn, is_open: bool) -> dict:
        """What the C line function of a layout follows (tracer/_recline.c's Line): the template, its
        values named as the C code names them, the memos and miss functions the generated function uses,
        `fn` for the records the C code leaves to it."""
        kinds = {i: kind for i, _a, kind, _s in shape.args}

        def item(v: object) -> object:  # a Var of the generated code as the C code's (name, argument)
            if not isinstance(v, Var):
                return v
            base, i = v.name.rstrip("0123456789"), int(v.name[len(v.name.rstrip("0123456789")):] or 0)
            if base in ("HEAD", "K"):
                return ns[v.name]
            if base == "v":
                return ("str" if kinds[i] == RK_STR else "val", i)
            return ({"a": "arg", "r": "addr", "l": "len", "z": "size", "t": "verif"}.get(base, base), i)

        return {**{k: ns[k] for k in ("COMMS", "comm_frag", "RETS", "ret_frag", "VALUES", "value_frag", "CLOCK",
                                      "when", "GROUP", *_FRAGS)},
                "pyfn": fn, "open": is_open, "offset": int(self.offset), "template": [item(p) for p in tmpl],
                "reads": [(i, j, kinds[i]) for i, j in shape.slots.items()],
                "ints": [(i, _CONV_NAMES[c], ns.get(f"SYM{i}"), ns.get(f"symmiss{i}")) for i, c in shape.convs.items()]}

    def _opened_frag(self, plan: _Plan, names: tuple, raw: bytes | None, verified: bool, fl: object, want: int,
                     kraw: bytes | None) -> tuple:
        """(the filename entry's JSON before its address, after it, `opened`'s JSON, the statistics key) of
        a successful open, made by the reference code (_opened_event, json_dumps)."""
        ev, group = self._opened_event(plan, names, raw, verified, fl, want, kraw, _ADDR_MARK)
        head, tail = "", ""
        if raw is not None:  # the address comes before any text of the entry: the first match is it
            head, tail = json_dumps(ev["reads"]["filename"]).split(str(_ADDR_MARK), 1)
        return head, tail, json_dumps(ev["opened"]), group


def _template(args: list[list], reads: list[list], opened: list) -> list:
    """A line (literal fragments and Vars, in order) from the templates of its arguments and reads, and
    a successful open's `opened`."""
    return [Var("HEAD"), Var("ts"), ',"cpu":', Var("cpu"), ',"pid":', Var("pid"), ',"tid":', Var("tid"), ',"comm":',
            Var("comm"), ',"uid":', Var("uid"), Var("mid"), ',"args":{', *_sep(args), "}", Var("sy"), Var("rf"),
            ',"reads":{', *_sep(reads), '},"missing":[]', Var("rc"), *opened, ',"time":"', Var("day"), ".",
            Var("us"), 'Z"}']
