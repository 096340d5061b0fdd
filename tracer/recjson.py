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

import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _enc  # json's escaper: json.dumps's bytes (ensure_ascii)

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
from .events import UNVERIFIED, VERIFIED_EQUAL, order_ts
from .jsonenc import json_dumps
from .syscalls import OPEN_FAMILY

_UNSET = object()
_SLOT = 14  # fields per read slot in the unpacked header (decode._HDRS): arg, kind, es, xs, eerr, xerr, eoff,
_SLOTS_AT = 19  # elen, xoff, xlen, same, src, pad, want; the first slot's index
_READ_HEAD = '{"status":"ok","source":"enter","errno":null,"addr":'
_VERIFIED = f',"verified_at_exit":true,"verified":true,"verified_by":{_enc(VERIFIED_EQUAL)}}}'
_UNVERIFIED = {0: f',"verified":false,"unverified_reason":{_enc(UNVERIFIED["no_exit"])}}}',
               RF_NORETURN: f',"verified":false,"unverified_reason":{_enc(UNVERIFIED["noreturn"])}}}'}

# Decoder's integer conversions (decode.int_value) as the lines `var = <expression>` of generated code,
# given the variable and the expression of the raw 64-bit value.
CONVERSIONS: dict[int, Callable[[str, str], list[str]]] = {
    _CONV_NONE: lambda v, raw: [raw],
    _CONV_S32: lambda v, raw: [f"{raw} & 0xFFFFFFFF", f"{v} - 0x100000000 if {v} & 0x80000000 else {v}"],
    _CONV_U32: lambda v, raw: [f"{raw} & 0xFFFFFFFF"],
    _CONV_U16: lambda v, raw: [f"{raw} & 0xFFFF"],
    _CONV_S64: lambda v, raw: [f"{raw} - 0x10000000000000000 if {raw} & 0x8000000000000000 else {raw}"]}

