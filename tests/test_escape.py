"""Process-controlled text (comm, paths, sockaddr paths) cannot forge output: rich markup stays literal,
terminal escapes, line breaks, NULs and bidi controls are shown escaped, invalid UTF-8 as \\xNN, and
every event is one line. tracer/escape.py and its use in tracer/output.py.
"""

from __future__ import annotations

import io
import json
import unicodedata

import pytest
from rich.console import Console

from tracer.escape import escape_bytes, escape_text, quoted
from tracer.output import ConsoleOutput, JsonOutput

INVALID = b"\xff\xfe".decode("utf-8", "surrogateescape")
NASTY = "[bold]x[/bold]|\x1b[31m|\n|\r|\u202e|\u2066|\x00|" + INVALID + "|a\\b"
# What each piece must look like in the output.
ESCAPED = ["[bold]x[/bold]", "\\x1b[31m", "|\\n|", "|\\r|", "\\u202e", "\\u2066", "|\\0|", "\\xff\\xfe",
           "a\\\\b"]
BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def render(*events: dict) -> str:
    buf = io.StringIO()
    out = ConsoleOutput(Console(file=buf, width=300, color_system=None))
    for ev in events:
        out.event(ev)
    return buf.getvalue()


def event(comm: str, args: dict, reads: dict | None = None, **over) -> dict:
    ev = {"kind": "syscall", "syscall": "openat2", "event": "syscalls:sys_enter_openat2", "ts": 1_000_000,
          "cpu": 0, "pid": 42, "tid": 42, "comm": comm, "uid": 0, "ts_exit": 1_000_500, "duration_ns": 500,
          "args": args, "ret": 3, "ret_str": "3", "reads": reads or {}, "missing": []}
    ev.update(over)
    return ev


def ok(addr: int = 0x1000) -> dict:
    return {"status": "ok", "source": "enter", "errno": None, "addr": addr, "len": 1}


def assert_clean(text: str) -> None:
    """No control, bidi or format characters besides the newline that ends each event line."""
    body = text.replace("\n", "")
    bad = [c for c in body if ord(c) < 0x20 or ord(c) == 0x7F or 0x80 <= ord(c) < 0xA0]
    assert not bad, f"raw control characters in output: {bad!r}"
    assert not BIDI & set(body), "raw bidi controls in output"
    assert not [c for c in body if unicodedata.category(c) in ("Cs", "Cf")], "surrogates or format chars"


def test_console_event_with_hostile_comm_and_filename() -> None:
    ev = event(NASTY, {"dfd": -100, "filename": NASTY, "how": None, "usize": 24},
               {"filename": ok()}, args_str={"dfd": "AT_FDCWD"})
    out = render(ev)
    assert out.endswith("\n") and out.count("\n") == 1, repr(out)
    assert_clean(out)
    # comm (once) and filename (once): every piece appears escaped, twice.
    for piece in ESCAPED:
        assert out.count(piece) >= 2, (piece, out)
    assert "openat2(" in out and "filename=" in out and " = 3" in out


def test_console_changed_value_and_sockaddr_path() -> None:
    changed = {**ok(), "status": "changed", "value_at_exit": NASTY, "len_at_exit": 40}
    ev1 = event("app", {"dfd": 3, "filename": "/tmp/a", "how": None, "usize": 24}, {"filename": changed})
    ev2 = event("app", {"fd": 3, "uservaddr": {"family": "AF_UNIX", "abstract": True, "path": NASTY},
                        "addrlen": 110}, {"uservaddr": ok()}, syscall="connect", ret=0, ret_str="0")
    out = render(ev1, ev2)
    assert out.count("\n") == 2, repr(out)
    assert_clean(out)
    line1, line2 = out.splitlines()
    assert "CHANGED" in line1
    assert '"@' in line2 and "AF_UNIX" in line2
    for piece in ESCAPED:
        assert piece in line1, (piece, line1)
        assert piece in line2, (piece, line2)


def test_markup_in_comm_is_not_interpreted() -> None:
    """With colours on, rich would turn [bold]x[/bold] into styled "x"; it must stay text."""
    buf = io.StringIO()
    out = ConsoleOutput(Console(file=buf, width=300, color_system="truecolor", force_terminal=True))
    out.event(event("[red]evil[/red]", {"filename": "[link=http://x]y[/link]"}, {"filename": ok()}))
    text = buf.getvalue()
    assert "[red]evil[/red]" in text
    assert "[link=http://x]y[/link]" in text
    assert "\x1b]8;" not in text  # no OSC 8 hyperlink was produced


def test_json_output_is_one_ascii_line() -> None:
    buf = io.StringIO()
    ev = event(NASTY, {"filename": NASTY}, {"filename": ok()})
    JsonOutput(buf).event(ev)
    line = buf.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert line[:-1].isascii() and line[:-1].isprintable()
    assert json.loads(line)["comm"] == NASTY


# --- tracer/escape.py directly ------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    ("plain/path.txt", "plain/path.txt"),
    ("caf\u00e9 \U0001f600", "caf\u00e9 \U0001f600"),  # printable non-ASCII is kept
    ("a\\b", "a\\\\b"),
    ('say "hi"', 'say \\"hi\\"'),
    ("a\tb\nc\rd\0e", "a\\tb\\nc\\rd\\0e"),
    ("\x1b[2J\x07\x7f", "\\x1b[2J\\x07\\x7f"),
    ("\x85\x9b", "\\u0085\\u009b"),  # C1 controls (0x9b is a one-byte CSI on some terminals)
    ("a\u202eb\u2066c\u200bd\u200fe", "a\\u202eb\\u2066c\\u200bd\\u200fe"),
    ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
    ("\ue000\U000f0000", "\\ue000\\U000f0000"),  # private use
    ("[bold]x[/bold]", "[bold]x[/bold]"),  # escaping is for terminals; markup safety comes from Text
])
def test_escape_text(raw: str, shown: str) -> None:
    assert escape_text(raw) == shown


def test_escape_bytes_and_quoted() -> None:
    assert escape_bytes(b"/tmp/\xff\xc3(") == "/tmp/\\xff\\xc3("
    assert escape_bytes("é".encode()) == "é"
    assert escape_bytes(b"a\nb") == "a\\nb"
    assert quoted(b'x"\xfe') == '"x\\"\\xfe"'
