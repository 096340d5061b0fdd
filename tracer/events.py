"""The event model: what every source produces and every output, capture and monitor consumes.

An event is a JSON-ready dict whose `kind` says its shape (the TypedDicts below, the JSON Schemas in
tracer/schema/); `Event` wraps one for the Python API. A pointer argument read from user memory
carries a read entry (`reads.<arg>`), built here (`read_entry` and friends) for syscalls and uprobes
alike: its `status` and `source` come from the two vocabularies below and nowhere else. `Stats` counts
a stream and `summary_of` makes its end-of-run summary, live or replayed.

This module imports nothing of the sources, the session or the outputs: they all import it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from .accounting import REASONS, UNSPECIFIED
from .jsonenc import dumps

# -- kinds -------------------------------------------------------------------------------------------
KINDS = ("syscall", "uprobe", "user_event", "lost")  # the events of a stream (tracer/contract.py: every line)


class ReadEntry(TypedDict, total=False):
    """reads.<arg>: how a pointer argument was read (README "Read statuses"; tracer/schema/)."""
    status: str          # READ_STATUSES
    source: str          # READ_SOURCES
    errno: int | None    # the failed entry read's errno (positive)
    addr: int
    len_errno: int       # an output argument: the caller's buffer size could not be read
    len: int
    hex: str             # a string that is not UTF-8, exactly
    size: int            # a buffer: the bytes asked for
    note: str            # NOTE_NOROOM
    truncated: bool
    value_at_exit: Any   # changed: what the exit re-read found
    len_at_exit: int
    exit_errno: int      # the exit re-read failed
    exit: str            # the exit re-read was skipped, and why
    verified_at_exit: bool
    verified: bool
    verified_by: str     # VERIFIED_*
    unverified_reason: str  # UNVERIFIED
    faulted_in: bool     # a sleepable read faulted the page in: a nofault read could not have
    region: dict         # where addr lives (tracer/regions.py)
    kernel_path: str     # tracer/opened.py: the file the kernel opened
    opened_match: bool
    count: int           # execve argv/envp (tracer/strv.py): elements, their reads, the array's own
    elements: list[dict]
    array_truncated: bool
    array_errno: int
    entry_status: str
    entry_errno: int | None
    exit_from: str


class _Call(TypedDict, total=False):
    """What a syscall and a uprobe event share: a call, its arguments, its return and its reads."""
    event: str
    ts: int
    ts_exit: int
    duration_ns: int
    cpu: int
    pid: int
    tid: int
    comm: str
    uid: int
    args: dict[str, Any]
    ret: int | None
    ret_str: str | None
    reads: dict[str, ReadEntry]
    missing: list[str]
    time: str  # wall-clock, added when the event is delivered


class SyscallEvent(_Call, total=False):
    kind: Literal["syscall"]
    syscall: str
    args_str: dict[str, str]
    recovery: bool
    opened: dict  # tracer/opened.py


class UprobeEvent(_Call, total=False):
    kind: Literal["uprobe"]
    path: str
    function: str
    offset: int | None
    source: str  # READ_SOURCES: the reader of every read of this call


class UserEvent(TypedDict, total=False):
    """A user_events sample (status ok, extra_bytes, malformed) or a write the kernel discarded
    (tracer/user_events/decode.py)."""
    kind: Literal["user_event"]
    status: str
    event: str | None
    name: str | None
    ts: int
    cpu: int
    pid: int
    tid: int
    comm: str | None
    fields: dict[str, Any] | None
    errors: dict[str, str]     # field -> why it is null
    hex: dict[str, str]        # field -> exact bytes of a string that is not UTF-8
    payload_hex: str
    eventheader: dict
    extra_bytes: dict
    malformed: dict
    missing: list[str]
    time: str
    # a discarded write: the writer's call, and what names its event
    fd: int
    syscall: str
    ret: int
    errno: int
    addr: int
    count: int
    iovcnt: int
    write_index: int | None
    recognised: str
    name_args: str
    name_reason: str
    named_by: str
    event_id: int


class LostEvent(TypedDict):
    kind: Literal["lost"]
    source: str
    cpu: int | None
    count: int
    reason: str  # accounting.REASONS


def lost_event(source: str, cpu: int | None, count: int, reason: str) -> dict:
    """{"kind": "lost", ...}: records of `source` that were not delivered, and why."""
    return {"kind": "lost", "source": source, "cpu": cpu, "count": count, "reason": reason}


def order_ts(ev: dict) -> int:
    """Events are shown in the order they completed: a syscall at its exit, a sample when taken."""
    return ev.get("ts_exit") or ev["ts"]


# -- read entries --------------------------------------------------------------------------------------
READ_STATUSES = ("ok", "recovered", "changed", "missing", "truncated", "null")
MISSING_DATA = ("missing", "recovered", "changed")  # not read at entry, or not what was read there
# reads.<arg>.source: which reader made the value shown, for syscalls and uprobes alike: "enter" (the
# nofault read at the call: sys_enter, the uprobe), "exit" (the re-read at sys_exit; syscalls only),
# "sleepable" (a sleepable program at the call). tracer/schema/*.json list the same three.
READ_SOURCES = ("enter", "exit", "sleepable")
NOTE_NOROOM = "record data area full"  # a read the BPF program had no room left to make
# What vouches for a value (reads.<arg>.verified_by): the same bytes again at exit; a null pointer,
# which is its own value; the kernel's own copy (tracer/strv.py, tracer/opened.py).
VERIFIED_EQUAL, VERIFIED_POINTER, VERIFIED_KERNEL_COPY = "enter_exit_equal", "pointer", "kernel_copy"
# Why a value is not proven to be the one the kernel used (reads.<arg>.unverified_reason). An entry read
# comes before the kernel's own copy, an exit read after it: only an exit read equal to the entry read
# (or kernel-side evidence, see tracer/opened.py) vouches for a value.
UNVERIFIED = {
    "recovered": "read at exit, after the call: shows what memory held then, not necessarily what the kernel used",
    "changed": "memory changed during the call: the kernel may have used either value, or another one between",
    "no_exit": "read at entry only, before the kernel's copy, and not re-read at exit (--no-recover)",
    "noreturn": "read at entry only: the call does not return, so there is no exit re-read",
    "exit_fault": "read at entry; the exit re-read failed, so a change during the call cannot be ruled out",
    "skipped": "read at entry; not re-read at exit: the address space was replaced (execve)",
    "missing": "not read",
    "output": "written by the kernel, read back from user memory at exit: another thread could have "
              "rewritten it in between",
    "output_size": "written by the kernel, read back at exit for the length it reported; the caller's buffer "
                   "size (*addrlen at entry) was unreadable, so had the buffer been smaller, the bytes past it "
                   "are not the kernel's",
    "exec_other": "the new program received other strings: a #! script's interpreter is put before the "
                  "arguments, or memory changed before the kernel's copy",
    "exec_copy_unread": "read at entry; the kernel's copy in the new program could not be read",
}


def read_entry(status: str, source: str, addr: int, errno: int | None = None, raw: bytes | None = None,
               size: int | None = None, text: bool = True, len_errno: int | None = None) -> dict:
    """THE constructor of a reads.<arg> entry, for every source: its status, the reader that made it
    (READ_SOURCES), the failed read's errno, the address, and for bytes read (`raw`) their length and
    either, for text, their hex when they are not UTF-8 (the value keeps them as surrogates), or, for
    a buffer, the `size` asked for. `len_errno`: the caller's buffer size could not be read (an output
    argument). Callers add what only they know after it (truncation, the exit read, verification)."""
    e: dict = {"status": status, "source": source, "errno": errno, "addr": addr}
    if len_errno is not None:
        e["len_errno"] = len_errno
    if raw is not None:
        e["len"] = len(raw)
        if not text:
            if size is not None:
                e["size"] = size
        elif not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                e["hex"] = raw.hex()
    return e


# What `verified(e, VERIFIED_EQUAL)` adds, for the decoder's hot path to add in one dict.update.
VERIFIED_AT_EXIT = {"verified_at_exit": True, "verified": True, "verified_by": VERIFIED_EQUAL}


def verified(e: dict, by: str) -> dict:
    """The entry's value is the one the kernel used, as `by` shows (VERIFIED_*)."""
    if by == VERIFIED_EQUAL:
        e.update(VERIFIED_AT_EXIT)
    else:
        e["verified"] = True
        e["verified_by"] = by
    return e


