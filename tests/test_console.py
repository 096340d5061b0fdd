"""The console view's batch renderer against rich's own rendering of the same line: identical text
without colours (pipe, file) and identical ANSI with them (terminal), one write per drain batch."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

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
