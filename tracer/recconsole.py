"""Console lines straight from the record (bpf/record.h's sys_record): the default `tracer trace` view's hot
path, as tracer/recjson.py is --json's.

Decoding a record into its event dicts and laying the line out from them (output.ConsoleOutput.call_segments)
cost ~8 of the ~12 µs per event of the console consumer. For records of recjson's common shape (every read
slot read its argument whole at entry, as a string, an open_how or a sockaddr, and was either not re-read or
read the same at exit; not a successful open-family call; no symbol that depends on another argument; not
a sleepable reader's record), `ConsoleLineEncoder` makes the line with a function generated once per
(syscall, read-slot layout): one unpack, then one f-string whose constant fragments (argument names, the
syscall's name, already wrapped in their colours' codes) and memoised values (comm, symbols, return values,
strings, open_how and sockaddr values, the time of day per second) were rendered by ConsoleOutput's own
code. Other records are decoded and laid out as before. The bytes are the same either way: those of
ConsoleOutput's rendering of the decoded event (tests/test_recconsole.py compares them for every entry x
exit read status, every colour system, unusual comms and paths). Process-controlled text goes through
escape.escape_text exactly as there; only integers are written into the generated source.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .decode import _MEMO_MAX, RK_STR, RS_NONE, Decoder, _Plan, ret_str, text
from .escape import escape_text
from .recjson import LineEncoder, _LineFn, _Shape
from .syscalls import OPEN_FAMILY

if TYPE_CHECKING:
    from .output import ConsoleOutput


class ConsoleLineEncoder(LineEncoder):
    """Console lines of one Decoder's records, as `out` (a ConsoleOutput) renders them: its clock, colour
    system and -T. A Line's text is (start ts, end ts, the line): ConsoleOutput.events adds the
    marker of a call that began before lines printed above it (summary.Overlap)."""

    def __init__(self, decoder: Decoder, out: ConsoleOutput) -> None:
        super().__init__(decoder, out.mono_to_wall)
        self.out = out
        self.durations = out.durations
        self._strs: dict[bytes, str] = {}

    def _style(self, text: str, style: str | None) -> str:
        return self.out.render([(text, style)])

    def _when(self, sec: int) -> str:
        """The time of day of `sec` (local), as ConsoleOutput._time makes it, with its colour code."""
        self._clock[0] = sec
        self._clock[1] = f"{self.out.wrap('dim')[0]}{time.strftime('%H:%M:%S', time.localtime(sec))}."
        return self._clock[1]

    # -- the fragments of repeated values, as ConsoleOutput renders them -------------------------------------
    def _ret_text(self, ret: int) -> str:
        return self.out.render(self.out.ret_segments(ret, ret_str(ret)))

    def _comm_text(self, comm: str) -> str:
        return self._style(escape_text(comm), "bold")

    def _value_text(self, val: object, want: int) -> str:
        return self.out.value(val, isinstance(val, str) and bool(want))  # `size` in the read: its hex bytes

    def _str(self, raw: bytes) -> str:
        shown = self.out.value(text(raw))
        if len(self._strs) < _MEMO_MAX:
            self._strs[raw] = shown
        return shown

    def _opened_code(self, ns: dict, plan: _Plan, shape: _Shape) -> list[str]:
        """Source for an open-family layout: a successful call's ` -> opened ...` (`op`), and its filename's
        rendering and statistics key (`group`) as the opened file leaves them (LineEncoder._opened_source)."""
        made, fi = self._opened_source(ns, plan, shape, self._opened_frag)
        body = ["    group = GROUP",
                "    op = ''",
                "    if not noreturn and ret >= 0:", *made,
                "        op, group = o[0], o[1]"]
        if fi is not None:
            body += [f"        if o[2] is not None: v{fi}, u{fi} = o[2], ''"]
        return body

    def _opened_frag(self, plan: _Plan, names: tuple, raw: bytes | None, verified: bool, fl: object, want: int,
                     kraw: bytes | None) -> tuple:
        """(` -> opened ...`, the statistics key, the filename's rendering or None) of a successful open,
        made by the reference code (LineEncoder._opened_event, ConsoleOutput's segments)."""
        ev, group = self._opened_event(plan, names, raw, verified, fl, want, kraw, 0)
        args, reads = ev["args"], ev["reads"]
        shown = self.out.render(self.out.read_segments(args["filename"], reads["filename"])) if reads else None
        return self.out.render(self.out.opened_segments(ev["opened"])), group, shown

    def _generate(self, plan: _Plan, steps: tuple, rec: bytes) -> _LineFn | None:
        """The source of `line(rec, cpu)` for this layout (LineEncoder._compile): checks that send an
        uncommon record back to the decoder (return None), then one f-string."""
        is_open = plan.name in OPEN_FAMILY
        shape = self._shape(plan, steps, rec, opened=is_open)
        if shape is None:
            return None
        dim_on, dim_off = self.out.wrap("dim")
        ns: dict = {"STRS": self._strs, "str_frag": self._str, "DIM_OFF": dim_off, "PID_ON": f"{dim_on}[",
                    "PID_OFF": f"] {dim_off}", "DUR_ON": f"{dim_on} <", "DUR_OFF": f">{dim_off}",
                    "NAME": self._style(plan.name, "bold cyan") + "(", "CLOSE": ")",
                    "NORET": self.out.render(self.out.ret_segments(None, None)),
                    "UNV": self._style(" [unverified]", "yellow")}
        body: list[str] = []
        shown = []
        for n, (i, aname, kind, symf) in enumerate(shape.args):
            ns[f"K{i}"] = (", " if n else "") + self._style(f"{aname}=", "dim")
            if kind is not None:
                if kind == RK_STR:
                    body.append(f"    v{i} = STRS.get(raw{i}) or str_frag(raw{i})")
                # verified at exit (re-read, the same), or not: said after the value (ConsoleOutput)
                body.append(f"    u{i} = '' if exit_status{i} != {RS_NONE} else UNV")
                shown.append(f"{{K{i}}}{{v{i}}}{{u{i}}}")
                continue
            number = f"(hex(a{i}) if a{i} > 65535 else str(a{i}))"  # as ConsoleOutput shows an integer
            if symf is None:
                body.append(f"    v{i} = {number}")
            else:
                body += self._symbol(ns, i, symf, f"v{i}", _shown)
            shown.append(f"{{K{i}}}{{v{i}}}")
        group, op = "GROUP", ""
        if is_open:
            body += self._opened_code(ns, plan, shape)
            group, op = "group", " + op"
        dur = " + f'{DUR_ON}{(te - ts) / 1e9:.6f}{DUR_OFF}'" if self.durations else ""
        body.append(f"    tail = NORET if noreturn else (RETS.get(ret) or ret_frag(ret)){op}{dur}")
        ret = [f"    return key, {group}, (ts, key, "
               "f'{day}{ns // 1000:06d}{DIM_OFF} {comm}{PID_ON}{pid}/{tid}{PID_OFF}'",
               "                        f'{NAME}" + "".join(shown) + "{CLOSE}{tail}')"]
        return self._compile(ns, shape, plan, body, ret)


def _shown(a: int, sym: object) -> object:
    """An integer argument as ConsoleOutput shows it: its symbol, else the number (hex above 65535)."""
    return (hex(a) if a > 65535 else str(a)) if sym is None else sym
