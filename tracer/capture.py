"""Capture files: a session's raw records, written as they arrive, with everything needed to decode
them again on another day or machine (`tracer record` / `replay` / `export`, and `Capture` in the API).

Layout (integers little-endian):

    magic    8 bytes   b"\\x89TRACER\\n"
    frames   kind u8, 3 zero bytes, length u32, crc32 u32 (of the frame's first 8 bytes and the payload),
             then `length` bytes of payload:
      H  header   JSON, first frame: format version, tool version, kernel, host, clock, session options,
                  one entry per source (its name, the class that replays it, a description to decode with)
      R  record   source index u16, cpu u16, raw length u32, the raw record, then JSON of the region
                  explanations made while decoding it live ([[pid, addr, region], ...]; empty if none)
      L  lost     source index u16, cpu u16 (0xffff: not one CPU's), count u64, then the reason in ASCII
                  (accounting.REASONS; format 1 had no reason)
      T  trailer  JSON, last frame of a session that ended cleanly: its summary

Only what the session delivered is written (after --only-missing and --count), in delivery order, so a
replay prints what the live session printed. Frames are buffered per drain batch and written together;
a record cut short or damaged is detected by its length and checksum, and everything before it replays.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import stat
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .accounting import REASONS, UNSPECIFIED
from .capture_check import MAX_HEADER, Invalid, check_header, check_trailer, shown
from .contract import WallClock
from .errors import CaptureError, CaptureExists
from .events import Event, Stats, summary_of
from .sources import Source, syscalls_from_capture
from .summary import is_error
from .syscalls import GROUPS

MAGIC = b"\x89TRACER\n"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)  # 1: lost frames without a reason
NO_CPU = 0xFFFF
FRAME = struct.Struct("<B3xII")
REC = struct.Struct("<HHI")
LOST = struct.Struct("<HHQ")
KINDS = {ord("H"), ord("R"), ord("L"), ord("T")}
SYSCALL_REPLAYER = "tracer.sources:SyscallSource"
# The classes that replay a source, by the name the writer records (`module:qualname`): the module is
# imported from this table, never from the file.
REPLAYERS: dict[str, tuple[str, str]] = {
    SYSCALL_REPLAYER: ("tracer.sources", "SyscallSource"),
    "tracer.uprobes:UprobeSource": ("tracer.uprobes", "UprobeSource"),
    "tracer.user_events.source:UserEventsSource": ("tracer.user_events.source", "UserEventsSource"),
}
MAX_FRAME = 64 << 20  # far above any header or record; a larger length means a damaged frame header
Explain = Callable[[int, int], dict]


def replayer(target: str) -> Any:
    """The class named by an allow-listed `replay` value (check_header made sure it is one)."""
    module, name = REPLAYERS[target]
    return getattr(importlib.import_module(module), name)


def parse_json(data: bytes) -> object:
    """JSON from a capture: Invalid for anything json refuses, nesting too deep included."""
    try:
        return json.loads(data)
    except RecursionError:
        raise Invalid("nested too deeply") from None
    except ValueError as e:  # UnicodeDecodeError too
        raise Invalid(f"not JSON ({shown(str(e), 60)})") from None


# --- writing --------------------------------------------------------------------------------------


STAGED = ".tracer-new"  # .NAME.PID.tracer-new: a capture being written, before its session started


def create_private(path: Path, force: bool = False) -> tuple[int, Path]:
    """A new file, mode 0600 whatever the umask (captures hold paths and arguments), staged beside
    `path` and put in place by `commit_private` once the session has started: a run that fails or is
    killed before that leaves no empty capture, and with `force` the old file stays until then. An
    existing `path` is an error unless `force`. Staged files of runs that died are removed first."""
    remove_stale(path.parent)
    if path.is_symlink() or path.exists():
        if not force:
            raise CaptureExists(f"{path} exists; choose another file or pass --force to replace it")
        if not (path.is_symlink() or path.is_file()):
            raise CaptureExists(f"{path} exists and is not a regular file; --force replaces regular files only")
    staged = path.with_name(f".{path.name}.{os.getpid()}{STAGED}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        staged.unlink(missing_ok=True)  # our pid's name: a leftover of a process that had it before
        fd = os.open(staged, flags, 0o600)
    except OSError as e:
        raise CaptureError(f"cannot create {path}: {e.strerror}") from None
    os.fchmod(fd, 0o600)
    return fd, staged


def remove_stale(directory: Path) -> list[Path]:
    """Remove the staged captures in `directory` whose writer is gone (killed before its session
    started); returns them. Only regular files of ours, named as create_private names them."""
    removed: list[Path] = []
    try:
        entries = list(directory.glob(f".*{STAGED}"))
    except OSError:
        return removed
    for p in entries:
        pid = p.name[: -len(STAGED)].rpartition(".")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (or not ours to signal): maybe still starting
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                p.unlink()
                removed.append(p)
        except OSError:
            pass
    return removed


def commit_private(staged: Path, path: Path, force: bool) -> None:
    """Put a staged file (see create_private) at `path`: replacing it with `force`, else only if `path`
    still does not exist (a hard link cannot overwrite)."""
    try:
        if force:
            os.replace(staged, path)
            return
        try:
            os.link(staged, path, follow_symlinks=False)
        except FileExistsError:
            raise CaptureExists(f"{path} was created meanwhile; choose another file or pass --force") from None
        except OSError:  # a filesystem without hard links: create exclusively, then replace
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            os.replace(staged, path)
            return
        staged.unlink()
    except FileExistsError:
        raise CaptureExists(f"{path} was created meanwhile; choose another file or pass --force") from None
    except OSError as e:
        raise CaptureError(f"cannot create {path}: {e.strerror}") from None


class _Record:
    """The key under which an event carries its raw record from the decoder to the recorder: not a
    string, so it can never be taken for a field, and json refuses to write it should one ever leak."""

    def __repr__(self) -> str:
        return "<capture record>"


RECORD: Any = _Record()


class CaptureWriter:
    """Created (O_EXCL, mode 0600) before any BPF is loaded; `begin` writes the header once the sources
    exist. The recorder observes the stream: the session decodes each source's records through
    `recording(src)`, so each event carries its raw record (and the region explanations made while
    decoding it) under RECORD, and hands the recorder each delivered event (`event`), each loss and the
    end of each drain (`flush`). Events not delivered (filtered, past --count) take their record with
    them; events held for ordering keep theirs until they are delivered."""

    def __init__(self, path: str | os.PathLike, force: bool = False) -> None:
        self.path = Path(path)
        self.force = force
        self.fd: int | None
        self.staged: Path | None
        self.fd, self.staged = create_private(self.path, force)
        self.buf = bytearray()
        self.size = 0
        self.records = 0
        self.lost_frames = 0
        self.started = False
        self._sources: list[Source] = []  # in header order: a frame names its source by this index
        self._expl: list | None = None

    def wrap_explain(self, explain: Explain | None) -> Explain | None:
        """Region explanations are true only when made: keep each record's with it."""
        if explain is None:
            return None

        def recorded(pid: int, addr: int) -> dict:
            region = explain(pid, addr)
            if self._expl is not None:
                self._expl.append([pid, addr, region])
            return region

        return recorded

    def begin(self, header: dict, sources: Sequence[Source]) -> None:
        entries = []
        for src in sources:
            cls = type(src)
            entries.append({"name": src.name, "replay": f"{cls.__module__}:{cls.__qualname__}",
                            "desc": src.capture_header()})
        self._sources = list(sources)
        self.buf += MAGIC
        self._frame(b"H", json.dumps({**header, "sources": entries}).encode())
        self.flush()
        if self.staged is not None:  # (None once closed)
            commit_private(self.staged, self.path, self.force)  # tracing has started: now the file exists
        self.staged = None
        self.started = True

    def _index(self, src: Source) -> int:
        return next((i for i, s in enumerate(self._sources) if s is src), 0)

    def recording(self, src: Source) -> Callable[[bytes, int], dict]:
        """`src.decode`, with each event carrying what its R frame needs (see the class docstring)."""
        decode, index = src.decode, self._index(src)

        def recording(raw: bytes, cpu: int) -> dict:
            expl: list[list] = []
            self._expl = expl
            try:
                ev = decode(raw, cpu)
            finally:
                self._expl = None
            ev[RECORD] = (index, cpu, raw, expl)
            return ev

        return recording

    def event(self, ev: dict) -> None:
        """A delivered event: its record is written (and taken out of the event, before anyone sees it)."""
        rec = ev.pop(RECORD, None)
        if rec is None:
            return
        index, cpu, raw, expl = rec
        self._frame(b"R", REC.pack(index, cpu, len(raw)) + raw + (json.dumps(expl).encode() if expl else b""))
        self.records += 1

    def lost(self, src: Source, cpu: int | None, count: int, reason: str) -> None:
        self._frame(b"L", LOST.pack(self._index(src), NO_CPU if cpu is None else cpu, count) + reason.encode())
        self.lost_frames += 1

    def _frame(self, kind: bytes, payload: bytes) -> None:
        head = struct.pack("<B3xI", kind[0], len(payload))
        self.buf += head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload

    def flush(self) -> None:
        """End of a drain batch: what it framed, in one write."""
        if not self.buf or self.fd is None:
            return
        view = memoryview(self.buf)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.size += n
        except OSError as e:
            raise CaptureError(f"cannot write {self.path}: {e.strerror}") from None
        finally:
            view.release()
            self.buf.clear()

    def close(self, summary: dict | None = None) -> str | None:
        """Trailer, last write, fsync; returns what went wrong (the file keeps what was written)."""
        if self.fd is None:
            return None
        try:
            if self.started:
                if summary is not None:
                    self._frame(b"T", json.dumps(summary).encode())
                self.flush()
                os.fsync(self.fd)
            return None
        except CaptureError as e:
            return str(e)
        except OSError as e:
            return f"cannot write {self.path}: {e.strerror}"
        finally:
            os.close(self.fd)
            self.fd = None
            if self.staged is not None:  # nothing useful in it: the session never started
                self.staged.unlink(missing_ok=True)


