"""The `tracer` command line: a thin layer over tracer.session and tracer.doctor."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from . import __version__
from .kenv import EnvironmentProblem
from .session import CommandError, Session, install_signal_stop
from .syscalls import UnknownEvent

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(f"tracer: {message}\n")  # one line, never wrapped
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracer")
def cli() -> None:
    """eBPF syscall tracer that never shows a guessed value.

    Every argument read from user memory carries its status (ok, recovered, changed, missing,
    truncated) with errno, address and where that address lives.

    \b
    Start with:  tracer trace openat2
                 tracer trace %file -- CMD ARGS...   (trace CMD and its children)
                 tracer doctor
    """


def trace_options(f):
    opts = [
        click.argument("events", nargs=-1),
        click.option("-p", "--pid", "pids", multiple=True, type=int, help="Trace this process (repeatable)."),
        click.option("--tid", "tids", multiple=True, type=int, help="Trace this thread (repeatable)."),
        click.option("-n", "--comm", help="Trace tasks with this command name (as in /proc/PID/comm)."),
        click.option("-u", "--uid", type=int, help="Trace tasks with this real user id."),
        click.option("-f", "--follow", is_flag=True, help="Also trace children of -p processes."),
        click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after S seconds."),
        click.option("--count", type=click.IntRange(min=1), help="Stop after N events."),
        click.option("--no-recover", is_flag=True,
                     help="No exit re-reads: show what a plain entry-only tracer would have seen."),
        click.option("--only-missing", is_flag=True,
                     help="Show only events with missing, recovered or changed user data."),
        click.option("--buffer-pages", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Perf ring size per CPU, in pages (a power of two)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@cli.command(context_settings={"ignore_unknown_options": False})
@trace_options
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout.")
@click.option("--no-summary", is_flag=True, help="Do not print the end-of-run summary.")
@click.pass_context
def trace(ctx: click.Context, events: tuple[str, ...], as_json: bool, no_summary: bool, **opts: object) -> None:
    """Trace syscalls live: EVENT... [-- CMD ARGS...]

    EVENT is a syscall name (openat2), a glob (open*), a group (%file, %net, %process) or a tracepoint
    name (syscalls:sys_enter_openat2). Default: openat2. With `-- CMD ARGS`, CMD is started and it and
    all its descendants are traced; tracer then exits with CMD's exit code.
    """
    command = (ctx.obj or {}).get("command")
    code = run_trace(list(events) or ["openat2"], command, as_json, not no_summary, **opts)
    sys.exit(code)


def run_trace(events: list[str], command: list[str] | None, as_json: bool, summary: bool, *, pids, tids,
              comm, uid, follow, duration, count, no_recover, only_missing, buffer_pages) -> int:
    from .output import ConsoleOutput, JsonOutput

    if buffer_pages & (buffer_pages - 1):
        fail(f"--buffer-pages {buffer_pages} is not a power of two (try {1 << buffer_pages.bit_length()})", 2)
    out = JsonOutput() if as_json else ConsoleOutput()
    try:
        session = Session(events, pids=pids, tids=tids, uid=uid, comm=comm, command=command, follow=follow,
                          recover=not no_recover, duration=duration, count=count, only_missing=only_missing,
                          pages=buffer_pages)
    except UnknownEvent as e:
        fail(str(e), 2)
    install_signal_stop(session)
    try:
        session.start()
        if not as_json:
            what = ", ".join(s.name for s in session.syscalls[:8])
            more = f" and {len(session.syscalls) - 8} more" if len(session.syscalls) > 8 else ""
            err_console.print(f"tracing {what}{more} — Ctrl-C to stop", markup=False, style="dim")
        for ev in session:
            if ev.kind == "lost":
                out.lost(ev.data)
            else:
                out.event(ev.data)
    except KeyboardInterrupt:
        pass
    except (EnvironmentProblem, CommandError) as e:
        session.close()
        fail(str(e))
    except BrokenPipeError:
        session.close()
        return 0
    except Exception as e:
        session.close()
        from .probes import load_error

        fail(str(load_error(e)))
    finally:
        session.close()
    if summary:
        out.summary(session.summary())
    if session.exit_code is not None:
        return session.exit_code
    return 0


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
        fail(f"{workload} is missing; run from a tracer source checkout")
    code = run_trace(["openat2"], [sys.executable, str(workload)], as_json, True, pids=(), tids=(), comm=None,
                     uid=None, follow=False, duration=None, count=None, no_recover=False, only_missing=False,
                     buffer_pages=256)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = None
    if "--" in args:
        i = args.index("--")
        args, command = args[:i], args[i + 1:]
        if not command:
            fail("nothing after `--`: give the command to run, e.g. `tracer trace openat2 -- ls /`", 2)
    cli.main(args=args, obj={"command": command}, prog_name="tracer")


if __name__ == "__main__":
    main()
