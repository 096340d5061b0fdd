"""Discarded user_events writes, seen from the writer's side (bpf/uevents_watch.bpf.c).

When the kernel cannot copy a payload, or it fails validation, the event is dropped before any tracer
sees it and the writer's write()/writev() returns -EFAULT. The watch reports each such write as an event
with its user data missing: the write_index read from the writer's memory and, when the registration
was seen (DIAG_IOCSREG while tracing), the event name. Limits (also in the README):
  - registrations made before tracing started are not known: their name is null, with the reason;
  - descriptors opened before tracing are found by a /proc/<pid>/fd scan at start; ones received later
    by dup/fork/SCM_RIGHTS are recognised when they register an event or, at report time, through
    /proc/<pid>/fd/<fd> (not possible once the process has exited: counted, not shown);
  - a fork child's writes with its parent's registrations are named through kcmp(KCMP_FILE).
"""

from __future__ import annotations

import ctypes as ct
import os
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .. import bpfcache, bpfsys
from ..kenv import BPF_DIR
from ..layout import layout
from ..perf import Batch, RingSet
from .decode import UE_HDR, UE_RECORD, pack_discarded

_LAYOUT = layout()
C = _LAYOUT.consts
SPEC = bpfcache.Spec("uevents_watch.bpf.c", (f"-I{BPF_DIR}", "-Wno-unused-function"))
# write_index -> event through the kernel's own table (bpf/uevents_watch.bpf.c kernel_event_id): member
# offsets from the running kernel's BTF, as (macro, struct, member path).
_KERNEL_OFFSETS = (("UE_K_TASK_FILES", "task_struct", ("files",)), ("UE_K_FILES_FDT", "files_struct", ("fdt",)),
                   ("UE_K_FDT_MAX_FDS", "fdtable", ("max_fds",)), ("UE_K_FDT_FD", "fdtable", ("fd",)),
                   ("UE_K_FILE_F_OP", "file", ("f_op",)), ("UE_K_FILE_PRIVATE", "file", ("private_data",)),
                   ("UE_K_INFO_REFS", "user_event_file_info", ("refs",)),
                   ("UE_K_REFS_COUNT", "user_event_refs", ("count",)),
                   ("UE_K_REFS_EVENTS", "user_event_refs", ("events",)),
                   ("UE_K_USER_TYPE", "user_event", ("call", "event", "type")))


def kallsyms_address(symbol: str) -> int | None:
    """A kernel symbol's address from /proc/kallsyms (None when absent or hidden as 0 by kptr_restrict)."""
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == symbol:
                    return int(parts[0], 16) or None
    except OSError:
        return None
    return None


def kernel_walk() -> tuple[tuple[str, ...], str | None]:
    """(-D flags that enable the walk, None) or ((), why it cannot be done on this kernel)."""
    from .. import btf

    try:
        b = btf.vmlinux()
        flags = [f"-D{macro}={b.offsetof(st, *path)}" for macro, st, path in _KERNEL_OFFSETS]
    except (OSError, KeyError, ValueError) as e:
        return (), f"the kernel's BTF does not give the user_events file layout ({e})"
    fops = kallsyms_address("user_data_fops")
    if fops is None:
        return (), "user_data_fops is not in /proc/kallsyms (or hidden by kptr_restrict)"
    return (*flags, f"-DUE_K_USER_DATA_FOPS={fops:#x}ULL"), None
_REC = UE_RECORD
_HDR = UE_HDR
_REC_FIELDS = [f.name for f in _REC.fields][:len(_HDR.unpack(bytes(_HDR.size)))]
_NR_KCMP = {"x86_64": 312, "aarch64": 272}
_KCMP_FILE = 0
_libc = ct.CDLL(None, use_errno=True)


def same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """Do these two descriptors share one open file (kcmp KCMP_FILE)? False when it cannot be told."""
    nr = _NR_KCMP.get(os.uname().machine)
    if nr is None:
        return False
    return _libc.syscall(nr, pid1, pid2, _KCMP_FILE, fd1, fd2) == 0


