"""Where a user-space address lives, for reports on pointer arguments that could not be read cleanly.

Everything returned comes from /proc/<pid>/maps or from the mapped ELF file; what neither can prove is
left out rather than guessed.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tracer.elftables import ElfTables, read_tables

NULL_PAGE_END = 4096
KERNEL_HALF = 0x800000000000  # x86-64 with 4-level paging: user space ends below this
DELETED = " (deleted)"
_NAMED_KINDS = {
    "[heap]": "heap",
    "[stack]": "stack",
    "[vdso]": "vdso",
    "[vvar]": "vvar",
    "[vvar_vclock]": "vvar",
}
# The kernel pads the path to a column; file paths are absolute, so leading spaces are only padding.
_MAPS_LINE = re.compile(
    r"([0-9a-fA-F]+)-([0-9a-fA-F]+) +(\S{4}) +([0-9a-fA-F]+) +([0-9a-fA-F]+:[0-9a-fA-F]+) +(\d+)(?: +(.*))?"
)


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str  # without the " (deleted)" suffix
    deleted: bool = False

    @property
    def kind(self) -> str:
        """file, anon, heap, stack, vdso, vvar; "special" for other kernel-named areas ([vsyscall])."""
        p = self.path
        if not p or p.startswith(("[anon:", "[anon_shmem:")):
            return "anon"
        if p in _NAMED_KINDS:
            return _NAMED_KINDS[p]
        if p.startswith("[stack:"):  # pre-4.5 kernels name thread stacks this way
            return "stack"
        return "special" if p.startswith("[") else "file"


def parse_maps(text: str) -> list[Mapping]:
    """Parse /proc/<pid>/maps text; raises ValueError on a line that is not in the kernel's format."""
    maps = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _MAPS_LINE.fullmatch(line)
        if m is None:
            raise ValueError(f"not a /proc/<pid>/maps line: {line!r}")
        path = m[7] or ""
        deleted = path.endswith(DELETED)
        if deleted:
            path = path[: -len(DELETED)]
        maps.append(
            Mapping(int(m[1], 16), int(m[2], 16), m[3], int(m[4], 16), m[5], int(m[6]), path, deleted)
        )
    return maps


@dataclass(slots=True)
class _Snapshot:
    maps: list[Mapping]
    starts: list[int]
    starttime: str | None  # from /proc/<pid>/stat; tells a recycled pid apart
    same_mnt_ns: bool | None  # None: could not tell

    def index(self, addr: int) -> int | None:
        i = bisect_right(self.starts, addr) - 1
        return i if i >= 0 and addr < self.maps[i].end else None


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


_NOT_ELF = object()  # cached negative answer, so non-ELF files are not reopened on every lookup


