"""Exports of a capture: JSON Lines (what `trace --json` printed) and Chrome's Trace Event Format, which
the Perfetto UI (ui.perfetto.dev) and chrome://tracing open.

Chrome format: one "X" (complete) event per syscall, from entry to exit on its thread, with the
arguments, return value and read statuses in `args`; syscalls that do not return (exit_group) are
thread-scoped "i" (instant) events. Every event with missing, recovered or changed user data also gets
an instant event in category "missing" named after the arguments concerned; lost records are
global instant events. Process and thread names are "M" (metadata) events.
"""

from __future__ import annotations

import json
from typing import IO, Any

from .capture import Capture, Filter
from .jsonenc import dumps

MISSING_STATUSES = ("missing", "recovered", "changed")
CNAME = {"missing": "terrible", "changed": "bad", "recovered": "yellow"}  # catapult's reserved colours


def write_jsonl(capture: Capture, stream: IO[str], keep: Filter | None = None) -> int:
    """The stream header line, the events, the summary (as `replay --json`); returns the event count."""
    from .contract import stream_header

    stream.write(dumps(stream_header(capture.header.get("clock"))) + "\n")
    n = 0
    for ev in capture.events(keep):
        stream.write(ev.to_json() + "\n")
        n += 1
    summary = capture.summary()
    if capture.problem is not None:  # the file itself must say it is incomplete, not only stderr
        p = capture.problem
        summary["capture_problem"] = {"kind": p.kind, "offset": p.offset, "detail": p.detail}
    stream.write(dumps(summary) + "\n")
    return n


def _us(ns: int) -> float:
    return ns / 1000


def chrome_events(ev: dict, last_ts: int = 0) -> list[dict[str, Any]]:
    """The Trace Event Format events for one tracer event."""
    kind = ev.get("kind")
    if kind == "lost":
        return [{"name": f"{ev['count']} records lost", "cat": "lost", "ph": "i", "s": "g", "ts": _us(last_ts),
                 "pid": 0, "tid": 0, "cname": "terrible", "args": dict(ev)}]
    if "ts" not in ev or "pid" not in ev:
        return []
    name = ev.get("syscall") or ev.get("event") or str(kind)
    reads = ev.get("reads") or {}
    bad = {arg: r["status"] for arg, r in reads.items() if r.get("status") in MISSING_STATUSES}
    args = {k: ev[k] for k in ("args", "args_str", "ret", "ret_str", "comm", "uid", "cpu", "missing",
                               # user_events: the decoded payload and what could not be decoded
                               "status", "fields", "eventheader", "extra_bytes", "malformed", "errors", "write_index",
                               "name_reason") if k in ev}
    args["read_status"] = {arg: r.get("status") for arg, r in reads.items()}
    args["reads"] = reads
    base = {"name": name, "cat": kind if not bad else f"{kind},missing", "ts": _us(ev["ts"]), "pid": ev["pid"],
            "tid": ev.get("tid", ev["pid"]), "args": args}
    if ev.get("ts_exit") is not None:
        out = [{**base, "ph": "X", "dur": _us(ev["ts_exit"] - ev["ts"])}]
    else:
        out = [{**base, "ph": "i", "s": "t"}]
    if bad:
        worst = next(s for s in MISSING_STATUSES if s in bad.values())
        out.append({"name": f"{worst}: {name} " + ", ".join(f"{a}={s}" for a, s in bad.items()), "cat": "missing",
                    "ph": "i", "s": "t", "ts": base["ts"], "pid": base["pid"], "tid": base["tid"],
                    "cname": CNAME[worst], "args": {"reads": {a: reads[a] for a in bad}, "missing": ev.get("missing")}})
    return out


def write_chrome(capture: Capture, stream: IO[str], keep: Filter | None = None) -> int:
    """Streams {"traceEvents": [...]} (so a large capture is never held in memory); returns the count."""
    stream.write('{"traceEvents":[\n')
    n = 0
    last_ts = 0
    procs: dict[int, str] = {}
    threads: dict[tuple[int, int], str] = {}
    for ev in capture.events(keep):
        d = ev.data
        for te in chrome_events(d, last_ts):
            stream.write(("," if n else "") + json.dumps(te) + "\n")
            n += 1
        if "ts" in d and "pid" in d:
            last_ts = d.get("ts_exit") or d["ts"]
            comm = str(d.get("comm", ""))
            tid = d.get("tid", d["pid"])
            threads[(d["pid"], tid)] = comm
            if tid == d["pid"] or d["pid"] not in procs:
                procs[d["pid"]] = comm
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": f"{comm} ({pid})"}}
            for pid, comm in procs.items()]
    meta += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": f"{comm} ({tid})"}}
             for (pid, tid), comm in threads.items()]
    for te in meta:
        stream.write(("," if n else "") + json.dumps(te) + "\n")
        n += 1
    h = capture.header
    other = {"tool": h.get("tool"), "kernel": (h.get("kernel") or {}).get("release"), "host": h.get("host"),
             "clock": "CLOCK_MONOTONIC (ts in microseconds)", "summary": capture.summary()}
    if capture.problem is not None:
        other["problem"] = capture.problem.message(capture.path, capture.records)
    stream.write('],\n"displayTimeUnit":"ns",\n"otherData":' + json.dumps(other) + "}\n")
    return n