def scan_fds(path: Path) -> list[tuple[int, int]]:
    """(pid, fd) of every open descriptor of `path` (its user_events_data) right now."""
    target = str(path)
    out = []
    for pdir in Path("/proc").iterdir():
        if not pdir.name.isdigit():
            continue
        try:
            fds = list((pdir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    out.append((int(pdir.name), int(fd.name)))
            except (OSError, ValueError):
                continue
    return out


class _CpuRing:
    """What the session polls for one CPU: the watch drains every CPU at once (registrations first, so
    that a write on one CPU finds a registration made on another) and hands out this CPU's faults."""

    def __init__(self, watch: Watch, ring: object) -> None:
        self.watch = watch
        self.ring = ring
        self.fd = ring.fd  # type: ignore[attr-defined]
        self.cpu = ring.cpu  # type: ignore[attr-defined]
        self.pending: list[bytes] = []  # samples (decode.pack_discarded), decoded by decode.discarded_event
        self.lost = 0

    def drain(self) -> Batch:
        self.watch.collect()
        out, self.pending = self.pending, []
        lost, self.lost = self.lost, 0
        return Batch(self.cpu, out, lost)

    # The session's accounting reads these of every ring (tracer/accounting.py, Session._final/_discard):
    # without them the watch's drops after its last marker, and records left at an interrupted exit,
    # were neither delivered nor counted.
    @property
    def backlog(self) -> bool:
        return bool(self.pending) or self.ring.backlog  # type: ignore[attr-defined]

    @property
    def lost_total(self) -> int:
        return self.ring.lost_total  # type: ignore[attr-defined]

    def kernel_lost(self) -> int | None:
        return self.ring.kernel_lost()  # type: ignore[attr-defined]

    def discard(self) -> tuple[int, int]:
        samples, markers = self.ring.discard()  # type: ignore[attr-defined]
        held, self.pending = len(self.pending), []
        marked, self.lost = self.lost, 0  # markers read but not handed out yet: reported with these
        return samples + held, markers + marked

    def close(self) -> None:
        pass  # the Watch owns its rings


class Watch(bpfcache.ObjectOwner):
    def __init__(self, data_path: Path, pages: int, wanted: Callable[[int, int], bool]) -> None:
        self.data_path = data_path
        self.wanted = wanted
        self.names: dict[tuple[int, int, int], str] = {}   # (pid, fd, write_index) -> name_args
        self.counts: Counter = Counter()
        self.rings: RingSet | None = None
        self.obj: bpfcache.BpfObject | None = None  # programs attach when loaded (TRACEPOINT_PROBEs)
        self.root = data_path.parent
        self.ids: dict[int, tuple[str, str]] = {}  # tracefs id -> (tracepoint, registered name)
        walk, self.walk_reason = kernel_walk()
        spec = bpfcache.Spec(SPEC.source, SPEC.cflags + walk)
        try:
            bpfcache.start(spec, lambda obj: self._begin(obj, pages), self.close)
        except Exception:
            self.close()
            raise

    def _begin(self, obj: bpfcache.BpfObject, pages: int) -> None:
        self.obj = obj
        self.counts["fds_found_at_start"] = 0
        maps: dict[str, bpfsys.Map] = obj.maps
        path = str(self.data_path).encode()[: C["UE_PATH_CAP"] - 1]
        maps["ue_conf_map"].update(bytes(4), len(path).to_bytes(4, "little") + bytes(4) + path)
        for pid, fd in scan_fds(self.data_path):
            maps["ue_fds"].update(struct.pack("<Q", pid << 32 | fd), b"\1")
            self.counts["fds_found_at_start"] += 1
        self.cpu_rings = [_CpuRing(self, r) for r in self.open_output("ue_events", pages).rings]

    def collect(self) -> None:
        if self.rings is None:
            return
        faults: list[tuple[tuple, bytes, _CpuRing]] = []
        regs: list[tuple[tuple, bytes, _CpuRing]] = []
        for cr in self.cpu_rings:
            b = cr.ring.drain()  # type: ignore[attr-defined]
            cr.lost += b.lost
            for raw in b.samples:
                rec = _HDR.unpack_from(raw)
                (regs if rec[0] == C["UE_REC_REG"] else faults).append((rec, raw, cr))
        for rec, raw, _cr in sorted(regs, key=lambda x: x[0][6]):
            self._note_reg(rec, raw)
        for rec, raw, cr in faults:
            if not self.wanted(rec[3], rec[4]):
                self.counts["discarded_filtered"] += 1
                continue
            found = self.findings(raw)
            if found is not None:
                cr.pending.append(pack_discarded(raw, found))

    def _note_reg(self, rec: tuple, raw: bytes) -> None:
        (_t, _sc, flags, pid, _tid, fd, _ts, _ret, _a, _c, _d, idx, _err, name_len) = rec[:14]
        self.counts["registrations_seen"] += 1
        if flags & C["UE_F_INDEX"]:
            off = _REC.field("name").offset
            self.names[(pid, fd, idx)] = raw[off:off + name_len].decode("utf-8", "surrogateescape")

    def name_for(self, pid: int, fd: int, idx: int) -> tuple[str | None, str | None]:
        """(name_args, None) or (None, why it is unknown)."""
        got = self.names.get((pid, fd, idx))
        if got is not None:
            return got, None
        for (p2, f2, i2), name_args in list(self.names.items()):
            if i2 == idx and (p2, f2) != (pid, fd) and same_file(pid, fd, p2, f2):
                return name_args, None
        return None, (f"write_index {idx} was not registered on this descriptor while tracing "
                      "(registered before tracing started, or on a descriptor that was not seen)")

    def _is_data_fd(self, pid: int, fd: int, marked: bool) -> bool | None:
        if marked:
            return True
        try:
            return os.readlink(f"/proc/{pid}/fd/{fd}") == str(self.data_path)
        except OSError:
            return None  # process or descriptor gone: cannot tell

    def findings(self, raw: bytes) -> dict | None:
        """What only the running watch can tell about a fault record (through /proc, kcmp and the
        registrations seen): {} or {"name_args"} or {"name_reason"}; None when it is not shown."""
        rec = _HDR.unpack_from(raw)
        flags, pid, fd, idx = rec[2], rec[3], rec[5], rec[11]
        is_data = self._is_data_fd(pid, fd, bool(flags & C["UE_F_MARKED"]))
        if is_data is None:
            self.counts["efault_unattributed"] += 1
            return None
        if not is_data:
            self.counts["efault_other_files"] += 1
            return None
        if not flags & C["UE_F_INDEX"]:
            return {}
        name_args, reason = self.name_for(pid, fd, idx)
        if name_args is not None:
            return {"name_args": name_args}
        why = reason or ""  # name_for gives a reason whenever it has no name
        event_id = rec[_REC_FIELDS.index("event_id")]
        if event_id:
            known = self._event_for_id(event_id)
            if known is not None:
                return {"event": known[0], "name": known[1], "event_id": event_id, "named_by": "kernel"}
            why += f"; the kernel maps it to tracefs event id {event_id}, no longer in tracefs"
        elif self.walk_reason:
            why += f"; {self.walk_reason}"
        return {"name_reason": why}

    def _event_for_id(self, event_id: int) -> tuple[str, str] | None:
        if event_id not in self.ids:
            from . import status

            self.ids = {f.id: (f.tracepoint, f.reg_name) for f in status.formats(self.root) if f.id is not None}
        return self.ids.get(event_id)

    def kernel_stats(self) -> dict[str, int]:
        out = dict(self.counts)
        if self.obj is not None:
            names = ("watch_registrations", "watch_faults", "watch_submit_fail", "watch_fds_opened")
            out.update(zip(names, self.obj.maps["ue_stats"].counters(len(names)), strict=True))
        return out