# --- reading --------------------------------------------------------------------------------------


@dataclass
class Problem:
    """Why reading stopped before the end of the file."""
    kind: str  # "truncated" or "damaged"
    offset: int
    detail: str

    def message(self, path: Path, records: int) -> str:
        what = "is truncated" if self.kind == "truncated" else "is damaged"
        return f"{path} {what} at byte {self.offset} ({self.detail}); the {records} records before it were replayed"


@dataclass
class Filter:
    """Replay filters, applied in Python: EVENT patterns, -p/--tid/-n/-u, --only-missing, --failed-only."""
    patterns: Sequence[str] = ()
    pids: Sequence[int] = ()
    tids: Sequence[int] = ()
    comm: str | None = None
    uid: int | None = None
    only_missing: bool = False
    failed_only: bool = False
    names: set[str] | None = field(default=None, init=False)  # syscall names the patterns select

    def bind(self, capture: Capture) -> None:
        """Resolve the patterns against the syscalls in the capture (an unknown one is an error)."""
        if not self.patterns:
            return
        traced = {s.name: s for s in capture.syscalls()}
        self.names = set()
        for spec in self.patterns:
            if spec.startswith("%"):
                group = spec[1:]
                if group == "file":
                    hit = {n for n, s in traced.items() if s.takes_path}
                elif group in GROUPS:
                    hit = set(traced) & GROUPS[group]
                else:
                    raise CaptureError(f"unknown group {spec!r}; groups: %file, %net, %process")
            elif spec.startswith("syscalls:sys_"):
                hit = {n for n in traced if spec in (f"syscalls:sys_enter_{n}", f"syscalls:sys_exit_{n}")}
            else:
                hit = set(fnmatch.filter(traced, spec)) | set(fnmatch.filter(capture.event_names(), spec))
            if not hit:
                have = ", ".join(sorted(traced)[:8]) or "none"
                raise CaptureError(f"nothing in the capture matches {spec!r} (it traced: {have})")
            self.names |= hit

    def __call__(self, ev: Event) -> bool:
        return self.rejects(ev) is None

    def rejects(self, ev: Event) -> str | None:
        """Why the event is left out: "selection" (not the events, processes or users asked for), or
        the filter a live session counts in its summary's `filtered` (failed_only, only_missing)."""
        d = ev.data
        if d.get("kind") == "lost":
            return None
        if self.names is not None:
            # a syscall by its name; the others by their event (a discarded user_events write's
            # `syscall` is the writer's call, not what it names)
            if (d["syscall"] if d.get("kind") == "syscall" else d.get("event")) not in self.names:
                return "selection"
        if self.pids and d.get("pid") not in self.pids:
            return "selection"
        if self.tids and d.get("tid") not in self.tids:
            return "selection"
        if self.comm is not None and d.get("comm") != self.comm:
            return "selection"
        if self.uid is not None and d.get("uid") != self.uid:
            return "selection"
        if self.only_missing and not ev.has_missing_data:  # in the live session's order
            return "only_missing"
        if self.failed_only and not is_error(d):
            return "failed_only"
        return None


