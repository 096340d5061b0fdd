"""Attaching program fds tracer loaded itself (tracer/bpfload.py), not through bcc: uprobes at a file
offset, and the sleepable syscall readers of bpf/trace.bpf.c (tp.s on the syscall tracepoints, fentry.s on
the syscall stubs). Which readers the kernel accepts is decided in tracer/sleepable.py (read_mode).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

from . import bpfsys, btf
from .bpfload import kfunc_cflags, libbcc, load_insns
from .layout import const
from .sleepable import READERS
from .syscalls import Syscall

SYSCALL_KINDS = READERS["syscalls"]


class UprobeLink:
    """A program fd attached as a uprobe (or uretprobe) at a file offset, through libbcc; close() detaches."""

    def __init__(self, prog_fd: int, path: str, offset: int, retprobe: bool, ev_name: str) -> None:
        lib = libbcc()
        self.ev_name = ev_name.encode()
        self.pfd = lib.bpf_attach_uprobe(prog_fd, 1 if retprobe else 0, self.ev_name, path.encode(), offset,
                                         -1, 0)
        if self.pfd < 0:
            err = ctypes.get_errno()
            kind = "uretprobe" if retprobe else "uprobe"
            raise OSError(err, f"attaching a {kind} to {path}+{offset:#x} failed: {os.strerror(err)}")

    def close(self) -> None:
        if self.pfd >= 0:
            lib = libbcc()
            lib.bpf_close_perf_event_fd(self.pfd)
            lib.bpf_detach_uprobe(self.ev_name)  # only matters when libbcc fell back to tracefs
            self.pfd = -1


def syscall_cflags() -> list[str]:
    """bcc cflags compiling bpf/trace.bpf.c's sleepable readers in (sys_enter_s_N, sys_fentry_s)."""
    return ["-DTRACER_SLEEPABLE", *kfunc_cflags()]


def fentry_target(syscall: str) -> str:
    """The x86_64 syscall stub a fentry.s reader attaches to: it gets the syscall's struct pt_regs *."""
    return f"__x64_sys_{syscall}"


class SleepableSyscalls:
    """The sleepable readers of bpf/trace.bpf.c (compiled with syscall_cflags()) for the syscalls that read
    user memory at entry, loaded with BPF_F_SLEEPABLE and attached; close() detaches and closes them.

    tp.s: sys_enter_s_<nargs> is loaded as a sleepable BPF_PROG_TYPE_TRACEPOINT program and attached to
    syscalls:sys_enter_<name> the way bcc attaches tracepoints (perf_event_open + PERF_EVENT_IOC_SET_BPF,
    the path caps.probe_tp() checks), *instead of* the nofault sys_enter_<nargs> (see `replaces_enter`).
    fentry.s: sys_fentry_s is loaded once per syscall as BPF_PROG_TYPE_TRACING/BPF_TRACE_FENTRY with the
    BTF id of __x64_sys_<name> and attached with BPF_RAW_TRACEPOINT_OPEN; the nofault sys_enter program
    stays and runs first. Syscalls whose stub is not in the kernel's BTF keep nofault reads (`uncovered`).
    `insns(fn)` gives the compiled instructions of function fn.
    """

    def __init__(self, kind: str, syscalls: list[Syscall], insns: Callable[[str], bytes], license: str = "GPL") -> None:
        if kind not in SYSCALL_KINDS:
            raise ValueError(f"sleepable syscall reader kind {kind!r}: one of {', '.join(SYSCALL_KINDS)}")
        self.kind = kind
        self.fds: list[int] = []
        self.perf_fds: list[int] = []  # tp.s attachments
        self.links: list[int] = []  # fentry.s attachments
        self.covered: list[str] = []
        self.uncovered: list[str] = []
        try:
            for s in syscalls:
                if self.wanted(s):
                    self._load_attach(s, insns, license)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def wanted(s: Syscall) -> bool:
        """Syscalls that return and read user memory at entry (a kernel-filled sockaddr is read at exit)."""
        out = const("RK_SOCKADDR_OUT")
        return not s.noreturn and any(r.kind != out for r in s.reads)

    def replaces_enter(self, s: Syscall) -> bool:
        """Whether this reader takes the place of the nofault sys_enter program for syscall s (tp.s)."""
        return self.kind == "tp.s" and s.name in self.covered

    def attr_for(self, s: Syscall) -> dict:
        """prog_type and attach fields of the BPF_PROG_LOAD for syscall s's reader."""
        if self.kind == "tp.s":
            return {"fn": f"sys_enter_s_{len(s.args)}", "prog_type": bpfsys.BPF_PROG_TYPE_TRACEPOINT}
        return {"fn": "sys_fentry_s", "prog_type": bpfsys.BPF_PROG_TYPE_TRACING,
                "expected_attach_type": bpfsys.BPF_TRACE_FENTRY,
                "attach_btf_id": btf.func_id(fentry_target(s.name))}

    def _load_attach(self, s: Syscall, insns: Callable[[str], bytes], license: str) -> None:
        name = s.name
        try:
            attr = self.attr_for(s)
        except (OSError, KeyError, btf.BtfError):
            self.uncovered.append(name)  # no BTF FUNC for the stub: nofault reads stay
            return
        fn = attr.pop("fn")
        fd = load_insns(insns(fn), fn, attr.pop("prog_type"), license=license, sleepable=True, **attr)
        self.fds.append(fd)
        if self.kind == "tp.s":
            pfd = libbcc().bpf_attach_tracepoint(fd, b"syscalls", f"sys_enter_{name}".encode())
            if pfd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"attaching sleepable {fn} to syscalls:sys_enter_{name} failed: "
                                   f"{os.strerror(err)}")
            self.perf_fds.append(pfd)
        else:
            try:
                self.links.append(bpfsys.raw_tracepoint_open(fd))
            except bpfsys.BpfError as e:
                raise OSError(e.errno, f"attaching sleepable {fn} to {fentry_target(name)} failed: "
                                       f"{e.strerror}") from None
        self.covered.append(name)

    def close(self) -> None:
        for pfd in self.perf_fds:
            libbcc().bpf_close_perf_event_fd(pfd)
        for fd in self.links + self.fds:
            os.close(fd)
        self.perf_fds, self.links, self.fds = [], [], []
