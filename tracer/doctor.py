"""`tracer doctor`: what this machine can and cannot do for tracer, and how to fix what is missing."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.text import Text

from tracer import caps
from tracer.caps import Check

_MARKS = {True: ("✓", "green"), False: ("✗", "red"), None: ("?", "yellow")}


def report(checks: list[Check], kinds: dict[str, dict]) -> dict[str, Any]:
    """The --json document: the whole check list plus the two summaries other tools look up directly."""
    ue = next((c for c in checks if c.key == "user_events"), None)
    hd = next((c for c in checks if c.key == "headers"), None)
    of = next((c for c in checks if c.key == "opened_file"), None)
    sleepable = {kind: {k: res.get(k) for k in ("ok", "errno", "reason")} for kind, res in kinds.items()}
    return {
        "ok": syscall_tracing_ok(checks),
        "kernel": os.uname().release,
        "user_events": {"available": bool(ue and ue.ok), "reason": ue.detail if ue else "not checked"},
        "opened_file": {"available": bool(of and of.ok), "detail": of.detail if of else "not checked"},
        "sleepable": sleepable,
        # kind: own, kheaders, generic (another kernel's: struct layouts come from BTF), environment,
        # missing or broken (bcc could not compile against them)
        "headers": {"kind": hd.verdict if hd else "not checked", "ok": bool(hd and hd.ok),
                    "matches_kernel": bool(hd and hd.ok and hd.verdict in ("own", "kheaders")),
                    "detail": hd.detail if hd else ""},
        "checks": [{**asdict(c), "required": c.key in caps.REQUIRED} for c in checks],
    }


def syscall_tracing_ok(checks: list[Check]) -> bool:
    by_key = {c.key: c for c in checks}
    return all(key in by_key and by_key[key].ok is True for key in caps.REQUIRED)


def _line(check: Check) -> Text:
    mark, style = _MARKS[check.ok]
    if check.ok is False and check.key not in caps.REQUIRED:
        style = "yellow"  # reported, but not something syscall tracing needs
    if check.key == "headers" and check.verdict == "generic":
        style = "yellow"  # works for syscall tracing, but they describe another kernel
    line = Text.assemble((mark, style), " ", (check.title, "bold"), " ", (check.verdict, style), ": ")
    line.append(check.detail)
    if check.fix and check.ok is not True:
        line.append("\n    fix: ", style="dim")
        line.append(check.fix)
    return line


def doctor(as_json: bool, console: Console, *, refresh: bool = False, mount: bool = False) -> int:
    """Print the capability report; 0 when syscall tracing has everything it needs, else 1."""
    base = caps.base_checks(mount)
    kinds = caps.sleepable_kinds(refresh)
    checks = base + caps.sleepable_checks(kinds)
    doc = report(checks, kinds)
    if as_json:
        console.out(json.dumps(doc, indent=2), highlight=False)
    else:
        for check in checks:
            console.print(_line(check))
        verdict = "ready for syscall tracing" if doc["ok"] else "syscall tracing is NOT possible until fixed"
        console.print(Text(verdict, style="bold green" if doc["ok"] else "bold red"))
    return 0 if doc["ok"] else 1
