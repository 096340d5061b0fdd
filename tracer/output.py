"""Outputs: the rich console view and JSON Lines. Process-controlled text is escaped (tracer.escape)
and placed in rich Text objects, never interpreted as markup."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, cast

from rich.console import Console
from rich.text import Text

from .accounting import SHOWN, UNSPECIFIED
from .escape import escape_text
from .jsonenc import dumps
from .openat2 import mode_str

if TYPE_CHECKING:
    from .decode import Decoder
    from .recconsole import ConsoleLineEncoder

Segments = list[tuple[str, str | None]]  # one line as (text, style) pieces
STATUS_STYLE = {"missing": "bold red", "recovered": "yellow", "changed": "bold magenta",
                "truncated": "cyan", "null": "dim"}


def _describe_region(region: dict | None) -> str:
    if not region:
        return ""
    from .regions import describe

    return describe(region)



WRITE_BUFFER = 1 << 20
# Lines joined into one write call by write_lines, each write at most a quarter of the buffer in characters
# (so within it in bytes, whatever their encoding): a write call per line cost ~0.1 µs per JSON line and
# ~0.4 µs per console line.
WRITE_LINES, _CHUNK_MAX = 256, WRITE_BUFFER // 4
_UNKNOWN = object()


def fd_writer(stream: IO[str]) -> IO[str] | None:
    """A writer of its own with a WRITE_BUFFER buffer on `stream`'s file descriptor, in its encoding (None:
    it has none, a StringIO). A batch of lines goes through it in writes smaller than its buffer, flushed
    once: one big write() garbles output when a signal (Ctrl-C, SIGTERM) interrupts it part way (CPython
    3.11's BufferedWriter, on a write larger than its buffer; reproduced: a line cut, the lines after it
    lost, at each Ctrl-C into a full pipe)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
    return open(fd, "w", buffering=WRITE_BUFFER, closefd=False,
                encoding=getattr(stream, "encoding", None) or "utf-8",
                errors=getattr(stream, "errors", None) or "strict")


def write_lines(big: IO[str], lines: list[str]) -> None:
    """Lines (without their newlines) through an fd_writer, flushed: joined WRITE_LINES at a time into one
    write, never one larger than _CHUNK_MAX (a chunk of long lines goes line by line)."""
    for k in range(0, len(lines), WRITE_LINES):
        chunk = lines[k:k + WRITE_LINES]
        if sum(map(len, chunk)) + len(chunk) <= _CHUNK_MAX:  # joined in C: no per-line copy or write call
            big.write("\n".join(chunk))
            big.write("\n")
        else:
            big.writelines([line + "\n" for line in chunk])
    big.flush()  # nothing is left behind in it: closing the stream still ends the output whole


class JsonOutput:
    """JSON Lines. With `batched`, events are flushed only by `flush()` (called once per drain batch by
    the CLI through Session.batch_done), not one write(2) per event; everything else flushes at once."""

    def __init__(self, stream: IO[str] | None = None, batched: bool = False,
                 header: Callable[[], dict] | None = None) -> None:
        """`header`: makes the stream's first line (tracer.contract.stream_header), called when the first
        line is written (a session's clock is final once it has started)."""
        self.stream = stream or sys.stdout
        self.batched = batched
        self.header = header
        self._big_writer: object = _UNKNOWN

    def _begin(self) -> None:
        header, self.header = self.header, None
        if header is not None:
            self.stream.write(dumps(header()) + "\n")

    def write(self, obj: dict) -> None:
        # ensure_ascii: every control or non-ASCII character becomes a \u escape, one record per line.
        if self.header is not None:
            self._begin()
        self.stream.write(dumps(obj) + "\n")
        self.stream.flush()

    def event(self, obj: dict) -> None:
        if self.header is not None:
            self._begin()
        self.stream.write(dumps(obj) + "\n")
        if not self.batched:
            self.stream.flush()

    def events(self, objs: list) -> None:
        """Events and lost-record notices of one drain batch, in order: dicts, or lines already encoded
        (str: Session.batches(lines=True)). Batched, to a stream with a file descriptor, they go through a
        writer of its own with a WRITE_BUFFER buffer, flushed before returning: the stream's 8 KiB buffer
        made a write(2) per ~9 lines, ~10% of the consumer's CPU at 200k events/s. Lines are joined in
        chunks (write_lines: one write call per chunk, not per line: ~0.1 µs per line less), never into a
        write larger than a quarter of the buffer: CPython 3.11's BufferedWriter garbles a write larger than its
        buffer when a signal (Ctrl-C, SIGTERM) interrupts it part way (reproduced here, ~1 line in 7,000)."""
        if not objs:
            return
        if self.header is not None:
            self._begin()
        texts = [obj if type(obj) is str else dumps(obj) for obj in objs]
        big = self._big() if self.batched else None
        if big is None:
            self.stream.writelines([t + "\n" for t in texts])
            if not self.batched:
                self.stream.flush()
            return
        self.stream.flush()  # what went through the stream (the header, a notice) comes first
        write_lines(big, texts)

    def _big(self) -> IO[str] | None:
        """The large-buffer writer on the stream's file descriptor (None: it has none, a StringIO)."""
        if self._big_writer is _UNKNOWN:
            self._big_writer = fd_writer(self.stream)
        return self._big_writer  # type: ignore[return-value]

    def flush(self) -> None:
        self.stream.flush()

    lost = summary = notice = write