class Capture:
    """A capture file: `header`, and its events replayed exactly as the live session delivered them.

        cap = Capture("run.cap")
        for ev in cap.events(only_missing=True):
            print(ev.syscall, ev.to_json())
        print(cap.summary(), cap.problem)

    Opening reads the signature and header (CaptureError if the file is not a capture); iterating
    stops at the first truncated or damaged frame and sets `problem` (never raises for bad data).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                magic = f.read(len(MAGIC))
                if magic != MAGIC:
                    raise CaptureError(f"{self.path} is not a tracer capture (no capture signature at its start)")
                frames = _frames(f, len(MAGIC))
                first = next(frames, None)
                problem = frames.problem
        except OSError as e:
            raise CaptureError(f"cannot read {self.path}: {e.strerror}") from None
        if first is None or first[0] != ord("H"):
            raise CaptureError(f"{self.path}: the capture header is missing or damaged"
                               + (f" ({problem.detail})" if problem else ""))
        if len(first[2]) > MAX_HEADER:
            raise CaptureError(f"{self.path}: the capture header is {len(first[2])} bytes, more than any capture's")
        try:
            header = check_header(parse_json(first[2]), SUPPORTED_VERSIONS, REPLAYERS)
        except Invalid as e:
            raise CaptureError(f"{self.path}: the capture header is not valid: {e}") from None
        except Exception as e:  # a check that missed a type: still one line
            raise CaptureError(f"{self.path}: the capture header is not valid ({type(e).__name__})") from None
        version = header["version"]
        self.version = version
        self.header = header
        self._data_offset = first[1] + FRAME.size + len(first[2])
        self.problem: Problem | None = None
        self.trailer: dict | None = None
        self.records = 0
        self._stats: Stats | None = None
        self._queue: deque = deque()
        self._decoders = self._build_decoders()  # now: a header that cannot be replayed fails at open

    # -- header views --------------------------------------------------------------------------
    @property
    def mono_to_wall_ns(self) -> int:
        return self.header.get("clock", {}).get("mono_to_wall_ns", 0)

    def syscalls(self) -> list:
        out = []
        for src in self.header["sources"]:
            if src["replay"] == SYSCALL_REPLAYER:
                try:
                    out.extend(syscalls_from_capture(src["desc"]))
                except (KeyError, TypeError, ValueError) as e:
                    raise CaptureError(f"{self.path}: the syscall source's description is not valid "
                                       f"({type(e).__name__}: {shown(str(e), 80)})") from None
        return out

    def event_names(self) -> list[str]:
        return [n for src in self.header["sources"] for n in src["desc"].get("events", ())]

    # -- events --------------------------------------------------------------------------------
    def _build_decoders(self) -> list[Callable[[bytes, int], dict]]:
        explain = self._explain if self.header.get("session", {}).get("explain", True) else None
        decoders = []
        for src in self.header["sources"]:
            try:
                decoders.append(replayer(src["replay"]).replay_decoder(src["desc"], explain))
            except CaptureError as e:
                raise CaptureError(f"{self.path}: {e}") from None
            except Exception as e:  # hostile contents under a valid checksum: one line, never a traceback
                raise CaptureError(f"{self.path}: cannot rebuild the decoder of source {shown(src['name'])} "
                                   f"({type(e).__name__}: {shown(str(e), 80)})") from None
        return decoders

    def _explain(self, pid: int, addr: int) -> dict:
        q = self._queue
        if q and q[0][0] == pid and q[0][1] == addr:
            return q.popleft()[2]
        return {"kind": "unknown", "note": "not explained in the capture"}

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    def events(self, filter: Filter | None = None, **filters: Any) -> Iterator[Event]:
        """Events in recorded order; keyword filters as in Filter (patterns, pids, tids, comm, uid,
        only_missing). Statistics for `summary()` cover the events yielded."""
        keep = filter or Filter(**filters)
        keep.bind(self)
        decoders = self._decoders
        wall = WallClock(self.mono_to_wall_ns)  # the times the live session printed
        self.problem, self.trailer, self.records = None, None, 0
        self._stats = stats = Stats()
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise CaptureError(f"cannot read {self.path}: {e.strerror}") from None
        with f:
            f.seek(self._data_offset)
            frames = _frames(f, self._data_offset)
            for kind, offset, payload in frames:
                ev = self._frame_event(kind, offset, payload, decoders)
                if self.problem is not None:
                    return
                if ev is None:
                    continue
                ts = ev.get("ts")
                if ts is not None:
                    ev["time"] = wall.iso(ts)
                event = Event(ev)
                left_out = keep.rejects(event)
                if left_out is not None:
                    if left_out != "selection":  # counted as the live session counts it
                        stats.filtered[left_out] += 1
                    continue
                if ev.get("kind") == "lost":
                    stats.add_lost(ev)
                else:
                    stats.add(ev)
                yield event
            self.problem = frames.problem

    def _frame_event(self, kind: int, offset: int, payload: bytes, decoders: list) -> dict | None:
        try:
            if kind == ord("R"):
                src, cpu, n = REC.unpack_from(payload)
                raw = payload[REC.size: REC.size + n]
                if len(raw) != n or src >= len(decoders):
                    raise ValueError("record frame does not hold its record")
                tail = payload[REC.size + n:]
                # a tail that is not a list of lists fails here: a damaged frame (below)
                self._queue = deque(tuple(x) for x in cast(list, parse_json(tail))) if tail else deque()
                ev = decoders[src](raw, cpu)
                self.records += 1
                return ev
            if kind == ord("L"):
                src, cpu, count = LOST.unpack_from(payload)
                reason = payload[LOST.size:].decode("ascii") if self.version >= 2 else UNSPECIFIED
                if reason not in REASONS and not (self.version < 2 and reason == UNSPECIFIED):
                    raise ValueError(f"unknown lost reason {reason[:40]!r}")
                names = [s.get("name", "?") for s in self.header["sources"]]
                return {"kind": "lost", "source": names[src] if src < len(names) else "?",
                        "cpu": None if cpu == NO_CPU else cpu, "count": count, "reason": reason}
            if kind == ord("T"):
                if len(payload) > MAX_HEADER:
                    raise ValueError("trailer larger than any summary")
                self.trailer = check_trailer(parse_json(payload))
                return None
            raise ValueError("a second header")
        except Exception as e:  # untrusted bytes under a valid checksum: report, never raise
            self.problem = Problem("damaged", offset, f"frame cannot be decoded: {type(e).__name__}: {e}")
            return None

    def summary(self) -> dict:
        """The summary of the events iterated, with the kernel counters, elapsed time and exit code of
        the recorded session (from its trailer; absent if it did not end cleanly)."""
        t = self.trailer or {}
        return summary_of(self._stats or Stats(), t.get("kernel") or {}, t.get("elapsed_s", 0.0),
                          t.get("exit_code"), self.header.get("clock", {}).get("mono_to_wall_ns"))


class _FrameReader:
    """Iterates (kind, offset, payload); `problem` says why it stopped early (None at a clean end)."""

    def __init__(self, f: Any, offset: int) -> None:
        self.f, self.offset = f, offset
        self.problem: Problem | None = None

    def __iter__(self) -> _FrameReader:
        return self

    def __next__(self) -> tuple[int, int, bytes]:
        if self.problem is not None:
            raise StopIteration
        at = self.offset
        head = self.f.read(FRAME.size)
        if not head:
            raise StopIteration
        if len(head) < FRAME.size:
            self.problem = Problem("truncated", at, f"frame header cut after {len(head)} of {FRAME.size} bytes")
            raise StopIteration
        kind, length, crc = FRAME.unpack(head)
        if kind not in KINDS or head[1:4] != b"\0\0\0" or length > MAX_FRAME:
            self.problem = Problem("damaged", at, "not a frame header")
            raise StopIteration
        payload = self.f.read(length)
        if len(payload) < length:
            self.problem = Problem("truncated", at, f"{chr(kind)} frame cut after {len(payload)} of {length} bytes")
            raise StopIteration
        if zlib.crc32(payload, zlib.crc32(head[:8])) != crc:
            self.problem = Problem("damaged", at, f"{chr(kind)} frame checksum mismatch")
            raise StopIteration
        self.offset = at + FRAME.size + length
        return kind, at, payload


def _frames(f: Any, offset: int) -> _FrameReader:
    return _FrameReader(f, offset)
