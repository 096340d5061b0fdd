"""The VM lane: boot each kernel users have under QEMU (virtme-ng, the host's root filesystem shared
read-only), run `tracer doctor --json`, `tracer demo` and the kernel-dependent tests (pytest -m kernel, see
tests/conftest.py KERNEL_FILES) inside, check what each kernel must show, print one table.

    .venv/bin/python tests/vm/lane.py [--kernel NAME]... [--list]

One VM at a time (the machine is shared), 2 vCPUs, software emulation (TCG: this machine's /dev/kvm cannot
boot stock kernels; TRACER_VM_KVM=1 uses KVM where it works). Every VM has a hard timeout and is killed with
its whole process group. Without an image the lane is skipped with a one-line reason, unless CI=true:
then a missing lane is a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "tests" / "vm" / "guest.sh"
CI = os.environ.get("CI") == "true"
# ../shared/vm beside the clone (CI) or TRACER_VM_DIR.
VM_DIR = Path(os.environ.get("TRACER_VM_DIR") or ROOT.parent / "shared" / "vm")
TRACER_IMAGE = "bzImage-6.12.117-tracer"
# bcc compiles run 5-10x slower under TCG: the tests' timeouts scale by this much (conftest.scaled).
TCG_TIMEOUT_SCALE = 8
# Both vCPUs on one host thread. Multi-threaded TCG (QEMU's default) crashes the guest kernel when it patches
# code another vCPU is running: "Oops: int3" at the patch site (text_poke_bp's breakpoint, executed after the
# patch was complete and synced), then "Kernel panic - not syncing: Fatal exception in interrupt". Measured on
# the 6.12-tracer kernel with a thread calling openat2 back to back while a Session attached and detached:
# a panic in the 2nd cycle (at syscall_trace_enter's static branch); the Session test of test_trace_live.py
# alone panicked in its 7th run (at __x64_sys_openat2's fentry site), and one CI run lost its 6.12 VM so.
# With thread=single: no panic in 150 cycles (two runs). Our reading: real CPUs serialise after each patch
# step, and a multi-threaded TCG vCPU can still run its stale translation of the patched code.
TCG_ACCEL = "-accel tcg,thread=single"
# The whole lane's wall-clock budget (CI allows 90 minutes for host tests and lane together): a VM gets at most
# what is left of it, and kernels it cannot reach are failures, not silently dropped.
BUDGET = float(os.environ.get("TRACER_LANE_BUDGET") or 55 * 60)
OUTCOMES = ("passed", "failed", "skipped", "errors")
# The steps tests/vm/guest.sh runs, in order, each reported in OUT/steps when it ends.
GUEST_STEPS = ("doctor", "demo", "pytest")
# What `tracer demo` must print on every kernel: its four openat2 calls traced, the bad pointer missing.
DEMO_SHOWS = ("4 events, 0 lost", "filename=<missing: errno 14 at 0x1")


@dataclass
class Kernel:
    name: str
    image: Path | None  # None: not installed (reason says why)
    reason: str
    expect: tuple[str, ...]  # features the kernel has: their tests must run, not skip (TRACER_EXPECT_FEATURES)
    headers: str  # the headers kind doctor must report: own, kheaders
    timeout: float  # seconds for the whole VM: boot, doctor, demo, tests
    pytest_args: tuple[str, ...] = ()  # a subset, where the whole kernel set does not fit the time budget
    must_pass: tuple[str, ...] = ()  # test ids that must have run and passed here


def debian_kernel(series: str) -> tuple[Path | None, str]:
    """The newest installed Debian kernel of a series (6.12: 6.12.N+deb12-amd64, 6.1: 6.1.0-N-amd64) that
    has its headers package installed; ./bootstrap installs one."""
    pattern = {"6.12": r"6\.12\.\d+\+deb12-amd64", "6.1": r"6\.1\.0-\d+-amd64"}[series]
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        if re.fullmatch(pattern, release) and (Path("/lib/modules") / release / "build").is_dir():
            found.append((tuple(int(x) for x in re.findall(r"\d+", release)), image))
    if not found:
        return None, f"no Debian {series} kernel with headers installed (./bootstrap installs one)"
    return max(found)[1], ""


# The kernel-dependent files (conftest.KERNEL_FILES, marker `kernel`) each VM runs by default. Under TCG on 2
# shared cores a bcc compile takes 1.5-3 minutes, and the live fixtures of test_trace_live.py and
# test_monitor_live.py start 5-6 tracers side by side (measured: the monitor fixture alone did not finish in
# 15 minutes): test_monitor_live.py runs on the host's kernel only, unless --full. The files below cover what differs
# between kernels: header discovery and doctor's compile (test_kenv), the probes against the kernel's own
# answers (test_caps), sleepable loading and refusals (test_sleepable), the kernel's opened file walked with
# this kernel's BTF offsets (test_truth_live), the BPF ring buffer map the syscall records go through
# (test_ringbuf; test_truth_live reads them through it), and user_events end to end where the kernel has them.
# test_uprobes.py compiles its program at every start (no cache): host only unless --full; uprobe.s itself is
# probed and loaded on every kernel by test_caps and test_sleepable. The 6.12-tracer VM also runs
# test_trace_live.py (under TCG: +140 s in a quiet CI run, 15 minutes at a load of 6-8): there `--read-mode auto`
# loads a fentry.s reader, so the live runs, filters and clean detach run beside a program kind the host and
# Debian's kernels never load.
CORE = ("tests/test_caps.py", "tests/test_kenv.py", "tests/test_sleepable.py", "tests/test_truth_live.py",
        "tests/test_ringbuf.py")
TRACER_KERNEL_FILES = (*CORE, "tests/test_user_events_live.py", "tests/test_trace_live.py")


def kernels(full: bool = False) -> list[Kernel]:
    tracer_image = VM_DIR / TRACER_IMAGE
    d612, why612 = debian_kernel("6.12")
    d61, why61 = debian_kernel("6.1")
    e2e = ("tests/test_user_events_live.py::test_end_to_end_user_events",
           "tests/test_sleepable.py::test_live_sleepable_syscall_reads")
    pick = (lambda files: ()) if full else (lambda files: files)  # full: every kernel file
    return [
        Kernel("6.12-tracer", tracer_image if tracer_image.is_file() else None,
               f"{tracer_image} not found (set TRACER_VM_DIR)", ("user_events", "fentry.s", "uprobe.s"), "kheaders",
               timeout=3600 if full else 2400, pytest_args=pick(TRACER_KERNEL_FILES), must_pass=e2e),
        Kernel("debian-6.12", d612, why612, ("uprobe.s",), "own", timeout=3600 if full else 1500,
               pytest_args=pick(CORE)),
        Kernel("debian-6.1", d61, why61, ("uprobe.s",), "own", timeout=3600 if full else 1500,
               pytest_args=pick(CORE)),
    ]


@dataclass
class Result:
    kernel: Kernel
    release: str = ""
    seconds: float = 0.0
    steps: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (exit status, seconds)
    boot: float | None = None
    doctor: dict = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # passed/failed/skipped/errors
    by_file: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    log: Path | None = None
    cpu: float = 0.0


def vng_command(k: Kernel, out: Path) -> list[str]:
    vng = shutil.which("vng", path=tool_path()) or "vng"
    env = {"CI": os.environ.get("CI", ""), "TRACER_EXPECT_FEATURES": ",".join(k.expect),
           "TRACER_TIMEOUT_SCALE": "1" if kvm() else str(TCG_TIMEOUT_SCALE), "TERM": "dumb", "COLUMNS": "160"}
    inner = " ".join(f"{n}={shlex.quote(v)}" for n, v in env.items())
    inner += f" bash {shlex.quote(str(GUEST))} {shlex.quote(str(out))} {' '.join(map(shlex.quote, k.pytest_args))}"
    # --verbose: the kernel's messages go to console.log too, so a VM that ends early says why (panic, OOM).
    return [vng, *([] if kvm() else ["--disable-kvm", f"--qemu-opts={TCG_ACCEL}"]), "--verbose", "--run",
            str(k.image), "--memory", "2G", "--cpus", "2", "--cwd", str(ROOT), "--rwdir", str(out), "--exec", inner]


def tool_path() -> str:
    """PATH with the venv's bin/ (virtme-ng installed there) first."""
    return f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def kvm() -> bool:
    return os.environ.get("TRACER_VM_KVM") == "1"


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def boot(k: Kernel, out: Path) -> tuple[int | None, float]:
    """Run the VM; its console goes to out/console.log (and, prefixed, to our stdout). None: timed out."""
    cmd = vng_command(k, out)
    log = (out / "console.log").open("w")
    log.write("$ " + shlex.join(cmd) + "\n")
    started = time.monotonic()
    # A pipe, not a file: vng opens /proc/self/fd/1 and /2 itself, which would truncate a shared file.
    env = {**os.environ, "PATH": tool_path()}  # vng runs virtme-run from the venv's bin/
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True, errors="replace", env=env)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if line.startswith("lane guest:"):
                print(f"  [{k.name}] {line[12:].strip()} ({time.monotonic() - started:.0f}s)", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=k.timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        kill_group(proc)
        reader.join(timeout=10)
        log.close()
    return rc, time.monotonic() - started


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the VM's whole process group (vng, qemu, virtiofsd helpers)."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        try:
            os.killpg(proc.pid, 0)  # anything left in the group (qemu outliving vng)?
        except ProcessLookupError:
            return


def read_results(k: Kernel, out: Path, res: Result) -> None:
    res.release = (out / "release").read_text().strip() if (out / "release").exists() else ""
    for line in (out / "steps").read_text().splitlines() if (out / "steps").exists() else []:
        name, *rest = line.split()
        if name == "booted":
            res.boot = float(rest[0])
        elif len(rest) == 2:
            res.steps[name] = (int(rest[0]), float(rest[1]))
    try:
        res.doctor = json.loads((out / "doctor.out").read_text())
    except (OSError, ValueError):
        res.doctor = {}
    junit = out / "junit.xml"
    if junit.exists():
        res.counts, res.by_file, outcomes = parse_junit(junit)
    else:
        outcomes = {}
    check(k, res, outcomes, out)


def parse_junit(path: Path) -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, str]]:
    """(totals, per-file totals, {test id: outcome}) from pytest's junit XML."""
    totals = dict.fromkeys(OUTCOMES, 0)
    by_file: dict[str, dict[str, int]] = {}
    outcomes: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = ("errors" if "error" in kinds else "failed" if "failure" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
        module = case.get("classname", "").split(".")
        file = "tests/" + module[1] + ".py" if len(module) > 1 and module[0] == "tests" else case.get("file", "?")
        totals[outcome] += 1
        by_file.setdefault(file, dict.fromkeys(totals, 0))[outcome] += 1
        outcomes[f"{file}::{case.get('name')}"] = outcome
    return totals, by_file, outcomes


def check(k: Kernel, res: Result, outcomes: dict[str, str], out: Path) -> None:
    """What this kernel must show; every miss becomes a problem line."""
    p = res.problems
    if res.boot is None:
        p.append("the VM never ran the lane's guest script (see console.log)")
        return
    for step in GUEST_STEPS:
        if step not in res.steps:
            last = last_test(out / "pytest.out") if step == "pytest" else None
            p.append(f"{step} did not finish" + (f" (last test it started: {last})" if last else ""))
        elif res.steps[step][0] != 0:
            p.append(f"{step} exited {res.steps[step][0]}: {tail(out / (step + '.err'), out / (step + '.out'))}")
    if res.steps.get("demo", (1,))[0] == 0:
        # events on stdout, the summary on stderr: both count
        demo = "".join(f.read_text(errors="replace") for f in (out / "demo.out", out / "demo.err") if f.exists())
        for want in DEMO_SHOWS:
            if want not in demo:
                p.append(f"demo: output lacks {want!r}")
    doc = res.doctor
    if doc:
        headers = doc.get("headers", {})
        if headers.get("kind") != k.headers or not headers.get("ok"):
            p.append(f"doctor: headers {headers.get('kind')} (expected {k.headers}): {headers.get('detail')}")
        feats = features(doc)
        for feature in k.expect:
            if not feats.get(feature):
                p.append(f"doctor: {feature} expected on this kernel but not available")
    for test in k.must_pass:
        if outcomes.get(test) != "passed":
            p.append(f"{test}: {outcomes.get(test, 'did not run')} (must run and pass on this kernel)")


def features(doc: dict) -> dict[str, bool | None]:
    sl = doc.get("sleepable", {})
    return {"user_events": doc.get("user_events", {}).get("available"),
            **{kind: sl.get(kind, {}).get("ok") for kind in ("tp.s", "fentry.s", "uprobe.s")}}


def ended_early(res: Result, rc: int, out: Path) -> str | None:
    """The problem line of a VM that ended (not timed out) before its guest script finished every step."""
    if res.boot is None or set(GUEST_STEPS) <= res.steps.keys():
        return None
    return (f"the VM ended before the guest script did (vng exit {rc}); the kernel's last messages: "
            f"{kernel_tail(out / 'console.log')}")


def last_test(path: Path) -> str | None:
    """The last test pytest -v named in its output: the one running when a VM ended mid-run."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((x.split()[0] for x in reversed(lines) if x.startswith("tests/") and "::" in x), None)


def kernel_tail(console: Path, n: int = 4) -> str:
    """What the kernel said last in a --verbose console (lines stamped `[ seconds]`): its oops, BUG, panic
    and OOM lines where there are any, else its last messages."""
    try:
        lines = console.read_text(errors="replace").splitlines()
    except OSError:
        return "(no console)"
    said = [x.strip() for x in lines if KERNEL_LINE.match(x)]
    notable = list(dict.fromkeys(x.split("] ", 1)[1] for x in said if KERNEL_DIED.search(x)))
    return " | ".join(notable[-n:] or said[-n:]) or "(no kernel messages)"


KERNEL_LINE = re.compile(r"\[\s*\d+\.\d+\] ")
KERNEL_DIED = re.compile(r"Oops|BUG|Kernel panic|RIP: 0010|Out of memory|Killed process")


def tail(*paths: Path, n: int = 3) -> str:
    for path in paths:
        try:
            lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            continue
        if lines:
            return " | ".join(lines[-n:])
    return "(no output)"


def run_kernel(k: Kernel, base: Path) -> Result:
    out = base / k.name
    out.mkdir(parents=True)
    out.chmod(0o777)
    res = Result(k, log=out)
    print(f"lane: booting {k.name} ({k.image}), timeout {k.timeout:.0f}s", flush=True)
    cpu = children_cpu()
    rc, res.seconds = boot(k, out)
    # CPU time of vng and the qemu it waited for: on a shared machine the wall time says more about the
    # neighbours than about the lane; TCG with 2 vCPUs needs at least cpu/2 seconds of wall time.
    res.cpu = children_cpu() - cpu
    read_results(k, out, res)
    if rc is None:
        res.problems.insert(0, f"timed out after {k.timeout:.0f}s (VM killed)")
    elif (early := ended_early(res, rc, out)) is not None:
        res.problems.append(early)
    elif rc != 0 and not res.problems:
        res.problems.append(f"vng exited {rc}: {tail(out / 'console.log')}")
    if res.problems:
        failures = tail(out / "pytest.out", n=30) if res.counts.get("failed") or res.counts.get("errors") else ""
        print(f"lane: {k.name} FAILED:\n  " + "\n  ".join(res.problems) + (f"\n{failures}" if failures else ""))
    return res


def mark(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def table(results: list[Result]) -> str:
    head = ["kernel", "release", "headers", "user_events", "fentry.s", "uprobe.s", "tp.s", "demo", "passed",
            "failed", "skipped", "errors", "boot s", "total s", "cpu s", "verdict"]
    rows = [head]
    for r in results:
        f = features(r.doctor) if r.doctor else {}
        demo = r.steps.get("demo")
        rows.append([r.kernel.name, r.release or "-", r.doctor.get("headers", {}).get("kind", "-"),
                     *(mark(f.get(x)) for x in ("user_events", "fentry.s", "uprobe.s", "tp.s")),
                     "-" if demo is None else "ok" if demo[0] == 0 else f"exit {demo[0]}",
                     *(str(r.counts.get(x, "-")) for x in ("passed", "failed", "skipped", "errors")),
                     "-" if r.boot is None else f"{r.boot:.0f}", f"{r.seconds:.0f}", f"{r.cpu:.0f}",
                     "ok" if not r.problems else "FAIL"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    files = sorted({f for r in results for f in r.by_file})
    if files:
        lines.append("")
        lines.append("per file (passed/failed/skipped/errors): " + ", ".join(r.kernel.name for r in results))
        for file in files:
            cells = []
            for r in results:
                c = r.by_file.get(file)
                cells.append("-" if c is None else "/".join(str(c[x]) for x in OUTCOMES))
            lines.append(f"  {file:34} " + "  ".join(f"{c:12}" for c in cells))
    return "\n".join(lines)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through boot(), which kills the VM's process group


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", action="append", help="run only these kernels (by name)")
    ap.add_argument("--list", action="store_true", help="list the kernels and whether each is available")
    ap.add_argument("--full", action="store_true", help="every kernel-dependent file in every VM (hours under TCG)")
    args = ap.parse_args(argv)
    ks = [k for k in kernels(args.full) if not args.kernel or k.name in args.kernel]
    if args.list:
        for k in ks:
            print(f"{k.name:12} {k.image or 'missing: ' + k.reason}")
        return 0
    missing = [k for k in ks if k.image is None]
    tools = [t for t in ("qemu-system-x86_64",) if shutil.which(t) is None]
    if shutil.which("vng", path=tool_path()) is None:
        tools.append("vng (pip install virtme-ng)")
    if missing or tools:
        why = "; ".join([*(f"{k.name}: {k.reason}" for k in missing), *(f"{t} not installed" for t in tools)])
        if CI:
            print(f"lane: FAILED, the VM lane cannot run under CI=true: {why}")
            return 1
        if len(missing) == len(ks) or tools:
            print(f"lane: skipped ({why})")
            return 0
        print(f"lane: running the available kernels only ({why})")
        ks = [k for k in ks if k.image is not None]
    base = Path(tempfile.mkdtemp(prefix="tracer-lane-"))
    base.chmod(0o755)
    started = time.monotonic()
    results = []
    for k in ks:
        left = BUDGET - (time.monotonic() - started)
        if left < 120:
            res = Result(k, problems=[f"not run: the lane's {BUDGET / 60:.0f}-minute budget is used up"])
            print(f"lane: {k.name} {res.problems[0]}", flush=True)
            results.append(res)
            continue
        k.timeout = min(k.timeout, left)
        results.append(run_kernel(k, base))
    print(f"\nVM lane: {len(results)} kernels in {time.monotonic() - started:.0f}s, "
          f"{sum(r.cpu for r in results):.0f} CPU s "
          f"({'KVM' if kvm() else 'TCG software emulation'}, 2 vCPUs); logs in {base}")
    print(table(results))
    bad = [r for r in results if r.problems]
    for r in bad:
        print(f"{r.kernel.name}: " + "; ".join(r.problems))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
