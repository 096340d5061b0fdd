"""Tracing sessions: the Python API that the CLI is built on.

    with Session(["openat2"], command=["./app"]) as s:
        for ev in s:
            print(ev.syscall, ev.args["filename"], ev.reads["filename"]["status"])
    print(s.summary())

A session owns its BPF programs, perf rings and child command, and releases them on every exit path.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from . import __version__, syscalls
from .capture import FORMAT_VERSION, CaptureWriter
from .command import Command
from .contract import WallClock, clock_info
from .errors import CommandError
from .events import Event, Stats, lost_event, missing_data, summary_of
from .ordering import TimeOrder
from .perf import default_pages
from .probes import Filters, SyscallProbes
from .sources import Source, SourceOptions, SyscallSource
from .summary import is_error

if TYPE_CHECKING:
    from .decode import Decoder
    from .recjson import LineEncoder

POLL_MS = 100  # longest time a record waits in a ring before it is shown
# Until the first event, in the first second: the programs wake the reader only at a watermark, so a
# start would otherwise be confirmed by its first event up to POLL_MS late.
FIRST_POLL_MS, FIRST_S = 10, 1.0
# Longest time spent showing what the rings hold once the session is interrupted (Ctrl-C, SIGTERM);
# what is left then is counted lost as discarded_at_exit. When -- CMD or --duration ends the session,
# everything is read, however long it takes.
FINAL_DRAIN_S = 1.0




class Session:
    def __init__(
        self,
        events: Sequence[str] = ("openat2",),
        *,
        pids: Sequence[int] = (),
        tids: Sequence[int] = (),
        uid: int | None = None,
        comm: str | None = None,
        command: Sequence[str] | None = None,
        follow: bool = False,
        recover: bool = True,
        duration: float | None = None,
        count: int | None = None,
        only_missing: bool = False,
        failed_only: bool = False,
        explain: bool = True,
        pages: int | None = None,
        read_mode: str = "auto",
        callback: Callable[[Event], None] | None = None,
        record: str | os.PathLike | None = None,
        force: bool = False,
        user: str | None = None,
        command_stdout: int | None = None,
    ) -> None:
        """`record`: also write what the session delivers to this capture file (tracer/capture.py),
        created with mode 0600; an existing file is an error unless `force`. `pages`: perf ring size per
        CPU (a power of two); by default perf.default_pages() (a memory budget shared by the CPUs).
        `user`: run `command` as this user (name or uid); `command_stdout`: an fd for its stdout (the CLI
        keeps it out of an event stream on stdout). Ending the session ends the command (tracer/command.py)."""
        self.event_specs = list(events)
        plain, self.other_specs = split_specs(list(events))
        self.syscalls = syscalls.resolve(plain) if plain else []
        self.command = list(command) if command else None
        if user is not None and not self.command:
            raise CommandError("-u/--user USER runs the command given after `--` as USER: give one", 2)
        self._cmd = Command(self.command, user=user, stdout=command_stdout) if self.command else None
        self.filters = Filters(list(pids), list(tids), uid, comm, follow or bool(command), recover)
        if self.command:
            self.filters.pids = self.filters.pids or [0]  # the child's pid is added once it exists
        self.duration = duration
        self.count = count
        self.only_missing = only_missing
        self.failed_only = failed_only  # only syscalls that returned an error (strace -Z)
        self.explain = explain
        self.pages = pages or default_pages()
        self.read_mode = read_mode  # auto | sleepable | nofault (sources.SourceOptions)
        self.callback = callback
        # Called after the consumer has taken every event of a drain batch (e.g. JsonOutput.flush).
        self.batch_done: list[Callable[[], None]] = []
        # Run once per poll cycle (POLL_MS at most apart), events or not: work due at a time rather than
        # at the next event (the monitor closes its aggregation windows).
        self.ticks: list[Callable[[], None]] = []
        self.stats = Stats()
        self.sources: list[Source] = []
        self.probes: SyscallProbes | None = None  # the syscall source's, while running
        self.started = 0.0
        self.ended = 0.0
        self.record_path = record
        self.force = force
        self.recorder: CaptureWriter | None = None  # while recording
        self.record_error: str | None = None  # the capture could not be completed at close
        self.kernel_counts: dict[str, int] = {}
        # CLOCK_MONOTONIC -> wall-clock offset of this session: events' `time`, the summary, the
        # capture header and the JSON stream's first line all use this one value (tracer/contract.py).
        self.clock = clock_info()
        self._wall = WallClock(self.clock["mono_to_wall_ns"])
        self._rings: list = []
        self._decoders: dict[Source, Callable[[bytes, int], dict]] = {}
        self._order = TimeOrder()  # events read but held until every ring has passed their time
        self._stop = False
        self._timed_out = False  # stopped by --duration, not interrupted: the final drain reads everything
        self.detaching = False  # close() is releasing the kernel objects (see install_signal_stop)
        self._stop_signal: int = signal.SIGTERM  # what the command gets when the session stops first
        self._gate: int | None = None
        self._encoders: dict = {}  # id(source) -> recjson.LineEncoder, while batches(lines=True) runs

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Load and attach the sources (the `with` statement does it). Once: a second call would attach a
        second set of programs and show every call twice."""
        if self.sources:
            return
        self.resolver = None
        if self.explain:
            from .regions import RegionResolver

            self.resolver = RegionResolver()
        explain: Callable[[int, int], dict] | None = self.resolver.explain if self.resolver else None
        if self.record_path is not None:  # created first: a bad path fails before any BPF is loaded
            self.recorder = CaptureWriter(self.record_path, self.force)
            explain = self.recorder.wrap_explain(explain)
        opts = SourceOptions(self.filters, self.pages, explain, read_mode=self.read_mode)
        try:
            if self.syscalls:
                src = SyscallSource(self.syscalls, opts)
                self.sources.append(src)
                self.probes = src.probes
            for prefix, specs in self.other_specs.items():
                self.sources.append(build_source(prefix, specs, opts))
            if self.recorder is not None:
                self.recorder.begin(session_header(self), self.sources)
            # how each source's records become events: through the recorder when recording
            self._decoders = {src: src.decode if self.recorder is None else self.recorder.recording(src)
                              for src in self.sources}
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        self._rings = [(src, ring) for src in self.sources if src.rings for ring in src.rings.rings]
        for _src, ring in self._rings:
            self._poll.register(ring.fd, select.POLLIN)
        self.started = time.monotonic()
        if self.command and not self._stop:  # a signal during the start-up: nothing to start
            self._spawn()

    @property
    def child(self) -> int | None:
        """pid of the command we started, until it is reaped."""
        return self._cmd.pid if self._cmd is not None else None

    @property
    def exit_code(self) -> int | None:
        """The command's exit status (128 + N when killed by signal N), once it has ended."""
        return self._cmd.exit_code if self._cmd is not None else None

    def _spawn(self) -> None:
        """Start the command held at a gate until its pid is in the kernel's filter, so that its
        execve and everything after it is traced."""

        def admit(pid: int) -> None:
            for src in self.sources:
                src.add_pid(pid)

        if self._cmd is not None:
            self._cmd.spawn(admit)

    def _child_exited(self) -> bool:
        return self._cmd is not None and self._cmd.running and self._cmd.poll()

    def _command_ending(self) -> bool:
        """After stop(): True while the command we started is still ending (it got the signal that
        stopped us; SIGKILL at the deadline). The event loop keeps showing its events meanwhile."""
        cmd = self._cmd
        if cmd is None or cmd.poll():
            return False
        cmd.end(self._stop_signal)
        cmd.kill_due()
        return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Ask the event loop to finish (safe from a signal handler); a command we started gets `sig`,
        then SIGKILL after command.KILL_GRACE_S (at once on a second stop)."""
        if self._stop and self._cmd is not None and self._cmd.ending is not None:
            self._cmd.ending = (self._cmd.ending[0], 0.0)
        self._stop = True
        self._stop_signal = sig

    def close(self) -> None:
        if self.started and not self.ended:
            self.ended = time.monotonic()
        self.detaching = bool(self.sources)
        for src in self.sources:
            try:
                self.kernel_counts.update(src.kernel_stats())
            except Exception:
                pass
            try:
                src.close()
            except Exception:
                pass
        self.sources = []
        self._rings = []
        self._decoders = {}
        self.probes = None
        if self._cmd is not None:  # never left running; its status goes in the summary and the trailer
            self._cmd.finish(self._stop_signal)
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            self.record_error = recorder.close(self.summary() if self.started else None)

    # -- events ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        for batch in self.batches():
            yield from map(Event, batch)

    def batches(self, lines: bool | Callable[[Decoder], LineEncoder] = False) -> Iterator[list]:
        """The events of each drain as one list of event dicts (what `for ev in session` yields one by
        one, as Event objects): the cheap way to consume a fast stream. The `batch_done` hooks run once
        the consumer asks for the next batch.
        `lines`: for a consumer that only writes JSON Lines (`trace --json`), syscall events of the common
        shapes come as their JSON line (a str, the bytes of jsonenc.dumps(event), no newline), made
        straight from the record (tracer/recjson.py); the others, and lost-record notices, as dicts.
        Or, given a function that makes another LineEncoder for a decoder (ConsoleOutput.line_encoder:
        console lines, tracer/recconsole.py), what that one makes.
        Only where nothing else needs the dicts: no recorder or callback, no --only-missing/-Z filter."""
        self.start()  # once (start() says so): a session used without `with`
        self._lines_mode(lines)
        deadline = self.started + self.duration if self.duration else None
        while not self._stop or self._command_ending():
            self._wait(0 if self._backlog() else self._poll_ms())
            batch = self._drain()  # never more than --count events in all
            if batch:
                yield batch
                for done in self.batch_done:
                    done()
            for tick in self.ticks:
                tick()
            if self._count_reached():
                return
            if deadline is not None and not self._stop and time.monotonic() >= deadline:
                self._timed_out = True
                self.stop()  # a command we started gets SIGTERM; its last events are still shown
                deadline = None
                continue
            if self._child_exited():
                break
        yield from self._final()

    def _lines_mode(self, lines: bool | Callable[[Decoder], LineEncoder]) -> None:
        """batches(lines): a LineEncoder per syscall source where nothing else needs the event dicts."""
        self._encoders = {}
        if lines and self.recorder is None and self.callback is None and not self.only_missing \
                and not self.failed_only:
            from .recjson import LineEncoder, order_key

            make = lines if callable(lines) else lambda dec: LineEncoder(dec, self._wall.offset)
            self._encoders = {id(src): make(src.decoder) for src in self.sources if isinstance(src, SyscallSource)}
            if self._encoders:
                self._order = TimeOrder(order_key)

    def _final(self) -> Iterator[list[dict]]:
        """The end of a session: stop the sources producing, read what the rings hold — all of it, or
        for at most FINAL_DRAIN_S once interrupted (Ctrl-C, SIGTERM: the rest is released unread and
        counted as discarded_at_exit) — then count what no ring reported (accounting.py)."""
        for src in self.sources:
            try:
                src.quiesce()
            except OSError:
                pass  # still producing: what it adds is counted by the kernel all the same
        end = None
        while not self._count_reached():
            if end is None and self._stop and not self._timed_out:  # also a Ctrl-C during this drain
                end = time.monotonic() + FINAL_DRAIN_S
            batch = self._drain()
            if batch:
                yield batch
                for done in self.batch_done:
                    done()
            if not self._backlog():
                break
            if end is not None and time.monotonic() >= end:
                held = self._deliver([], self._order.flush())  # read already: shown, then the rest dropped
                if held:
                    yield held
                dropped = self._discard()
                if dropped:
                    yield dropped
                break
        held = self._deliver([], self._order.flush())  # no ring can add anything earlier now
        if held:
            yield held
        if self._count_reached():
            return  # --count: the rest was not asked for
        final = []
        for src in self.sources:
            try:
                losses = src.final_losses()
            except OSError:
                continue
            final += [self._lost(src, cpu, n, reason) for cpu, reason, n in losses]
        if self.recorder is not None:
            self.recorder.flush()
        if final:
            yield final

    def _lost(self, src: Source, cpu: int | None, count: int, reason: str) -> dict:
        """A lost-records event: counted in the stats and written to the capture."""
        ev = lost_event(src.name, cpu, count, reason)
        self.stats.add_lost(ev)
        if self.recorder is not None:
            self.recorder.lost(src, cpu, count, reason)
        return ev

    def _discard(self) -> list[dict]:
        """Release what the rings still hold, unread, as lost records: the samples as discarded_at_exit,
        the kernel's lost markers among them as ring_full."""
        out = []
        for src, ring in self._rings:
            if not getattr(ring, "backlog", False):
                continue
            samples, markers = ring.discard()
            if markers:
                out.append(self._lost(src, ring.cpu, markers, "ring_full"))
            if samples:
                out.append(self._lost(src, ring.cpu, samples, "discarded_at_exit"))
        if self.recorder is not None:
            self.recorder.flush()
        return out

    def _poll_ms(self) -> int:
        """How long the next poll may wait for a wake-up: FIRST_POLL_MS before the first event of the
        first FIRST_S seconds, POLL_MS after."""
        if not self.stats.events and time.monotonic() - self.started < FIRST_S:
            return FIRST_POLL_MS
        return POLL_MS

    def _backlog(self) -> bool:
        """A ring still holds records after a bounded drain (perf.DRAIN_MAX)."""
        return any(getattr(ring, "backlog", False) for _src, ring in self._rings)

    def _count_reached(self) -> bool:
        return self.count is not None and self.stats.events >= self.count

    def _wait(self, timeout_ms: int) -> None:
        try:
            self._poll.poll(timeout_ms)
        except InterruptedError:
            pass

    def _drain(self) -> list[dict]:
        """One bounded drain of every ring: lost-record notices first, then the decoded events in time
        order. The garbage collector is off meanwhile: a batch allocates thousands of containers, none
        of them in a cycle, and gen-0 collections every 700 allocations rescanned them over and over."""
        if not gc.isenabled():
            return self._drain_batch()
        gc.disable()
        try:
            return self._drain_batch()
        finally:
            gc.enable()

    def _drain_batch(self) -> list[dict]:
        if self._encoders:
            return self._drain_lines()
        out: list[dict] = []
        runs: list[list[dict]] = []
        partial: list[bool] = []
        began = time.monotonic_ns()
        for src, ring in self._rings:
            batch = ring.drain()
            for cpu, n in batch.losses():  # records the ring could not take since the last drain
                out.append(self._lost(src, cpu, n, "ring_full"))
            if batch.samples:
                runs.append(list(map(self._decoders[src], batch.samples, batch.sample_cpus())))
                partial.append(getattr(ring, "backlog", False))
        return self._deliver(out, self._order.order(runs, partial, began))

    def _deliver(self, out: list[dict], events: list[dict]) -> list[dict]:
        """Filters, counts, records and passes on one batch of ordered events (after `out`)."""
        if self._encoders:
            return self._deliver_lines(out, events)
        self._wall.stamp(events)
        if self.only_missing:
            events = self._filter(events, missing_data, "only_missing")
        if self.failed_only:
            events = self._filter(events, is_error, "failed_only")
        if self.count is not None:
            del events[max(self.count - self.stats.events, 0):]
        if self.recorder is None and self.callback is None:
            self.stats.add_many(events)
            out += events
            return out
        for data in events:
            self.stats.add(data)
            if self.recorder is not None:
                self.recorder.event(data)
            if self.callback is not None:
                self.callback(Event(data))
            out.append(data)
        if self.recorder is not None:
            self.recorder.flush()  # one write per drain batch
        return out

    def _filter(self, events: list[dict], keep: Callable[[dict], bool], name: str) -> list[dict]:
        kept = [d for d in events if keep(d)]
        if len(kept) < len(events):
            self.stats.filtered[name] += len(events) - len(kept)
        return kept

    def _drain_lines(self) -> list:
        """_drain_batch for batches(lines=True): recjson.Line for the records LineEncoder takes, dicts for
        the rest, ordered, stamped and counted alike; the Lines handed over as their text."""
        out: list = []
        runs = []
        partial: list[bool] = []
        began = time.monotonic_ns()
        for src, ring in self._rings:
            batch = ring.drain()
            for cpu, n in batch.losses():
                out.append(self._lost(src, cpu, n, "ring_full"))
            if batch.samples:
                enc = self._encoders.get(id(src))
                runs.append(enc.encode(batch.samples, batch.sample_cpus()) if enc is not None else
                            list(map(self._decoders[src], batch.samples, batch.sample_cpus())))
                partial.append(getattr(ring, "backlog", False))
        return self._deliver(out, self._order.order(runs, partial, began))

    def _deliver_lines(self, out: list, items: list) -> list:
        """_deliver for batches(lines=True) (which has no filter, recorder or callback)."""
        from .recjson import Line

        if self.count is not None:
            del items[max(self.count - self.stats.events, 0):]
        dicts = [it for it in items if type(it) is not Line]
        if dicts:
            self._wall.stamp(dicts)
            self.stats.add_many(dicts)
        if len(dicts) < len(items):
            groups: dict[tuple, int] = {}
            get = groups.get
            for it in items:
                if type(it) is Line:
                    groups[it[1]] = get(it[1], 0) + 1
            self.stats.add_groups(groups)
        out += [it[2] if type(it) is Line else it for it in items]
        return out

    def run(self) -> Stats:
        """Consume every event (through the callback, if any) until a limit or the command ends."""
        for _ in self:
            pass
        return self.stats

    def summary(self) -> dict:
        end = self.ended or time.monotonic()
        return summary_of(self.stats, self.kernel_counts, round(end - self.started, 3) if self.started else 0.0,
                          self.exit_code, self.clock["mono_to_wall_ns"])


