"""The console view's batch renderer against rich's own rendering of the same line: identical text
without colours (pipe, file) and identical ANSI with them (terminal), one write per drain batch."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from rich.text import Text

from tracer.escape import escape_text
from tracer.jsonenc import dumps
from tracer.output import ConsoleOutput

INVALID = b"\xff".decode("utf-8", "surrogateescape")


def events() -> list[dict]:
    base = {"kind": "syscall", "syscall": "openat2", "event": "syscalls:sys_enter_openat2", "cpu": 0, "pid": 42,
            "tid": 43, "comm": "a[b]\x1b", "uid": 0, "duration_ns": 500, "ret": 3, "ret_str": "3", "missing": []}
    ok = {"status": "ok", "source": "enter", "errno": None, "addr": 0x1000, "len": 5}
    how = {"flags": 0, "mode": 0, "resolve": 0, "flags_str": "O_RDONLY", "resolve_str": "0"}
    evs = []
    for i, (st, extra) in enumerate([("ok", {}), ("recovered", {"errno": 14, "region": None}),
                                     ("changed", {"value_at_exit": "/b\n" + INVALID}), ("truncated", {}),
                                     ("missing", {"errno": 14, "value": None})]):
        val = extra.pop("value", "/a[red]x[/red]\u202e")
        evs.append({**base, "ts": 10**9 * (i // 2) + i, "ts_exit": 10**9 * (i // 2) + i + 500,
                    "args": {"dfd": -100, "filename": val, "how": how, "usize": 0xFFFFFF},
                    "args_str": {"dfd": "AT_FDCWD"}, "reads": {"filename": {**ok, "status": st, **extra}},
                    "missing": ["filename"] if st == "missing" else [], "ret": -2 if i % 2 else 3,
                    "ret_str": "-2 ENOENT" if i % 2 else "3"})
    evs.append({**base, "ts": 5, "ts_exit": None, "args": {"status": 0}, "ret": None, "ret_str": None})
    return evs


class CountingIO(io.StringIO):
    writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.mark.parametrize("color", [None, "standard", "256", "truecolor"])
def test_batch_rendering_is_rich_rendering(color: str | None) -> None:
    evs = events()
    lost = {"kind": "lost", "source": "syscalls", "cpu": 1, "count": 7, "reason": "ring_full"}
    kw = dict(width=100, color_system=color, force_terminal=color is not None, highlight=False, soft_wrap=True)
    ours, theirs = CountingIO(), io.StringIO()
    out = ConsoleOutput(Console(file=ours, **kw))
    out.overlap = None  # these events are not in completion order; the resumed marker: tests/test_summary.py
    out.events([*evs[:3], lost, *evs[3:]])
    ref = ConsoleOutput(Console(file=theirs, **kw))
    ref.mono_to_wall = out.mono_to_wall
    for ev in evs[:3]:
        ref.console.print(ref.line(ev))
    ref.console.print("!! 7 records lost on CPU 1 (ring full)", style="bold red", markup=False)
    for ev in evs[3:]:
        ref.console.print(ref.line(ev))
    assert ours.getvalue() == theirs.getvalue()
    assert ours.writes == 1  # the whole batch in one write
    assert ours.getvalue().count("\n") == len(evs) + 1
    if color:
        assert "\x1b[" in ours.getvalue()
    else:
        assert "\x1b" not in ours.getvalue()  # the comm's ESC is shown escaped, never raw


def other_kinds() -> list[dict]:
    """A uprobe, user_events (a sample, an EventHeader one, a malformed one, a discarded write) and a kind
    this version does not know, with process-controlled text that must come out escaped."""
    who = {"cpu": 1, "pid": 7, "tid": 8, "comm": "w\x1b]2;title\x07"}
    up = {"kind": "uprobe", "event": "uprobe:/bin/x:f(str s, buf[4] b)", "path": "/bin/x", "function": "f",
          "offset": 0x1130, "ts": 20, "ts_exit": 30, "duration_ns": 10, **who, "uid": 0,
          "args": {"s": "a\nb", "b": "00ff00ff"}, "ret": 1, "ret_str": "1",
          "reads": {"s": {"status": "ok", "source": "enter", "errno": None, "addr": 0x10, "len": 3},
                    "b": {"status": "ok", "source": "enter", "errno": None, "addr": 0x20, "len": 4, "size": 4}},
          "missing": [], "source": "nofault"}
    sample = {"kind": "user_event", "event": "user_events:test", "name": "test", "ts": 40, **who, "status": "ok",
              "fields": {"count": 3, "msg": "hi\u202e[b]"}}
    eh = {"kind": "user_event", "event": "user_events:P_L4K1", "name": "P_L4K1", "ts": 41, **who, "status": "ok",
          "fields": {}, "eventheader": {"provider": "P", "event": "E\x07", "level": 4, "keyword": 1,
                                        "fields": [{"name": "x", "encoding": "value32", "value": 5}]}}
    bad = {"kind": "user_event", "event": "user_events:test", "name": "test", "ts": 42, **who, "status": "malformed",
           "fields": {"count": None}, "errors": {"count": "field at 8..12 is past the end"}, "payload_hex": "01"}
    gone = {"kind": "user_event", "status": "discarded", "event": None, "name": None, "ts": 43, **who, "fd": 3,
            "syscall": "write", "ret": -14, "errno": 14, "write_index": None, "fields": None, "missing": ["payload"],
            "name_reason": "write_index unreadable: errno 14 at 0x0"}
    unknown = {"kind": "from_the_future", "ts": 44, "note": "x\ny"}
    return [up, sample, eh, bad, gone, unknown]


@pytest.mark.parametrize("color", [None, "truecolor"])
def test_every_kind_renders_its_own_line(color: str | None) -> None:
    """Each kind has its own line layout, in the same single write as the others (a user_event used to
    crash the call renderer, KeyError 'function'); escaped; identical to rich's rendering of the line."""
    from tracer.user_events.render import user_event_line

    evs = [events()[0], *other_kinds()]
    kw = dict(width=100, color_system=color, force_terminal=color is not None, highlight=False, soft_wrap=True)
    ours, theirs = CountingIO(), io.StringIO()
    out = ConsoleOutput(Console(file=ours, **kw))
    out.overlap = None  # not in completion order (see test_batch_rendering_is_rich_rendering)
    out.events(evs)
    ref = ConsoleOutput(Console(file=theirs, **kw))
    ref.mono_to_wall = out.mono_to_wall
    for ev in evs:
        kind = ev["kind"]
        line = user_event_line(ev, ref._time) if kind == "user_event" else ref.line(ev) if kind in (
            "syscall", "uprobe") else Text(escape_text(dumps(ev)), "dim")
        ref.console.print(line)
    text = ours.getvalue()
    assert text == theirs.getvalue() and ours.writes == 1
    lines = text.splitlines()
    assert len(lines) == len(evs)
    plain = lines
    if not color:
        assert " f(s=" in plain[1] and "b=<hex 00ff00ff>" in plain[1] and '"a\\nb"' in plain[1]
        assert 'user_events:test(count=3, msg="hi\\u202e[b]")' in plain[2]
        assert "P:E\\x07 [level=4 keyword=0x1](x=5)" in plain[3]
        assert "<malformed: field at 8..12 is past the end>" in plain[4]
        assert "user_events:<unknown> DISCARDED by the kernel: write(fd=3) = -14 EFAULT" in plain[5]
        assert plain[6].startswith('{\\"kind\\":\\"from_the_future\\"')  # its JSON, escaped like any text
    bare = re.sub("\x1b\\[[0-9;]*m", "", text)  # less the colours
    assert "\x1b" not in bare and "\x07" not in bare  # the comm's escape sequence is shown escaped, never raw
