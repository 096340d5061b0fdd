"""raw_syscalls attach mode (large syscall sets; tracer/probes.py RAW_MIN_SYSCALLS): it decodes the same
events as per-syscall tracepoints, never takes an ia32 syscall (int $0x80, TS_COMPAT) for the x86_64
syscall with the same number, and is what `trace %file` uses."""

from __future__ import annotations

from pathlib import Path

from conftest import require
from test_trace_live import ALL_CASES, expect_ok, mask_pid, paired, run_parallel, run_tracer, workload_env

# What differs from run to run: times, ids, addresses, and string lengths (paths hold the directory and pid).
VOLATILE = {"ts", "ts_exit", "duration_ns", "cpu", "pid", "tid", "addr", "region", "time", "len", "len_at_exit",
            "ino"}


def comparable(ev: dict, workdir: Path) -> object:
    """The event without what differs from run to run; the workload's directory and pid as DIR and PID."""
    def strip(x: object) -> object:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in VOLATILE}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return mask_pid(x.replace(str(workdir), "DIR"), ev["pid"]) if isinstance(x, str) else x
    return strip(ev)


def test_raw_attach_decodes_what_per_syscall_tracepoints_do(bpf_env, build_c, tmp_path: Path) -> None:
    cases = build_c("openat2_cases")
    dirs = {mode: tmp_path / mode for mode in ("syscall", "raw")}
    for d in dirs.values():
        d.mkdir()
    runs = run_parallel({mode: (("trace", "openat2", "--json", "--", cases, "all"),
                                {**workload_env(d), "TRACER_ATTACH": mode}) for mode, d in dirs.items()})
    got = {}
    for mode, run in runs.items():
        expect_ok(run)
        got[mode] = [(report["case"], comparable(ev, dirs[mode])) for report, ev in paired(run, ALL_CASES)]
    assert got["raw"] == got["syscall"]
    statuses = {st["status"] for _, ev in got["raw"] for st in ev["reads"].values()}  # type: ignore[index]
    assert {"ok", "missing", "recovered", "changed"} <= statuses  # the recovery paths ran in raw mode too


def test_ia32_syscalls_are_not_taken_for_x86_64_ones(bpf_env, build_c) -> None:
    run = run_tracer("trace", "writev", "newstat", "getpid", "--json", "--", build_c("compat_cases"),
                     env={"TRACER_ATTACH": "raw"})
    expect_ok(run)
    (report,) = run.workload
    require(report["int80_getpid"] == report["pid"], "ia32 syscalls (int $0x80) work on this kernel")
    evs = [(ev["syscall"], ev["args"], ev["ret"]) for ev in run.of(report["pid"])]
    # The x86_64 writev and the getpid() of the report line; not the ia32 getpid (20 = writev) nor the
    # ia32 write (4 = stat).
    assert [e[0] for e in evs] == ["writev", "getpid"], run.describe()
    assert evs[0][1]["fd"] == report["fd"] and evs[0][1]["vlen"] == 1 and evs[0][2] == report["writev"] == 6
    assert evs[1][2] == report["pid"]


def test_file_group_attaches_to_raw_syscalls(bpf_env, build_c) -> None:
    from tracer.probes import RAW_MIN_SYSCALLS
    from tracer.session import Session

    cases = build_c("openat2_cases")
    with Session(["%file"], command=[str(cases), "ok"], explain=False) as s:
        assert len(s.syscalls) >= RAW_MIN_SYSCALLS
        assert s.probes.raw and s.probes.attached == ["raw_syscalls:sys_enter", "raw_syscalls:sys_exit"]
        events = [ev.data for ev in s if ev.kind == "syscall"]
    mine = [ev for ev in events if ev["comm"] == "openat2_cases" and ev["syscall"] == "openat2"]
    assert len(mine) == 1 and mine[0]["reads"]["filename"]["status"] == "ok", mine
    assert s.exit_code == 0


def test_second_ctrl_c_while_detaching_exits_at_once(bpf_env) -> None:
    """Per-syscall tracepoints of a large set take seconds to detach: tracer says so, and a second Ctrl-C
    exits (130) leaving the detach to a background child, instead of the orderly exit (0)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_trace_live import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "tracer", "trace", "%file", "-n", "no-such-comm"], cwd=ROOT,
                            env={**os.environ, "TRACER_ATTACH": "syscall"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        while "Ctrl-C to stop" not in (line := proc.stderr.readline()):  # attached (the line may wrap)
            assert line, "tracer exited before attaching"
        proc.send_signal(signal.SIGINT)
        note = proc.stderr.readline()
        assert note.startswith("detaching ") and "probes" in note, note
        time.sleep(0.2)  # inside close() by now: the note is printed just before it
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
