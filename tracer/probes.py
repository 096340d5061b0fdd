"""Loading and attaching bpf/trace.bpf.c through bcc, configuring it, and detaching it.

Everything the kernel holds for a session (programs, tracepoint links, perf events, rings) is owned
by a `SyscallProbes` and released by `close()`, which is idempotent and called on every exit path.
"""

from __future__ import annotations

import ctypes as ct
import os
from dataclasses import dataclass, field

from .kenv import BPF_DIR, EnvironmentProblem, bpf_source, prepare_bcc
from .layout import const, packer
from .perf import RingSet, bpf_output_attr, online_cpus
from .syscalls import Syscall

DEFAULT_PAGES = 256  # per CPU: 1 MiB rings absorb ~4,000 typical records per CPU between drains


@dataclass
class Filters:
    pids: list[int] = field(default_factory=list)
    tids: list[int] = field(default_factory=list)
    uid: int | None = None
    comm: str | None = None
    follow: bool = False
    recover: bool = True


class SyscallProbes:
    def __init__(self, syscalls: list[Syscall], filters: Filters, pages: int = DEFAULT_PAGES) -> None:
        prepare_bcc()
        from bcc import BPF  # imported late: bcc compiles against the headers chosen above

        self.syscalls = syscalls
        self.filters = filters
        self.rings: RingSet | None = None
        self.attached: list[str] = []
        self.bpf = None
        try:
            self.bpf = BPF(src_file=str(bpf_source("trace.bpf.c")).encode(),
                           cflags=[f"-I{BPF_DIR}", "-Wno-unused-function"])
            self._configure()
            self._open_rings(pages)
            self._attach()
        except Exception:
            self.close()
            raise

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
        conf = packer("tracer_conf").pack(flags, os.getpid(), f.uid or 0, 0, comm)
        self._set("conf", 0, conf)
        one = ct.c_uint8(1)
        for pid in f.pids:
            self.bpf["pids"][ct.c_uint32(pid)] = one
        for tid in f.tids:
            self.bpf["tids"][ct.c_uint32(tid)] = one
        sc = packer("sc_conf")
        nmax = const("MAX_READS")
        for s in self.syscalls:
            fl = const("SC_TRACED") | (const("SC_NORETURN") if s.noreturn else 0) | (
                const("SC_EXEC") if s.exec_ else 0)
            pad = [0] * (nmax - len(s.reads))
            self._set("sc_conf", s.nr, sc.pack(
                fl, len(s.args), len(s.reads), 0,
                bytes([r.arg for r in s.reads] + pad), bytes([r.kind for r in s.reads] + pad),
                bytes([r.lenarg for r in s.reads] + pad), *([r.size for r in s.reads] + pad)))

    def _set(self, table: str, key: int, value: bytes) -> None:
        t = self.bpf[table]
        leaf = t.Leaf.from_buffer_copy(value.ljust(ct.sizeof(t.Leaf), b"\0"))
        t[t.Key(key)] = leaf

    def add_pid(self, pid: int) -> None:
        self.bpf["pids"][ct.c_uint32(pid)] = ct.c_uint8(1)

    def _open_rings(self, pages: int) -> None:
        cpus = online_cpus()
        # Wake the reader when a quarter of a ring is used; the poll timeout bounds latency otherwise.
        self.rings = RingSet.open(cpus, bpf_output_attr(pages * 4096 // 4), pages)
        events = self.bpf["events"]
        for ring in self.rings.rings:
            events[ct.c_int(ring.cpu)] = ct.c_int(ring.fd)

    def _attach(self) -> None:
        b = self.bpf
        for s in self.syscalls:
            fn = f"sys_enter_{len(s.args)}"
            b.attach_tracepoint(tp=s.enter_tp, fn_name=fn)
            self.attached.append(s.enter_tp)
            if not s.noreturn:
                b.attach_tracepoint(tp=s.exit_tp, fn_name="sys_exit")
                self.attached.append(s.exit_tp)

    def stats(self) -> list[int]:
        """Per-counter sums over CPUs (record.h ST_*)."""
        t = self.bpf["stats"]
        return [sum(t[t.Key(i)]) for i in range(const("NSTATS"))]

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None
        if self.rings is not None:
            self.rings.close()
            self.rings = None


def load_error(e: Exception) -> EnvironmentProblem:
    """Turn bcc's compile/attach failures into one line with a fix."""
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return EnvironmentProblem(f"could not load the BPF programs: {msg} (see `tracer doctor`)")