class _AnsiStyles:
    """Segments wrapped in each style's SGR codes, as rich renders a styled Text for `color_system`."""

    def __init__(self, color_system: str) -> None:
        from rich.color import ColorSystem
        from rich.style import Style

        system = {"standard": ColorSystem.STANDARD, "256": ColorSystem.EIGHT_BIT,
                  "truecolor": ColorSystem.TRUECOLOR, "windows": ColorSystem.WINDOWS}[color_system]
        self._parse: Callable[[str], str] = lambda style: Style.parse(style)._make_ansi_codes(system)
        self._codes: dict[str, str] = {}

    def join(self, segs: list[tuple[str, str | None]]) -> str:
        codes = self._codes
        out = []
        for text, style in segs:
            if not style or not text:
                out.append(text)
                continue
            sgr = codes.get(style)
            if sgr is None:
                sgr = codes[style] = self._parse(style)
            out.append(f"\x1b[{sgr}m{text}\x1b[0m" if sgr else text)
        return "".join(out)

    def wrap(self, style: str) -> tuple[str, str]:
        """The codes before and after a (non-empty) text in `style`."""
        sgr = self._codes.get(style)
        if sgr is None:
            sgr = self._codes[style] = self._parse(style)
        return (f"\x1b[{sgr}m", "\x1b[0m") if sgr else ("", "")


