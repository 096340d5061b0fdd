"""Every error a user sees, each with the exit status it ends the run with.

All of them derive from TracerError; the CLI catches TracerError in one place (cli.TracerGroup) and prints
`report()` on stderr: one line, `tracer: ` and what is wrong and how to fix it, never a traceback. Exit
statuses: 1 a runtime failure (TracerError), 2 a usage error (UsageError); 3 (monitor alerts) and 0 are not
errors. Errors that stay inside tracer (BpfError, BtfError, SymbolError, capture_check.Invalid, ...) are
turned into one of these, with the words the user needs, where they are caught.

Each class also keeps the builtin base its callers caught before it lived here (RuntimeError, ValueError,
OSError), so `except ValueError` around a parse still sees UnknownEvent.
"""

from __future__ import annotations

import errno as errno_mod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bpfsys import BpfError


class TracerError(Exception):
    """A failure the user is told about in one line; `code` is tracer's exit status."""

    code = 1

    def report(self) -> str:
        return f"tracer: {self}"


class UsageError(TracerError):
    """What the user asked for cannot be: a bad argument, option or input file (exit 2)."""

    code = 2


class EnvironmentProblem(TracerError, RuntimeError):
    """Something about the machine stops us; the message says what and how to fix it."""


class NoAccess(EnvironmentProblem):
    """tracefs is there (or may be) but this user may not read it: a permission problem, not a mount."""


class LoadError(EnvironmentProblem):
    """A program was refused: what, errno, and the verifier log's last lines (in one line)."""

    def __init__(self, what: str, err: BpfError, tail: int = 6) -> None:
        self.error = err
        self.log_tail = err.log_tail(tail)
        log = f"; verifier log ends: {' | '.join(self.log_tail)}" if self.log_tail else "; empty verifier log"
        name = errno_mod.errorcode.get(err.errno, str(err.errno)) if err.errno else "?"
        super().__init__(f"{what}: {err.strerror} ({name}){log}")


class UnknownEvent(UsageError, ValueError):
    """An EVENT spec names nothing this kernel (or this capture) has, or cannot be parsed."""


class CommandError(TracerError, RuntimeError):
    """The command after `--` could not be started; `code` is 2 for a usage error (no such user, ...)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class CaptureError(TracerError, RuntimeError):
    """A capture cannot be written or read; the message says what and how to fix it."""


class CaptureExists(CaptureError):
    code = 2


class OutputError(TracerError, RuntimeError):
    """-o FILE cannot be written."""


class PolicyError(UsageError):
    """Monitor policy files with errors: every one as FILE:LINE: message, in file and line order."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors

    def report(self) -> str:
        return str(self)  # each line already says where (FILE:LINE), as --check-policy prints them


class UserEventsUnavailable(EnvironmentProblem):
    """This kernel (or this tracefs root) has no user_events."""


class NoSuchUserEvent(EnvironmentProblem):
    """No registered user event matches a spec (events come and go at run time: not a usage error)."""


class UserEventError(TracerError, OSError):
    """A user_events call failed (errno, and the kernel's meaning of it as strerror)."""

    def report(self) -> str:
        return f"tracer: {self.strerror}"
