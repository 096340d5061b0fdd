"""tracer(1) in roff, generated from the click commands' own help (`tracer man`), so the manual never
drifts from --help: NAME, SYNOPSIS, DESCRIPTION, then one section per command with its options."""

from __future__ import annotations

import datetime
import inspect
import re

import click

from . import __version__

SYNOPSIS = r"[\fIOPTIONS\fR] \fICOMMAND\fR [\fIARGS\fR]... [\fB\-\-\fR \fICMD ARGS\fR...]"


def _roff(text: str) -> str:
    """Plain text as roff: escape backslashes and leading dots/quotes (which would be requests)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def _paragraphs(help_text: str) -> str:
    """click help: blank lines separate paragraphs; \b marks a block kept as is (click's no-rewrap)."""
    out = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(help_text or "")):
        if para.startswith("\b"):
            out.append(".PP\n.nf\n" + _roff(para.lstrip("\b\n")) + "\n.fi")
        else:
            out.append(".PP\n" + _roff(" ".join(line.strip() for line in para.splitlines())))
    return "\n".join(out)


def _options(ctx: click.Context, cmd: click.Command) -> str:
    out = []
    for param in cmd.get_params(ctx):
        if not isinstance(param, click.Option) or (param.name == "help" and ctx.parent is not None):
            continue  # arguments are in the usage line; --help once, for the whole program
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        out.append(f".TP\n.B {_roff(names)}\n{_roff(help_text) if help_text else ''}".rstrip())
    return "\n".join(out)


def _commands(ctx: click.Context, group: click.Group, path: list[str]) -> list[tuple[list[str], click.Context]]:
    found = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx)
        if isinstance(cmd, click.Group):
            found += _commands(sub, cmd, [*path, name])
        else:
            found.append(([*path, name], sub))
    return found


def render(root: click.Group, prog: str = "tracer") -> str:
    ctx = click.Context(root, info_name=prog)
    today = datetime.date.today().isoformat()
    head = inspect.cleandoc(root.help or "").splitlines()[0].rstrip(".")
    parts = [
        f'.TH {prog.upper()} 1 "{today}" "{prog} {__version__}" "User Commands"',
        ".SH NAME", f"{prog} \\- {_roff(head)}",
        ".SH SYNOPSIS", f".B {prog}\n{SYNOPSIS}",
        ".SH DESCRIPTION", _paragraphs(root.help or ""),
        ".SH OPTIONS", _options(ctx, root),
        ".SH COMMANDS",
    ]
    for path, sub in _commands(ctx, root, []):
        cmd = sub.command
        usage = " ".join(cmd.collect_usage_pieces(sub))
        parts.append(f".SS {prog} {' '.join(path)}")
        parts.append(f".B {prog} {' '.join(path)}\n{_roff(usage)}")
        parts.append(_paragraphs(cmd.help or ""))
        opts = _options(sub, cmd)
        if opts:
            parts.append(".PP\nOptions:\n.RS\n" + opts + "\n.RE")
    parts += [".SH EXIT STATUS", ".PP\n0 ok, 1 runtime failure (one line on stderr), 2 usage error, 3 monitor alerts; "
              "with \\fB\\-\\- CMD\\fR, CMD's status (128+N when signal N ended it).",
              ".SH SEE ALSO", ".BR strace (1),", ".BR bpftrace (8)",
              ".PP\nThe README of the source tree documents the JSON Lines contract and capture format."]
    return "\n".join(p for p in parts if p) + "\n"