class ConsoleOutput:
    """strace-like lines. A drain batch is rendered to one string and written at once (`events`): rich's
    Console.print per line cost ~80 µs per event. Lines are laid out as (text, style) segments, joined
    plain for a pipe or file, wrapped in the style's ANSI codes (as rich renders them) for a terminal;
    every process-controlled string in them has been through escape_text, so they hold no escapes of
    their own. `line()` gives the same segments as rich Text (alerts, tests)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.mono_to_wall = time.time_ns() - time.monotonic_ns()
        self._sec = -1
        self._hms = ""
        system = self.console.color_system if not self.console.no_color else None
        self._ansi = _AnsiStyles(system) if system else None
        self.durations = False  # -T: time spent in each call, `<0.000123>` as strace -T
        self._writer: tuple[object, IO[str] | None] = (None, None)  # (the console's file, its fd_writer)
        # Calls printed after lines of calls made while they ran (blocking calls) get a marker
        # (tracer/summary.py Overlap); None: no markers.
        from .summary import Overlap

        self.overlap: Overlap | None = Overlap()

    def _time(self, ts: int) -> str:
        sec, ns = divmod(ts + self.mono_to_wall, 1_000_000_000)
        if sec != self._sec:  # strftime once per second of events, not per event
            self._sec, self._hms = sec, time.strftime("%H:%M:%S", time.localtime(sec))
        return f"{self._hms}.{ns // 1000:06d}"

    def value(self, val: object, is_hex: bool = False) -> str:
        if val is None:
            return "NULL"
        if is_hex and isinstance(val, str):  # a buffer's bytes, as hex: not to be taken for a string
            return f"<hex {val}>"
        if isinstance(val, str):
            return f'"{escape_text(val)}"'
        if isinstance(val, dict):
            return self.struct(val)
        return str(val)

    def struct(self, d: dict) -> str:
        if "flags_str" in d:  # open_how
            s = f"{{flags={d['flags_str']}, mode={mode_str(d['mode'])}, resolve={d['resolve_str']}"
            if "ext" in d:
                s += f", ext=0x{d['ext']}" + ("…" if d.get("ext_truncated") else "")
            return s + "}"
        if "family" in d:  # sockaddr
            fam = d["family"]
            if "port" in d:
                return f"{{{fam}, {escape_text(d['addr'])}, port={d['port']}}}"
            if "path" in d:
                at = "@" if d.get("abstract") else ""
                return f'{{{fam}, "{at}{escape_text(d["path"])}"}}'
            return f"{{{fam}, {d.get('raw', '')}}}"
        if "signals" in d and "mask" in d:  # a sigset_t
            from .symbols import sigset_str

            return sigset_str(d)
        if "sa_handler" in d and "sa_flags_str" in d:  # rt_sigaction's struct sigaction
            from .symbols import sigaction_str

            return sigaction_str(d)
        if "exit_signal" in d and "flags_str" in d:  # clone3's struct clone_args: as strace shows it
            parts = [f"flags={d['flags_str']}", f"exit_signal={d.get('exit_signal_str') or d['exit_signal']}"]
            parts += [f"{k}={v:#x}" for k, v in d.items()
                      if isinstance(v, int) and v and k not in ("flags", "exit_signal")]
            return "{" + ", ".join(parts) + "}"
        return "{" + ", ".join(f"{k}={escape_text(str(v))}" for k, v in d.items()) + "}"

    def event(self, ev: dict) -> None:
        self.events((ev,))

    def events(self, evs: Iterable[dict | tuple[int, int, str]]) -> None:
        """The events and lost-record notices of one drain batch, in order, in one write: each kind laid
        out by its own renderer (`renderer`); or lines already made from their records (`line_encoder`:
        (start ts, end ts, line), given to Session.batches(lines=...))."""
        render, overlap = self.render, self.overlap
        out = []
        for ev in evs:
            if isinstance(ev, tuple):
                start, end, line = ev
                n = overlap.add_span(start, end) if overlap is not None else 0
                out.append(line + render([self._resumed_segment(n)]) if n else line)
            else:
                out.append(render(self.renderer(ev.get("kind"))(ev)))
        self._write(out)

    def line_encoder(self, decoder: Decoder) -> ConsoleLineEncoder:
        """What makes this console's lines straight from the records of `decoder` (tracer/recconsole.py),
        for Session.batches(lines=...)."""
        from .recconsole import ConsoleLineEncoder

        return ConsoleLineEncoder(decoder, self)

    def renderer(self, kind: object) -> Callable[[dict], Segments]:
        """The line layout of one kind of event (tracer/events.py KINDS); an unknown kind is shown as its
        JSON, dimmed: a new kind can never break the lines of the others."""
        if kind == "syscall" or kind is None:
            return self._syscall
        if kind == "uprobe":
            return self._uprobe
        if kind == "user_event":
            return self._user_event
        if kind == "lost":
            return self._lost
        return self._unknown

    def _syscall(self, ev: dict) -> Segments:
        return self._resumed(ev, self.call_segments(ev, ev["syscall"]))

    def _uprobe(self, ev: dict) -> Segments:
        return self._resumed(ev, self.call_segments(ev, ev["function"]))

    def _resumed(self, ev: dict, segs: Segments) -> Segments:
        """A call that began before lines already printed says so (blocking calls: summary.Overlap)."""
        if self.overlap is not None:
            n = self.overlap.add(ev)
            if n:
                segs.append(self._resumed_segment(n))
        return segs

    @staticmethod
    def _resumed_segment(n: int) -> tuple[str, str]:
        return f"  <... resumed: began before the {'line' if n == 1 else f'{n} lines'} above>", "yellow"

    def _user_event(self, ev: dict) -> Segments:
        from .user_events.render import user_event_segments  # its own layout, beside its decoder

        return user_event_segments(ev, self._time)

    @staticmethod
    def _unknown(ev: dict) -> Segments:
        return [(escape_text(dumps(ev)), "dim")]

    def _write(self, lines: list[str]) -> None:
        """One batch's lines, through fd_writer where the console's file has a descriptor (then flushed)."""
        if not lines:
            return
        f = self.console.file
        if self._writer[0] is not f:  # the console's file can change (rich's default one is sys.stdout)
            self._writer = (f, fd_writer(f))
        big = self._writer[1]
        if big is None:
            f.write("\n".join(lines) + "\n")
            f.flush()
            return
        f.flush()  # what went through the file itself (a notice) comes first
        write_lines(big, lines)

    def render(self, segs: Segments) -> str:
        """Segments as the console writes them: plain, or each in its style's ANSI codes."""
        if self._ansi is None:
            return "".join([text for text, _ in segs])
        return self._ansi.join(segs)

    def wrap(self, style: str) -> tuple[str, str]:
        """The codes `render` puts before and after a non-empty text in `style` ("" without colours)."""
        return ("", "") if self._ansi is None else self._ansi.wrap(style)

    def line(self, ev: dict) -> Text:
        """One syscall or uprobe event as one line of rich Text."""
        return Text.assemble(*((text, style or "") for text, style in self.segments(ev)))

    def segments(self, ev: dict) -> Segments:
        """One syscall or uprobe event as (text, style) segments of one line."""
        return self.call_segments(ev, ev["function"] if ev.get("kind") == "uprobe" else ev["syscall"])

    def call_segments(self, ev: dict, name: str) -> Segments:
        """A call (a syscall, or a function through a uprobe) named `name`: time, thread, arguments with
        their read outcomes, return value."""
        t: Segments = []
        a = t.append
        a((self._time(ev["ts"]), "dim"))
        a((" ", None))
        a((escape_text(ev["comm"]), "bold"))
        a((f"[{ev['pid']}/{ev['tid']}] ", "dim"))
        a((name, "bold cyan"))
        a(("(", None))
        reads = ev.get("reads", {})
        syms = ev.get("args_str", {})
        first = True
        for name, val in ev["args"].items():
            if not first:
                a((", ", None))
            first = False
            a((f"{name}=", "dim"))
            info = reads.get(name)
            if info is None:
                if name in syms:
                    a((syms[name], None))
                elif isinstance(val, int) and val > 0xFFFF and name not in syms:
                    a((hex(val), None))
                else:
                    a((self.value(val), None))
                continue
            t += self.read_segments(val, info)
        a((")", None))
        t += self.ret_segments(ev["ret"], ev["ret_str"])
        op = ev.get("opened")
        if op is not None:
            t += self.opened_segments(op)
        if self.durations and ev.get("duration_ns") is not None:
            a((f" <{ev['duration_ns'] / 1e9:.6f}>", "dim"))
        if ev.get("missing"):
            a(("  ! unreadable: " + ", ".join(ev["missing"]), "bold red"))
        return t

    def read_segments(self, val: object, info: dict) -> Segments:
        """An argument read from user memory: its value (or why there is none) and its read's outcome."""
        st = info["status"]
        if st == "missing":
            err = info.get("errno")
            what = f"<missing: errno {err}" if err else "<missing"
            where = _describe_region(info.get("region"))
            style = STATUS_STYLE[st]  # three segments, each in its codes, as before
            return [(f"{what} at {info['addr']:#x}", style), *([(f" in {escape_text(where)}", style)] if where else []),
                    (">", style)]
        is_hex = isinstance(val, str) and "size" in info  # uprobe buf[N]: hex of its bytes
        t: Segments = [(self.value(val, is_hex), None)]
        if st == "recovered":
            where = _describe_region(info.get("region"))
            proof = ("verified: names the kernel's opened file" if info.get("verified")
                     else "UNVERIFIED: memory after the call, maybe not what the kernel used")
            t.append((f" [recovered at exit, {proof}; entry read failed errno {info['errno']}"
                      + (f", {escape_text(where)}" if where else "") + "]", STATUS_STYLE[st]))
        elif st == "changed":
            seen = []
            if "value_at_exit" in info:
                seen.append(f"at exit: {self.value(info.get('value_at_exit'), is_hex)}")
            if "kernel_path" in info:
                seen.append(f"the kernel opened: {self.value(info['kernel_path'])}")
            t.append((f" [CHANGED during the call; {'; '.join(seen)}]", STATUS_STYLE[st]))
        elif st == "truncated":
            t.append((" [truncated]", STATUS_STYLE[st]))
        if info.get("verified") is False and st in ("ok", "truncated"):
            t.append((" [unverified]", "yellow"))
        return t

    @staticmethod
    def ret_segments(ret: int | None, ret_str: str | None) -> Segments:
        """` = RET` of a call (`ret_str` for an error or a value that fits 32 bits, hex beyond), ` = ?` for
        one that did not return."""
        if ret is None:
            return [(" = ?", "dim")]
        err = -4095 <= ret < 0
        shown = cast(str, ret_str) if err or abs(ret) < 1 << 32 else hex(ret)
        return [(" = ", None), (shown, "red" if err else "green")]

    @staticmethod
    def opened_segments(op: dict) -> Segments:
        """` -> ` the file the kernel opened (tracer/opened.py): its path, or why there is none."""
        if op["status"] == "unavailable":
            return [(" -> ", "dim"), (f"opened <unavailable: {escape_text(str(op['reason']))}>", "yellow")]
        path: tuple[str, str | None]
        if op["status"] == "truncated":
            path = (f'opened "…/{escape_text(op["path"])}" [path cut: {escape_text(str(op["reason"]))}]', "cyan")
        else:
            path = (f'opened "{escape_text(op["path"])}"', None)
        return [(" -> ", "dim"), path, (f" (dev {op['dev']}, ino {op['ino']}, mode {op['mode']})", "dim")]

    def lost(self, ev: dict) -> None:
        self.events((ev,))

    @staticmethod
    def _lost(ev: dict) -> Segments:
        return [(f"!! {lost_text(ev)}", "bold red")]

    def notice(self, obj: dict) -> None:
        self.console.print(Text(str(obj.get("message", "")), "dim"))

    def summary(self, s: dict) -> None:
        c = self.console
        head = Text(f"{s['events']} events, {s['lost']} lost")
        if s["lost"]:
            head.append(f" ({lost_reasons_text(s)})")
        if s.get("filtered"):
            shown = {"failed_only": "not failed", "only_missing": "nothing missing"}
            head.append(", " + ", ".join(f"{n} filtered out ({shown.get(k, k)})" for k, n in s["filtered"].items()))
        c.print(head)
        if not s["by_arg"]:
            return
        from .summary import read_status_rows

        c.print(Text("user-memory reads", "bold"))
        table, rows = read_status_rows(s["by_arg"], c.width)
        for row in rows:  # a table row is never wrapped: it fits
            c.print(Text.assemble(*((text, STATUS_STYLE.get(st, "") if st else "") for text, st in row)),
                    no_wrap=table, soft_wrap=not table)
        share = s["wrong_without_recovery_share"] * 100
        c.print(Text(f"{s['wrong_without_recovery']} of {s['events_with_reads']} events ({share:.1f}%) "
                     "would have shown a wrong or empty value without exit re-reads."))


