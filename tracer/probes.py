"""Loading and attaching bpf/trace.bpf.c (compiled by bcc, or from the program cache), configuring it,
and detaching it.

Everything the kernel holds for a session (programs, maps, tracepoint links, perf events, rings) is owned
by a `SyscallProbes` and released by `close()`, which is idempotent and called on every exit path.
Configuration goes through bpfsys.Map (map fds) whichever way the object was loaded (tracer/bpfcache.py).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

from . import attach, bpfcache, bpfsys, kstructs
from .errors import EnvironmentProblem
from .kenv import BPF_DIR
from .layout import const, packer, struct_of
from .perf import RingSet, default_pages
from .ringbuf import HEAD, ring_bytes
from .syscalls import Syscall

# From this many syscalls on, attach to raw_syscalls:sys_enter/sys_exit (2 tracepoints) instead of two
# tracepoints per syscall: each perf event detach waits for an RCU-tasks grace period, one at a time
# (~60 ms here: `trace %file`, 166 tracepoints, took 10 s to exit), and attaching costs as much again.
# The raw programs run for every syscall of every task (a cost the per-syscall ones do not have), so
# small sets keep per-syscall tracepoints: at 8 syscalls the detach is ~1 s (bench/run.py, [2]).
RAW_MIN_SYSCALLS = 8
ATTACH_ENV = "TRACER_ATTACH"  # "raw" or "syscall": force one way (bench, tests)
SPEC = bpfcache.Spec("trace.bpf.c", (f"-I{BPF_DIR}", "-Wno-unused-function"))
_U32 = struct.Struct("<I")
_ONE = b"\1"


@dataclass
class Filters:
    pids: list[int] = field(default_factory=list)
    tids: list[int] = field(default_factory=list)
    uid: int | None = None
    comm: str | None = None
    follow: bool = False
    recover: bool = True


def trace_spec(sleepable_kind: str | None = None, pages: int | None = None) -> bpfcache.Spec:
    """bpf/trace.bpf.c as this kernel gets it. The kernel-struct offsets of the opened-file walk are cflags:
    a kernel with other offsets gets another program (and another cache entry); so is the ring's size (its
    map is defined in the source), from `pages` per CPU (tracer/ringbuf.py ring_bytes; default: the
    memory budget, perf.default_pages(), as sessions use)."""
    extra = (*kstructs.offsets().cflags(), *(attach.syscall_cflags() if sleepable_kind else ()),
             f"-DRING_PAGES={ring_bytes(pages or default_pages()) // mmap.PAGESIZE}")
    return bpfcache.Spec(SPEC.source, (*SPEC.cflags, *extra))


class SyscallProbes(bpfcache.ObjectOwner):
    def __init__(self, syscalls: list[Syscall], filters: Filters, pages: int | None = None,
                 sleepable_kind: str | None = None) -> None:
        self.syscalls = syscalls
        self.filters = filters
        self.rings: RingSet | None = None
        self.attached: list[str] = []
        self.obj: bpfcache.BpfObject | None = None
        self.sleepers: attach.SleepableSyscalls | None = None  # --read-mode: tp.s/fentry.s readers

        def begin(obj: bpfcache.BpfObject) -> None:
            self.obj = obj
            self._configure()
            if self.kfile.ok and any(s.opens_file for s in self.syscalls):
                # sys_exit tail-calls the opened-file walk (bpf/kfile.h) for successful open-family calls.
                self._set("exit_tails", 0, _U32.pack(obj.prog_fd("sys_exit_kfile")))
            if self.kfile.ok and any(s.exec_ for s in self.syscalls):
                # execve argv/envp (bpf/strv.h): read at entry and exit by tail-called programs.
                self._set("enter_tails", 0, _U32.pack(obj.prog_fd("sys_enter_exec")))
                self._set("exit_tails", 1, _U32.pack(obj.prog_fd("sys_exit_exec")))
            ring_full = const("ST_RING_FULL")
            self.open_ringbuf("events", lambda: self.counter_per_cpu(ring_full))
            # -- sleepable syscall reads (tracer/attach.py): before _attach, whose entry programs
            # tp.s readers replace
            if sleepable_kind:
                self.sleepers = attach.SleepableSyscalls(sleepable_kind, self.syscalls, obj.insns, obj.license)
            # -- end sleepable syscall reads
            self._attach()
            self._set_conf(off=False)  # every program attached: tracing starts now, for all at once

        self.kfile = kstructs.offsets()
        spec = trace_spec(sleepable_kind, pages)
        status_off = task_status_offset() if use_raw(len(syscalls), sleepable_kind) else None
        self.raw = status_off is not None  # attached to raw_syscalls (see RAW_MIN_SYSCALLS)
        if self.raw:
            spec = bpfcache.Spec(spec.source, (*spec.cflags, f"-DTASK_STATUS_OFF={status_off}"))
        try:
            bpfcache.start(spec, begin, self.close)
        except Exception:
            self.close()
            raise

    @property
    def warm(self) -> bool:
        """Loaded from the program cache (no compile)."""
        return bool(self.obj and self.obj.warm)

    def _map(self, name: str) -> bpfsys.Map:
        assert self.obj is not None
        return self.obj.maps[name]

    def _configure(self) -> None:
        f = self.filters
        flags = 0
        flags |= const("CF_PID") if f.pids else 0
        flags |= const("CF_TID") if f.tids else 0
        flags |= const("CF_UID") if f.uid is not None else 0
        flags |= const("CF_COMM") if f.comm else 0
        flags |= const("CF_FOLLOW") if f.follow else 0
        flags |= const("CF_RECOVER") if f.recover else 0
        comm = (f.comm or "").encode()[:15]
        self._conf = (flags, os.getpid(), f.uid or 0, 0, comm)
        self._set_conf(off=True)
        for pid in f.pids:
            self._map("pids").update(_U32.pack(pid), _ONE)
        for tid in f.tids:
            self._map("tids").update(_U32.pack(tid), _ONE)
        sc = packer("sc_conf")
        nmax = const("MAX_READS")
        for s in self.syscalls:
            fl = const("SC_TRACED") | (const("SC_NORETURN") if s.noreturn else 0) | (
                const("SC_EXEC") if s.exec_ else 0) | (const("SC_OPEN") if s.opens_file and self.kfile.ok else 0)
            pad = [0] * (nmax - len(s.reads))
            self._set("sc_conf", s.nr, sc.pack(
                fl, len(s.args), len(s.reads), 0,
                bytes([r.arg for r in s.reads] + pad), bytes([r.kind for r in s.reads] + pad),
                bytes([r.lenarg for r in s.reads] + pad), *([r.size for r in s.reads] + pad)))

    def _set(self, table: str, key: int, value: bytes) -> None:
        self._map(table).update(_U32.pack(key), value)

    def _set_conf(self, off: bool) -> None:
        """CF_OFF: the programs do nothing (before every one is attached, and after stop)."""
        flags, *rest = self._conf
        self._set("conf", 0, packer("tracer_conf").pack(flags | (const("CF_OFF") if off else 0), *rest))

    def add_pid(self, pid: int) -> None:
        self._map("pids").update(_U32.pack(pid), _ONE)

    def stop(self) -> None:
        """Stop tracing at one instant for every program (one conf write: CF_OFF), keeping the maps and
        rings: the counters and the in-flight table are then final. Detaching would stop them one
        tracepoint at a time (exits running whose entries no longer do) and waits for the kernel; that
        is left to close(). A program already past its conf check finishes within microseconds, long
        before the session has drained the rings and reads the counters."""
        if self.obj is not None:
            self._set_conf(off=True)

    def stats_per_cpu(self) -> list[list[int]]:
        """[counter][cpu] (record.h ST_*), for the possible CPUs."""
        return [self.counter_per_cpu(i) for i in range(const("NSTATS"))]

    def counter_per_cpu(self, index: int) -> list[int]:
        """One counter (record.h ST_*) per possible CPU."""
        return [int.from_bytes(v[:8], "little") for v in self._map("stats").lookup_percpu(_U32.pack(index)) or ()]

    def in_flight(self) -> int:
        """Calls entered and not yet returned (after stop(): those that never will be traced)."""
        flag = const("RF_ACTIVE")
        off = HEAD + struct_of("sys_record").field("flags").offset  # behind its struct ring_head
        return sum(1 for v in self._map("inflight").values() if v[off] & flag)

    def _attach(self) -> None:
        assert self.obj is not None
        if self.raw:
            self.obj.attach_tracepoint("raw_syscalls:sys_enter", "raw_sys_enter")
            self.obj.attach_tracepoint("raw_syscalls:sys_exit", "sys_exit")
            self.attached = ["raw_syscalls:sys_enter", "raw_syscalls:sys_exit"]
            return
        for s in self.syscalls:
            fn = f"sys_enter_{len(s.args)}"
            if self.sleepers is None or not self.sleepers.replaces_enter(s):
                self.obj.attach_tracepoint(s.enter_tp, fn)
            self.attached.append(s.enter_tp)
            if not s.noreturn:
                self.obj.attach_tracepoint(s.exit_tp, "sys_exit")
                self.attached.append(s.exit_tp)

    def stats(self) -> list[int]:
        """Per-counter sums over CPUs (record.h ST_*)."""
        return self._map("stats").counters(const("NSTATS"))

    def close(self) -> None:
        self.attached = []
        for name, slots in (("enter_tails", 1), ("exit_tails", 2)):
            if self.obj is None or name not in self.obj.maps:
                continue
            # A program array keeps its programs alive until the kernel clears it, later, once no fd
            # holds it: empty it now so that nothing is left loaded when close() returns.
            for i in range(slots):
                try:
                    self.obj.maps[name].delete(_U32.pack(i))
                except bpfsys.BpfError:
                    pass
        if self.sleepers is not None:
            self.sleepers.close()
            self.sleepers = None
        super().close()


def use_raw(n: int, sleepable_kind: str | None) -> bool:
    """Whether n syscalls are traced through raw_syscalls. Not with sleepable entry readers: those are
    per-syscall tp.s programs."""
    forced = os.environ.get(ATTACH_ENV, "")
    if sleepable_kind:
        return False
    if forced in ("raw", "syscall"):
        return forced == "raw"
    return n >= RAW_MIN_SYSCALLS


def task_status_offset() -> int | None:
    """offsetof(struct task_struct, thread_info.status) in the running kernel (BTF), where the ia32
    syscall flag lives; None (per-syscall tracepoints then) where the kernel has no BTF or no such field
    (only x86's thread_info has TS_COMPAT)."""
    if os.uname().machine != "x86_64":
        return None
    from . import btf

    try:
        return btf.vmlinux().offsetof("task_struct", "thread_info", "status")
    except (OSError, KeyError, btf.BtfError):
        return None


def load_error(e: Exception) -> EnvironmentProblem:
    """Turn bcc's compile/attach failures into one line with a fix."""
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return EnvironmentProblem(f"could not load the BPF programs: {msg} (see `tracer doctor`)")
