"""The `tracer` command line: a thin layer over tracer.session and tracer.doctor."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from . import __version__
from .errors import CaptureError, TracerError, UsageError
from .escape import escape_text
from .kenv import shipped_dir
from .session import Session, install_signal_stop
from .streams import command_stdout, console_for, open_output

if TYPE_CHECKING:  # imported where used: `tracer --help` and completion stay quick
    from .capture import Capture, Filter
    from .output import ConsoleOutput, JsonOutput
    from .summary import CallTable
    from .user_events.emitter import Event

Command = Callable[..., Any]
Decorator = Callable[[Command], Command]  # a click option or argument

EXAMPLES = shipped_dir("examples")
err_console = Console(stderr=True, highlight=False)


class TracerGroup(click.Group):
    """The one place a TracerError (tracer/errors.py) ends the run: its line on stderr, its exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TracerError as e:
            sys.stderr.write(f"{e.report()}\n")  # one line, never wrapped
            sys.exit(e.code)


@click.group(cls=TracerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracer")
@click.option("--tracefs", "tracefs_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Use this tracefs root (sets TRACER_TRACEFS; e.g. a fake root for tests).")
@click.option("--no-cache", is_flag=True,
              help="Compile the BPF programs instead of loading them from the program cache (TRACER_NO_CACHE=1).")
@click.option("--debug", is_flag=True,
              help="Debug log on stderr (program cache hits, misses and refusals, ...) and a traceback with "
                   "unexpected errors (TRACER_DEBUG=1).")
def cli(tracefs_dir: str | None = None, no_cache: bool = False, debug: bool = False) -> None:
    """eBPF syscall tracer that never shows a guessed value.

    Every argument read from user memory carries its status (ok, recovered, changed, missing,
    truncated) with errno, address and where that address lives.

    \b
    Start with:  tracer trace openat2
                 tracer trace %file -- CMD ARGS...   (trace CMD and its children)
                 tracer doctor
    """
    from .debug import enable_debug

    enable_debug(debug)
    if no_cache:
        import os

        os.environ["TRACER_NO_CACHE"] = "1"
    if tracefs_dir:
        import os

        from .kenv import TRACEFS_ENV

        os.environ[TRACEFS_ENV] = str(Path(tracefs_dir).resolve())


def complete_events(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of EVENT: syscall names of this kernel, %groups, the other kinds' prefixes."""
    from .listing import event_candidates

    return event_candidates(incomplete)


def events_argument() -> Decorator:
    return click.argument("events", nargs=-1, shell_complete=complete_events)


def filter_options() -> list[Decorator]:
    """-p/--tid/-n/-u: applied in the kernel when tracing, in Python when replaying a capture."""
    return [
        click.option("-p", "--pid", "pids", multiple=True, type=int, help="Only this process (repeatable)."),
        click.option("--tid", "tids", multiple=True, type=int, help="Only this thread (repeatable)."),
        click.option("-n", "--comm", help="Only tasks with this command name (as in /proc/PID/comm)."),
        click.option("--uid", type=int, help="Only tasks with this real user id."),
    ]


def only_missing_option() -> Decorator:
    return click.option("--only-missing", is_flag=True,
                        help="Show only events with missing, recovered or changed user data.")


def apply_options(f: Command, opts: list[Decorator]) -> Command:
    for o in reversed(opts):
        f = o(f)
    return f


def live_options(only_missing: bool = True) -> list[Decorator]:
    """Filters and limits of a live session (trace, record, monitor)."""
    return [
        *filter_options(),
        click.option("-f", "--follow", is_flag=True, help="Also trace children of -p processes."),
        click.option("-u", "--user", metavar="USER",
                     help="Run the command after `--` as USER (name or uid), with USER's groups."),
        click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after S seconds."),
        click.option("--count", type=click.IntRange(min=1), help="Stop after N events."),
        click.option("--no-recover", is_flag=True,
                     help="No exit re-reads: show what a plain entry-only tracer would have seen."),
        *([only_missing_option()] if only_missing else []),
        click.option("--buffer-pages", type=click.IntRange(min=1), default=None,
                     help="Ring memory per CPU, in pages (a power of two): syscall records share one ring of "
                          "this times the online CPUs. Default: 128 MiB in all, at least 256 pages per CPU."),
    ]


def trace_options(f: Command) -> Command:
    """`trace` and `record` (which stores the read mode in the capture header)."""
    return apply_options(f, [events_argument(), *live_options(), click.option(
        "--read-mode", type=click.Choice(["auto", "sleepable", "nofault"]), default="auto", show_default=True,
        help="How pointer arguments are read: sleepable programs (fault pages in) where the kernel allows "
             "them, nofault reads (+ exit re-reads), or the best available.")])


def output_option(what: str = "events") -> Decorator:
    return click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
                        help=f"Write the {what} to FILE (created 0600, or truncated) instead of stdout; the "
                             "command after `--` then keeps its stdout.")


def view_options(f: Command) -> Command:
    """How `trace` shows calls (strace's -T, -c, -C, -Z)."""
    return apply_options(f, [
        click.option("-T", "--durations", is_flag=True, help="Show the time spent in each call: <seconds>."),
        click.option("-c", "--summary-only", is_flag=True,
                     help="No call lines: count calls, errors and time per syscall, and print that table on stderr "
                          "at the end (in the JSON summary as \"per_syscall\" with --json)."),
        click.option("-C", "--call-summary", is_flag=True, help="Like -c, and show the calls too."),
        click.option("-Z", "--failed-only", is_flag=True, help="Only syscalls that returned an error."),
    ])


@cli.command(context_settings={"ignore_unknown_options": False})
@trace_options
@view_options
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout (or -o FILE).")
@output_option()
@click.option("--no-summary", is_flag=True, help="Do not print the end-of-run summary.")
@click.pass_context
def trace(ctx: click.Context, events: tuple[str, ...], as_json: bool, no_summary: bool, **opts: Any) -> None:
    """Trace syscalls live: EVENT... [-- CMD ARGS...]

    EVENT is a syscall name (openat2), a glob (open*), a group (%file, %net, %process), a tracepoint
    name (syscalls:sys_enter_openat2), a user-space probe (uprobe:PATH:SYMBOL(ARGS)[:RET]) or a
    user_events event (user_events:NAME, globs allowed). Kinds mix in one command. Default: openat2.
    With `-- CMD ARGS`, CMD is started and it and all its descendants are traced; tracer then exits
    with CMD's exit code. While events go to stdout, CMD's stdout goes to stderr (never into the event
    stream); with -o FILE it keeps its stdout. When tracer stops first (Ctrl-C, SIGTERM, SIGHUP,
    --duration, --count), CMD and its descendants get that signal (SIGTERM for a limit), then SIGKILL
    after 2 s.
    """
    command = (ctx.obj or {}).get("command")
    code = run_trace(list(events) or ["openat2"], command, as_json, not no_summary, **opts)
    sys.exit(code)


def make_session(events: list[str], *, pages: int | None, **opts: Any) -> Session:
    """A Session from CLI options; a bad event spec or ring size is a usage error (exit 2)."""
    if pages is not None and pages & (pages - 1):
        raise UsageError(f"--buffer-pages {pages} is not a power of two (try {1 << pages.bit_length()})")
    return Session(events, pages=pages, **opts)


def drive(session: Session, body: Callable[[], None]) -> bool:
    """Start the session and run `body` (which iterates it); any failure ends the run with one line on
    stderr (a TracerError as it is; anything else as a load error if the programs were not loaded yet —
    bcc's compile and attach failures — and as an internal error after that). The session is closed
    (programs detached) on every path. False if stdout was closed."""
    install_signal_stop(session)
    loaded = False
    try:
        session.start()
        loaded = True
        body()
    except KeyboardInterrupt:
        pass
    except TracerError:
        session.close()
        raise
    except BrokenPipeError:
        session.close()
        return False
    except Exception as e:
        session.close()
        from .debug import show_traceback
        from .probes import load_error

        show_traceback()
        if not loaded:
            raise load_error(e) from e
        # While tracing, an unexpected error is tracer's own fault, not the kernel's: said as such.
        raise TracerError(f"internal error while tracing: {type(e).__name__}: {e} (what was shown so far "
                          "is complete; --debug prints the traceback: please report it)") from e
    finally:
        announce_detach(session)
        session.close()
    return True


DETACH_NOTE_MIN = 16  # tracepoints: about 1 s to detach here (each waits for an RCU-tasks grace period)


def announce_detach(session: Session) -> None:
    """Say so when detaching can take a while (per-syscall tracepoints of a large set)."""
    n = len(session.probes.attached) if session.probes is not None else 0
    if n >= DETACH_NOTE_MIN:
        err_console.print(f"detaching {n} probes… (Ctrl-C again to leave it to the background)", style="dim",
                          markup=False, soft_wrap=True)


def events_out(output: Path | None) -> IO[str]:
    """The event stream of -o FILE (or stdout); a file that cannot be created is one error line."""
    return open_output(output)


def run_trace(events: list[str], command: list[str] | None, as_json: bool, summary: bool, *,
              pids: tuple[int, ...], tids: tuple[int, ...], comm: str | None, uid: int | None, follow: bool,
              duration: float | None, count: int | None, no_recover: bool, only_missing: bool,
              buffer_pages: int | None, user: str | None = None,
              output: Path | None = None, record: Path | None = None, force: bool = False,
              read_mode: str = "auto", durations: bool = False, summary_only: bool = False,
              call_summary: bool = False, failed_only: bool = False) -> int:
    """`trace`, and `record` (record: the capture file): recording shows events only with --json; its
    progress line and, without --json, its summary go to stderr."""
    from .output import ConsoleOutput, JsonOutput

    show = record is None or as_json
    stream = events_out(output)
    session = make_session(events, pids=pids, tids=tids, uid=uid, comm=comm, command=command, follow=follow,
                           recover=not no_recover, duration=duration, count=count, only_missing=only_missing,
                           pages=buffer_pages, record=record, force=force, read_mode=read_mode, user=user,
                           command_stdout=command_stdout(stream, show), failed_only=failed_only)
    from .contract import stream_header

    out: JsonOutput | ConsoleOutput
    if as_json:
        out = JsonOutput(stream, batched=True, header=lambda: stream_header(session.clock))
        session.batch_done.append(out.flush)  # one write per drain batch, not per event
    else:
        out = ConsoleOutput(Console(stderr=True, highlight=False, soft_wrap=True) if record is not None
                            else console_for(stream))
        out.durations = durations
    from .summary import CallTable

    table = CallTable() if summary_only or call_summary else None

    def body() -> None:
        if not as_json and record is None:
            names = [s.name for s in session.syscalls] + [spec for specs in session.other_specs.values()
                                                            for spec in specs]
            what = escape_text(", ".join(names[:8]))
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            err_console.print(f"tracing {what}{more} — Ctrl-C to stop", markup=False, style="dim")
        with record_progress(session):
            # JSON lines straight from the records where only they are wanted (tracer/recjson.py)
            # and console lines the same way (tracer/recconsole.py)
            lines = table is None and (True if isinstance(out, JsonOutput) else out.line_encoder)
            for batch in session.batches(lines=lines):
                if table is not None:
                    table.add_many(batch)
                    if summary_only:  # only what was lost is shown as it happens
                        batch = [ev for ev in batch if ev["kind"] == "lost"]
                if not show:
                    continue
                out.events(batch)  # lost-record notices included, in order: one write per batch

    if not drive(session, body):
        return 0
    if session.record_error:
        raise TracerError(session.record_error)
    if record is not None:
        s = session.summary()
        err_console.print(Text(f"recorded {s['events']} events ({s['lost']} lost, {s['reads']['missing']} missing "
                               f"reads) to {escape_text(str(record))}: {human_size(record)} in {s['elapsed_s']} s",
                               style="dim"), soft_wrap=True)
    show_end(out, session.summary() if summary else None, table, as_json, output)
    if session.exit_code is not None:
        return session.exit_code
    return 0


def show_end(out: JsonOutput | ConsoleOutput, summary: dict | None, table: CallTable | None, as_json: bool,
             output: Path | None) -> None:
    """The end of a trace or replay: the -c/-C table (tracer/summary.py CallTable) and the summary. On the
    console they go to stderr, as strace -c's table does (stdout holds only calls), or into -o FILE after
    the calls; with --json the table is the summary's "per_syscall" object."""
    from .output import ConsoleOutput

    if table is not None:
        if summary is not None:
            summary["per_syscall"] = table.to_dict()
        if isinstance(out, ConsoleOutput):  # not --json
            (out.console if output is not None else err_console).print(Text(table.render()), soft_wrap=True)
    if summary is None:
        return
    if as_json or output is not None:
        out.summary(summary)
    else:
        ConsoleOutput(err_console).summary(summary)


# --- record, replay, export (tracer/capture.py, tracer/export.py) ------------------------------------


@cli.command(context_settings={"ignore_unknown_options": False})
@trace_options
@click.option("-o", "--output", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The capture file to create (mode 0600).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Also print the events as JSON Lines on stdout.")
@click.option("--no-summary", is_flag=True, help="Do not print the end-of-run summary.")
@click.pass_context
def record(ctx: click.Context, events: tuple[str, ...], path: Path, force: bool, as_json: bool, no_summary: bool,
           **opts: Any) -> None:
    """Record a capture file: -o FILE [EVENT...] [options] [-- CMD ARGS...]

    Takes the options of `trace`. Records are written as they arrive (a killed recording leaves a readable
    file) with everything needed to decode them: replay it with `tracer replay FILE`.
    """
    command = (ctx.obj or {}).get("command")
    sys.exit(run_trace(list(events) or ["openat2"], command, as_json, not no_summary, record=path, force=force,
                       **opts))


@contextmanager
def record_progress(session: Session) -> Iterator[None]:
    """A live status line on stderr while recording, only when stderr is a terminal."""
    if session.recorder is None or not sys.stderr.isatty():
        yield
        return
    from rich.live import Live

    class Status:
        def __rich__(self) -> Text:
            s, rec = session.stats, session.recorder
            size = rec.size + len(rec.buf) if rec is not None else 0
            elapsed = time.monotonic() - session.started
            return Text(f"recording to {escape_text(str(session.record_path))}: {s.events} events, {s.lost} lost, "
                        f"{s.reads.get('missing', 0)} missing reads, {_size(size)}, {elapsed:.1f} s", style="dim")

    with Live(Status(), console=err_console, refresh_per_second=4, redirect_stdout=False, redirect_stderr=False):
        yield


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def human_size(path: Path) -> str:
    try:
        return _size(path.stat().st_size)
    except OSError:
        return "?"


def open_capture(path: Path, patterns: tuple[str, ...], pids: tuple[int, ...], tids: tuple[int, ...],
                 comm: str | None, uid: int | None, only_missing: bool,
                 failed_only: bool = False) -> tuple[Capture, Filter]:
    """A Capture and its replay filter, or one error line (exit 1: unreadable, 2: bad filter)."""
    from .capture import Capture, Filter

    cap = Capture(path)
    keep = Filter(patterns, pids, tids, comm, uid, only_missing, failed_only)
    try:
        keep.bind(cap)
    except CaptureError as e:  # the filter names what this capture does not hold: a usage error
        raise UsageError(str(e)) from None
    return cap, keep


def capture_end(cap: Capture) -> int:
    """After a replay or export: a file cut short or damaged is an error (exit 1, once what it held is shown);
    a recording that did not end cleanly is said, with exit 0 (every record was there)."""
    if cap.problem is not None:
        raise CaptureError(cap.problem.message(cap.path, cap.records))
    if cap.trailer is None:
        sys.stderr.write(f"tracer: {cap.path} has no end-of-session trailer: the recording did not finish cleanly "
                         f"(killed?); all {cap.records} records in it were replayed\n")
    return 0


def replay_options(f: Command) -> Command:
    return apply_options(f, [click.argument("file", type=click.Path(dir_okay=False, path_type=Path)),
                             events_argument(), *filter_options(), only_missing_option()])


@cli.command()
@replay_options
@view_options
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout, exactly as `trace --json` printed them.")
@output_option()
@click.option("--no-summary", is_flag=True, help="Do not print the end-of-run summary.")
def replay(file: Path, events: tuple[str, ...], as_json: bool, output: Path | None, no_summary: bool,
           durations: bool, summary_only: bool, call_summary: bool, **filters: Any) -> None:
    """Show a capture as live tracing showed it: FILE [EVENT...] [filters]

    EVENT (syscall name, glob, %group) and -p/--tid/-n/-u/--only-missing/-Z select what is shown; -T, -c
    and -C as for `trace`.
    """
    from .output import ConsoleOutput, JsonOutput
    from .summary import CallTable

    cap, keep = open_capture(file, events, **filters)
    from .contract import stream_header

    stream = events_out(output)
    out: JsonOutput | ConsoleOutput
    table = CallTable() if summary_only or call_summary else None
    if as_json:
        out = JsonOutput(stream, header=lambda: stream_header(cap.header.get("clock")))
    else:
        out = ConsoleOutput(console_for(stream))
        out.mono_to_wall = cap.mono_to_wall_ns  # times as they were shown while recording
        out.durations = durations
        h = cap.header
        err_console.print(Text(f"replaying {escape_text(str(file))}: recorded on {escape_text(str(h.get('host')))} "
                               f"(Linux {escape_text(str((h.get('kernel') or {}).get('release')))}) with tracer "
                               f"{escape_text(str((h.get('tool') or {}).get('version')))}", style="dim"))
    try:
        for ev in cap.events(keep):
            if table is not None:
                table.add_many((ev.data,))
                if summary_only and ev.kind != "lost":
                    continue
            if ev.kind == "lost":
                out.lost(ev.data)
            else:
                out.event(ev.data)
        show_end(out, cap.summary() if not no_summary else None, table, as_json, output)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(capture_end(cap))


@cli.command()
@replay_options
@click.option("--format", "fmt", type=click.Choice(["jsonl", "chrome"]), required=True,
              help="jsonl: the JSON Lines of `trace --json`; chrome: Trace Event Format (Perfetto UI, chrome://tracing).")
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this new file (mode 0600) instead of stdout.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def export(file: Path, events: tuple[str, ...], fmt: str, path: Path | None, force: bool,
           **filters: Any) -> None:
    """Convert a capture: FILE --format jsonl|chrome [-o OUT] [EVENT...] [filters]"""
    import os

    from .capture import commit_private, create_private
    from .export import write_chrome, write_jsonl

    cap, keep = open_capture(file, events, **filters)
    write = write_chrome if fmt == "chrome" else write_jsonl
    try:
        if path is None:
            write(cap, sys.stdout, keep)
        else:
            fd, staged = create_private(path, force)
            try:
                with open(fd, "w", encoding="utf-8") as stream:
                    write(cap, stream, keep)
                    stream.flush()
                    os.fsync(stream.fileno())
            except BaseException:
                if staged is not None:
                    staged.unlink(missing_ok=True)
                raise
            commit_private(staged, path, force)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:
        raise TracerError(f"cannot write {path}: {e.strerror}") from None
    sys.exit(capture_end(cap))


# --- end record, replay, export ---------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--refresh", is_flag=True, help="Probe again instead of using this boot's cached results.")
def doctor(as_json: bool, refresh: bool) -> None:
    """What this machine allows: privileges, tracefs, BTF, bcc, headers, tracepoints, user_events,
    sleepable BPF kinds, lockdown."""
    from .doctor import doctor as run_doctor

    sys.exit(run_doctor(as_json, Console(highlight=False), refresh=refresh))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout.")
def demo(as_json: bool) -> None:
    """Trace the bundled example: openat2 calls whose arguments are not resident at entry."""
    workload = EXAMPLES / "missing_data.py"
    if not workload.is_file():
        raise TracerError(f"{workload} is missing; run from a tracer source checkout")
    code = run_trace(["openat2"], [sys.executable, str(workload)], as_json, True, pids=(), tids=(), comm=None,
                     uid=None, follow=False, duration=None, count=None, no_recover=False, only_missing=False,
                     buffer_pages=None)
    sys.exit(code)


# --- tracer monitor (tracer/monitor.py, tracer/policy.py) -------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("syscall_names", nargs=-1, metavar="[SYSCALL]...")
@lambda f: apply_options(f, live_options(only_missing=False))
@click.option("--policy", "policies", multiple=True, metavar="FILE",
              help="Policy file (TOML, repeatable); replaces the bundled default policy unless --with-default.")
@click.option("--with-default", is_flag=True, help="Load the bundled default policy as well as the --policy files.")
@click.option("--check-policy", "check", multiple=True, metavar="FILE",
              help="Only validate FILE (repeatable; rule ids must be unique across them): every error as "
                   "FILE:LINE: message, exit 0 (valid) or 2.")
@click.option("--all", "show_all", is_flag=True, help="Also show calls that raise no alert.")
@click.option("--aggregate-window", "aggregate_s", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, metavar="S",
              help="Identical alerts (rule, exe, target) within S seconds: the first shown, the others counted "
                   "into one alert when the window closes.")
@click.option("--no-aggregate", is_flag=True, help="Show every alert.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout: alerts (and calls, with --all).")
@output_option("alerts")
@click.option("--no-summary", is_flag=True, help="Do not print the end-of-run summary.")
@click.pass_context
def monitor(ctx: click.Context, syscall_names: tuple[str, ...], policies: tuple[str, ...], with_default: bool,
            check: tuple[str, ...], show_all: bool, aggregate_s: float, no_aggregate: bool, as_json: bool,
            output: Path | None, no_summary: bool, buffer_pages: int | None, no_recover: bool,
            **opts: Any) -> None:
    """Watch opens and raise alerts from a policy: [SYSCALL]... [options] [-- CMD ARGS...]

    SYSCALL: open, openat, openat2, creat, open_by_handle_at; default: all of them that this kernel has.
    Fails closed: unreadable arguments, arguments changed during the call, calls a rule could match but
    the monitor cannot place, and lost records raise alerts of their own. Exit status: 0 no alert, 3 an
    alert fired (also with -- CMD, whatever CMD's status), 1 runtime failure, 2 usage or policy error.
    """
    from . import syscalls
    from .monitor import family_on_kernel, run_monitor
    from .policy import check_files, load_for_run

    if check:
        sys.exit(check_files(list(check)))
    policy = load_for_run(list(policies), with_default)
    try:
        names, missing = family_on_kernel(list(syscall_names), syscalls.table())
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise TracerError(f"cannot list the syscall tracepoints: {e}") from None
    if not names:
        raise TracerError(f"this kernel has none of {', '.join(missing)} as syscall tracepoints")
    stream = events_out(output)
    session = make_session(names, command=(ctx.obj or {}).get("command"), recover=not no_recover,
                           pages=buffer_pages, command_stdout=command_stdout(stream), **opts)
    sys.exit(run_monitor(session, policy, drive, show_all=show_all, as_json=as_json, summary=not no_summary,
                         missing=missing, stream=stream, aggregate_s=None if no_aggregate else aggregate_s))


# -- user_events (tracer/user_events) ---------------------------------------------------------------
@cli.group("list")
def list_group() -> None:
    """List what can be traced."""


@list_group.command("user_events")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
def list_user_events(as_json: bool) -> None:
    """Registered user_events (single- and multi-format), their fields, and whether they are enabled."""
    from .kenv import tracefs_root
    from .user_events import require, status
    from .user_events.render import event_listing

    try:
        root = tracefs_root()
        require(root)
        events = status.list_events(root)
    except OSError as e:
        raise TracerError(f"cannot read user_events from tracefs: {e}") from None
    if as_json:
        import json

        for ev in events:
            sys.stdout.write(json.dumps(ev) + "\n")
    else:
        console = Console(highlight=False, soft_wrap=True)
        for line in event_listing(events):
            console.print(line)


@list_group.command("syscalls")
@click.argument("patterns", nargs=-1, shell_complete=complete_events)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per syscall.")
def list_syscalls(patterns: tuple[str, ...], as_json: bool) -> None:
    """Syscalls this kernel can trace: [NAME|GLOB|%group]... (default: all)

    Each with its number, its arguments as the tracepoint declares them, its %groups and the arguments
    read from user memory. `tracer list syscalls %net` lists a group's members.
    """
    from .listing import syscall_line, syscall_rows

    rows = syscall_rows(list(patterns))
    if as_json:
        import json

        sys.stdout.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        sys.stdout.writelines(syscall_line(row) + "\n" for row in rows)


@list_group.command("groups")
def list_groups() -> None:
    """The %groups EVENT accepts, with their members on this kernel."""
    from .listing import group_names, syscall_rows

    for group in group_names():
        names = [row["name"] for row in syscall_rows([f"%{group}"])]
        sys.stdout.write(f"%{group} ({len(names)}): {' '.join(names)}\n")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(tracer completion bash)" (EVENT names, groups, options)."""
    from click.shell_completion import get_completion_class

    comp_class = get_completion_class(shell)
    assert comp_class is not None  # click.Choice lets through only the shells click has a class for
    comp = comp_class(cli, {}, "tracer", "_TRACER_COMPLETE")
    sys.stdout.write(comp.source() + "\n")


@cli.command("man")
def man_page() -> None:
    """Print tracer(1), generated from this help, as roff: tracer man | man -l -"""
    from .manpage import render

    sys.stdout.write(render(cli))


@cli.group("user-events")
def user_events_group() -> None:
    """Write user_events (the writer side), e.g. from scripted sessions."""


@user_events_group.command("emit")
@click.argument("name")
@click.argument("args", default="")
@click.argument("values", nargs=-1)
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Wait up to S seconds for a tracer to enable the event before writing.")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True, help="Write N times.")
@click.option("--persist", is_flag=True, help="USER_EVENT_REG_PERSIST: keep the event after exit (CAP_PERFMON).")
@click.option("--multi-format", is_flag=True, help="USER_EVENT_REG_MULTI_FORMAT (Linux 6.9+).")
def user_events_emit(name: str, args: str, values: tuple[str, ...], wait_s: float, count: int, persist: bool,
                     multi_format: bool) -> None:
    """Register NAME with the fields ARGS ('u32 id;__rel_loc char[] path') and write FIELD=VALUE...

    Exit status 0 when every write was recorded, 1 on a failure (the kernel's meaning is printed:
    EBADF disabled, EFAULT discarded, EINVAL bad format).
    """
    from .user_events.emitter import UserEvents, parse_value
    from .user_events.formats import FormatError

    try:
        with UserEvents() as ue:
            ev = ue.register(f"{name} {args}".strip(), persist=persist, multi_format=multi_format)
            by_name = {f.name: f for f in ev.fields}
            vals: dict[str, object] = {}
            for item in values:
                key, sep, text = item.partition("=")
                if not sep or key not in by_name:
                    raise UsageError(f"{item!r}: expected FIELD=VALUE with FIELD one of "
                                     f"{', '.join(by_name) or '(no fields)'}")
                try:
                    vals[key] = parse_value(by_name[key], text)
                except ValueError as e:
                    raise UsageError(f"{item!r}: {e}") from None
            write_when_enabled(ev, wait_s, count, lambda: ev.write(**vals))
    except FormatError as e:
        raise UsageError(f"bad name_args: {e}") from None
    except TracerError:
        raise
    except OSError as e:  # not a user_events call's own error (those are UserEventError): say where it came from
        raise TracerError(f"user_events: {e}") from None


def write_when_enabled(ev: Event, wait_s: float, count: int, write: Callable[[], object]) -> None:
    """Wait up to wait_s for a tracer to enable the event, then write it `count` times."""
    deadline = time.monotonic() + wait_s
    while not ev.enabled and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(count):
        write()


LEVELS = {"critical": 1, "error": 2, "warning": 3, "information": 4, "verbose": 5}


@user_events_group.command("emit-eventheader")
@click.argument("provider")
@click.argument("event")
@click.argument("fields", nargs=-1)
@click.option("--level", default="information", show_default=True,
              help="1-255 or critical, error, warning, information, verbose (the tracepoint's _L part).")
@click.option("--keyword", default="0", show_default=True, help="The tracepoint's _K part, e.g. 0x2.")
@click.option("--opcode", default="info", show_default=True,
              help="info, activity_start, activity_stop, ... or a number 0-255.")
@click.option("--id", "event_id", type=click.IntRange(0, 0xFFFF), default=0, show_default=True, help="Event id.")
@click.option("--activity", help="Activity id: a UUID (with --related, the related activity's UUID).")
@click.option("--related", help="Related activity id, a UUID (needs --activity).")
@click.option("--big-endian", is_flag=True, help="Write the header, metadata and payload big-endian.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Wait up to S seconds for a tracer to enable the event before writing.")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True, help="Write N times.")
def user_events_emit_eventheader(provider: str, event: str, fields: tuple[str, ...], level: str, keyword: str,
                                 opcode: str, event_id: int, activity: str | None, related: str | None,
                                 big_endian: bool, wait_s: float, count: int) -> None:
    """Register PROVIDER's EventHeader tracepoint and write EVENT with FIELDS (NAME:TYPE=VALUE...).

    As Microsoft's LinuxTracepoints libraries and the OpenTelemetry user_events exporters write them:
    tracepoint `PROVIDER_L<level>K<keyword>`, the event name and each field's name and type in the
    metadata. TYPE: i8..i64, u8..u64, x8..x64 (hex), f32, f64, bool, errno, pid, time, str, str16,
    str32, cstr, bin (hex digits), uuid, ipv4, ipv6, port, or ENCODING[/FORMAT]; `TYPE[]` for an
    array of comma-separated values. Example: emit-eventheader MyApp Request id:u32=7 path:str=/srv/a
    """
    import uuid

    from .user_events.eh_write import encode_event, parse_field
    from .user_events.emitter import UserEvents
    from .user_events.eventheader import OPCODES

    lvl = LEVELS.get(level, None)
    kw = op = None
    try:
        lvl = lvl if lvl is not None else int(level, 0)
        kw = int(keyword, 0)
        op = {v: k for k, v in OPCODES.items()}.get(opcode)
        op = op if op is not None else int(opcode, 0)
        ids = [uuid.UUID(a).bytes for a in (activity, related) if a is not None]
    except ValueError as e:
        raise UsageError(f"bad --level, --keyword, --opcode, --activity or --related: {e}") from None
    if not 1 <= lvl <= 255 or not 0 <= kw < 1 << 64 or not 0 <= op <= 255:
        raise UsageError("--level must be 1-255, --keyword 0 to 2^64-1, --opcode 0-255")
    if related is not None and activity is None:
        raise UsageError("--related needs --activity")
    if not re.fullmatch(r"[A-Za-z0-9_]+", provider) or "\0" in event or not event:
        raise UsageError("PROVIDER: letters, digits and underscores; EVENT: a non-empty name without NUL")
    try:
        parsed = [parse_field(f) for f in fields]
    except ValueError as e:
        raise UsageError(str(e)) from None
    payload = encode_event(event, parsed, level=lvl, id=event_id, opcode=op,
                           activity=ids[0] if ids else None, related=ids[1] if len(ids) > 1 else None,
                           order="big" if big_endian else "little")
    try:
        with UserEvents() as ue:
            ev = ue.register_eventheader(provider, lvl, kw)
            write_when_enabled(ev, wait_s, count, lambda: ev.write_payload(payload))
    except TracerError:
        raise
    except OSError as e:
        raise TracerError(f"user_events: {e}") from None


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = None
    if "--" in args:
        i = args.index("--")
        args, command = args[:i], args[i + 1:]
        if not command:
            sys.stderr.write("tracer: nothing after `--`: give the command to run, e.g. "
                             "`tracer trace openat2 -- ls /`\n")
            sys.exit(2)
    cli.main(args=args, obj={"command": command}, prog_name="tracer")


if __name__ == "__main__":
    main()
