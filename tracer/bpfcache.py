"""A persistent cache of bcc-compiled programs: a warm start neither compiles nor imports bcc.

Cold start: bcc compiles the source as always; then we extract what the kernel needs to load it again —
per function its instructions, per map its definition (from the kernel, BPF_OBJ_GET_INFO_BY_FD), the
module's BTF, and the relocations (every `ld_imm64` holding one of bcc's map fds) — and save that under
`$TRACER_CACHE_DIR` (default /var/cache/tracer), keyed by a hash of everything the compiled code depends on
(`cache_key`). Warm start: create the maps, patch the relocations with their fds, BPF_PROG_LOAD each program
when first attached, attach with perf_event_open(PERF_TYPE_TRACEPOINT) + PERF_EVENT_IOC_SET_BPF.

Both kinds of start give a `BpfObject`: `maps` (name -> bpfsys.Map, the one element API), `attach_tracepoint`
and `close`. An entry the kernel refuses raises `StaleEntry`; the caller closes and calls `open_object`
again, which then compiles and rewrites the entry.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import stat
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import bpfsys
from .bpfload import libbcc, module_insns
from .kenv import BCC_CFLAGS, BPF_DIR, bpf_source, kernel_headers, tracefs_root
from .perf import RingSet, output_rings

log = logging.getLogger(__name__)

SCHEMA = 1
CACHE_DIR_ENV = "TRACER_CACHE_DIR"
NO_CACHE_ENV = "TRACER_NO_CACHE"
DEFAULT_DIR = Path("/var/cache/tracer")
# Entries kept per source: one per key (option sets such as raw_syscalls or sleepable readers, tracer
# versions, kernels) so that alternating between them stays warm; the least recently used goes first.
MAX_ENTRIES = 8

_LD_IMM64 = 0x18
_CALL = 0x85
_PSEUDO_MAP_FD = 1
_PSEUDO_CALL = 1
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_SET_BPF = 0x40042408
_INCLUDE = re.compile(rb'^\s*#\s*include\s*["<]([^">]+)[">]', re.M)
_TP_PROBE = re.compile(rb"\bTRACEPOINT_PROBE\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)|\btracepoint__(\w+?)__(\w+)\s*\(")


class StaleEntry(RuntimeError):
    """The kernel refused what a cache entry holds: compile instead (and rewrite the entry)."""


class Uncacheable(ValueError):
    """The compiled object holds something this cache cannot reproduce (the cold load still works)."""


@dataclass(frozen=True)
class Spec:
    """A BPF source in bpf/ as a loader compiles it: the same spec always gives the same cache key."""
    source: str
    cflags: tuple[str, ...]
    prog_type: int = bpfsys.BPF_PROG_TYPE_TRACEPOINT  # of every function (bcc's load_func gets it per call)


# --- the key ---------------------------------------------------------------------------------------------

def source_files(spec: Spec) -> list[Path]:
    """The source and every header from bpf/ it includes, transitively (others come from the headers tree
    or bcc, both in the key by version)."""
    seen: list[Path] = []
    todo = [bpf_source(spec.source)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        for name in _INCLUDE.findall(path.read_bytes()):
            inc = (path.parent / name.decode()).resolve()
            if inc.is_file() and inc.is_relative_to(BPF_DIR):
                todo.append(inc)
    return seen


def tracepoint_probes(text: bytes) -> list[tuple[str, str]]:
    """(category, event) of each TRACEPOINT_PROBE: bcc builds their `args` struct from the tracefs format."""
    return sorted({((m[0] or m[2]).decode(), (m[1] or m[3]).decode()) for m in _TP_PROBE.findall(text)})


def bcc_version() -> str:
    """bcc's version, read from its package without importing it (the import alone costs ~0.1 s)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return "absent"
    try:
        return (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return "unknown"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b"(absent)"


def cache_key(spec: Spec) -> str:
    """sha256 of what bcc's output depends on: sources, cflags, bcc, kernel, CPUs, tracepoint formats,
    kernel headers."""
    h = hashlib.sha256()

    def add(label: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        h.update(f"{label}\0{len(raw)}\0".encode() + raw)

    add("schema", str(SCHEMA))
    text = b""
    for path in source_files(spec):
        data = path.read_bytes()
        text += data
        add(f"file {path.relative_to(BPF_DIR)}", data)
    add("cflags", json.dumps(spec.cflags))
    add("prog_type", str(spec.prog_type))
    add("bcc", bcc_version())
    u = os.uname()
    add("kernel", f"{u.release}\0{u.version}\0{u.machine}")
    add("cpus", _read(Path("/sys/devices/system/cpu/possible")))  # BPF_PERF_OUTPUT's size
    if tracepoint_probes(text):
        events = tracefs_root() / "events"
        for cat, ev in tracepoint_probes(text):
            add(f"format {cat}:{ev}", _read(events / cat / ev / "format"))
    headers = kernel_headers().path
    add("headers", str(headers.resolve()) if headers else "none")
    if headers:
        gen = headers / "include" / "generated"
        for rel in ("utsrelease.h", "uapi/linux/version.h", "autoconf.h"):
            add(f"headers {rel}", _read(gen / rel))
    return h.hexdigest()


# --- entries ---------------------------------------------------------------------------------------------

@dataclass
class Prog:
    type: int
    insns: bytes
    relocs: list[tuple[int, str]]  # (instruction index of an ld_imm64, map name)
    btf_func: int = 0  # BTF_KIND_FUNC id naming the program (func_info), 0 when none fits


@dataclass
class Compiled:
    license: str
    kern_version: int
    maps: dict[str, bpfsys.MapInfo]
    progs: dict[str, Prog]
    btf: bytes | None = None

    def to_json(self) -> bytes:
        return json.dumps({
            "license": self.license, "kern_version": self.kern_version,
            "btf": base64.b64encode(self.btf).decode() if self.btf else None,
            "maps": {n: asdict(m) for n, m in self.maps.items()},
            "progs": {n: {"type": p.type, "insns": base64.b64encode(p.insns).decode(), "relocs": p.relocs,
                          "btf_func": p.btf_func} for n, p in self.progs.items()},
        }, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Compiled:
        d = json.loads(raw)
        progs = {n: Prog(int(p["type"]), base64.b64decode(p["insns"], validate=True),
                         [(int(i), str(m)) for i, m in p["relocs"]], int(p["btf_func"]))
                 for n, p in d["progs"].items()}
        c = cls(str(d["license"]), int(d["kern_version"]),
                {n: bpfsys.MapInfo(**m) for n, m in d["maps"].items()}, progs,
                base64.b64decode(d["btf"], validate=True) if d["btf"] else None)
        c.check()
        return c

    def check(self) -> None:
        """Every relocation points at an ld_imm64 of a map fd and names a known map."""
        for name, p in self.progs.items():
            if not p.insns or len(p.insns) % 8:
                raise ValueError(f"{name}: {len(p.insns)} bytes of instructions")
            for idx, m in p.relocs:
                if m not in self.maps or not 0 <= idx < len(p.insns) // 8 - 1:
                    raise ValueError(f"{name}: bad relocation ({idx}, {m})")
                code, regs = p.insns[idx * 8], p.insns[idx * 8 + 1]
                if code != _LD_IMM64 or regs >> 4 != _PSEUDO_MAP_FD:
                    raise ValueError(f"{name}: relocation {idx} is not a map load")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_DIR)


def enabled() -> bool:
    return os.environ.get(NO_CACHE_ENV, "") in ("", "0")


def entry_path(spec: Spec, key: str) -> Path:
    return cache_dir() / f"{Path(spec.source).stem}-{key[:32]}.json"


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def untrusted_dir(d: Path) -> str | None:
    """Why entries under `d` could be swapped by another user (None when they cannot): `d` or an
    ancestor not owned by root/us, or writable by group/others without the sticky bit."""
    d = d.resolve()
    for p in (d, *d.parents):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if p == d and not _trusted(st):
            return f"{p} is not owned by root or is writable by group/others"
        if p != d and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return f"{p} is writable by group/others"
    return None


@functools.cache
def _warn_untrusted(d: Path, why: str) -> None:
    sys.stderr.write(f"tracer: program cache disabled: {why} (fix its mode, or set {CACHE_DIR_ENV})\n")


def usable_dir() -> bool:
    """The cache directory is safe to read and write; says once why when it is not."""
    d = cache_dir()
    why = untrusted_dir(d)
    if why:
        _warn_untrusted(d, why)
    return why is None


def read_entry(spec: Spec, key: str) -> Compiled | None:
    """The entry for `key`, or None when absent. Raises StaleEntry when it is corrupt, for another key, or
    not safe to load (not owned by root, or writable by others — the file or its directory)."""
    path = entry_path(spec, key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StaleEntry(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not (_trusted(os.fstat(fd)) and _trusted(os.stat(path.parent))):
            raise StaleEntry(f"{path}: not owned by root or writable by others; not loaded")
        raw = f.read()
        with contextlib.suppress(OSError):
            os.utime(fd)  # its mtime says when it was last used (MAX_ENTRIES evicts the oldest)
    try:
        head, body = raw.split(b"\n", 1)
        meta = json.loads(head)
        if meta.get("schema") != SCHEMA or meta.get("key") != key:
            raise ValueError("written for another key")
        if meta.get("sha256") != hashlib.sha256(body).hexdigest():
            raise ValueError("checksum mismatch")
        return Compiled.from_json(body)
    except (ValueError, KeyError, TypeError) as e:
        raise StaleEntry(f"{path}: {e}") from None


def write_entry(spec: Spec, key: str, compiled: Compiled) -> Path:
    """Atomically (temporary file + rename, mode 0600); beyond MAX_ENTRIES entries of the same source,
    the least recently used are removed."""
    path = entry_path(spec, key)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    body = compiled.to_json()
    head = json.dumps({"schema": SCHEMA, "key": key, "source": spec.source,
                       "sha256": hashlib.sha256(body).hexdigest()}).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head + b"\n" + body)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    entries = []
    for other in path.parent.glob(f"{Path(spec.source).stem}-*.json"):
        with contextlib.suppress(OSError):
            entries.append((other.stat().st_mtime_ns, other != path, other))
    for *_, old in sorted(entries, reverse=True)[MAX_ENTRIES:]:  # newest first; the one just written kept
        old.unlink(missing_ok=True)
    return path


def drop_entry(spec: Spec) -> None:
    with_key = entry_path(spec, cache_key(spec))
    with_key.unlink(missing_ok=True)


# --- extraction from bcc (cold start) --------------------------------------------------------------------

def relocations(insns: bytes, fds: dict[int, str]) -> list[tuple[int, str]]:
    """(index, map) of every ld_imm64 of a map fd; Uncacheable for any other pseudo source bcc may emit
    (map values, BTF ids, kfuncs), whose values this cache could not recreate."""
    out = []
    i, n = 0, len(insns) // 8
    while i < n:
        code, regs, _off, imm = struct.unpack_from("<BBhi", insns, i * 8)
        src = regs >> 4
        if code == _LD_IMM64:
            if src == _PSEUDO_MAP_FD:
                if imm not in fds:
                    raise Uncacheable(f"insn {i}: map fd {imm} is not one of bcc's maps")
                out.append((i, fds[imm]))
            elif src:
                raise Uncacheable(f"insn {i}: ld_imm64 with pseudo source {src}")
            i += 2
            continue
        if code == _CALL and src not in (0, _PSEUDO_CALL):
            raise Uncacheable(f"insn {i}: call with pseudo source {src}")
        i += 1
    return out


def _has_subprogs(insns: bytes) -> bool:
    return any(insns[i] == _CALL and insns[i + 1] >> 4 == _PSEUDO_CALL for i in range(0, len(insns), 8))


def extract(bpf: object, spec: Spec) -> Compiled:
    """Everything needed to load bcc's compiled object `bpf` again without bcc."""
    from .btf import Btf

    lib, mod = libbcc(), bpf.module  # type: ignore[attr-defined]
    maps: dict[str, bpfsys.MapInfo] = {}
    fds: dict[int, str] = {}
    for i in range(lib.bpf_num_tables(mod)):
        name = lib.bpf_table_name(mod, i).decode()
        fd = lib.bpf_table_fd_id(mod, i)
        maps[name] = bpfsys.MapInfo.of_fd(fd)
        fds[fd] = name
    # The module's BTF, as bcc loaded it for its maps (or, failing that, for a program it loaded).
    btf_ids = {m.btf_id for m in maps.values() if m.btf_id}
    btf_ids |= {bpfsys.prog_btf_id(f.fd) for f in getattr(bpf, "funcs", {}).values()} if not btf_ids else set()
    btf_ids.discard(0)
    blob = bpfsys.btf_data(btf_ids.pop()) if len(btf_ids) == 1 else None
    parsed = Btf(blob) if blob else None
    if parsed is None:
        maps = {n: bpfsys.MapInfo(**{**asdict(m), "btf_id": 0, "btf_key_type_id": 0, "btf_value_type_id": 0})
                for n, m in maps.items()}
    progs = {}
    for i in range(lib.bpf_num_functions(mod)):
        name = lib.bpf_function_name(mod, i)
        insns = module_insns(mod, name)
        func = 0
        if parsed is not None and not _has_subprogs(insns):
            try:
                func = parsed.func_id(name.decode())
            except KeyError:
                func = 0
        progs[name.decode()] = Prog(spec.prog_type, insns, relocations(insns, fds), func)
    license = (lib.bpf_module_license(mod) or b"GPL").decode()
    return Compiled(license, lib.bpf_module_kern_version(mod), maps, progs, blob)


# --- the two kinds of loaded object ----------------------------------------------------------------------

def _tp_of(fn: str) -> str | None:
    """bcc's auto-attach rule: tracepoint__CAT__EVENT functions are attached to CAT:EVENT at load."""
    if fn.startswith("tracepoint__") and "__" in fn[12:]:
        cat, ev = fn[12:].split("__", 1)
        return f"{cat}:{ev}"
    return None


class ObjectOwner:
    """Holds a loaded BpfObject and the perf rings of its BPF_PERF_OUTPUT map; close() releases both,
    whatever fails, and may be called again."""

    obj: BpfObject | None = None
    rings: RingSet | None = None

    def open_output(self, map_name: str, pages: int) -> RingSet:
        """Rings on every CPU, their fds placed in the object's output map."""
        assert self.obj is not None
        self.rings = output_rings(pages)
        out = self.obj.maps[map_name]
        for cpu, fd in self.rings.per_cpu():
            out.update(cpu.to_bytes(4, "little"), fd.to_bytes(4, "little"))
        return self.rings

    def open_ringbuf(self, map_name: str, lost_counts: Callable[[], list[int]]) -> RingSet:
        """The object's BPF ring buffer map, mmap'd (tracer/ringbuf.py); `lost_counts`: the programs'
        per-CPU counts of records the ring refused (-EAGAIN)."""
        from .ringbuf import open_ringbuf

        assert self.obj is not None
        m = self.obj.maps[map_name]
        self.rings = open_ringbuf(m.fd, m.info.max_entries, lost_counts)
        return self.rings

    def close(self) -> None:
        try:
            if self.obj is not None:
                self.obj.close()
        finally:
            self.obj = None
            if self.rings is not None:
                self.rings.close()
                self.rings = None


class BpfObject:
    warm = False
    maps: dict[str, bpfsys.Map]
    license = "GPL"

    def insns(self, fn: str) -> bytes:
        """fn's compiled instructions with this object's map fds in place (for loads with other flags)."""
        raise NotImplementedError

    def attach_tracepoint(self, tp: str, fn: str) -> None:
        raise NotImplementedError

    def prog_fd(self, fn: str) -> int:
        """fn loaded (once) without being attached, e.g. to be placed in a program array for tail calls."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class BccObject(BpfObject):
    """bcc's own load: compiled now, attached through bcc; the maps are reached through their fds."""

    def __init__(self, bpf: object, prog_type: int = 5) -> None:  # BPF_PROG_TYPE_TRACEPOINT
        self.bpf = bpf
        self.prog_type = prog_type
        lib, mod = libbcc(), bpf.module  # type: ignore[attr-defined]
        self.maps = {lib.bpf_table_name(mod, i).decode(): bpfsys.Map(lib.bpf_table_fd_id(mod, i))
                     for i in range(lib.bpf_num_tables(mod))}
        self.license = (lib.bpf_module_license(mod) or b"GPL").decode()

    def insns(self, fn: str) -> bytes:
        return module_insns(self.bpf.module, fn.encode())  # type: ignore[attr-defined]

    def attach_tracepoint(self, tp: str, fn: str) -> None:
        self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())  # type: ignore[attr-defined]

    def prog_fd(self, fn: str) -> int:
        return self.bpf.load_func(fn.encode(), self.prog_type).fd  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self.bpf.cleanup()  # type: ignore[attr-defined]
            finally:
                self.bpf = None


def _kernel_name(fn: str) -> str:
    # As bcc names programs: without the tracepoint__ prefix, cut to 15 characters.
    name = fn[12:] if fn.startswith("tracepoint__") else fn
    return name[:bpfsys.PROG_NAME_LEN - 1]


@dataclass
class CachedObject(BpfObject):
    """A cache entry loaded by us: maps created now, each program loaded when first attached."""
    compiled: Compiled
    maps: dict[str, bpfsys.Map] = field(default_factory=dict)
    progs: dict[str, int] = field(default_factory=dict)
    perf_fds: list[int] = field(default_factory=list)
    btf_fd: int = 0
    warm = True

    def __post_init__(self) -> None:
        c = self.compiled
        self.license = c.license
        try:
            try:
                self.btf_fd = bpfsys.btf_load(c.btf) if c.btf else 0
                for name, info in c.maps.items():
                    self.maps[name] = bpfsys.Map(bpfsys.map_create(info, self.btf_fd), info)
            except bpfsys.BpfError as e:
                raise StaleEntry(str(e)) from None
            for fn in c.progs:
                tp = _tp_of(fn)
                if tp:
                    self.attach_tracepoint(tp, fn)
        except BaseException:
            self.close()
            raise

    def insns(self, fn: str) -> bytes:
        p = self.compiled.progs[fn]
        insns = bytearray(p.insns)
        for idx, m in p.relocs:
            struct.pack_into("<i", insns, idx * 8 + 4, self.maps[m].fd)
        return bytes(insns)

    def prog_fd(self, fn: str) -> int:
        if fn not in self.progs:
            p = self.compiled.progs[fn]
            finfo = struct.pack("<II", 0, p.btf_func) if self.btf_fd and p.btf_func else b""
            args = dict(prog_type=p.type, insns=self.insns(fn), license=self.compiled.license,
                        prog_name=_kernel_name(fn), kern_version=self.compiled.kern_version,
                        btf_fd=self.btf_fd if finfo else 0, func_info=finfo)
            try:
                # As bcc does: no verifier log (it makes verification several times slower) unless refused.
                self.progs[fn] = bpfsys.prog_load(**args, log_level=0)  # type: ignore[arg-type]
            except bpfsys.BpfError:
                try:
                    self.progs[fn] = bpfsys.prog_load(**args, log_level=1)  # type: ignore[arg-type]
                except bpfsys.BpfError as e:
                    raise StaleEntry(f"program {fn}: {e}") from None
        return self.progs[fn]

    def attach_tracepoint(self, tp: str, fn: str) -> None:
        from .perf import PERF_TYPE_TRACEPOINT, perf_event_open

        cat, ev = tp.split(":", 1)
        tp_id = int((tracefs_root() / "events" / cat / ev / "id").read_text())
        prog = self.prog_fd(fn)
        # As bcc attaches: one event (pid -1, cpu 0); a tracepoint's BPF program then runs on every CPU.
        fd = perf_event_open(struct.pack("<IIQQ", PERF_TYPE_TRACEPOINT, 128, tp_id, 1).ljust(128, b"\0"), -1, 0)
        self.perf_fds.append(fd)
        fcntl.ioctl(fd, _PERF_EVENT_IOC_SET_BPF, prog)
        fcntl.ioctl(fd, _PERF_EVENT_IOC_ENABLE, 0)

    def close(self) -> None:
        fds: Iterable[int] = [*self.perf_fds, *self.progs.values(), *(m.fd for m in self.maps.values())]
        if self.btf_fd:
            fds = [*fds, self.btf_fd]
        self.perf_fds, self.progs, self.maps, self.btf_fd = [], {}, {}, 0
        for fd in fds:  # perf events first: closing them detaches the programs
            try:
                os.close(fd)
            except OSError:
                pass


def open_object(spec: Spec, read: bool = True) -> BpfObject:
    """The object for `spec`: from the cache when an entry for its key is there (and `read`), else
    compiled by bcc, then saved for the next start. Raises StaleEntry only from a cache entry."""
    cache = enabled() and usable_dir()
    key = cache_key(spec) if cache else ""
    if cache and read:
        try:
            compiled = read_entry(spec, key)
        except StaleEntry as e:
            log.debug("program cache entry unusable (%s); compiling", e)
            compiled = None
        if compiled is not None:
            log.debug("program cache hit: %s loaded without compiling (key %s)", spec.source, key[:16])
            return CachedObject(compiled)
        log.debug("program cache miss: compiling %s (key %s)", spec.source, key[:16])
    elif not cache:
        log.debug("program cache not used for %s (%s)", spec.source,
                  "disabled: --no-cache or TRACER_NO_CACHE" if not enabled() else "cache directory unusable")
    from .kenv import prepare_bcc

    prepare_bcc()
    from .pyenv import require

    BPF = require("bcc").BPF  # imported late: bcc compiles against the headers chosen above

    obj = BccObject(BPF(src_file=str(bpf_source(spec.source)).encode(), cflags=[*BCC_CFLAGS, *spec.cflags]),
                    spec.prog_type)
    if cache:
        try:
            write_entry(spec, key, extract(obj.bpf, spec))
        except Exception as e:  # the cache must never break a start that worked
            log.debug("%s not cached: %s", spec.source, e)
    return obj


def start(spec: Spec, begin: Callable[[BpfObject], None], cleanup: Callable[[], None]) -> None:
    """begin(open_object(spec)); if the kernel refuses a cache entry, cleanup() and begin again with a
    fresh compile (which rewrites the entry). begin must hand the object to whatever cleanup() closes."""
    try:
        begin(open_object(spec))
    except StaleEntry as e:
        log.debug("program cache entry refused (%s); compiling", e)
        cleanup()
        with contextlib.suppress(OSError):
            drop_entry(spec)
        begin(open_object(spec, read=False))