# One event as its JSON line: (events.order_ts of the event, events.Stats.add_many's grouping key of the
# event, the line without its newline). A plain tuple: a NamedTuple's constructor costs ~0.2 µs more.
Line = tuple
# (record, unpacked header, cpu, '<time>"}') -> its Line, or None: decode the record instead
_LineFn = Callable[[bytes, tuple, int, str], "tuple[int, tuple, str] | None"]


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
        self._sec = -1
        self._prefix = ""

    def encode(self, samples: list[bytes], cpu: int) -> list[tuple | dict]:
        """Each record of one ring as its Line, or as its decoded event dict where it is not of the
        common shape (see the module's docstring)."""
        decode = self.decoder.decode
        layouts = self._layouts
        offset, last, prefix = self.offset, self._sec, self._prefix
        out: list[tuple | dict] = []
        append = out.append
        for rec in samples:
            n = rec[6]  # sys_record.nreads
            if n > MAX_READS or len(rec) < _HDRS[n].size or rec[7] & RF_SLEEPABLE:
                append(decode(rec, cpu))
                continue
            h = _HDRS[n].unpack_from(rec)
            pkey = (h[2], h[_SLOTS_AT:_SLOTS_AT + _SLOT * n:_SLOT]) if n else h[2]
            try:
                fn = layouts[pkey]
            except KeyError:
                fn = self._layout(pkey, h)
            if fn is not None:
                sec, ns = divmod(h[9] + offset, 1_000_000_000)
                if sec != last:
                    last, prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
                line = fn(rec, h, cpu, f'{prefix}.{ns // 1000:06d}Z"}}')
                if line is not None:
                    append(line)
                    continue
            append(decode(rec, cpu))
        self._sec, self._prefix = last, prefix
        return out

    # -- memos the generated functions call on a miss ----------------------------------------------------
    def _ret(self, ret: int) -> str:
        frag = f',"ret":{ret},"ret_str":{_enc(ret_str(ret))}'
        if len(self._rets) < _MEMO_MAX:
            self._rets[ret] = frag
        return frag

    def _comm(self, raw: bytes) -> str:
        if len(self._comms) >= _MEMO_MAX:
            self._comms.clear()
        comm = self._comms[raw] = _enc(text(raw.split(b"\0", 1)[0]))
        return comm

    def _value(self, kind: int, raw: bytes, want: int) -> str:
        val = json_dumps(self.decoder.value(kind, raw, want))
        if len(self._values) < _MEMO_MAX:
            self._values[(kind, raw, want)] = val
        return val

    def _layout(self, pkey: object, h: tuple) -> _LineFn | None:
        """The line function of one (syscall, read slots) layout, for records whose slots read the kinds
        this first record's did; None: its records are always decoded."""
        nr, slot_args = pkey if isinstance(pkey, tuple) else (pkey, ())
        plan, steps = self.decoder.steps_for(nr, slot_args)
        lay = None
        if not plan.context:
            lay = self._generate(plan, steps, h)
        if len(self._layouts) < _MEMO_MAX:
            self._layouts[pkey] = lay
        return lay

    def _generate(self, plan: _Plan, steps: tuple, h: tuple) -> _LineFn | None:
        ns: dict = {"RETS": self._rets, "ret_frag": self._ret, "COMMS": self._comms, "comm_frag": self._comm,
                    "VALUES": self._values, "value_frag": self._value, "enc": _enc, "UNSET": _UNSET,
                    "VERIFIED": _VERIFIED, "UNVERIFIED": _UNVERIFIED,
                    "HEAD": f'{{"kind":"syscall","syscall":{_enc(plan.name)},"event":{_enc(plan.event)},"ts":'}
        body = ["    flags = h[4]", f"    noreturn = flags & {RF_NORETURN}"]
        if plan.name in OPEN_FAMILY:  # a successful call carries `opened`: decoded the reference way
            body.append("    if not noreturn and h[11] >= 0: return None")
        args, reads, syms, names = [], [], [], []
        for i, aname, conv, _memo, symf, k in steps:
            ns[f"K{i}"] = _enc(aname) + ":"
            if k:
                kind = h[k + 1]
                if kind not in (RK_STR, RK_OPEN_HOW, RK_SOCKADDR):
                    return None
                names.append(aname)
                body += [f"    xs = h[{k + 3}]",
                         f"    if h[{k + 2}] != {RS_OK} or h[{k + 1}] != {kind} or (xs != {RS_NONE} and not "
                         f"(h[{k + 10}] and (xs == {RS_OK} or xs == {RS_TRUNC}))): return None",
                         f"    start = {_DATA_OFF} + h[{k + 6}]",
                         f"    raw = rec[start:start + h[{k + 7}]]"]
                if kind == RK_STR:
                    body += ["    try:", f"        v{i} = enc(raw.decode('utf-8'))",
                             "    except UnicodeDecodeError:", "        return None"]  # kept with `hex`
                    size = ""
                else:
                    want = f"h[{k + 13}]"
                    body += [f"    v{i} = VALUES.get(({kind}, raw, {want})) or value_frag({kind}, raw, {want})",
                             f"    z{i} = f',\"size\":{{{want}}}' if {want} else ''"]
                    size = f"{{z{i}}}"
                body.append(f"    t{i} = VERIFIED if xs != {RS_NONE} else UNVERIFIED[noreturn]")
                args.append(f"{{K{i}}}{{v{i}}}")
                reads.append(f'{{K{i}}}{{{{"status":"ok","source":"enter","errno":null,"addr":{{h[{12 + i}]}},'
                             f'"len":{{l{i}}}{size}{{t{i}}}')
                body.append(f"    l{i} = len(raw)")
                continue
            body += [f"    a{i} = {line}" for line in CONVERSIONS[conv](f"a{i}", f"h[{12 + i}]")]
            args.append(f"{{K{i}}}{{a{i}}}")
            if symf is not None:
                ns[f"SYM{i}"] = {}
                ns[f"symf{i}"] = symf
                body += [f"    s{i} = SYM{i}.get(a{i}, UNSET)",
                         f"    if s{i} is UNSET:",
                         f"        s{i} = symf{i}(a{i})",
                         f"        s{i} = None if s{i} is None else K{i} + enc(s{i})",
                         f"        if len(SYM{i}) < {_MEMO_MAX}: SYM{i}[a{i}] = s{i}"]
                syms.append(f"s{i}")
        if len(syms) == 1:
            body.append(f"    sy = '' if {syms[0]} is None else ',\"args_str\":{{' + {syms[0]} + '}}'")
        elif syms:
            body += [f"    sy = ','.join(filter(None, ({', '.join(syms)},)))",
                     "    sy = ',\"args_str\":{' + sy + '}' if sy else ''"]
        else:
            body.append("    sy = ''")
        body += ["    if noreturn:",
                 "        key = h[9]",
                 "        mid = ''",
                 "        rf = ',\"ret\":null,\"ret_str\":null'",
                 "    else:",
                 "        key = h[10] or h[9]",
                 "        mid = f',\"ts_exit\":{h[10]},\"duration_ns\":{h[10] - h[9]}'",
                 "        rf = RETS.get(h[11]) or ret_frag(h[11])",
                 "    comm = COMMS.get(h[18]) or comm_frag(h[18])",
                 f"    rc = ',\"recovery\":true' if flags & {RF_EXIT_READS} else ''",
                 "    return key, GROUP, (f'{HEAD}{h[9]},\"cpu\":{cpu},\"pid\":{h[5]},\"tid\":{h[6]},\"comm\":{comm},'",
                 "            f'\"uid\":{h[7]}'",
                 "            f'{mid},\"args\":{{" + ",".join(args) + "}}{sy}{rf},\"reads\":{{" + ",".join(reads)
                 + "}},\"missing\":[]{rc},\"time\":\"{when}')"]
        names_t = tuple(names)
        ns["GROUP"] = ("syscall", "ok", plan.event, plan.name if names_t else None, names_t, ("ok",) * len(names_t))
        src = "def line(rec, h, cpu, when):\n" + "\n".join(body) + "\n"
        exec(compile(src, f"<recjson {plan.name}>", "exec"), ns)  # only integers are written into src
        return ns["line"]
