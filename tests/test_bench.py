"""bench/run.py --smoke: every step of the benchmark on a few thousand calls, so that it cannot rot
unnoticed (its figures are not asserted: speed goals live in the benchmark, not in timed tests)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import require

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke(bpf_env) -> None:
    require(shutil.which("bpftrace") is not None, "bpftrace (the benchmark's reference) is not installed")
    proc = subprocess.run([sys.executable, str(ROOT / "bench/run.py"), "--smoke"], capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    table = out[out.index("\nfigure "):]
    for row in ("events per consumer CPU-s, tracer --json", "ratio to bpftrace (printf to a file)",
                "events per consumer CPU-s, tracer console", "CPU added per traced openat2, tracer",
                "BPF time per call, tracer (enter + exit)", "lost at 20k openat2/s", "start to first event",
                "CPU time of that start-up", "attach raw: BPF ns per traced openat2", "`trace %file`: SIGINT to exit"):
        line = next((ln for ln in table.splitlines() if row in ln), None)
        assert line is not None, f"row {row!r} missing:\n{table}"
        assert re.search(r"\d", line.split(row, 1)[1]) and "not measured" not in line, line
    # The measured loop's calls were all delivered (nothing lost at this size), by tracer and bpftrace alike.
    for label in ("tracer --json", "tracer console", "bpftrace"):
        m = re.search(rf"^    {re.escape(label)} +([\d,]+) events \(of ~([\d,]+)\)", out, re.M)
        assert m and m[1] == m[2], (label, out)
