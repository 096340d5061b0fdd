"""Where events go (-o FILE or stdout) and, with `-- CMD`, where the command's stdout goes.

The event stream must stay parseable (`tracer trace --json -- CMD | jq`): when events go to stdout, the
command's stdout is sent to the tracer's stderr, as strace keeps its own output off the traced command's
stdout. With -o FILE the command keeps its stdout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

from rich.console import Console

from .errors import OutputError

COMMAND_STDOUT_TO = 2  # the fd the command's stdout is redirected to while events use stdout


def open_output(path: Path | None) -> IO[str]:
    """-o FILE: created with mode 0600 (events carry paths and arguments) or truncated, as strace -o
    does; `-` or None is stdout."""
    if path is None or str(path) == "-":
        return sys.stdout
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    return open(fd, "w", encoding="utf-8", errors="surrogateescape")


def command_stdout(stream: IO[str], events_shown: bool = True) -> int | None:
    """The fd for the command's stdout: stderr when the events are shown on our stdout, else inherited."""
    return COMMAND_STDOUT_TO if events_shown and stream is sys.stdout else None


def console_for(stream: IO[str]) -> Console | None:
    """The rich console writing to stream (None: the default one, on stdout). A file gets plain text."""
    if stream is sys.stdout:
        return None
    return Console(file=stream, highlight=False, soft_wrap=True, color_system=None)
