"""Tracing sessions: the Python API that the CLI is built on.

    with Session(["openat2"], command=["./app"]) as s:
        for ev in s:
            print(ev.syscall, ev.args["filename"], ev.reads["filename"]["status"])
    print(s.summary())

A session owns its BPF programs, perf rings and child command, and releases them on every exit path.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from . import syscalls
from .probes import DEFAULT_PAGES, Filters
from .sources import Source, SourceOptions, SyscallSource, builder, order_ts, split_specs

POLL_MS = 100  # longest time a record waits in a ring before it is shown
READ_STATUSES = ("ok", "recovered", "changed", "missing", "truncated", "null")


class Event:
    """One decoded record: attribute access to its fields, `.to_json()` for the JSON Lines form."""

    __slots__ = ("data",)

    def __init__(self, data: dict) -> None:
        self.data = data

    def __getattr__(self, name: str) -> object:
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> object:
        return self.data[key]

    def get(self, key: str, default: object = None) -> object:
        return self.data.get(key, default)

    def to_json(self) -> str:
        return json.dumps(self.data)

    @property
    def has_missing_data(self) -> bool:
        """Some pointer argument could not be read at entry (missing, recovered) or changed."""
        return any(r["status"] in ("missing", "recovered", "changed") for r in self.data.get("reads", {}).values())

    def __repr__(self) -> str:
        return f"Event({self.data!r})"


@dataclass
class Stats:
    events: int = 0
    lost: int = 0
    lost_per_cpu: Counter = field(default_factory=Counter)
    reads: Counter = field(default_factory=Counter)
    by_arg: dict = field(default_factory=lambda: defaultdict(Counter))
    events_with_reads: int = 0
    wrong_without_recovery: int = 0

    def add(self, ev: dict) -> None:
        self.events += 1
        reads = ev.get("reads") or {}
        if reads:
            self.events_with_reads += 1
        wrong = False
        for arg, info in reads.items():
            st = info["status"]
            self.reads[st] += 1
            self.by_arg[f"{ev['syscall']}.{arg}"][st] += 1
            # A plain entry-only tracer would have shown nothing (or zeros) for a recovered read and
            # missed the change for a changed one.
            wrong |= st in ("recovered", "changed")
        self.wrong_without_recovery += wrong


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
        explain: bool = True,
        pages: int = DEFAULT_PAGES,
        callback: Callable[[Event], None] | None = None,
    ) -> None:
        plain, self.other_specs = split_specs(list(events))
        self.syscalls = syscalls.resolve(plain) if plain else []
        self.command = list(command) if command else None
        self.filters = Filters(list(pids), list(tids), uid, comm, follow or bool(command), recover)
        if self.command:
            self.filters.pids = self.filters.pids or [0]  # the child's pid is added once it exists
        self.duration = duration
        self.count = count
        self.only_missing = only_missing
        self.explain = explain
        self.pages = pages
        self.callback = callback
        self.stats = Stats()
        self.sources: list[Source] = []
        self.probes = None  # the syscall source's SyscallProbes while running
        self.child: int | None = None  # pid of the command we started, until it is reaped
        self.exit_code: int | None = None
        self.started = 0.0
        self.kernel_counts: dict[str, int] = {}
        self._rings: list = []
        self._stop = False
        self._gate: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.resolver = None
        if self.explain:
            from .regions import RegionResolver

            self.resolver = RegionResolver()
        opts = SourceOptions(self.filters, self.pages, self.resolver.explain if self.resolver else None)
        try:
            if self.syscalls:
                src = SyscallSource(self.syscalls, opts)
                self.sources.append(src)
                self.probes = src.probes
            for target, specs in self.other_specs.items():
                self.sources.append(builder(target)(specs, opts))
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        self._rings = [(src, ring) for src in self.sources if src.rings for ring in src.rings.rings]
        for _src, ring in self._rings:
            self._poll.register(ring.fd, select.POLLIN)
        self.started = time.monotonic()
        if self.command:
            self._spawn()

    def _spawn(self) -> None:
        """Start the command held at a gate until its pid is in the kernel's filter, so that its
        execve and everything after it is traced. (subprocess.Popen cannot do this: it waits for
        the exec before returning the pid.)"""
        cmd = self.command
        gate_r, gate_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(gate_w)
                os.close(err_r)
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                os.read(gate_r, 1)
                os.close(gate_r)
                os.execvp(cmd[0], cmd)
            except OSError as e:
                os.write(err_w, str(e.errno).encode())
            finally:
                os._exit(127)
        os.close(gate_r)
        os.close(err_w)
        self.child = pid
        try:
            for src in self.sources:
                src.add_pid(pid)
            os.write(gate_w, b"x")
        finally:
            os.close(gate_w)
        failed = os.read(err_r, 16)  # EOF once the exec succeeded (close-on-exec)
        os.close(err_r)
        if failed:
            os.waitpid(pid, 0)
            self.child = None
            raise CommandError(f"cannot run {cmd[0]!r}: {os.strerror(int(failed))}")

    def _child_exited(self) -> bool:
        if self.child is None:
            return False
        pid, status = os.waitpid(self.child, os.WNOHANG)
        if pid == 0:
            return False
        rc = os.waitstatus_to_exitcode(status)
        self.exit_code = 128 - rc if rc < 0 else rc
        self.child = None
        return True

    def stop(self) -> None:
        """Ask the event loop to finish (safe from a signal handler)."""
        self._stop = True

    def close(self) -> None:
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
        self.probes = None

    # -- events ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        if not self.sources:
            self.start()
        deadline = self.started + self.duration if self.duration else None
        draining = 0  # polls left after the command ended, to collect its last records
        while not self._stop:
            self._wait(POLL_MS)
            yield from self._drain()  # never more than --count events in all
            if self._count_reached():
                return
            if deadline is not None and time.monotonic() >= deadline:
                break
            if draining == 0 and self._child_exited():
                draining = 2
            elif draining:
                draining -= 1
                if draining == 0:
                    break
        if not self._count_reached():
            yield from self._drain()

    def _count_reached(self) -> bool:
        return self.count is not None and self.stats.events >= self.count

    def _wait(self, timeout_ms: int) -> None:
        try:
            self._poll.poll(timeout_ms)
        except InterruptedError:
            pass

    def _drain(self) -> list[Event]:
        out: list[Event] = []
        events: list[dict] = []
        for src, ring in self._rings:
            batch = ring.drain()
            if batch.lost:
                self.stats.lost += batch.lost
                self.stats.lost_per_cpu[batch.cpu] += batch.lost
                out.append(Event({"kind": "lost", "source": src.name, "cpu": batch.cpu, "count": batch.lost}))
            if batch.samples:
                decode = src.decode
                cpu = batch.cpu
                events.extend(decode(raw, cpu) for raw in batch.samples)
        events.sort(key=order_ts)
        for data in events:
            ev = Event(data)
            if self.only_missing and not ev.has_missing_data:
                continue
            if self._count_reached():
                break
            self.stats.add(data)
            if self.callback is not None:
                self.callback(ev)
            out.append(ev)
        return out

    def run(self) -> Stats:
        """Consume every event (through the callback, if any) until a limit or the command ends."""
        for _ in self:
            pass
        return self.stats

    def summary(self) -> dict:
        s = self.stats
        return {
            "kind": "summary",
            "events": s.events,
            "lost": s.lost,
            "lost_per_cpu": {str(k): v for k, v in sorted(s.lost_per_cpu.items())},
            "reads": {k: s.reads.get(k, 0) for k in READ_STATUSES},
            "by_arg": {k: dict(v) for k, v in sorted(s.by_arg.items())},
            "events_with_reads": s.events_with_reads,
            "wrong_without_recovery": s.wrong_without_recovery,
            "wrong_without_recovery_share": (
                round(s.wrong_without_recovery / s.events_with_reads, 4) if s.events_with_reads else 0.0),
            "kernel": dict(self.kernel_counts),
            "elapsed_s": round(time.monotonic() - self.started, 3) if self.started else 0.0,
            "exit_code": self.exit_code,
        }


class CommandError(RuntimeError):
    pass


def install_signal_stop(session: Session) -> None:
    """Ctrl-C, SIGTERM and SIGHUP end the session at its next poll: every counted event is shown."""

    def handler(signum: int, frame: object) -> None:
        session.stop()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