def session_header(session: Session) -> dict:
    """The first frame of a capture of this session (tracer/capture.py): where, when and how it traced."""
    f = session.filters
    u = os.uname()
    return {
        "format": "tracer-capture", "version": FORMAT_VERSION,
        "tool": {"name": "tracer", "version": __version__},
        "kernel": {"sysname": u.sysname, "release": u.release, "version": u.version, "machine": u.machine},
        "host": socket.gethostname(),
        "clock": getattr(session, "clock", None) or clock_info(),
        "session": {"events": list(session.event_specs), "pids": list(f.pids), "tids": list(f.tids), "uid": f.uid,
                    "comm": f.comm, "follow": f.follow, "recover": f.recover, "command": session.command,
                    "duration": session.duration, "count": session.count, "only_missing": session.only_missing,
                    "explain": session.explain, "pages": session.pages,
                    "read_mode": getattr(session, "read_mode", None)},
    }


# Event-spec prefixes handled by sources other than the syscall one, each served by one function that
# builds a Source from all the specs carrying its prefix (imported only when used: uprobes load
# pyelftools, user_events their own BPF).
PREFIXES = ("user_events", "user_events_multi", "uprobe")


def build_source(prefix: str, specs: list[str], opts: SourceOptions) -> Source:
    """The source of every spec with `prefix` (one of PREFIXES)."""
    if prefix == "uprobe":
        from .uprobes import build
    else:
        from .user_events.source import build  # type: ignore[assignment]
    return build(specs, opts)