def unverified(e: dict, why: str) -> dict:
    """The entry's value is not proven to be the one the kernel used: UNVERIFIED[why]."""
    e["verified"] = False
    e["unverified_reason"] = UNVERIFIED[why]
    return e


class Event:
    """One decoded record: attribute access to its fields, `.to_json()` for the JSON Lines form."""

    __slots__ = ("data",)

    def __init__(self, data: dict) -> None:
        self.data = data

    def __getattr__(self, name: str) -> Any:
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: object = None) -> Any:
        return self.data.get(key, default)

    def to_json(self) -> str:
        """The JSON Lines form (one line of `--json`, without its newline)."""
        return dumps(self.data)

    @property
    def has_missing_data(self) -> bool:
        """Some pointer argument could not be read at entry (missing, recovered) or changed."""
        return missing_data(self.data)

    def __repr__(self) -> str:
        return f"Event({self.data!r})"


def missing_data(ev: dict) -> bool:
    """Event.has_missing_data for an event dict."""
    if ev.get("status") == "discarded":  # a user_events write the kernel dropped
        return True
    return any(r["status"] in MISSING_DATA for r in ev.get("reads", {}).values())


# -- counting ------------------------------------------------------------------------------------------
def _status(info: dict) -> str:
    return info["status"]


@dataclass
class Stats:
    events: int = 0
    lost: int = 0
    lost_per_cpu: Counter = field(default_factory=Counter)
    lost_by_reason: Counter = field(default_factory=Counter)  # accounting.REASONS
    reads: Counter = field(default_factory=Counter)
    by_arg: dict = field(default_factory=lambda: defaultdict(Counter))
    events_with_reads: int = 0
    wrong_without_recovery: int = 0
    user_events: Counter = field(default_factory=Counter)  # user_event status -> count (ok, malformed, discarded)
    # Calls the kernel delivered that the user's own filters left out (-Z/--failed-only, --only-missing):
    # neither shown nor lost, and said so.
    filtered: Counter = field(default_factory=Counter)

    def add(self, ev: dict) -> None:
        self.add_many((ev,))

    def add_lost(self, ev: dict) -> None:
        """A {"kind": "lost"} event (counted once here, whoever reports it)."""
        n = ev["count"]
        self.lost += n
        self.lost_by_reason[ev.get("reason") or UNSPECIFIED] += n
        if ev.get("cpu") is not None:
            self.lost_per_cpu[ev["cpu"]] += n

    def add_many(self, evs: Sequence[dict]) -> None:
        """Count events a batch at a time: events are grouped by what the counters look at (kind, status,
        name, read names and statuses), and each group is counted once, times its size."""
        groups: dict[tuple, int] = {}
        get = groups.get
        for ev in evs:
            reads = ev.get("reads")
            if reads:
                # by_arg names a read by its syscall, or its uprobe's function
                key = (ev.get("kind"), ev.get("status", "ok"), ev.get("event"), ev.get("syscall") or ev.get("function"),
                       tuple(reads), tuple(map(_status, reads.values())))
            else:
                key = (ev.get("kind"), ev.get("status", "ok"), ev.get("event"), None, (), ())
            groups[key] = get(key, 0) + 1
        self.add_groups(groups)

    def add_groups(self, groups: dict[tuple, int]) -> None:
        """Count events given as add_many's grouping keys -> number of events (tracer/recjson.py gives
        each line's key without building the event)."""
        for (kind, status, event, name, args, statuses), n in groups.items():
            self.events += n
            if kind == "user_event":
                self.user_events[status] += n
                if status == "discarded":
                    self.user_events[f"discarded:{event or 'unknown event'}"] += n
            if not args:
                continue
            self.events_with_reads += n
            for arg, st in zip(args, statuses, strict=True):
                self.reads[st] += n
                self.by_arg[f"{name}.{arg}"][st] += n
            # A plain entry-only tracer would have shown nothing (or zeros) for a recovered read and
            # missed the change for a changed one.
            if "recovered" in statuses or "changed" in statuses:
                self.wrong_without_recovery += n


