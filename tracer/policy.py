"""Monitor policies: TOML files of rules (stdlib tomllib), validated with every error located by line.

tomllib reports syntax errors with a line but knows nothing of our schema, and its result carries no
positions; semantic errors are located by finding the rule's `[[rule]]` header and the key (or the
offending quoted value) in the source text. See README "Policy format".
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import PolicyError
from .events import READ_STATUSES
from .globs import normalise
from .openat2 import _O_LARGEFILE_KERNEL, _OPEN_BITS, RESOLVE_FLAGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04's system Python): the same parser, from PyPI
    import tomli as tomllib

SEVERITIES = ("info", "low", "medium", "high", "critical")
RESULTS = ("succeeded", "failed")
# Alerts the monitor raises itself (fail closed); policies cannot define rules with these ids.
BUILTIN_IDS = ("unreadable", "changed", "unresolved", "lost")
ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")

# O_* names a rule may use: access modes are values (flags & O_ACCMODE), O_TMPFILE and O_SYNC are
# multi-bit, the rest single bits. Values are os's (the C library's), O_LARGEFILE the kernel's.
OPEN_FLAGS: dict[str, int] = {"O_RDONLY": os.O_RDONLY, "O_WRONLY": os.O_WRONLY, "O_RDWR": os.O_RDWR,
                              "O_TMPFILE": os.O_TMPFILE, "O_SYNC": os.O_SYNC,
                              **{name: bit for bit, name in _OPEN_BITS}, "O_LARGEFILE": _O_LARGEFILE_KERNEL}
RESOLVE_NAMES: dict[str, int] = {name: bit for bit, name in RESOLVE_FLAGS.items()}

GLOB_KEYS = ("path", "not_path", "filename", "not_filename", "comm", "not_comm", "exe", "not_exe", "parent_exe")
# Globs on absolute paths: normalised like the paths they match.
PATH_GLOB_KEYS = ("path", "not_path", "exe", "not_exe", "parent_exe")
PROCESS_KEYS = ("exe", "not_exe", "parent_exe")  # facts read from /proc after the call (tracer/proccontext.py)
UID_KEYS = ("uid", "not_uid")
SET_KEYS = {"flags": ("any", "all", "none"), "resolve": ("any", "all", "none"), "mode": ("any", "all")}
RULE_KEYS = ("id", "severity", "description", *GLOB_KEYS, *UID_KEYS, *SET_KEYS, "result", "read_status")


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    description: str
    where: str = ""  # FILE:LINE of its [[rule]] header
    globs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # GLOB_KEYS present
    uids: dict[str, frozenset[int]] = field(default_factory=dict)  # UID_KEYS present
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)  # any/all/none -> O_* names
    resolve: dict[str, tuple[str, ...]] = field(default_factory=dict)  # any/all/none -> RESOLVE_* names
    mode: dict[str, int] = field(default_factory=dict)  # any/all -> mode bits
    result: str | None = None
    read_status: frozenset[str] = frozenset()


@dataclass
class Policy:
    rules: list[Rule]
    files: list[str]


def default_policy() -> Path:
    return Path(str(resources.files("tracer") / "policies" / "default.toml"))


def load(paths: list[str | Path]) -> Policy:
    """Every rule of every file; PolicyError with every error of every file."""
    per_file, errors = parse_files(paths)
    if errors:
        raise PolicyError(errors)
    return Policy([r for rules in per_file.values() for r in rules], [str(p) for p in paths])


def parse_files(paths: Sequence[str | Path], notes: list[str] | None = None) -> tuple[dict[str, list[Rule]], list[str]]:
    """({file: its rules}, every error of every file): a rule id used again in a later file is an error
    at the later rule (the monitor could not tell the two rules' alerts apart)."""
    per_file: dict[str, list[Rule]] = {}
    errors: list[str] = []
    seen: dict[str, str] = {}
    for p in paths:
        file_rules, file_errors = parse_file(p, notes)
        errors += file_errors
        kept = per_file.setdefault(str(p), [])
        for r in file_rules:
            if r.id in seen:
                errors.append(f"{r.where}: duplicate rule id {r.id!r} (first defined at {seen[r.id]})")
            else:
                seen[r.id] = r.where
                kept.append(r)
    return per_file, errors


MAX_POLICY_BYTES = 1 << 20  # far above any real policy (the bundled one is 3 KiB)


class Unsafe(Exception):
    """A policy file the monitor must not load: why, in a few words."""


def read_policy(path: str | Path) -> str:
    """The text of a policy file, refusing what is not a regular file (a FIFO would block the read, a
    device never end), too large, not UTF-8, or changeable by someone else than root or us: a policy
    decides what is monitored, so whoever can write it can blind the monitor. Opened once, checked with
    fstat on that descriptor (no window between check and read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise Unsafe(f"cannot read the policy file: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe(f"not a regular file ({_file_kind(st.st_mode)}): a policy must be a regular file")
        if st.st_size > MAX_POLICY_BYTES:
            raise Unsafe(f"too large ({st.st_size} bytes; a policy may have {MAX_POLICY_BYTES} at most)")
        if st.st_uid not in (0, os.geteuid()):
            raise Unsafe(f"owned by uid {st.st_uid} ({_user(st.st_uid)}), not by root or you: that user could "
                         "change what is monitored (chown root FILE)")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Unsafe(f"writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} (mode "
                         f"{stat.S_IMODE(st.st_mode):#o}): they could change what is monitored (chmod go-w FILE)")
        why = _replaceable(Path(path))
        if why:
            raise Unsafe(why)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_POLICY_BYTES:  # grew since fstat
        raise Unsafe(f"too large (more than {MAX_POLICY_BYTES} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Unsafe("not UTF-8 text") from None


def _replaceable(path: Path) -> str | None:
    """Why another user could replace the file by renaming in one of its directories (None: no one can):
    a directory writable by group or others without the sticky bit (/tmp, sticky, is fine)."""
    for d in path.resolve().parents:
        try:
            st = os.stat(d)
        except OSError:
            continue
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return (f"its directory {d} is writable by group/others (mode {stat.S_IMODE(st.st_mode):#o}): "
                    "they could replace the file")
    return None


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no such user"


def parse_file(path: str | Path, notes: list[str] | None = None) -> tuple[list[Rule], list[str]]:
    try:
        text = read_policy(path)
    except Unsafe as e:
        return [], [f"{path}:0: {e}"]
    found: list[tuple[int, str]] = []
    rules, errors = parse_text(text, str(path), found)
    if notes is not None:
        notes += [f"{path}:{line}: {msg}" for line, msg in found]
    return rules, [f"{path}:{line}: {msg}" for line, msg in errors]


def parse_text(text: str, name: str = "<policy>", notes: list[tuple[int, str]] | None = None
               ) -> tuple[list[Rule], list[tuple[int, str]]]:
    """(rules, [(line, message)]) — rules only when there are no errors. `notes` receives (line, message)
    for what was accepted but rewritten (a glob normalised)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [], [(_syntax_line(str(e), text), f"TOML syntax error: {e}")]
    except RecursionError:  # tomllib recurses once per level of nested arrays or inline tables
        return [], [(1, "nested too deeply for a policy (arrays or inline tables within each other)")]
    src = _Source(text)
    errors: list[tuple[int, str]] = []
    for key in data:
        if key != "rule":
            errors.append((src.top_key(key), f"unknown top-level key {key!r}{_hint(key, ['rule'])}; "
                                              "rules are [[rule]] tables"))
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        errors.append((src.top_key("rule"), "`rule` must be an array of tables: write each rule as [[rule]]"))
        raw_rules = []
    elif not raw_rules and not errors:
        errors.append((1, "no rules: add [[rule]] tables (see README, Policy format)"))
    rules = []
    for i, raw in enumerate(raw_rules):
        parser = _RuleParser(raw, i, src, name)
        rule = parser.parse(errors)
        if notes is not None:
            notes += parser.notes
        if rule is not None:
            rules.append(rule)
    ids: dict[str, int] = {}
    for i, r in enumerate(rules):
        if r.id in ids:
            errors.append((src.header(i), f"duplicate rule id {r.id!r} (first defined at line {ids[r.id]})"))
        ids.setdefault(r.id, src.header(i))
    errors.sort()
    return (rules if not errors else []), errors


def _syntax_line(msg: str, text: str) -> int:
    m = re.search(r"at line (\d+)", msg)
    if m:
        return int(m.group(1))
    return max(1, text.count("\n") + (0 if text.endswith("\n") else 1))  # "at end of document"


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Source:
    """Finds lines in the policy text: [[rule]] headers, keys within a rule, quoted values."""

    HEADER = re.compile(r"\s*\[\[\s*rule\s*\]\]")
    TABLE = re.compile(r"\s*\[")
    SUBTABLE = re.compile(r"\s*\[\s*rule\s*\.\s*([A-Za-z0-9_-]+)\s*\]")
    KEY = re.compile(r"""\s*["']?[A-Za-z0-9_-]+["']?\s*(\.|=)""")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers = [n for n, line in enumerate(self.lines, 1) if self.HEADER.match(line)]

    def header(self, i: int) -> int:
        return self.headers[i] if i < len(self.headers) else 1

    def span(self, i: int) -> range:
        if i >= len(self.headers):  # rules written as an inline array: search the whole file
            return range(1, len(self.lines) + 1)
        start = self.headers[i]
        end = start + 1
        while end <= len(self.lines):
            line = self.lines[end - 1]
            if self.TABLE.match(line) and not self.SUBTABLE.match(line):
                break
            end += 1
        return range(start, end)

    def top_key(self, key: str) -> int:
        pat = re.compile(rf"""\s*(\[+\s*)?["']?{re.escape(key)}["']?\s*(\]|=|\.)""")
        for n, line in enumerate(self.lines, 1):
            if pat.match(line):
                return n
        return 1

    def locate(self, i: int, keys: tuple[str, ...], value: str | None = None) -> int:
        """Line of rule i's key (keys = ("flags", "any") for a subtable key), or of `value` quoted in it."""
        span = self.span(i)
        k = re.escape(keys[0])
        top = re.compile(rf"""\s*["']?{k}["']?\s*[=.]""")
        if len(keys) > 1:
            k2 = re.escape(keys[1])
            dotted = re.compile(rf"""\s*["']?{k}["']?\s*\.\s*["']?{k2}["']?\s*=""")
            plain = re.compile(rf"""\s*["']?{k2}["']?\s*=""")
        found = 0
        table = None  # the [rule.X] subtable the line is in
        for n in span:
            line = self.lines[n - 1]
            m = self.SUBTABLE.match(line)
            if m:
                table = m.group(1)
                if table == keys[0] and not found:
                    found = n
                continue
            if len(keys) > 1 and ((table is None and dotted.match(line)) or (table == keys[0] and plain.match(line))):
                found = n
                break
            if table is None and top.match(line) and not found:
                found = n
                if len(keys) == 1:
                    break
        if not found:
            return span.start
        if value is not None:
            quoted = (f'"{value}"', f"'{value}'")
            for n in range(found, span.stop):
                line = self.lines[n - 1]
                if n > found and (self.KEY.match(line) or self.TABLE.match(line)):
                    break
                if any(q in line for q in quoted):
                    return n
        return found


class _RuleParser:
    def __init__(self, raw: dict, index: int, src: _Source, name: str) -> None:
        self.raw, self.i, self.src, self.name = raw, index, src, name
        self.errors: list[tuple[int, str]] = []
        self.notes: list[tuple[int, str]] = []

    def note(self, keys: tuple[str, ...], msg: str, value: str) -> None:
        self.notes.append((self.src.locate(self.i, keys, value), f"note: {self.who()}: {msg}"))

    def who(self) -> str:
        rid = self.raw.get("id")
        return f"rule {rid!r}" if isinstance(rid, str) and rid else f"rule #{self.i + 1}"

    def err(self, keys: tuple[str, ...], msg: str, value: str | None = None) -> None:
        line = self.src.locate(self.i, keys, value) if keys else self.src.header(self.i)
        self.errors.append((line, f"{self.who()}: {msg}"))

    def parse(self, errors: list[tuple[int, str]]) -> Rule | None:
        raw = self.raw
        for key in raw:
            if key not in RULE_KEYS:
                self.err((key,), f"unknown key {key!r}{_hint(key, RULE_KEYS)}")
        rid = self.text("id")
        if rid is not None and not ID_RE.match(rid):
            self.err(("id",), f"id {rid!r} must be lower-case letters, digits, '.', '_' or '-'")
        elif rid in BUILTIN_IDS:
            self.err(("id",), f"id {rid!r} is reserved for the monitor's own alerts ({', '.join(BUILTIN_IDS)})")
        sev = self.text("severity")
        if sev is not None and sev not in SEVERITIES:
            self.err(("severity",), f"severity {sev!r} is not one of {', '.join(SEVERITIES)}{_hint(sev, SEVERITIES)}")
        desc = self.text("description")
        globs = {k: v for k in GLOB_KEYS if k in raw and (v := self.globs(k)) is not None}
        uids = {k: u for k in UID_KEYS if k in raw and (u := self.uids(k)) is not None}
        flags = self.names("flags", OPEN_FLAGS)
        resolve = self.names("resolve", RESOLVE_NAMES)
        mode = self.modes()
        result = None
        if "result" in raw:
            result = raw["result"]
            if result not in RESULTS:
                self.err(("result",), f"result must be \"succeeded\" or \"failed\", not {result!r}")
        statuses: frozenset[str] = frozenset()
        if "read_status" in raw:
            statuses = frozenset(self.strings(("read_status",), raw["read_status"], READ_STATUSES) or ())
        conditions = set(raw) - {"id", "severity", "description"}
        if not conditions and rid is not None:
            self.err((), "no conditions: the rule would match every call (add path, flags, comm, ...)")
        errors += self.errors
        if self.errors or rid is None or sev is None or desc is None:
            return None
        return Rule(rid, sev, desc, f"{self.name}:{self.src.header(self.i)}", globs, uids, flags, resolve, mode,
                    result, statuses)

    def text(self, key: str) -> str | None:
        if key not in self.raw:
            self.err((), f"missing {key!r} (every rule needs id, severity and description)")
            return None
        v = self.raw[key]
        if not isinstance(v, str) or not v.strip():
            self.err((key,), f"{key} must be a non-empty string")
            return None
        return v

    def strings(self, keys: tuple[str, ...], v: object, choices: Collection[str] | None = None
                ) -> tuple[str, ...] | None:
        """A string or a list of strings (checked against choices when given)."""
        items = [v] if isinstance(v, str) else v
        what = ".".join(keys)
        if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
            self.err(keys, f"{what} must be a string or a non-empty list of strings")
            return None
        ok = True
        for x in items:
            if choices is not None and x not in choices:
                self.err(keys, f"{what}: unknown value {x!r}{_hint(x, choices)}", x)
                ok = False
        return tuple(items) if ok else None

    def globs(self, key: str) -> tuple[str, ...] | None:
        pats = self.strings((key,), self.raw[key])
        if pats is None:
            return None
        ok = True
        out = []
        for p in pats:
            if key in PATH_GLOB_KEYS and not p.startswith("/"):
                self.err((key,), f"{key} glob {p!r} must be absolute (start with /); "
                                 "use `filename` to match the path as the caller passed it", p)
                ok = False
            elif p.count("[") != p.count("]"):
                self.err((key,), f"{key} glob {p!r} has an unbalanced [ ]", p)
                ok = False
            elif any("**" in part and part != "**" for part in p.split("/")):
                self.err((key,), f"{key} glob {p!r}: ** must be a whole path component (as in /etc/**/x)", p)
                ok = False
            elif key in PATH_GLOB_KEYS:
                norm, why = normalise(p)
                if norm is None:
                    self.err((key,), f"{key} glob {p!r}: {why}", p)
                    ok = False
                    continue
                if norm != p:  # paths are matched normalised: so is the glob, or it could never match
                    self.note((key,), f"{key} glob {p!r} is matched as {norm!r}", p)
                out.append(norm)
                continue
            out.append(p)
        return tuple(out) if ok else None

    def uids(self, key: str) -> frozenset[int] | None:
        v = self.raw[key]
        items = [v] if isinstance(v, int) else v
        if (not isinstance(items, list) or not items
                or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 32 for x in items)):
            self.err((key,), f"{key} must be a user id or a non-empty list of user ids (integers >= 0)")
            return None
        return frozenset(items)

    def subtable(self, key: str) -> dict | None:
        v = self.raw.get(key)
        if v is None:
            return None
        allowed = SET_KEYS[key]
        if not isinstance(v, dict) or not v:
            self.err((key,), f"{key} must be a table with {', '.join(allowed)} (e.g. {key}.any = ...)")
            return None
        for k in v:
            if k not in allowed:
                self.err((key, k), f"unknown key {key}.{k}{_hint(k, allowed)}; use {', '.join(allowed)}")
        return {k: x for k, x in v.items() if k in allowed}

    def names(self, key: str, table: dict[str, int]) -> dict[str, tuple[str, ...]]:
        sub = self.subtable(key) or {}
        out = {}
        for k, v in sub.items():
            names = self.strings((key, k), v, table)
            if names is not None:
                out[k] = names
        return out

    def modes(self) -> dict[str, int]:
        out = {}
        for k, v in (self.subtable("mode") or {}).items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 0o7777:
                self.err(("mode", k), f"mode.{k} must be mode bits as an integer, e.g. 0o002 (got {v!r})")
            else:
                out[k] = v
        return out


def load_for_run(paths: list[str], with_default: bool) -> Policy:
    """The policy of a monitor run: the --policy files, else (or also, with_default) the bundled one."""
    return load([*([default_policy()] if with_default or not paths else []), *paths])


def check_files(paths: list[str]) -> int:
    """--check-policy: every error as FILE:LINE: message on stderr (rule ids must be unique across the
    files, as when they are loaded together); 0 when all files are valid, else 2."""
    notes: list[str] = []
    per_file, errors = parse_files(paths, notes)
    order = {p: i for i, p in enumerate(per_file)}

    def where(msg: str) -> tuple[int, int]:  # notes among the errors, in file then line order
        m = re.match(r"(.*?):(\d+): ", msg)
        return (order.get(m.group(1), 0), int(m.group(2))) if m else (0, 0)

    for e in sorted(errors + notes, key=where):
        sys.stderr.write(e + "\n")
    for p, rules in per_file.items():
        if not any(e.startswith(f"{p}:") for e in errors):
            sys.stdout.write(f"{p}: valid, {len(rules)} rules ({', '.join(r.id for r in rules)})\n")
    return 2 if errors else 0
