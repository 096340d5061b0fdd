"""Per-syscall call counts and times (`trace -c`, like `strace -c`), and the console's markers for
calls that completed after lines printed since they began (strace's `<unfinished ...>`/`resumed`).

Times are wall-clock time in the call, from the kernel's entry timestamp to its exit timestamp
(strace -c -w); strace's default column is system CPU time, which a tracepoint does not measure.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Row:
    calls: int = 0
    errors: int = 0
    total_ns: int = 0
    max_ns: int = 0
    timed: int = 0  # calls with an exit (exit_group has none)


def is_error(ev: dict) -> bool:
    ret = ev.get("ret")
    return isinstance(ret, int) and -4095 <= ret < 0 and ev.get("kind") == "syscall"


class CallTable:
    """Calls, errors, total/average/max time per syscall (or uprobe function)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def add_many(self, events: Iterable[dict]) -> None:
        rows = self.rows
        for ev in events:
            kind = ev.get("kind")
            if kind == "syscall":
                name = ev["syscall"]
            elif kind == "uprobe":
                name = ev["function"]
            else:
                continue
            row = rows.get(name)
            if row is None:
                row = rows[name] = Row()
            row.calls += 1
            if is_error(ev):
                row.errors += 1
            d = ev.get("duration_ns")
            if d is not None:
                row.timed += 1
                row.total_ns += d
                if d > row.max_ns:
                    row.max_ns = d

    def to_dict(self) -> dict:
        """The JSON summary's "per_syscall" object, by total time, then calls."""
        return {name: {"calls": r.calls, "errors": r.errors, "total_ns": r.total_ns,
                       "avg_ns": r.total_ns // r.timed if r.timed else None, "max_ns": r.max_ns if r.timed else None}
                for name, r in self._sorted()}

    def _sorted(self) -> list[tuple[str, Row]]:
        return sorted(self.rows.items(), key=lambda kv: (-kv[1].total_ns, -kv[1].calls, kv[0]))

    def render(self) -> str:
        """The table as strace -c prints it, with a max column; 79 columns wide at most."""
        head = f"{'% time':>6} {'seconds':>11} {'usecs/call':>11} {'max usecs':>10} {'calls':>9} {'errors':>9} syscall"
        rule = f"{'-' * 6} {'-' * 11} {'-' * 11} {'-' * 10} {'-' * 9} {'-' * 9} {'-' * 16}"
        total = sum(r.total_ns for r in self.rows.values())
        lines = [head, rule]
        for name, r in self._sorted():
            share = 100 * r.total_ns / total if total else 0.0
            avg = f"{r.total_ns // r.timed // 1000:>11}" if r.timed else f"{'':>11}"
            mx = f"{r.max_ns // 1000:>10}" if r.timed else f"{'':>10}"
            lines.append(f"{share:6.2f} {r.total_ns / 1e9:11.6f} {avg} {mx} {r.calls:9d} "
                         f"{r.errors if r.errors else '':>9} {name}")
        calls = sum(r.calls for r in self.rows.values())
        errors = sum(r.errors for r in self.rows.values())
        lines += [rule, f"{100 if total else 0:6.2f} {total / 1e9:11.6f} {'':>11} {'':>10} {calls:9d} "
                        f"{errors if errors else '':>9} total"]
        return "\n".join(lines)


class Overlap:
    """Which printed calls completed after a call began. Lines are printed in completion order, so a
    call that blocked (wait4, read on a pipe) comes after lines of calls made while it waited; the
    console marks it with how many, as strace marks it `<unfinished ...>` then `<... resumed>`."""

    KEEP = 100_000  # completion times remembered; a call older than all of them says "more than"

    def __init__(self) -> None:
        self.done: list[int] = []  # completion ts of printed lines, ascending (as printed)
        self.dropped = 0

    def add(self, ev: dict) -> int:
        """Record one printed event; returns how many lines printed before it completed after it began."""
        start = ev.get("ts")
        return self.add_span(start, ev.get("ts_exit") or start)

    def add_span(self, start: int | None, end: int | None) -> int:
        """`add` for a call that began at `start` and completed at `end` (its line made from its record)."""
        done = self.done
        n = 0
        if start is not None and done and done[-1] > start:
            n = len(done) - bisect_right(done, start)
        if end is not None:
            if done and end < done[-1]:  # batches are ordered; across them a late one goes in its place
                done.insert(bisect_right(done, end), end)
            else:
                done.append(end)
            if len(done) > 2 * self.KEEP:
                del done[: len(done) - self.KEEP]
                self.dropped += 1
        return n


READ_COLUMNS = ("ok", "recovered", "changed", "missing", "truncated", "null")
_SHORT = {"ok": "ok", "recovered": "recov", "changed": "chg", "missing": "miss", "truncated": "trunc", "null": "null"}


def read_status_rows(by_arg: dict[str, dict], width: int) -> tuple[bool, list[list[tuple[str, str | None]]]]:
    """The summary's read-status table as lines of (text, status) segments that fit `width` columns:
    full names never cut (distinct arguments stay distinct), columns that are all zero left out
    ("ok" always shown), then short headers; if no table fits, (False, one line per argument, to be
    wrapped)."""
    cols = [c for c in READ_COLUMNS if c == "ok" or any(v.get(c) for v in by_arg.values())]
    name_w = max(len("syscall.arg"), *(len(k) for k in by_arg))
    for headers in (cols, [_SHORT[c] for c in cols]):
        widths = [max(len(h), *(len(str(v.get(c, 0))) for v in by_arg.values())) for c, h in zip(cols, headers,
                                                                                                   strict=True)]
        if name_w + sum(w + 2 for w in widths) <= width:
            head: list[tuple[str, str | None]] = [("syscall.arg".ljust(name_w), None)]
            lines = [head + [(f"  {h:>{w}}", None) for h, w in zip(headers, widths, strict=True)]]
            for key, counts in by_arg.items():
                lines.append([(key.ljust(name_w), None)] + [(f"  {counts.get(c, 0):>{w}}", c if counts.get(c) else None)
                                                            for c, w in zip(cols, widths, strict=True)])
            return True, lines
    return False, [[(f"{key}:", None), *[(f" {c} {counts[c]}", c) for c in cols if counts.get(c)]]
            for key, counts in by_arg.items()]