class RegionResolver:
    """Explains addresses of traced processes; not thread-safe, use it from the event loop."""

    def __init__(self, proc: str = "/proc", max_processes: int = 256, max_elf_files: int = 64) -> None:
        self.proc = proc
        self._procs = _LRU(max_processes)
        self._elves = _LRU(max_elf_files)

    def snapshot(self, pid: int) -> list[Mapping] | None:
        """Read pid's memory map now; None (keeping any earlier snapshot) if it cannot be read."""
        snap, _ = self._read(pid)
        if snap is None:
            return None
        self._procs.put(pid, snap)
        return snap.maps

    def forget(self, pid: int) -> None:
        self._procs.pop(pid, None)

    def explain(self, pid: int, addr: int) -> dict[str, Any]:
        """Where addr lives in pid; see describe() for the one-line form."""
        if not 0 <= addr < 1 << 64:
            raise ValueError(f"not a 64-bit address: {addr!r}")
        snap = self._procs.get(pid)
        note = None
        if snap is None or snap.index(addr) is None:
            # A miss may just mean the process mapped more since the snapshot: re-read once.
            fresh, problem = self._read(pid)
            if fresh is not None and snap is not None and fresh.starttime != snap.starttime:
                fresh, problem = None, f"exited ({pid} is now another process's pid)"
            if fresh is not None:
                self._procs.put(pid, fresh)
                snap = fresh
            elif snap is None:
                why = "its memory map could not be read" if problem.startswith("exited") else problem
                return {"kind": "unknown", "note": f"process {pid} is gone; {why}"}
            elif problem.startswith("exited"):
                note = f"process {problem} before its memory map could be re-read; this is its last snapshot"
            else:
                note = f"{problem}; this is the last snapshot"
        region = self._region(pid, snap, addr)
        if note:
            region["note"] = note
        return region

    def _read(self, pid: int) -> tuple[_Snapshot | None, str]:
        """A fresh snapshot, or None and why: "exited..." or what stopped the read."""
        base = f"{self.proc}/{pid}"
        try:
            starttime = _starttime(f"{base}/stat")
            with open(f"{base}/maps") as f:
                maps = parse_maps(f.read())
        except (FileNotFoundError, ProcessLookupError):
            return None, "exited"
        except OSError as e:
            return None, f"could not read {base}/maps: {e.strerror}"
        if not maps:  # a zombie has no mm left
            return None, "exited"
        try:
            same_ns = os.readlink(f"{base}/ns/mnt") == os.readlink(f"{self.proc}/self/ns/mnt")
        except OSError:
            same_ns = None
        maps.sort(key=lambda m: m.start)  # the kernel sorts already; lookups bisect, so make sure
        return _Snapshot(maps, [m.start for m in maps], starttime, same_ns), ""

    def _region(self, pid: int, snap: _Snapshot, addr: int) -> dict[str, Any]:
        i = snap.index(addr)
        if i is None:
            return {"kind": "unmapped", "where": _unmapped_where(addr)}
        m = snap.maps[i]
        out: dict[str, Any] = {"kind": m.kind, "start": m.start, "end": m.end, "perms": m.perms}
        if m.path.startswith("[") and m.path != f"[{m.kind}]":
            out["name"] = m.path
        if m.kind == "file":
            out["path"] = m.path
            if m.deleted:
                out["deleted"] = True
            out["file_offset"] = m.offset + addr - m.start
            placement = self._place(pid, snap, m, addr, out["file_offset"])
            if placement is not None:
                out.update(placement)
        elif m.kind in ("anon", "heap"):
            owner = _file_before(snap.maps, i)
            placement = None if owner is None else self._place(pid, snap, owner, addr, None)
            if owner is not None and placement is not None and "section" in placement:
                out["near"] = f"{owner.path} {placement['section']}"
                out.update(placement)
        return out

    def _place(
        self, pid: int, snap: _Snapshot, m: Mapping, addr: int, file_offset: int | None
    ) -> dict[str, Any] | None:
        tables = self._tables(pid, snap, m)
        if tables is None:
            return None
        same_file = [(v.start, v.offset) for v in snap.maps if v.inode == m.inode and v.dev == m.dev]
        bias = tables.load_bias(same_file, addr)
        p = None if bias is None else tables.place(bias, addr, file_offset)
        if p is None:
            return None
        out: dict[str, Any] = {"elf_vaddr": p.elf_vaddr}
        if p.section is not None:
            out["section"] = p.section.name
            out["section_offset"] = p.section_offset
        return out

    def _tables(self, pid: int, snap: _Snapshot, m: Mapping) -> ElfTables | None:
        via_proc = f"{self.proc}/{pid}/map_files/{m.start:x}-{m.end:x}"
        # map_files is the very file mapped, even if deleted or in another mount namespace, but needs
        # privilege and a live process; the path is cheaper when it is known to name the same file.
        if not m.path.startswith("/"):  # anon_inode:[...], memfd without a path: only map_files reaches it
            sources: tuple[str, ...] = (via_proc,)
        elif m.deleted or not snap.same_mnt_ns:
            sources = (via_proc, m.path)
        else:
            sources = (m.path, via_proc)
        for src in sources:
            try:
                st = os.stat(src)
            except OSError:
                continue
            if st.st_ino != m.inode:  # replaced since it was mapped (or another namespace's file)
                continue
            key = (m.path, st.st_dev, st.st_ino, st.st_mtime_ns)
            tables = self._elves.get(key)
            if tables is None:
                tables = read_tables(src) or _NOT_ELF
                self._elves.put(key, tables)
            return None if tables is _NOT_ELF else tables
        return None


def _unmapped_where(addr: int) -> str:
    if addr < NULL_PAGE_END:
        return "NULL page"
    return "kernel half" if addr >= KERNEL_HALF else "user space"


def _starttime(stat_path: str) -> str | None:
    with open(stat_path) as f:
        fields = f.read().rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of stat(5); comm may hold spaces


def _file_before(maps: list[Mapping], i: int) -> Mapping | None:
    """The file mapping that anonymous memory at maps[i] directly continues (a .bss tail), if any."""
    while i > 0 and maps[i - 1].end == maps[i].start:
        i -= 1
        if maps[i].kind == "file":
            return maps[i]
        if maps[i].kind not in ("anon", "heap"):
            return None
    return None


def describe(region: dict[str, Any]) -> str:
    """One line for humans, e.g. "/usr/bin/foo .rodata+0x1a0 (r--p, file off 0x21a0)"."""
    kind = region["kind"]
    if kind == "file":
        path = region["path"] + (DELETED if region.get("deleted") else "")
        sec = f" {region['section']}+{region['section_offset']:#x}" if "section" in region else ""
        text = f"{path}{sec} ({region['perms']}, file off {region['file_offset']:#x})"
    elif kind == "anon":
        name = f" {region['name']}" if "name" in region else ""
        text = f"anonymous{name} {region['perms']} {region['start']:#x}-{region['end']:#x}"
        if "near" in region:
            text += f" ({region['near']}+{region['section_offset']:#x})"
    elif kind == "unmapped":
        text = "unmapped" if region["where"] == "user space" else f"unmapped ({region['where']})"
    elif kind == "special":
        text = f"{region['name']} {region['perms']}"
    elif kind == "heap" and "near" in region:
        text = f"heap ({region['near']}+{region['section_offset']:#x})"
    else:
        text = kind  # heap, stack, vdso, vvar, unknown
    return f"{text}: {region['note']}" if "note" in region else text