# --- tracer monitor: alerts ------------------------------------------------------------------------

SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "bold yellow", "low": "cyan",
                  "info": "dim"}


class AlertOutput(ConsoleOutput):
    """`tracer monitor` on the console: one line per alert (severity, rule, description), then the call
    and the path it targets, indented."""

    def alerts(self, ev: dict | None, alerts: list) -> None:
        for a in alerts:
            t = Text()
            t.append(f" {a.severity.upper()} ", SEVERITY_STYLE.get(a.severity, "bold"))
            t.append(" ")
            t.append(a.rule, "bold")
            if a.detail.get("best_effort"):
                t.append(" (best effort)", "dim")
            if a.detail.get("unchecked"):
                t.append(f" (exception not checked: {', '.join(a.detail['unchecked'])}: the process could not be "
                         "identified)", "bold")
            if a.detail.get("matched"):
                t.append(f" (on the {' / '.join(a.detail['matched'])} values)", "dim")
            agg = a.detail.get("aggregate")
            if agg:
                t.append(f" x{agg['count']} more since {agg['first_time']} (same rule, exe and target within "
                         f"{agg['window_s']:g} s; the last below)", "bold")
            t.append("  ")
            t.append(escape_text(a.description))
            self.console.print(t)
        if ev is not None:
            self.console.print(Text("    ").append_text(self.line(ev)))
            self.console.print(self.place(ev))  # (the call line ends with the kernel's opened file)
        ctx = next((a.context for a in alerts if a.context), None)
        if ctx is not None:
            self.console.print(context_line(ctx))

    def place(self, ev: dict) -> Text:
        t = Text("    target ", "dim")
        tgt = ev.get("target") or {}
        if tgt.get("path") is None:
            t.append(f"unknown ({escape_text(str(tgt.get('unknown')))})", "bold red")
        else:
            t.append(escape_text(tgt["path"]))
        d = ev.get("dfd_path") or {}
        if tgt.get("best_effort") and d:
            via = "cwd" if d["via"] == "cwd" else f"fd {ev['args'].get('dfd')}"
            where = escape_text(d["path"]) if d.get("path") else f"unknown: {escape_text(str(d.get('unknown')))}"
            t.append(f"  (best effort: {via} -> {where}, read from /proc after the call)", "dim")
        elif tgt.get("basis") == "absolute":
            t.append("  (absolute, lexical: symlinks not resolved)", "dim")
        return t

    def monitor_summary(self, s: dict) -> None:
        by_rule = ", ".join(f"{k}: {v}" for k, v in s["alerts_by_rule"].items())
        names = s.get("syscalls") or ["open-family"]
        what = names[0] if len(names) == 1 else "open-family"
        t = Text(f"{s['events']} {what} calls checked, {s['alerts']} alerts" + (f" ({by_rule})" if by_rule else ""),
                 "bold red" if s["alerts"] else "")
        if s.get("alerts_folded"):
            t.append(f"; {s['alerts_folded']} of them counted into repeated alerts")
        if s["lost"]:
            t.append(f"; {s['lost']} calls lost, not checked ({lost_reasons_text(s)})", "bold red")
        self.console.print(t)