def summary_of(s: Stats, kernel: dict, elapsed_s: float, exit_code: int | None,
               mono_to_wall_ns: int | None = None) -> dict:
    """The end-of-run summary (the JSON contract's "summary" object); replays build it the same way.
    `mono_to_wall_ns`: the session's clock offset (events' `ts` + it = wall-clock ns)."""
    return {
        "kind": "summary",
        "events": s.events,
        "lost": s.lost,
        "lost_per_cpu": {str(k): v for k, v in sorted(s.lost_per_cpu.items())},
        "lost_by_reason": {**{r: s.lost_by_reason.get(r, 0) for r in REASONS},
                           **({UNSPECIFIED: s.lost_by_reason[UNSPECIFIED]} if s.lost_by_reason.get(UNSPECIFIED)
                              else {})},
        "reads": {k: s.reads.get(k, 0) for k in READ_STATUSES},
        "by_arg": {k: dict(v) for k, v in sorted(s.by_arg.items())},
        "events_with_reads": s.events_with_reads,
        "wrong_without_recovery": s.wrong_without_recovery,
        "wrong_without_recovery_share": (
            round(s.wrong_without_recovery / s.events_with_reads, 4) if s.events_with_reads else 0.0),
        **({"user_events": dict(sorted(s.user_events.items()))} if s.user_events else {}),
        **({"filtered": dict(sorted(s.filtered.items()))} if s.filtered else {}),
        "kernel": dict(kernel),
        "elapsed_s": elapsed_s,
        "exit_code": exit_code,
        "mono_to_wall_ns": mono_to_wall_ns,
    }
