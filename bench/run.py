"""tracer's performance figures against its targets, in one run on this machine (as root, ~2 minutes).

    .venv/bin/python bench/run.py [--records N] [--quick]

1. consumer throughput: records/s decoded into event dicts (one core's CPU time), tracer's stream
   against bcc's callback-per-record pattern on the same records (bench/bcc_callback.py);
2. lost records at offered rates of 50k, 200k, 500k and 1M openat2 calls/s with the default buffer, for
   a 1 s burst each, then 200k/s sustained for 5 s (what the buffer absorbs vs what the consumer keeps up with);
3. added cost per traced openat2 (tight loop): untraced, tracer, bpftrace, strace;
4. `tracer trace openat2`: time from start to the first event, peak RSS; with an empty program cache
   (cold: bcc compiles) and then with the entry that start wrote (warm).

Load comes from bench/loadgen.c (compiled here). The bench process runs on CPU 0 and the load
generator on CPU 1 where a single CPU is wanted. Prints the machine load (other work skews figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from tracer import syscalls  # noqa: E402
from tracer.decode import Decoder  # noqa: E402
from tracer.output import JsonOutput  # noqa: E402
from tracer.perf import default_pages, online_cpus  # noqa: E402
from tracer.probes import Filters  # noqa: E402
from tracer.session import Session  # noqa: E402

COMM = "tracer-loadgen"
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


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def build_loadgen(tmp: Path) -> Path:
    exe = tmp / "loadgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(exe), str(HERE / "loadgen.c")], check=True)
    return exe


class Loadgen:
    def __init__(self, exe: Path) -> None:
        self.exe = exe

    def run(self, calls: int, rate: float = 0, threads: int = 1, cpu: int | None = 1, kind: str = "openat2",
            wrap: list[str] | None = None) -> dict:
        cmd = [*(wrap or []), str(self.exe), "-s", kind, "-n", str(calls), "-r", str(rate), "-t", str(threads)]
        if cpu is not None:
            cmd += ["-c", str(cpu)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
        return json.loads(out[-1])

    def ns_per_call(self, calls: int, repeat: int = 3, wrap: list[str] | None = None) -> float:
        """Median over `repeat` tight loops on CPU 1 (single thread)."""
        return statistics.median(self.run(calls, wrap=wrap)["ns_per_call"] for _ in range(repeat))


def emitted(s: Session) -> tuple[int, int]:
    st = s.probes.stats()  # record.h ST_*: emitted, no_state, state_full, submit_fail
    return st[0], st[3]


# --- 1. consumer throughput -------------------------------------------------------------------------

def consume(s: Session, n: int, out: JsonOutput | None = None, per_event: bool = False) -> int:
    """Take n syscall events: in drain batches as the CLI does, or one Event at a time (`for ev in s`)."""
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
    for batch in s.batches():
        if out is not None:
            out.events(batch)
        got += sum(1 for ev in batch if ev["kind"] == "syscall")
        if got >= n:
            break
    if out is not None:
        out.flush()
    return got


def breakdown(lg: Loadgen, s: Session, records: int) -> None:
    """Where a record's CPU time goes, stage by stage, on records from the ring (garbage collector off
    during decoding, as in Session._drain)."""
    import gc

    from tracer.output import dumps
    from tracer.session import Stats, in_time_order

    src = s.sources[0]
    lg.run(records)
    time.sleep(0.2)
    t = time.process_time()
    raws = []
    for _ in range(10_000):
        got = [(b.cpu, b.samples) for b in (ring.drain() for ring in src.rings.rings) if b.samples]
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
        runs = [list(map(src.decoder.decode, samples, [cpu] * len(samples))) for cpu, samples in raws]
        decode = time.process_time() - t
        t = time.process_time()
        for run in runs:
            Stats().add_many(in_time_order([run]))
        stream = time.process_time() - t
        t = time.process_time()
        generic = [src.decoder.decode_generic(raw, cpu) for cpu, samples in raws for raw in samples]
        ref = time.process_time() - t
        t = time.process_time()
        for run in runs:
            "\n".join(map(dumps, run))
        js = time.process_time() - t
    finally:
        gc.enable()
    del generic
    us = 1e6 / n
    say(f"    per record ({n:,} records): ring parse {parse * us:.2f} µs, decode {decode * us:.2f} µs "
        f"(reference decoder {ref * us:.2f} µs), ordering + statistics {stream * us:.2f} µs; "
        f"JSON encoding {js * us:.2f} µs")
    ROWS.append(Row("  µs per record: parse + decode + order/stats", (parse + decode + stream) * us, "µs",
                    note=f"parse {parse * us:.2f}, decode {decode * us:.2f}, order/stats {stream * us:.2f}; "
                         f"JSON +{js * us:.2f}"))


def throughput(lg: Loadgen, records: int) -> None:
    say(f"\n[1] consumer throughput: {records:,} openat2 records per run, rings of {BIG_PAGES} pages, "
        "filled first, then drained (CPU time of the consumer)")
    from bcc_callback import CallbackProbes

    with Session(["openat2"], comm=COMM, pages=BIG_PAGES) as s:
        figures = {}
        runs = (("stream", None, False), ("stream, per Event", None, True),
                ("stream+json", JsonOutput(open(os.devnull, "w"), batched=True), False))
        for label, out, per_event in runs:
            e0, _ = emitted(s)
            lg.run(records)
            e1, f1 = emitted(s)
            n = e1 - e0
            c0, w0 = time.process_time(), time.perf_counter()
            got = consume(s, n, out, per_event)
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
    ROWS.append(Row("records/s decoded (tracer stream, 1 core)", figures["stream"], "rec/s", 1_000_000,
                    note="Session.batches(), as the CLI consumes it"))
    ROWS.append(Row("  records/s, `for ev in session` (Event objects)", figures["stream, per Event"], "rec/s"))
    ROWS.append(Row("  ratio vs bcc callback + reference decoder", figures["stream"] / figures["reference decoder"],
                    "x", 4.0, note="per-record callback and field-by-field decode, as before this work"))
    ROWS.append(Row("  ratio vs bcc callback + same fast decoder", figures["stream"] / figures["same decoder"], "x",
                    note="what batching alone buys"))
    ROWS.append(Row("records/s through JsonOutput (to /dev/null)", figures["stream+json"], "rec/s"))


# --- 2. lost records vs offered rate, 3. added cost ---------------------------------------------------

class Consumer(threading.Thread):
    """Iterates a session in the background, as a tracer process does."""

    def __init__(self, s: Session) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.events = 0

    def run(self) -> None:
        for batch in self.s.batches():
            self.events += sum(1 for ev in batch if ev["kind"] == "syscall")

    def settle(self, target: int, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while self.events < target and time.monotonic() < end:
            time.sleep(0.02)


def live(lg: Loadgen, quick: bool, calls_tight: int) -> None:
    rates = (50_000, 200_000) if quick else (50_000, 200_000, 500_000, 1_000_000)
    say(f"\n[3] untraced openat2 tight loop ({calls_tight:,} calls, median of 3)")
    base = lg.ns_per_call(calls_tight)
    say(f"    {base:.0f} ns/call")
    pages = default_pages()
    say(f"\n[2] lost records vs offered rate, default buffer ({pages} pages = {pages * 4 // 1024} MiB per CPU, "
        f"{len(online_cpus())} CPUs): a 1 s burst per rate, then 5 s sustained at 200k/s")
    s = Session(["openat2"], comm=COMM)
    s.start()
    c = Consumer(s)
    c.start()
    try:
        for rate, secs in [(r, 1) for r in rates] + [(200_000, 5)]:
            threads = 1 if rate <= 200_000 else 2
            e0, f0 = emitted(s)
            ev0 = c.events
            t0 = time.monotonic()
            r = lg.run(rate * secs, rate=rate, threads=threads, cpu=1 if threads == 1 else None)
            e1, f1 = emitted(s)
            c.settle(ev0 + e1 - e0, timeout=30)
            caught_up = time.monotonic() - t0
            lost = f1 - f0
            say(f"    offered {rate:>9,}/s for {secs} s ({threads} thread{'s' * (threads > 1)}): achieved "
                f"{r['rate']:>9,.0f}/s, {r['calls']:>9,} calls, {c.events - ev0:>9,} events, {lost:>8,} lost "
                f"({lost / r['calls']:.1%}); consumer caught up after {caught_up:.1f} s")
            if rate == 200_000 and secs == 1:
                ROWS.append(Row("lost records at 200k openat2/s for 1 s, default buffer", lost, "records", 0, False,
                                note=f"achieved {r['rate']:,.0f}/s; caught up after {caught_up:.1f} s"))
            elif secs > 1:
                ROWS.append(Row(f"lost at 200k/s sustained {secs} s (achieved {r['rate'] / 1000:,.0f}k/s)",
                                100 * lost / r["calls"], "%", higher_is_better=False,
                                note=f"consumer: {(c.events - ev0) / caught_up:,.0f} events/s while catching up"))
            else:
                ROWS.append(Row(f"lost at {rate // 1000}k/s for 1 s (achieved {r['rate'] / 1000:,.0f}k/s)",
                                100 * lost / r["calls"], "%", higher_is_better=False))
        say(f"\n[3] traced by tracer (recovery on), tight loop ({calls_tight:,} calls, median of 3)")
        e0, f0 = emitted(s)
        ours = lg.ns_per_call(calls_tight)
        e1, f1 = emitted(s)
        say(f"    {ours:.0f} ns/call ({f1 - f0:,} of {e1 - e0 + f1 - f0:,} records lost: consumer slower than "
            "the loop)")
    finally:
        s.stop()
        c.join(2)
        s.close()
    ROWS.append(Row("ns added per traced openat2 (recovery on)", ours - base, "ns", 400, False,
                    note=f"untraced {base:.0f} ns, traced {ours:.0f} ns"))
    bpftrace = shutil.which("bpftrace")
    if bpftrace:
        say("\n[3] traced by bpftrace (equivalent one-liner, output to /dev/null)")
        bt = subprocess.Popen([bpftrace, "-e", BPFTRACE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
        lines = [0]

        def read() -> None:
            for _ in bt.stdout:
                lines[0] += 1

        try:
            threading.Thread(target=read, daemon=True).start()
            end = time.monotonic() + 30
            while lines[0] < 100 and bt.poll() is None and time.monotonic() < end:  # attached once it prints
                lg.run(200)
                time.sleep(0.1)
            if lines[0] < 100:
                raise RuntimeError("no output from bpftrace")
            before = lines[0]
            theirs = lg.ns_per_call(calls_tight)
            time.sleep(0.5)
            say(f"    {theirs:.0f} ns/call ({lines[0] - before:,} lines printed for {3 * calls_tight:,} calls)")
            ROWS.append(Row("ns added per openat2, bpftrace (same reads)", theirs - base, "ns", note="for scale"))
        except Exception as e:  # a bpftrace that cannot compile the script here
            say(f"    bpftrace failed: {e}")
        finally:
            bt.send_signal(signal.SIGINT)
            try:
                bt.wait(10)
            except subprocess.TimeoutExpired:
                bt.kill()
    else:
        say("\n[3] bpftrace not installed: row skipped (apt-get install -y bpftrace)")
    strace = shutil.which("strace")
    if strace:
        n = max(calls_tight // 20, 2000)
        say(f"\n[3] traced by strace -e trace=openat2 ({n:,} calls)")
        theirs = lg.ns_per_call(n, repeat=1, wrap=[strace, "-f", "-qq", "-e", "trace=openat2", "-o", os.devnull])
        say(f"    {theirs:.0f} ns/call")
        ROWS.append(Row("ns added per openat2, strace", theirs - base, "ns", note="for scale"))
    else:
        say("\n[3] strace not installed: row skipped (apt-get install -y strace)")


# --- 4. start-up and memory ----------------------------------------------------------------------------

def startup(lg: Loadgen) -> None:
    say("\n[4] `tracer trace openat2 --json` under a 2,000 calls/s load: time to first event; peak RSS "
        "(then 1 s at 200k/s); first with an empty program cache (compiles), then with the entry it wrote")
    with tempfile.TemporaryDirectory(prefix="tracer-bench-cache-") as cache:
        for state in ("cold", "warm"):
            entries = len(os.listdir(cache))
            first, rss = start_once(lg, cache)
            say(f"      program cache {state}: {entries} entries before the start, {len(os.listdir(cache))} after")
            ROWS.append(Row(f"time from start to first event ({state} cache)", first, "s", 1.5, False))
            ROWS.append(Row(f"peak RSS of tracer trace ({state} cache)", rss, "MiB", 120, False))


def start_once(lg: Loadgen, cache: str) -> tuple[float | None, float]:
    bg = subprocess.Popen([str(lg.exe), "-n", "40000", "-r", "2000", "-c", "1"], stdout=subprocess.DEVNULL)
    env = {**os.environ, "TRACER_CACHE_DIR": cache}
    env.pop("TRACER_NO_CACHE", None)
    with tempfile.NamedTemporaryFile(prefix="tracer-bench-", suffix=".jsonl") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(ROOT / ".venv/bin/tracer"), "trace", "openat2", "--json", "--no-summary",
                                 "-n", COMM, "--duration", "6"], stdout=out, stderr=subprocess.PIPE, env=env)
        first = None
        while proc.poll() is None and time.perf_counter() - t0 < 20:
            if os.path.getsize(out.name) > 0:
                first = time.perf_counter() - t0
                break
            time.sleep(0.005)
        if first is not None:
            lg.run(200_000, rate=200_000, cpu=1)
        # The tracer's own high-water mark, read while it runs: wait4's ru_maxrss would also count the
        # RSS this (large) bench process had when it forked, which Linux carries across exec.
        hwm_kb = 0
        while proc.poll() is None:
            hwm_kb = max(hwm_kb, vm_hwm_kb(proc.pid))
            time.sleep(0.05)
        status = proc.returncode
        bg.kill()
        bg.wait()
        lines = sum(1 for _ in open(out.name))
    rss = hwm_kb / 1024
    say(f"    first event after {first if first is not None else float('nan'):.3f} s; peak RSS {rss:.1f} MiB; "
        f"{lines:,} lines; exit status {status}")
    return first, rss


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set of a live process (VmHWM in /proc/PID/status), 0 once it is gone."""
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
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py: run as root (it loads BPF programs)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {0})
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    say(f"tracer benchmark: {os.cpu_count()} CPUs ({cpu}), Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}; load average at start {loadavg()}")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tracer-bench-") as tmp:
        lg = Loadgen(build_loadgen(Path(tmp)))
        throughput(lg, a.records)
        live(lg, a.quick, 50_000 if a.quick else 200_000)
        startup(lg)
    table()
    say(f"\nload average at end {loadavg()} (other work on this machine lowers every figure); "
        f"bench took {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
