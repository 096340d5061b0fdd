"""tracer's performance figures against its goals, beside bpftrace and strace in the same run (as root).

    .venv/bin/python bench/run.py [--records N] [--quick | --smoke]

1. consumer stages in this process: records/s decoded (tracer's stream; bcc's callback-per-record
   pattern on the same records, bench/bcc_callback.py), where a record's CPU time goes;
2. side by side, as a user runs them, on the same tight openat2 loop: `tracer trace --json` to a file,
   tracer's console output to a file, bpftrace (the same reads) to a file, strace: events per consumer
   CPU-second, CPU added to the traced program per call, BPF time per call (bpf_stats), SIGINT to exit;
3. lost records: `tracer trace --json` at 200k openat2 calls/s sustained for 5 s (and 1 s bursts at
   higher rates), default buffer;
4. start-up: time to the first event with an empty program cache (cold: bcc compiles) and with the entry
   that start wrote (warm), peak RSS; `trace %file` (every file syscall): first event and SIGINT to exit.

Every cost is CPU time (getrusage of the load generator, /proc schedstat of the consumer, bpf_stats of
the programs), not wall time, so that other work on the machine does not distort it; the load average is
printed with the figures. Load comes from bench/loadgen.c (compiled here), pinned to CPU 1.
--smoke runs every step on a few thousand calls (seconds; the test suite runs it so the bench cannot rot).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from measure import Traced, cpu_ns, enable_bpf_stats, loadavg, per_call_ns, per_run_ns, prog_ids, prog_stats  # noqa: E402

from tracer import syscalls  # noqa: E402
from tracer.decode import Decoder  # noqa: E402
from tracer.output import JsonOutput  # noqa: E402
from tracer.perf import default_pages, online_cpus  # noqa: E402
from tracer.probes import Filters  # noqa: E402
from tracer.session import Session  # noqa: E402

COMM = "tracer-loadgen"
# The path of measured calls (pokes use another), unique to this run: another bench running meanwhile
# (the same comm) must not be counted.
MEASURED = f"/nonexistent-tracer-bench/measured-{os.getpid()}"
BIG_PAGES = 8192  # 32 MiB per CPU: holds a whole burst, so the consumer is timed alone
# The same work as tracer's openat2 program: both pointers read at entry, one record sent at exit.
BPFTRACE = (
    'tracepoint:syscalls:sys_enter_openat2 /comm == "COMM"/ { @fn[tid] = str(args->filename); '
    "@fl[tid] = args->how->flags; } "
    'tracepoint:syscalls:sys_exit_openat2 /@fn[tid] != ""/ { printf("%s %d %d\\n", @fn[tid], @fl[tid], '
    "args->ret); delete(@fn[tid]); delete(@fl[tid]); }").replace("COMM", COMM)


@dataclass
class Row:
    name: str
    value: float | None
    unit: str
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""

    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        if self.target is None:
            return ""
        t, v = self.target, self.value
        if (v >= t) if self.higher_is_better else (v <= t):
            return "ok"
        if self.higher_is_better:
            return f"MISSED by {t - v:,.0f} {self.unit} ({t / v:.1f}x short)" if v else "MISSED (zero)"
        return f"MISSED by {v - t:,.{0 if t >= 10 else 2}f} {self.unit} ({v / t:.1f}x the target)" if t else \
            f"MISSED by {v:,.0f} {self.unit}"


ROWS: list[Row] = []


def say(msg: str) -> None:
    print(msg, flush=True)


def build_loadgen(tmp: Path) -> Path:
    exe = tmp / "loadgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(exe), str(HERE / "loadgen.c")], check=True)
    return exe


class Loadgen:
    def __init__(self, exe: Path) -> None:
        self.exe = exe

    def run(self, calls: int, rate: float = 0, threads: int = 1, cpu: int | None = 1, kind: str = "openat2",
            wrap: list[str] | None = None, path: str = MEASURED) -> dict:
        cmd = [*(wrap or []), str(self.exe), "-s", kind, "-n", str(calls), "-r", str(rate), "-t", str(threads),
               "-p", path]
        if cpu is not None:
            cmd += ["-c", str(cpu)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
        return json.loads(out[-1])

    def cpu_per_call(self, calls: int, repeat: int = 3, kind: str = "openat2") -> float:
        """CPU ns per call of the load generator itself, median of `repeat` tight loops on CPU 1."""
        return statistics.median(self.run(calls, kind=kind)["cpu_ns_per_call"] for _ in range(repeat))


def emitted(s: Session) -> tuple[int, int]:
    st = s.probes.stats()  # record.h ST_*: emitted, no_state, state_full, submit_fail
    return st[0], st[3]


# --- 1. consumer throughput -------------------------------------------------------------------------

def consume(s: Session, n: int, out: JsonOutput | None = None, per_event: bool = False, lines: bool = False) -> int:
    """Take n syscall events: in drain batches as the CLI does, or one Event at a time (`for ev in s`);
    `lines`: JSON lines straight from the records where they can be (what `trace --json` does)."""
    got = 0
    if n <= 0:
        return 0
    if per_event:
        for ev in s:
            if ev.kind == "syscall":
                got += 1
                if got >= n:
                    break
        return got
    for batch in s.batches(lines=lines):
        if out is not None:
            out.events(batch)
        got += sum(1 for ev in batch if type(ev) is str or ev["kind"] == "syscall")
        if got >= n:
            break
    if out is not None:
        out.flush()
    return got


def breakdown(lg: Loadgen, s: Session, records: int) -> None:
    """Where a record's CPU time goes, stage by stage, on records from the ring (garbage collector off
    during decoding, as in Session._drain)."""
    import gc

    from tracer.events import Stats
    from tracer.ordering import in_time_order
    from tracer.output import dumps
    from tracer.recjson import LineEncoder

    src = s.sources[0]
    lg.run(records)
    time.sleep(0.2)
    t = time.process_time()
    raws = []
    for _ in range(10_000):
        got = [(list(b.sample_cpus())[:len(b.samples)], b.samples) for b in (ring.drain() for ring in src.rings.rings)
               if b.samples]
        if not got:
            break
        raws += got
    parse = time.process_time() - t
    n = sum(len(samples) for _, samples in raws)
    if not n:
        say("    (no records for the breakdown)")
        return
    gc.disable()
    try:
        t = time.process_time()
        runs = [list(map(src.decoder.decode, samples, cpus)) for cpus, samples in raws]
        decode = time.process_time() - t
        t = time.process_time()
        for run in runs:
            Stats().add_many(in_time_order([run]))
        stream = time.process_time() - t
        t = time.process_time()
        generic = [src.decoder.decode_generic(raw, cpu)
                   for cpus, samples in raws for raw, cpu in zip(samples, cpus, strict=True)]
        ref = time.process_time() - t
        t = time.process_time()
        for run in runs:
            "\n".join(map(dumps, run))
        js = time.process_time() - t
        enc = LineEncoder(src.decoder, 0)
        t = time.process_time()
        for cpus, samples in raws:
            enc.encode(samples, cpus)
        lines = time.process_time() - t
    finally:
        gc.enable()
    del generic
    us = 1e6 / n
    say(f"    per record ({n:,} records): ring parse {parse * us:.2f} µs, decode {decode * us:.2f} µs "
        f"(reference decoder {ref * us:.2f} µs), ordering + statistics {stream * us:.2f} µs; "
        f"JSON encoding {js * us:.2f} µs; or the JSON line straight from the record {lines * us:.2f} µs")
    ROWS.append(Row("  µs per record: parse + decode + order/stats", (parse + decode + stream) * us, "µs",
                    note=f"parse {parse * us:.2f}, decode {decode * us:.2f}, order/stats {stream * us:.2f}; "
                         f"JSON +{js * us:.2f}; a JSON line from the record instead of decode + JSON "
                         f"{lines * us:.2f}"))


def throughput(lg: Loadgen, records: int) -> None:
    say(f"\n[1] consumer throughput: {records:,} openat2 records per run, rings of {BIG_PAGES} pages, "
        "filled first, then drained (CPU time of the consumer)")
    from bcc_callback import CallbackProbes

    with Session(["openat2"], comm=COMM, pages=BIG_PAGES) as s:
        figures = {}
        runs = (("stream", None, False, False), ("stream, per Event", None, True, False),
                ("stream+json", JsonOutput(open(os.devnull, "w"), batched=True), False, False),
                ("json lines", JsonOutput(open(os.devnull, "w"), batched=True), False, True))
        for label, out, per_event, lines in runs:
            e0, _ = emitted(s)
            lg.run(records)
            e1, f1 = emitted(s)
            n = e1 - e0
            c0, w0 = time.process_time(), time.perf_counter()
            got = consume(s, n, out, per_event, lines)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            figures[label] = got / cpu
            say(f"    tracer {label:<18} {got:>8,} events  {cpu:6.3f} s CPU ({wall:.3f} s wall)  "
                f"{got / cpu:>10,.0f} records/s  (submit failures so far: {f1})")
        breakdown(lg, s, min(records, 50_000))
    decoder = Decoder(syscalls.by_nr(), None)
    specs = syscalls.resolve(["openat2"])
    p = CallbackProbes(specs, Filters(comm=COMM), BIG_PAGES, decode=decoder.decode)
    try:
        for label, fn in (("same decoder", decoder.decode), ("reference decoder", decoder.decode_generic)):
            p.decode = fn
            e0 = p.stats()[0]
            lg.run(records)
            n = p.stats()[0] - e0
            c0 = time.process_time()
            got = p.consume(n)
            cpu = time.process_time() - c0
            figures[label] = got / cpu
            say(f"    bcc callback, {label:<17} {got:>8,} events  {cpu:6.3f} s CPU  {got / cpu:>10,.0f} records/s")
    finally:
        p.close()
    ROWS.append(Row("records/s decoded (tracer stream, 1 core)", figures["stream"], "rec/s",
                    note="Session.batches(), as the CLI consumes it"))
    ROWS.append(Row("  records/s, `for ev in session` (Event objects)", figures["stream, per Event"], "rec/s"))
    ROWS.append(Row("  ratio vs bcc callback + reference decoder", figures["stream"] / figures["reference decoder"],
                    "x", note="per-record callback and field-by-field decode, as before this work"))
    ROWS.append(Row("  ratio vs bcc callback + same fast decoder", figures["stream"] / figures["same decoder"], "x",
                    note="what batching alone buys"))
    ROWS.append(Row("records/s through JsonOutput (to /dev/null), event dicts", figures["stream+json"], "rec/s"))
    ROWS.append(Row("  the same, lines straight from the records", figures["json lines"], "rec/s",
                    note="Session.batches(lines=True), what trace --json does (tracer/recjson.py)"))


# --- 2. side by side: tracer (JSON, console), bpftrace, strace ------------------------------------------

def poke(lg: Loadgen) -> Callable[[], None]:
    """A few calls on another path: output appears once the tracer is attached (not counted as measured)."""
    return lambda: lg.run(20, path="/nonexistent-tracer-bench/poke")


def tracer_cmd(*args: str) -> list[str]:
    return [str(ROOT / ".venv/bin/tracer"), "trace", *args, "-n", COMM]


def side_by_side(lg: Loadgen, calls: int, tmp: Path) -> None:
    say(f"\n[2] the same tight openat2 loop ({calls:,} calls on CPU 1), traced by each consumer writing to a file; "
        f"load average {loadavg()}")
    base = lg.cpu_per_call(calls)
    say(f"    untraced: {base:,.0f} ns CPU per call (the load generator's own getrusage)")
    pages = default_pages()
    consumers = [("tracer --json", tracer_cmd("openat2", "--json"), None),
                 ("tracer console", tracer_cmd("openat2"), None)]
    bpftrace = shutil.which("bpftrace")
    if bpftrace:  # the same ring size as tracer's default
        consumers.append(("bpftrace", [bpftrace, "-e", BPFTRACE], {**os.environ, "BPFTRACE_PERF_RB_PAGES": str(pages)}))
    else:
        say("    bpftrace not installed: its column is missing (apt-get install -y bpftrace)")
    fig: dict[str, dict] = {}
    for label, cmd, env in consumers:  # events: lines naming the measured path
        fig[label] = one_consumer(lg, label, cmd, env, calls, base, tmp)
    strace = shutil.which("strace")
    if strace:
        n = max(calls // 20, 2000)
        r = lg.run(n, wrap=[strace, "-f", "-qq", "-e", "trace=openat2", "-o", os.devnull])
        fig["strace"] = {"added": r["cpu_ns_per_call"] - base}
        say(f"    strace: {r['cpu_ns_per_call']:,.0f} ns CPU per call ({n:,} calls), +{fig['strace']['added']:,.0f} ns")
    else:
        say("    strace not installed (apt-get install -y strace)")
    js, con, bt = fig["tracer --json"], fig["tracer console"], fig.get("bpftrace")
    ROWS.append(Row("events per consumer CPU-s, tracer --json", js["rate"], "ev/s", 300_000,
                    note=f"{js['events']:,} events in {js['cpu']:.3f} s CPU"))
    if bt:
        ROWS.append(Row("  ratio to bpftrace (printf to a file)", js["rate"] / bt["rate"], "x", 1.5,
                        note=f"bpftrace {bt['rate']:,.0f} ev/s: {bt['events']:,} events in {bt['cpu']:.3f} s CPU"))
    ROWS.append(Row("events per consumer CPU-s, tracer console", con["rate"], "ev/s", 100_000,
                    note=f"{con['events']:,} events in {con['cpu']:.3f} s CPU"))
    ROWS.append(Row("CPU added per traced openat2, tracer", js["added"], "ns", note=f"untraced {base:,.0f} ns"))
    if bt:
        ROWS.append(Row("  ratio to bpftrace's CPU added", js["added"] / bt["added"], "x", 0.3, False,
                        note=f"bpftrace +{bt['added']:,.0f} ns"))
    if "strace" in fig:
        ROWS.append(Row("  strace's CPU added, for scale", fig["strace"]["added"], "ns"))
    if js["bpf"]:
        ROWS.append(Row("BPF time per call, tracer (enter + exit)", sum(js["bpf"].values()), "ns", 1000, False,
                        note=", ".join(f"{k} {v:,.0f}" for k, v in sorted(js["bpf"].items()))))
    if bt and bt["bpf"]:
        ROWS.append(Row("  bpftrace, for scale", sum(bt["bpf"].values()), "ns",
                        note=", ".join(f"{k} {v:,.0f}" for k, v in sorted(bt["bpf"].items()))))


def one_consumer(lg: Loadgen, label: str, cmd: list[str], env: dict | None, calls: int,
                 base: float, tmp: Path) -> dict:
    t = Traced(cmd, tmp / f"{label.replace(' ', '_')}.out", env)
    try:
        t.wait_attached(poke(lg))
        c0 = t.settle()
        ids = prog_ids(t.pid)
        st0 = prog_stats(ids)
        r = lg.run(calls)
        c1 = t.settle()
        bpf = per_call_ns(st0, prog_stats(ids), calls)
    finally:
        exit_s = t.stop()
    events = t.lines(MEASURED.encode())
    cpu = (c1 - c0) / 1e9
    f = {"events": events, "cpu": cpu, "rate": events / cpu if cpu else 0.0, "bpf": bpf,
         "added": r["cpu_ns_per_call"] - base}
    say(f"    {label:<15} {events:>9,} events (of ~{calls:,}) in {cpu:6.3f} s consumer CPU: {f['rate']:>9,.0f} ev/s; "
        f"+{f['added']:,.0f} ns CPU per call; BPF " + (", ".join(f"{k} {v:,.0f} ns" for k, v in sorted(bpf.items()))
                                                      or "(no stats)") + f"; SIGINT to exit {exit_s:.2f} s")
    return f


def attach_modes(lg: Loadgen, calls: int, tmp: Path) -> None:
    """Per-call cost of tracing openat2 through its own tracepoints or through raw_syscalls (what large
    sets use, tracer/probes.py RAW_MIN_SYSCALLS): on a traced call, and on a call outside the set
    (getpid), which raw_syscalls programs also run for; and with --no-recover (no re-read at exit), to
    show what the exit re-reads cost."""
    say(f"\n[2b] attach modes, `tracer trace openat2 --json` ({calls:,} openat2, then {calls:,} getpid calls, "
        f"untraced by the set); load average {loadavg()}")
    base = {k: lg.cpu_per_call(calls, kind=k) for k in ("openat2", "getpid")}
    for mode in ("syscall", "raw", "no-recover"):
        extra = ["--no-recover"] if mode == "no-recover" else []
        attach = "syscall" if mode == "no-recover" else mode
        t = Traced(tracer_cmd("openat2", "--json", *extra), tmp / f"mode-{mode}.out",
                   {**os.environ, "TRACER_ATTACH": attach})
        row = {}
        try:
            t.wait_attached(poke(lg))
            ids = prog_ids(t.pid)
            for kind in ("openat2", "getpid"):
                st0 = prog_stats(ids)
                r = lg.run(calls, kind=kind)
                st1 = prog_stats(ids)
                row[kind] = (r["cpu_ns_per_call"] - base[kind], sum(per_call_ns(st0, st1, calls).values()),
                             per_run_ns(st0, st1))
                t.settle()
        finally:
            exit_s = t.stop()
        say(f"    {mode:<8} openat2 +{row['openat2'][0]:,.0f} ns CPU (BPF {row['openat2'][1]:,.0f} ns per call); "
            f"getpid +{row['getpid'][0]:,.0f} ns CPU (BPF runs meanwhile: {row['getpid'][2]:,.0f} ns each, any task's "
            f"syscalls); SIGINT to exit {exit_s:.2f} s")
        name = "--no-recover (no exit re-reads)" if mode == "no-recover" else f"attach {mode}"
        ROWS.append(Row(f"{name}: BPF ns per traced openat2", row["openat2"][1], "ns",
                        note=f"CPU +{row['openat2'][0]:,.0f} ns; outside the set (getpid): "
                             f"CPU +{row['getpid'][0]:,.0f} ns, BPF {row['getpid'][2]:,.0f} ns per program run"))


# --- 3. lost records ----------------------------------------------------------------------------------

def losses(lg: Loadgen, rates: list[tuple[int, float]], tmp: Path) -> None:
    say(f"\n[3] lost records, `tracer trace openat2 --json` to a file, default buffer ({default_pages()} pages per "
        f"CPU, {len(online_cpus())} CPUs); load average {loadavg()}")
    for rate, secs in rates:
        threads = 1 if rate <= 200_000 else 2
        t = Traced(tracer_cmd("openat2", "--json"), tmp / "loss.out")
        try:
            t.wait_attached(poke(lg))
            c0 = t.settle()
            r = lg.run(int(rate * secs), rate=rate, threads=threads, cpu=1 if threads == 1 else None)
            c1 = t.settle()
        finally:
            t.stop()
        summary = json.loads(open(t.out, "rb").read().splitlines()[-1])
        lost, events = summary.get("lost", -1), summary.get("events", 0)
        say(f"    offered {rate:>9,}/s for {secs:g} s: achieved {r['rate']:>9,.0f}/s, {r['calls']:>9,} calls, "
            f"{events:>9,} events, {lost:>8,} lost ({lost / r['calls']:.1%}); consumer CPU {(c1 - c0) / 1e9:.2f} s")
        name = f"lost at {rate // 1000}k openat2/s for {secs:g} s (achieved {r['rate'] / 1000:,.0f}k/s)"
        ROWS.append(Row(name, lost, "records", 0 if rate <= 200_000 else None, False))


# --- 4. start-up and memory ----------------------------------------------------------------------------

def startup(lg: Loadgen, smoke: bool, tmp: Path) -> None:
    say(f"\n[4] start-up: `tracer trace openat2 --json` until its first event (the loop is poked every 10 ms), "
        f"then 1 s at 200k/s for the peak RSS; load average {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="tracer-bench-cache-") as cache:
        env = {**os.environ, "TRACER_CACHE_DIR": cache}
        env.pop("TRACER_NO_CACHE", None)
        for state in (("warm",) if smoke else ("cold", "warm")):
            if smoke:  # warmed by a first start whose compile is not a figure
                            start_once(lg, ["openat2"], env, tmp, 0, "cold")
            first, cpu, rss, exit_s = start_once(lg, ["openat2"], env, tmp, 2_000 if smoke else 200_000, state)
            ROWS.append(Row(f"start to first event ({state} cache), wall", first, "s",
                            0.5 if state == "warm" else None, False))
            ROWS.append(Row(f"  CPU time of that start-up ({state} cache)", cpu, "s",
                            0.5 if state == "warm" else None, False))
            ROWS.append(Row(f"peak RSS of tracer trace ({state} cache)", rss, "MiB", 120, False))
        start_once(lg, ["%file"], env, tmp, 0, "cold")  # raw_syscalls programs: another cache entry
        first, cpu, _rss, exit_s = start_once(lg, ["%file"], env, tmp, 0, "warm")
        ROWS.append(Row("`trace %file`: start to first event (warm), wall", first, "s", 1.0, False))
        ROWS.append(Row("  CPU time of that start-up", cpu, "s", 1.0, False))
        ROWS.append(Row("`trace %file`: SIGINT to exit", exit_s, "s", 1.0, False))


def start_once(lg: Loadgen, events: list[str], env: dict, tmp: Path, burst: int,
               label: str) -> tuple[float, float, float, float]:
    t = Traced(tracer_cmd(*events, "--json"), tmp / "start.out", env)
    try:
        first = t.wait_attached(poke(lg))
        cpu = cpu_ns(t.pid) / 1e9  # the start-up's own CPU time: what wall time is on an idle machine
        if burst:
            lg.run(burst, rate=200_000)
        rss = vm_hwm_kb(t.pid) / 1024
    finally:
        exit_s = t.stop()
    err = t.proc.stderr.read().decode(errors="replace").strip()
    (tmp / "start.err").write_text(err)
    say(f"    {' '.join(events):<8} ({label}) first event after {first:.3f} s ({cpu:.3f} s CPU); "
        f"peak RSS {rss:.1f} MiB; SIGINT to exit {exit_s:.2f} s; exit status {t.proc.returncode}"
        + (f"; stderr: {err[-200:]}" if err else ""))
    return first, cpu, rss, exit_s


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set of a live process (VmHWM in /proc/PID/status), 0 once it is gone. (wait4's
    ru_maxrss would also count this bench's RSS at fork, which Linux carries across exec.)"""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def table() -> None:
    say(f"\n{'figure':<52} {'measured':>14} {'target':>12}  verdict")
    for r in ROWS:
        v = "-" if r.value is None else (f"{r.value:,.2f}" if r.unit in ("x", "s", "%", "µs") else f"{r.value:,.0f}")
        t = "" if r.target is None else ("≥ " if r.higher_is_better else "≤ ") + (
            f"{r.target:,.1f}" if r.unit in ("x", "s") else f"{r.target:,.0f}")
        say(f"{r.name:<52} {v + ' ' + r.unit:>14} {t:>12}  {r.verdict()}" + (f"  [{r.note}]" if r.note else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000, help="records per throughput run (default 100000)")
    ap.add_argument("--quick", action="store_true", help="fewer rates, shorter loops")
    ap.add_argument("--smoke", action="store_true", help="every step on a few thousand calls (seconds)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py: run as root (it loads BPF programs)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {0})
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    say(f"tracer benchmark: {os.cpu_count()} CPUs ({cpu}), Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}; load average at start {loadavg()}")
    # An installed tracer has its bytecode (pip compiles it); a checkout run with PYTHONDONTWRITEBYTECODE
    # (or by a user who cannot write it) compiles ~45 modules at every start: ~0.06 s CPU of start-up.
    fresh = compileall.compile_dir(ROOT / "tracer", quiet=1)
    say(f"tracer's bytecode: {'compiled' if fresh else 'NOT compiled'} as an installed package has it "
        f"(PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r} here)")
    stats_fd = enable_bpf_stats()
    if stats_fd is None:
        say("bpf_stats could not be enabled: no BPF time per call")
    records = 3_000 if a.smoke else a.records
    calls = 5_000 if a.smoke else 50_000 if a.quick else 300_000
    rates = [(20_000, 0.5)] if a.smoke else [(200_000, 5.0)] if a.quick else \
        [(200_000, 5.0), (500_000, 1.0), (1_000_000, 1.0)]
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="tracer-bench-") as tmp:
            lg = Loadgen(build_loadgen(Path(tmp)))
            throughput(lg, records)
            side_by_side(lg, calls, Path(tmp))
            attach_modes(lg, calls, Path(tmp))
            losses(lg, rates, Path(tmp))
            startup(lg, a.smoke, Path(tmp))
    finally:
        if stats_fd is not None:
            os.close(stats_fd)
    table()
    say(f"\nload average at end {loadavg()} (figures are CPU time: other work raises them less than wall time); "
        f"bench took {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