def split_specs(events: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Syscall specs, and the other specs grouped by the source that serves their prefix (user_events
    and user_events_multi: one source)."""
    plain: list[str] = []
    other: dict[str, list[str]] = {}
    for spec in events:
        prefix = spec.split(":", 1)[0] if ":" in spec else ""
        if prefix in PREFIXES:
            other.setdefault("user_events" if prefix == "user_events_multi" else prefix, []).append(spec)
        else:
            plain.append(spec)
    return plain, other


def exit_now(code: int) -> None:
    """Exit without waiting for the kernel to detach what we hold: a child inherits our descriptors and
    drops them only once we are gone, so the last reference, and with it the detach (one RCU grace period
    per tracepoint, one at a time), is the child's, in the background and in its own session (no Ctrl-C
    of ours reaches it). The probes stay attached until then; what they record is not read."""
    parent = os.getpid()
    if os.fork() == 0:
        try:
            os.setsid()
            while os.getppid() == parent:  # reparented once the parent has finished exiting
                time.sleep(0.01)
        finally:
            os._exit(0)
    os._exit(code)


def install_signal_stop(session: Session) -> None:
    """Ctrl-C, SIGTERM and SIGHUP end the session at its next poll: every counted event is shown. Another
    one while the probes are being detached exits at once (exit_now)."""

    def handler(signum: int, frame: object) -> None:
        if session.detaching:
            exit_now(128 + signum)
        session.stop(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
