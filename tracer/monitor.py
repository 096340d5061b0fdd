"""Security monitor of the open family: judges each call on policy rules, raises alerts.

Fail closed. Each rule condition is true, false or unknown; a rule fires when all its conditions are
true, is cleared when one is false, and is *undecided* otherwise. A call is judged on every reading of
it (tracer/opencalls.py places them): the path as passed at entry, its value at exit when it changed,
and the file the kernel opened when the event carries it (that one is certain, and decides what the
others leave unknown). The monitor raises its own alerts: `unreadable` (the path or open_how could not
be read), `changed` (memory changed during the call), `unresolved` (a rule was undecided), `lost`
(records the kernel could not deliver). A best-effort fact (/proc after the call: the directory behind
a dfd or the cwd, the process's exe) can make a rule fire but never clears one, except a checked exe
(tracer/proccontext.py).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from itertools import product
from typing import IO, TYPE_CHECKING, Any

from .globs import could_match_below, glob_match
from .opencalls import (
    FAMILY,
    HANDLE_TARGET,
    NOT_READ,
    dfd_path,
    how_of,
    known_tail,
    needs_dir,
    opened_of,
    path_arg,
    target,
)
from .policy import OPEN_FLAGS, PROCESS_KEYS, RESOLVE_NAMES, SEVERITIES, Policy, Rule
from .proccontext import ContextReader

if TYPE_CHECKING:  # the CLI hands a session in; the monitor builds none
    from .session import Session

_ACCMODE_NAMES = ("O_RDONLY", "O_WRONLY", "O_RDWR")
BUILTIN = {
    "unreadable": ("high", "arguments could not be read: the monitor cannot clear this call"),
    "changed": ("high", "an argument changed while the call ran"),
    "unresolved": ("medium", "a rule could match this call but the monitor cannot tell"),
    "lost": ("high", "records were lost: those calls were not checked"),
}
Tri = bool | None  # True, False, or None for unknown


def _mode(view: View) -> int | None:
    """The mode a `mode` condition judges: the opened file's permission bits for a successful call when the
    kernel's file is known (after umask, or the existing file's), 0 when that file is not a regular file
    (O_CREAT creates only those: a device or directory was not created), else the requested mode."""
    op = opened_of(view.ev)
    raw = op.get("mode") if op is not None else None
    if raw is not None:
        try:
            m = int(raw, 0) if isinstance(raw, str) else int(raw)
        except ValueError:
            m = None
        if m is not None:
            return stat.S_IMODE(m) if stat.S_ISREG(m) else 0
    return _how_field(view, "mode")


# --- rule evaluation -------------------------------------------------------------------------------


@dataclass
class View:
    """One reading of the call: for a `changed` read, the entry and the exit values are both views."""
    ev: dict
    filename: str | None
    how: dict | None
    target: dict
    label: str = "entry"  # which values: "entry", or the args taken at exit
    arg: str | None = "filename"  # the path argument (None: open_by_handle_at)
    process: Callable[[], dict] = dict  # the caller as /proc shows it (tracer/proccontext.py), on demand


def _views(ev: dict, dirinfo: dict, process: Callable[[], dict]) -> Iterator[View]:
    args, reads = ev["args"], ev.get("reads", {})

    def values(arg: str | None, entry: Any) -> list[tuple[Any, str | None]]:  # Any: a path or an open_how
        info = reads.get(arg, {}) if arg else {}
        vals: list[tuple[Any, str | None]] = [(entry, None)]
        if info.get("status") == "changed":
            vals.append((info.get("value_at_exit"), arg))
        return vals

    parg = path_arg(ev)
    finfo = reads.get(parg, {}) if parg else {}
    truncated = finfo.get("status") == "truncated" or bool(finfo.get("truncated"))
    hows = values("how", how_of(ev)) if ev["syscall"] == "openat2" else [(how_of(ev), None)]
    for (fn, a), (how, b) in product(values(parg, args.get(parg) if parg else None), hows):
        at_exit = " and ".join(x for x in (a, b) if x)
        tgt = target(fn, how, dirinfo, truncated) if parg else HANDLE_TARGET
        yield View(ev, fn, how, tgt, f"{at_exit} at exit" if at_exit else "entry", parg, process)


def _status(view: View, arg: str) -> str:
    return view.ev.get("reads", {}).get(arg, {}).get("status", "ok")


def _has_flag(flags: int, name: str) -> bool:
    if name in _ACCMODE_NAMES:
        return flags & os.O_ACCMODE == OPEN_FLAGS[name]
    bits = OPEN_FLAGS[name]
    return flags & bits == bits


def _sets(table: dict[str, tuple], test: Callable[[str], bool]) -> Tri:
    checks = {"any": lambda ns: any(map(test, ns)), "all": lambda ns: all(map(test, ns)),
              "none": lambda ns: not any(map(test, ns))}
    return all(checks[k](names) for k, names in table.items())


def _path_glob(view: View, globs: tuple[str, ...]) -> tuple[Tri, bool]:
    """(matches, on best-effort grounds). Unknown when the target cannot be placed and a glob could
    match it; a best-effort non-match is unknown too unless no directory could make the path match."""
    t = view.target
    if t["basis"] == "opened":  # the file the kernel opened: certain
        return any(glob_match(g, t["path"]) for g in globs), False
    if view.filename is None:
        return (False, False) if view.arg and _status(view, view.arg) == "null" else (None, False)
    if t["basis"] == "truncated":  # a prefix decides nothing: fail closed
        return None, False
    if t["path"] is not None and any(glob_match(g, t["path"]) for g in globs):
        return True, t["best_effort"]
    if t["path"] is not None and not t["best_effort"]:
        return False, False
    rel = known_tail(view.filename)
    if not rel:
        return None, False
    return (None if any(could_match_below(g, rel) for g in globs) else False), False


def _glob_list(value: str | None, globs: tuple[str, ...]) -> Tri:
    return None if value is None else any(fnmatchcase(value, g) if "/" not in g else glob_match(g, value)
                                          for g in globs)


def _how_field(view: View, key: str) -> int | None:
    """open_how field; None when unknown. A NULL or short open_how opens nothing (EFAULT/EINVAL): 0."""
    if view.how is None or view.how.get("short"):
        return 0 if view.how is not None or _status(view, "how") == "null" else None
    return view.how[key]


def _negate(v: Tri) -> Tri:
    return None if v is None else not v


def evaluate(rule: Rule, view: View) -> tuple[Tri, list[str], bool]:
    """(fires?, conditions that were unknown, a best-effort fact was needed)."""
    conds: dict[str, Tri] = {}
    best_effort = False
    g = rule.globs
    if "path" in g:
        conds["path"], best_effort = _path_glob(view, g["path"])
    if "not_path" in g:
        hit, be = _path_glob(view, g["not_path"])
        conds["not_path"] = None if (hit and be) else _negate(hit)  # best effort never clears
    ev = view.ev
    # A truncated filename is only a prefix: its globs are unknown, never a clean non-match.
    name = None if view.target["basis"] == "truncated" else view.filename
    for key, value in (("filename", name), ("comm", ev["comm"])):
        if key in g:
            conds[key] = _glob_list(value, g[key])
        if "not_" + key in g:
            conds["not_" + key] = _negate(_glob_list(value, g["not_" + key]))
    if "uid" in rule.uids:
        conds["uid"] = ev["uid"] in rule.uids["uid"]
    if "not_uid" in rule.uids:
        conds["not_uid"] = ev["uid"] not in rule.uids["not_uid"]
    if rule.flags:
        flags = _how_field(view, "flags")
        conds["flags"] = None if flags is None else _sets(rule.flags, lambda n: _has_flag(flags, n))
    if rule.resolve:
        res = _how_field(view, "resolve")
        conds["resolve"] = None if res is None else _sets(rule.resolve, lambda n: bool(res & RESOLVE_NAMES[n]))
    if rule.mode:
        mode = _mode(view)
        conds["mode"] = None if mode is None else (
            ("any" not in rule.mode or bool(mode & rule.mode["any"]))
            and ("all" not in rule.mode or mode & rule.mode["all"] == rule.mode["all"]))
    if rule.result:
        conds["result"] = (ev["ret"] >= 0) == (rule.result == "succeeded")
    if rule.read_status:
        conds["read_status"] = any(r["status"] in rule.read_status for r in ev.get("reads", {}).values())
    for key in PROCESS_KEYS:
        if key in g:
            # /proc facts, checked against the event (see proccontext): unknown when they fail the checks
            value = view.process().get("parent_exe" if key == "parent_exe" else "exe")
            hit = None if value is None else any(glob_match(p, value) for p in g[key])
            conds[key] = _negate(hit) if key.startswith("not_") else hit
            # An exception that did not apply leaves the rule firing as without it: no best-effort support.
            best_effort = best_effort or (hit is True and not key.startswith("not_"))
    if any(v is False for v in conds.values()):
        return False, [], False
    unknown = [k for k, v in conds.items() if v is None]
    if unknown and all(k == "not_exe" for k in unknown):
        # Everything holds but an exception on a process the monitor could not identify (it exited, or
        # exec'd): the rule fires, saying which exception went unchecked — never silently excepted.
        return True, unknown, best_effort
    return (None if unknown else True), unknown, best_effort and not unknown


# --- alerts ------------------------------------------------------------------------------------------


@dataclass
class Alert:
    rule: str
    severity: str
    description: str
    detail: dict = field(default_factory=dict)
    context: dict | None = None  # time, host, user, process (tracer/proccontext.py)

    def to_dict(self, event: dict | None) -> dict:
        return {"kind": "alert", "rule": self.rule, "severity": self.severity, "description": self.description,
                **self.detail, **({"context": self.context} if self.context else {}), "event": event}


def builtin(rule: str, description: str | None = None, severity: str | None = None, **detail: object) -> Alert:
    sev, desc = BUILTIN[rule]
    return Alert(rule, severity or sev, description or desc, detail)


def max_severity(sevs: Iterable[str]) -> str:
    return max(sevs, key=SEVERITIES.index)


class Monitor:
    def __init__(self, policy: Policy, context: ContextReader | None = None) -> None:
        """`context`: give every alert its context (a run does; tests of matching need not)."""
        self.rules = policy.rules
        self.context = context
        self.reader = context or ContextReader()

    def check(self, ev: dict) -> list[Alert]:
        """Alerts for one event of the open family; adds `target` to it (`target_at_exit` when the path
        changed during the call), and `dfd_path` when the directory was needed (a relative path)."""
        dirinfo = dfd_path(ev) if needs_dir(ev) else None
        process: dict | None = None

        def proc() -> dict:
            nonlocal process
            if process is None:
                process = self.reader.process(ev)
            return process

        views = list(_views(ev, dirinfo or NOT_READ, proc))
        if dirinfo is not None:
            ev["dfd_path"] = dirinfo
        ev["target"] = views[0].target
        if views[-1].target != views[0].target:
            ev["target_at_exit"] = views[-1].target
        op = opened_of(ev)
        if op is not None:  # the file the kernel opened: judged beside what the caller passed
            views.append(View(ev, views[0].filename, views[0].how, {"path": op["path"], "best_effort": False,
                                                                    "basis": "opened"}, "opened", views[0].arg, proc))
        alerts: list[Alert] = []
        undecided: dict[str, list[str]] = {}
        for rule in self.rules:
            results = [evaluate(rule, v) for v in views]
            fired = [(r, v) for r, v in zip(results, views, strict=True) if r[0] is True]
            # With the opened file known, what the caller's path leaves unknown is decided by the kernel's.
            deciding = results[-1:] if op is not None else results
            if fired:
                detail: dict = {"best_effort": True} if all(r[2] for r, _ in fired) else {}
                if len(views) > 1:  # say which values made the rule fire: entry, at exit, opened
                    detail["matched"] = [v.label for _, v in fired]
                unchecked = sorted({u for r, _ in fired for u in r[1]})
                if unchecked:
                    detail["unchecked"] = unchecked
                alerts.append(Alert(rule.id, rule.severity, rule.description, detail))
            elif any(r[0] is None for r in deciding):
                undecided[rule.id] = sorted({u for r in deciding for u in r[1]})
        severity = {r.id: r.severity for r in self.rules}
        missing = [a for a in (path_arg(ev), "how") if a and a in ev.get("missing", ())]
        if op is not None and missing == [path_arg(ev)]:
            missing = []  # the kernel's file stands for the path the monitor could not read
        if missing:
            alerts.append(_unreadable(ev, missing, sorted(undecided)))
        elif undecided and not alerts:  # a call that raised an alert is not cleared anyway
            sev = max_severity(severity[r] for r in undecided)
            alerts.append(builtin("unresolved", f"could match {', '.join(sorted(undecided))} but "
                                  + "; ".join(self._unknown_reasons(ev, undecided, proc)), sev,
                                  could_match=undecided))
        for arg, info in ev.get("reads", {}).items():
            if info["status"] == "changed":
                before, after = ev["args"].get(arg), info.get("value_at_exit")
                alerts.append(builtin("changed", f"{ev['syscall']} {arg} changed while the call ran: "
                                      f"{_show(before)} at entry, {_show(after)} at exit",
                                      changed={"arg": arg, "entry": before, "exit": after}))
        if alerts and self.context is not None:
            ctx = self.context(ev, proc())
            for a in alerts:
                a.context = ctx
        return alerts

    @staticmethod
    def _unknown_reasons(ev: dict, undecided: dict[str, list[str]], proc: Callable[[], dict]) -> list[str]:
        what = sorted({u for us in undecided.values() for u in us})
        out = []
        for w in what:
            if w in ("path", "not_path"):
                t = ev["target"]
                if t["path"] is None:
                    out.append(f"the target path is unknown ({t.get('unknown')})")
                else:
                    out.append(f"the target {t['path']} is only a best-effort resolution (via {t['basis']})")
            elif w in PROCESS_KEYS:
                out.append(f"the process's {'parent_exe' if w == 'parent_exe' else 'exe'} is unknown "
                           f"({proc().get('unknown') or 'not readable'})")
            else:
                out.append(f"{w} is unknown")
        return list(dict.fromkeys(out))


EFAULT = 14


def _unreadable(ev: dict, missing: list[str], could_match: list[str]) -> Alert:
    """The monitor could not read the call's path or open_how. When the call itself returned EFAULT the
    kernel could not read its arguments either and opened nothing: an attempt, reported at low severity."""
    reads = ev["reads"]
    why = "; ".join(f"{a}: errno {reads[a].get('errno')} at {reads[a]['addr']:#x}" for a in missing)
    what = f"{ev['syscall']} {' and '.join(missing)} could not be read ({why})"
    if ev.get("ret") == -EFAULT:
        return builtin("unreadable", f"{what}; the call returned EFAULT: the kernel could not read its arguments "
                       "either and nothing was opened", "low", unreadable=missing, could_match=could_match,
                       kernel_efault=True)
    return builtin("unreadable", f"{what}: the monitor cannot clear this call", unreadable=missing,
                   could_match=could_match)


def _show(v: object) -> str:
    if isinstance(v, dict) and "flags_str" in v:
        return f"{{flags={v['flags_str']}, mode={v['mode']:#o}, resolve={v['resolve_str']}}}"
    return repr(v)


def lost_alert(ev: dict) -> Alert:
    """One alert per lost-records event of the session: each lost call is counted once, with its reason."""
    from .output import lost_text

    return builtin("lost", f"{lost_text(ev)}: those calls were not checked",
                   lost={k: ev.get(k) for k in ("count", "cpu", "source", "reason")})


# --- a monitor run (tracer monitor [SYSCALL...]) ---------------------------------------------------------


def family_on_kernel(names: list[str], available: Container[str]) -> tuple[list[str], list[str]]:
    """(what to watch, what is missing): the named syscalls, or the open family as far as this kernel
    has it (arm64 has no open or creat). A name outside the family is a usage error (ValueError)."""
    bad = [n for n in names if n not in FAMILY]
    if bad:
        raise ValueError(f"tracer monitor watches the open family ({', '.join(FAMILY)}), not {', '.join(bad)}")
    if names:
        return list(dict.fromkeys(names)), []
    return [n for n in FAMILY if n in available], [n for n in FAMILY if n not in available]


def watched(session: Session, missing: Sequence[str]) -> str:
    names = ", ".join(s.name for s in session.syscalls)
    return f"{names} ({', '.join(missing)}: not on this kernel)" if missing else names


def run_monitor(session: Session, policy: Policy, drive: Callable[[Session, Callable[[], None]], bool], *,
                show_all: bool, as_json: bool, summary: bool, missing: Sequence[str] = (),
                stream: IO[str] | None = None, aggregate_s: float | None = 60.0) -> int:
    """Check every event of the session; returns the exit status (3 when any alert fired). `drive` is the
    CLI's session runner (start, iterate through the body, one-line failures, clean-up); `stream`: where
    alerts go (-o FILE; default stdout); `aggregate_s`: the window of tracer/aggregate.py (None: off)."""
    from collections import Counter

    from .aggregate import Aggregator
    from .contract import stream_header
    from .output import AlertOutput, JsonAlertOutput
    from .streams import console_for

    out = JsonAlertOutput(stream, header=lambda: stream_header(session.clock)) if as_json else AlertOutput(
        console_for(stream) if stream else None)
    reader = ContextReader()
    monitor = Monitor(policy, reader)
    fired: Counter[str] = Counter()
    agg: Aggregator[Alert] | None = Aggregator(aggregate_s) if aggregate_s else None

    def close_windows(now_ts: int | None = None) -> None:
        """The count alert of every window ended by now_ts (CLOCK_MONOTONIC ns; None: all of them)."""
        if agg is not None:
            for e, a in agg.closed(now_ts):
                out.alerts(e, [a])

    if agg is not None:  # a window that ended with no alert since is shown by its end, not later
        session.ticks.append(lambda: close_windows(time.monotonic_ns()))  # the kernel's clock

    def emit(ev: dict | None, alerts: list[Alert]) -> None:
        for a in alerts:
            a.context = a.context or reader.now()
        fired.update(a.rule for a in alerts)
        if agg is not None and ev is not None:  # lost-record alerts are never folded
            close_windows(ev["ts"])
            alerts = [a for a in alerts if agg.offer(ev, a)]
        if alerts:
            out.alerts(ev, alerts)

    def body() -> None:
        if not as_json:
            from rich.console import Console

            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"monitoring {watched(session, missing)} with {len(monitor.rules)} rules from "
                f"{', '.join(policy.files)} — Ctrl-C to stop", markup=False, style="dim")
        for ev in session:
            if ev.kind == "lost":
                emit(None, [lost_alert(ev.data)])
                continue
            alerts = monitor.check(ev.data)
            if alerts:
                emit(ev.data, alerts)
            elif show_all:
                out.event(ev.data)

    ok = drive(session, body)
    if ok:
        close_windows()
    if not ok:
        return 3 if fired else 0
    if summary:
        out.monitor_summary({**session.summary(), "syscalls": [s.name for s in session.syscalls],
                             "alerts": sum(fired.values()), "alerts_folded": agg.folded if agg else 0,
                             "alerts_by_rule": dict(sorted(fired.items()))})
    if fired:
        return 3
    return session.exit_code or 0