def context_line(ctx: dict) -> Text:
    """`    context TIME host H uid U (NAME) exe E cmdline C ppid P (EXE) cgroup G container ID`, every
    process-controlled string escaped; /proc facts marked best effort."""
    t = Text("    context ", "dim")
    t.append(f"{ctx['time']} host {escape_text(ctx['host'])}")
    if "uid" in ctx:
        t.append(f" uid {ctx['uid']} ({escape_text(str(ctx['user'] or 'no name'))})")
    p = ctx.get("process")
    if not p:
        return t
    if p.get("unknown"):
        t.append(f"  process unknown ({escape_text(p['unknown'])})", "dim")
        return t
    import shlex

    cmd = " ".join(shlex.quote(a) for a in p["cmdline"]) if p.get("cmdline") is not None else "?"
    if len(cmd) > 200 or p.get("cmdline_truncated"):
        cmd = cmd[:200] + "…"
    t.append(f" exe {escape_text(str(p.get('exe')))} cmdline {escape_text(cmd)} ppid {p.get('ppid')} "
             f"({escape_text(str(p.get('parent_exe')))})")
    if p.get("cgroup"):
        t.append(f" cgroup {escape_text(p['cgroup'])}")
    if p.get("container_id"):
        t.append(f" container {p['container_id'][:12]}")
    t.append("  (process: best effort, /proc after the call)", "dim")
    return t


def lost_text(ev: dict) -> str:
    """One lost-records event in words: how many, where, why (accounting.SHOWN)."""
    where = f" on CPU {ev['cpu']}" if ev.get("cpu") is not None else ""
    reason = ev.get("reason") or UNSPECIFIED
    source = ev.get("source", "syscalls")
    other = f" of the {source} source" if source != "syscalls" else ""
    return f"{ev['count']} records lost{other}{where} ({SHOWN.get(reason, reason)})"


def lost_reasons_text(s: dict) -> str:
    """The summary's lost counts by reason, e.g. "ring full: 1,034; in flight at exit: 1"."""
    return "; ".join(f"{SHOWN.get(r, r)}: {n}" for r, n in (s.get("lost_by_reason") or {}).items() if n)


class JsonAlertOutput(JsonOutput):
    def alerts(self, ev: dict | None, alerts: list) -> None:
        for a in alerts:
            self.write(a.to_dict(ev))

    monitor_summary = JsonOutput.write
