"""Every error a user can see is a tracer.errors.TracerError with its exit status, and the CLI turns it into
one `tracer: ...` line in one place (cli.TracerGroup); errors that stay inside tracer are listed here with
where they are turned into a user-visible one."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import tracer
from tracer import errors
from tracer.cli import cli

# Internal errors: each is caught where it is raised and said again as a TracerError with more context.
INTERNAL = {
    "tracer.bpfsys.BpfError": "bpf(2) failed: loaders raise LoadError, probes report it",
    "tracer.btf.BtfError": "BTF unreadable: callers fall back (nofault reads, per-syscall tracepoints) and say why",
    "tracer.elfsyms.SymbolError": "uprobes.build raises SpecError (a UsageError) with the spec",
    "tracer.capture_check.Invalid": "capture.py says it as a CaptureError",
    "tracer.bpfcache.StaleEntry": "the program cache drops the entry and compiles with bcc",
    "tracer.bpfcache.Uncacheable": "the program cache compiles without caching",
    "tracer.policy.Unsafe": "policy.parse_file makes it a FILE:0: line of the PolicyError",
    "tracer.user_events.eventheader.Malformed": "the decoder shows the record as malformed",
    "tracer.user_events.formats.FormatError": "`user-events emit` says it as a UsageError (bad name_args)",
}


def exception_classes() -> dict[str, type[BaseException]]:
    found = {}
    for mod in pkgutil.walk_packages(tracer.__path__, "tracer."):
        if mod.name in ("tracer.__main__",):
            continue
        module = importlib.import_module(mod.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == mod.name:
                found[f"{mod.name}.{obj.__qualname__}"] = obj
    return found


def test_every_error_class_is_a_tracer_error_or_listed_as_internal() -> None:
    classes = exception_classes()
    loose = sorted(name for name, cls in classes.items()
                   if not issubclass(cls, errors.TracerError) and name not in INTERNAL)
    assert not loose, f"error classes neither TracerError nor INTERNAL (with where they are caught): {loose}"
    assert not set(INTERNAL) - set(classes), "INTERNAL names a class that no longer exists"


@pytest.mark.parametrize("cls, code", [
    (errors.TracerError, 1), (errors.EnvironmentProblem, 1), (errors.NoAccess, 1), (errors.CaptureError, 1),
    (errors.OutputError, 1), (errors.UserEventsUnavailable, 1), (errors.NoSuchUserEvent, 1),
    (errors.UsageError, 2), (errors.UnknownEvent, 2), (errors.CaptureExists, 2),
])
def test_exit_status_of_each_kind(cls: type[errors.TracerError], code: int) -> None:
    assert cls("x").code == code


def test_builtin_bases_kept_for_existing_callers() -> None:
    """Callers that caught ValueError / RuntimeError / OSError still catch these."""
    assert issubclass(errors.UnknownEvent, ValueError)
    assert issubclass(errors.EnvironmentProblem, RuntimeError) and issubclass(errors.CaptureError, RuntimeError)
    e = errors.UserEventError(9, "write x: EBADF: no tracer has it enabled")
    assert isinstance(e, OSError) and e.errno == 9
    assert e.report() == "tracer: write x: EBADF: no tracer has it enabled"
    assert errors.CommandError("no such user", 2).code == 2 and errors.CommandError("cannot run").code == 1


def test_policy_errors_are_their_own_lines() -> None:
    e = errors.PolicyError(["a.toml:1: bad", "a.toml:3: worse"])
    assert e.code == 2 and e.report() == "a.toml:1: bad\na.toml:3: worse" and e.errors == ["a.toml:1: bad",
                                                                                           "a.toml:3: worse"]


@pytest.mark.parametrize("exc, code", [(errors.UsageError("bad thing"), 2), (errors.CaptureError("bad thing"), 1),
                                       (errors.CommandError("bad thing", 2), 2)])
def test_the_cli_says_any_tracer_error_in_one_line(exc: errors.TracerError, code: int) -> None:
    """Raised from any command (here one added for the test), the group prints report() and exits."""

    @cli.command("raise-for-test")
    def raiser() -> None:
        raise exc

    try:
        r = CliRunner().invoke(cli, ["raise-for-test"])
    finally:
        cli.commands.pop("raise-for-test")
    assert r.exit_code == code and r.stderr == "tracer: bad thing\n" and r.stdout == ""


def test_the_cli_catches_in_one_place() -> None:
    """No command decides an exit status for a TracerError itself: cli.py exits with e.code only in
    TracerGroup."""
    src = (Path(tracer.__file__).parent / "cli.py").read_text()
    assert src.count("e.code") == 1 and "def fail(" not in src
    assert isinstance(cli, click.Group) and type(cli).__name__ == "TracerGroup"
