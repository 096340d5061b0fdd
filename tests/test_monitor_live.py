"""`tracer monitor` with real BPF: tests/workloads/monitor_cases.c makes openat2 calls that must raise an
exact set of alerts under the bundled default policy (every default rule, plus the monitor's own
unreadable / changed / unresolved alerts), calls that must raise none, and calls of the rest of the open
family (open, openat, creat, open_by_handle_at). The monitor runs, started in parallel once for the
module, serve every assertion.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from schema_check import check_stream
from test_policy import DEFAULT_IDS
from test_trace_live import ROOT, TIMEOUT, Run, expect_ok, run_parallel, tracer_argv, workload_env

from tracer.opencalls import opened_of

pytestmark = pytest.mark.usefixtures("bpf_env")

EXPECTED = {
    "etc_write_follow": {"sensitive-write-follows-symlinks"},
    "etc_write_nofollow": {"sensitive-write"},
    "shadow": {"shadow-access"},
    "ssh_key": {"ssh-private-key"},
    "authorized_keys": {"ssh-authorized-keys-write"},
    "proc_mem": {"proc-mem"},
    "dev_mem": {"raw-memory-device"},
    "world_writable": {"world-writable-create"},
    "dfd_shadow": {"shadow-access"},
    "cwd_mem": {"proc-mem"},
    "cwd_deleted": {"unresolved"},
    "badptr": {"unreadable"},
    "how_badptr": {"unreadable"},
    "untouched_shadow": {"shadow-access"},
    "changed": {"shadow-access", "changed"},
}
BENIGN = ["b_hostname", "b_passwd", "b_create", "b_tmpfile", "b_dfd_read", "b_cwd_read", "b_missing",
          "b_proc_status", "b_untouched"]


FLOOD = 1000
# Workloads whose alert context is asserted stay alive this long (ms) so that /proc still shows them when
# their records are decoded, however loaded the machine (decoding runs ~100 ms behind when it is not).
LINGER = "4000"


@dataclass
class Monitored:
    runs: dict[str, Run]
    dirs: dict[str, Path]


@pytest.fixture(scope="module")
def monitored(build_c, tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    exe = build_c("monitor_cases")
    tmp = tmp_path_factory.mktemp("monitor")
    dirs = {name: tmp / name for name in ("triggers", "benign", "console", "family", "flood", "flood_all", "race")}
    secret = tmp / "secret.toml"  # 0644, root's: a policy the monitor accepts
    secret.write_text('[[rule]]\nid = "secret-open"\nseverity = "critical"\ndescription = "Open of a secret"\n'
                      'path = "/**/secret-fifo.*"\n')
    for d in dirs.values():
        d.mkdir()
    console_env = {**workload_env(dirs["console"]), "TERM": "dumb", "COLUMNS": "400"}
    console_env.pop("FORCE_COLOR", None)
    runs = run_parallel({
        # Every call's own alerts: --no-aggregate (shadow, dfd_shadow and untouched_shadow are alike).
        "triggers": (("monitor", "openat2", "--json", "--no-aggregate", "--", exe, "triggers"),
                     workload_env(dirs["triggers"], EXIT_CODE="5", LINGER_MS=LINGER)),
        "benign": (("monitor", "openat2", "--json", "--all", "--", exe, "benign"),
                   workload_env(dirs["benign"], EXIT_CODE="5", LINGER_MS=LINGER)),
        "console": (("monitor", "openat2", "--", exe, "escape"), console_env),
        "family": (("monitor", "--json", "--all", "--", exe, "family"), workload_env(dirs["family"], LINGER_MS=LINGER)),
        "cat": (("monitor", "--", "cat", "/etc/shadow"), {**console_env, "TERM": "dumb"}),
        "flood": (("monitor", "openat2", "--json", "--", exe, "flood"),
                  workload_env(dirs["flood"], FLOOD_N=str(FLOOD), LINGER_MS=LINGER)),
        "race": (("monitor", "openat2", "--json", "--all", "--policy", str(secret), "--", exe, "race"),
                 workload_env(dirs["race"])),
        "flood_all": (("monitor", "openat2", "--json", "--no-aggregate", "--", exe, "flood"),
                      workload_env(dirs["flood_all"], FLOOD_N=str(FLOOD))),
    })
    return Monitored(runs, dirs)


def calls(run: Run) -> dict[str, tuple[dict, dict | None, list[dict]]]:
    """case -> (workload report, event, alerts on that event), pairing each process's calls in order."""
    alerts: dict[tuple, list[dict]] = defaultdict(list)
    events: dict[tuple, dict] = {}
    for line in run.lines:
        ev = line.get("event") if line.get("kind") == "alert" else line if line.get("kind") == "syscall" else None
        if ev is None:
            continue
        key = (ev["pid"], ev["tid"], ev["ts"])
        events[key] = ev
        if line["kind"] == "alert":
            alerts[key].append(line)
    by_pid: dict[int, list[tuple]] = defaultdict(list)
    for key in sorted(events, key=lambda k: k[2]):
        by_pid[key[0]].append(key)
    out = {}
    reports: dict[int, list[dict]] = defaultdict(list)
    for r in run.workload:
        reports[r["pid"]].append(r)
    for pid, rs in reports.items():
        assert len(by_pid[pid]) == len(rs), f"pid {pid}: {len(rs)} calls, {len(by_pid[pid])} events\n{run.describe()}"
        for r, key in zip(rs, by_pid[pid], strict=True):
            assert events[key]["tid"] == r["tid"] and events[key]["ret"] == r["ret"], (r, events[key])
            out[r["case"]] = (r, events[key], alerts.get(key, []))
    return out


@pytest.fixture(scope="module")
def triggered(monitored: Monitored) -> dict[str, tuple[dict, dict | None, list[dict]]]:
    run = monitored.runs["triggers"]
    expect_ok(run, rc=3)  # an alert fired: 3 wins over the command's own exit status (5)
    return calls(run)


def test_each_call_raises_exactly_its_alerts(triggered) -> None:
    assert set(triggered) == set(EXPECTED)
    got = {case: {a["rule"] for a in alerts} for case, (_, _, alerts) in triggered.items()}
    assert got == EXPECTED
    fired = set().union(*got.values())
    assert fired == set(DEFAULT_IDS) | {"unreadable", "unresolved", "changed"}, "every default rule fires"
    for _, ev, alerts in triggered.values():
        for a in alerts:
            assert a["kind"] == "alert" and a["event"] == ev and a["severity"] in ("low", "medium", "high", "critical")


def test_absolute_paths_are_certain(triggered) -> None:
    report, ev, (alert,) = triggered["shadow"]
    ctx = alert.pop("context")
    if opened_of(ev):  # the kernel's file (when the tracer reports it) is /etc/shadow too
        assert alert.pop("matched") == ["entry", "opened"] and ev["opened"]["path"] == "/etc/shadow"
    assert alert == {"kind": "alert", "rule": "shadow-access", "severity": "critical",
                     "description": "Open of a password hash database", "event": ev}
    assert_context(ctx, report, ev)
    assert ev["args"]["filename"] == "/etc/shadow" and ev["args"]["how"]["flags_str"] == "O_RDONLY|O_CLOEXEC"
    assert ev["target"] == {"path": "/etc/shadow", "best_effort": False, "basis": "absolute"}
    _, ev, _ = triggered["world_writable"]
    assert ev["args"]["how"]["mode"] == 0o666


def on_proc_only(ev: dict) -> bool | None:
    """A relative path's alert rests on /proc (best effort) unless the kernel's opened file confirms it."""
    return None if opened_of(ev) else True


def assert_context(ctx: dict, report: dict, ev: dict, exe: str | None = None) -> None:
    """The alert's context: time, host and user, and the process as /proc showed it (the workload lingers:
    it is still there, unchanged, when its records are decoded)."""
    assert ctx["host"] == socket.gethostname() and ctx["uid"] == 0 and ctx["user"] == "root"
    wall = datetime.fromisoformat(ctx["time"].replace("Z", "+00:00")).timestamp()
    assert abs(wall - time.time()) < 120 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ctx["time"])
    p = ctx["process"]
    assert p["best_effort"] is True and "unknown" not in p, p
    assert p["exe"] == (exe or p["cmdline"][0]) and p["cmdline"][0].endswith("/monitor_cases")
    assert p["ppid"] > 1 and p["parent_exe"] == os.path.realpath(sys.executable)  # the tracer started it
    # The tracer's child, pytest's grandchild: in pytest's cgroup.
    assert p["cgroup"] == Path("/proc/self/cgroup").read_text().splitlines()[-1].split(":", 2)[2]


def test_relative_paths_resolved_best_effort(triggered, monitored: Monitored) -> None:
    report, ev, (alert,) = triggered["dfd_shadow"]
    assert alert.get("best_effort") is on_proc_only(ev)
    assert ev["args"]["dfd"] >= 0 and ev["args"]["filename"] == "shadow"
    assert ev["dfd_path"] == {"path": "/etc", "best_effort": True, "via": "fd"}
    assert ev["target"] == {"path": "/etc/shadow", "best_effort": True, "basis": "fd"}
    report, ev, (alert,) = triggered["cwd_mem"]
    assert alert["rule"] == "proc-mem" and alert.get("best_effort") is on_proc_only(ev)
    assert ev["dfd_path"] == {"path": f"/proc/{report['pid']}", "best_effort": True, "via": "cwd"}
    assert ev["target"] == {"path": f"/proc/{report['pid']}/mem", "best_effort": True, "basis": "cwd"}


def test_unplaceable_call_raises_unresolved(triggered, monitored: Monitored) -> None:
    report, ev, (alert,) = triggered["cwd_deleted"]
    gone = f"{monitored.dirs['triggers']}/gone.{report['pid']}"
    assert ev["target"] == {"path": None, "best_effort": True, "basis": "cwd",
                            "unknown": f"directory deleted ({gone} (deleted))"}
    assert alert["severity"] == "critical"
    assert alert["could_match"] == {"proc-mem": ["path"], "raw-memory-device": ["path"]}


def test_unreadable_path_fails_closed(triggered) -> None:
    _, ev, (alert,) = triggered["badptr"]
    assert ev["args"]["filename"] is None and ev["reads"]["filename"]["status"] == "missing"
    # The call returned EFAULT: the kernel could not read it either, nothing was opened (low severity).
    assert ev["ret"] == -14 and alert["severity"] == "low" and alert["unreadable"] == ["filename"]
    assert alert["could_match"] == ["proc-mem", "raw-memory-device", "shadow-access", "ssh-private-key"]
    assert "errno 14 at 0x1" in alert["description"]
    _, ev, (alert,) = triggered["how_badptr"]
    assert ev["args"]["how"] is None and alert["unreadable"] == ["how"] and alert["severity"] == "low"
    # (world-writable-create needs a successful call: this one failed)
    assert alert["could_match"] == ["sensitive-write", "sensitive-write-follows-symlinks"]


def test_recovered_path_matches_without_unreadable(triggered) -> None:
    _, ev, (alert,) = triggered["untouched_shadow"]
    assert ev["reads"]["filename"]["status"] == "recovered" and ev["args"]["filename"] == "/etc/shadow"
    assert alert["rule"] == "shadow-access" and "best_effort" not in alert


def test_changed_path_names_both_values(triggered, monitored: Monitored) -> None:
    report, ev, alerts = triggered["changed"]
    by = {a["rule"]: a for a in alerts}
    fifo = f"{monitored.dirs['triggers']}/fifo.{report['pid']}"
    assert ev["reads"]["filename"]["status"] == "changed"
    assert by["changed"]["changed"] == {"arg": "filename", "entry": fifo, "exit": "/etc/shadow"}
    assert f"'{fifo}' at entry, '/etc/shadow' at exit" in by["changed"]["description"]
    assert by["shadow-access"]["matched"] == ["filename at exit"]
    assert ev["target"]["path"] == fifo and ev["target_at_exit"]["path"] == "/etc/shadow"


def test_summary(monitored: Monitored, triggered) -> None:
    s = monitored.runs["triggers"].summary
    assert s["events"] == len(EXPECTED) and s["lost"] == 0 and s["exit_code"] == 5
    assert s["alerts"] == sum(len(v) for v in EXPECTED.values())
    assert s["alerts_by_rule"] == {r: sum(r in v for v in EXPECTED.values())
                                   for r in sorted(set().union(*EXPECTED.values()))}


def test_benign_calls_raise_nothing(monitored: Monitored) -> None:
    run = monitored.runs["benign"]
    expect_ok(run, rc=5)  # no alert: the command's exit status
    got = calls(run)
    assert list(got) == BENIGN
    assert all(alerts == [] for _, _, alerts in got.values())
    assert not [x for x in run.lines if x.get("kind") == "alert"]
    d = str(monitored.dirs["benign"])
    report, ev, _ = got["b_dfd_read"]
    assert ev["target"] == {"path": f"{d}/benign.{report['pid']}", "best_effort": True, "basis": "fd"}
    assert got["b_untouched"][1]["reads"]["filename"]["status"] == "recovered"
    assert run.summary["alerts"] == 0 and run.summary["events"] == len(BENIGN)


def test_console_alerts_escaped(monitored: Monitored) -> None:
    run = monitored.runs["console"]
    expect_ok(run, rc=3)
    assert "\x1b" not in run.stdout and "\u202e" not in run.stdout
    lines = run.stdout.splitlines()  # the workload's reports went to stderr
    assert lines[0] == (" HIGH  sensitive-write-follows-symlinks  Write under a system tree that follows symlinks "
                        "(no RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH or RESOLVE_IN_ROOT)")
    assert "esc\\x1b[7m\\n[b][" in lines[1]
    assert 'filename="/etc/tracer-no-dir/[bold red]x[/]\\x1b[31m\\nFORGED\\u202e"' in lines[1]
    assert lines[1].endswith("= -2 ENOENT")
    assert lines[2] == ("    target /etc/tracer-no-dir/[bold red]x[/]\\x1b[31m\\nFORGED\\u202e  "
                        "(absolute, lexical: symlinks not resolved)")
    assert lines[3].startswith("    context ") and " host " in lines[3] and " uid 0 (root) exe " in lines[3]
    assert "\\x1b[7m" not in lines[3]  # the thread's name is not part of it
    assert lines[4].startswith("1 openat2 calls checked, 1 alerts (sensitive-write-follows-symlinks: 1)")
    assert len(lines) == 5


# --- the whole open family (tracer monitor with no SYSCALL) ----------------------------------------------

FAMILY_EXPECTED = {
    "f_open_shadow": ("open", "/etc/shadow", {"shadow-access"}),
    "f_openat_dfd_shadow": ("openat", "shadow", {"shadow-access"}),
    "f_openat_passwd": ("openat", "/etc/passwd", set()),
    "f_creat_etc": ("creat", "/etc/tracer-monitor-test.d/x", {"sensitive-write-follows-symlinks"}),
    "f_creat_world": ("creat", None, {"world-writable-create"}),
    "f_creat_umask": ("creat", None, None),  # see test_world_writable_create_real_mode
    "f_openat_badptr": ("openat", None, {"unreadable"}),
    # A handle names no path, but the kernel's opened file does: the rule is decided on it.
    "f_handle_shadow": ("open_by_handle_at", None, {"shadow-access"}),
    "f_lnk_dotdot_shadow": ("openat", None, None),  # see test_symlink_dotdot
}


def family_calls(run: Run) -> dict[str, tuple[dict, dict, list[dict]]]:
    """case -> (report, event, alerts): each report matched to the next event of its thread with the same
    syscall and return value (the workload's other opens, e.g. the dynamic loader's, come in between)."""
    alerts: dict[tuple, list[dict]] = defaultdict(list)
    events: dict[tuple, dict] = {}
    for line in run.lines:
        ev = line.get("event") if line.get("kind") == "alert" else line if line.get("kind") == "syscall" else None
        if ev is not None:
            key = (ev["pid"], ev["tid"], ev["ts"])
            events[key] = ev
            if line["kind"] == "alert":
                alerts[key].append(line)
    order = sorted(events, key=lambda k: k[2])
    out, i = {}, 0
    for r in run.workload:
        while i < len(order) and not (order[i][1] == r["tid"] and events[order[i]]["syscall"] == r["syscall"]
                                      and events[order[i]]["ret"] == r["ret"]):
            i += 1
        assert i < len(order), f"no event for {r}\n{run.describe()}"
        out[r["case"]] = (r, events[order[i]], alerts.get(order[i], []))
        i += 1
    return out


def test_whole_family_watched_by_default(monitored: Monitored) -> None:
    run = monitored.runs["family"]
    expect_ok(run, rc=3)
    check_stream(run.lines)  # the JSON contract (tracer/schema): alerts, calls and summary
    assert run.summary["syscalls"] == ["open", "openat", "openat2", "creat", "open_by_handle_at"]
    got = family_calls(run)
    assert set(got) == set(FAMILY_EXPECTED)
    for case, (syscall, path, rules) in FAMILY_EXPECTED.items():
        _, ev, alerts = got[case]
        assert ev["syscall"] == syscall, case
        if path is not None:
            assert ev["args"]["pathname" if syscall == "creat" else "filename"] == path, case
        if rules is not None:
            assert {a["rule"] for a in alerts} == rules, (case, alerts)
    # Nothing else alerts: the loader's opens, the workload's open of /etc.
    assert sum(len(a) for _, _, a in got.values()) == len([x for x in run.lines if x.get("kind") == "alert"])
    report, ev, (alert,) = got["f_open_shadow"]
    assert_context(alert["context"], report, ev)
    _, ev, (alert,) = got["f_openat_dfd_shadow"]
    assert alert.get("best_effort") is on_proc_only(ev) and ev["target"] == {"path": "/etc/shadow", "best_effort": True,
                                                             "basis": "fd"}
    _, ev, (alert,) = got["f_creat_world"]
    assert ev["args"]["mode"] == 0o666 and ev["ret"] >= 0
    _, ev, (alert,) = got["f_handle_shadow"]
    assert ev["opened"]["path"] == "/etc/shadow" and ev["opened"]["status"] == "ok"


def test_symlink_dotdot(monitored: Monitored) -> None:
    """DIR/lnk/../shadow with lnk -> /etc/ssh: the kernel opens /etc/shadow. As text the path is
    DIR/shadow; the monitor never takes that as certain. With the kernel's opened file in the event the
    rule fires on it; without, the call is unresolved (could be SOMEDIR/shadow), never cleared."""
    report, ev, alerts = family_calls(monitored.runs["family"])["f_lnk_dotdot_shadow"]
    d = monitored.dirs["family"]
    assert ev["args"]["filename"] == f"{d}/lnk.{report['pid']}/../shadow" and ev["ret"] >= 0
    assert ev["target"] == {"path": f"{d}/shadow", "best_effort": True, "basis": "absolute",
                            "uncertain": "`..` after a name that may be a symlink: collapsed as text"}
    (alert,) = alerts
    if opened_of(ev):
        assert ev["opened"]["path"] == "/etc/shadow"
        assert (alert["rule"], alert["matched"]) == ("shadow-access", ["opened"]) and "best_effort" not in alert
    else:
        assert alert["rule"] == "unresolved" and alert["could_match"] == {"shadow-access": ["path"]}
        assert alert["severity"] == "critical"


def test_world_writable_create_real_mode(monitored: Monitored) -> None:
    """creat(path, 0666): under umask 0 the file is 0666 (alert); under umask 022 it is 0644, which the
    kernel's opened file shows (no alert); without it only the requested 0666 is known (alert)."""
    got = family_calls(monitored.runs["family"])
    _, ev, alerts = got["f_creat_world"]
    if opened_of(ev):
        assert ev["opened"]["mode"] == "0o100666"
    assert [a["rule"] for a in alerts] == ["world-writable-create"]
    _, ev, alerts = got["f_creat_umask"]
    assert ev["args"]["mode"] == 0o666 and ev["ret"] >= 0
    if opened_of(ev):
        assert ev["opened"]["mode"] == "0o100644" and alerts == []
    else:
        assert [a["rule"] for a in alerts] == ["world-writable-create"]


def test_efault_unreadable_is_low(monitored: Monitored) -> None:
    """The call itself returned EFAULT: the kernel could not read the path either, nothing was opened."""
    _, ev, (alert,) = family_calls(monitored.runs["family"])["f_openat_badptr"]
    assert ev["ret"] == -14 and ev["reads"]["filename"]["status"] == "missing"
    assert alert["severity"] == "low" and alert["kernel_efault"] is True
    assert "the kernel could not read its arguments either and nothing was opened" in alert["description"]


def test_cat_shadow_raises_shadow_access(monitored: Monitored) -> None:
    """`tracer monitor -- cat /etc/shadow`: glibc opens with openat; the default policy catches it."""
    run = monitored.runs["cat"]
    expect_ok(run, rc=3)
    assert any(x.startswith("monitoring open, openat, openat2, creat, open_by_handle_at with 8 rules from ")
               for x in run.stderr.splitlines())  # (cat's own output goes to stderr too, unordered)
    lines = run.stdout.splitlines()
    # The rule matched the caller's path and the file the kernel opened.
    head = " CRITICAL  shadow-access (on the entry / opened values)  Open of a password hash database"
    assert head in lines
    call = lines[lines.index(head) + 1]
    assert 'openat(dfd=AT_FDCWD, filename="/etc/shadow", flags=O_RDONLY' in call
    assert call.split(") = ", 1)[1].startswith('3 -> opened "/etc/shadow" (dev ')  # the kernel's opened file


# --- alert volume ----------------------------------------------------------------------------------------


def test_identical_alerts_aggregated(monitored: Monitored) -> None:
    """1,000 opens of /etc/shadow and 1,000 unreadable paths by one process: two alerts shown at once,
    two that count the other 999 each (window 60 s: they close at the end of the run); all 2,000 counted."""
    run = monitored.runs["flood"]
    expect_ok(run, rc=3)
    alerts = [x for x in run.lines if x.get("kind") == "alert"]
    reports = {r["case"]: r for r in run.workload}
    assert [(a["rule"], "aggregate" in a) for a in alerts] == [
        ("shadow-access", False), ("unreadable", False), ("shadow-access", True), ("unreadable", True)]
    first_shadow, first_bad, more_shadow, more_bad = alerts
    exe = first_shadow["context"]["process"]["exe"]
    assert exe.endswith("/monitor_cases")
    assert more_shadow["aggregate"] == {"count": FLOOD - 1, "first_time": first_shadow["context"]["time"],
                                        "last_time": more_shadow["context"]["time"], "window_s": 60.0,
                                        "exe": exe, "target": "/etc/shadow"}
    assert more_shadow["event"]["ret"] == reports["flood_shadow_last"]["ret"] >= 0
    assert more_bad["aggregate"]["count"] == FLOOD - 1 and more_bad["aggregate"]["target"] is None
    assert first_bad["severity"] == more_bad["severity"] == "low"  # EFAULT: nothing was opened
    assert first_shadow["context"]["time"] < more_shadow["context"]["time"]
    s = run.summary
    assert s["events"] == 2 * FLOOD and s["alerts"] == 2 * FLOOD and s["alerts_folded"] == 2 * FLOOD - 2
    assert s["alerts_by_rule"] == {"shadow-access": FLOOD, "unreadable": FLOOD}


def test_an_aggregation_window_closes_on_time_not_at_the_next_call() -> None:
    """Two opens of /etc/shadow by one process, then nothing: the alert that counts the second one comes
    once the 0.5 s window has ended, while the process still waits (it is released only after that
    alert was read), not at the next call or at exit."""
    code = "open('/etc/shadow').read(); open('/etc/shadow').read(); print('opened', flush=True); input()"
    argv = tracer_argv("monitor", "--json", "--aggregate-window", "0.5", "--", sys.executable, "-c", code)
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    alerts: list[dict] = []
    buf = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while not any("aggregate" in a for a in alerts):  # lines read from the pipe as they come, unbuffered
            if b"\n" not in buf:
                left = deadline - time.monotonic()
                assert left > 0 and select.select([proc.stdout], [], [], left)[0], f"no aggregate alert: {alerts}"
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                assert chunk, f"monitor ended first: {proc.stderr.read().decode()}"
                buf += chunk
                continue
            line, buf = buf.split(b"\n", 1)
            if (x := json.loads(line)).get("kind") == "alert":
                alerts.append(x)
        proc.stdin.write(b"\n")
        proc.stdin.close()
        proc.wait(timeout=TIMEOUT)
        rest, err = (buf + proc.stdout.read()).decode(), proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    first, more = alerts
    assert first["rule"] == more["rule"] == "shadow-access" and "aggregate" not in first
    assert more["aggregate"]["count"] == 1 and more["aggregate"]["window_s"] == 0.5
    later = [json.loads(x) for x in rest.splitlines()]
    assert [x["kind"] for x in later] == ["summary"] and later[0]["alerts_folded"] == 1


def test_no_aggregate_shows_every_alert(monitored: Monitored) -> None:
    run = monitored.runs["flood_all"]
    expect_ok(run, rc=3)
    alerts = [x for x in run.lines if x.get("kind") == "alert"]
    assert len(alerts) == 2 * FLOOD and not any("aggregate" in a for a in alerts)
    assert run.summary["alerts_folded"] == 0


def test_racing_writer_alerts_on_the_opened_file(monitored: Monitored) -> None:
    """The path was rewritten after the kernel copied it: read at exit it names DIR/harmless-xx.PID,
    while the kernel opened DIR/secret-fifo.PID. The rule on the secret fires on the kernel's file."""
    run = monitored.runs["race"]
    expect_ok(run, rc=3)
    (report,) = run.workload
    d, pid = monitored.dirs["race"], report["pid"]
    (ev,) = {x["ts"]: x for x in (y.get("event", y) for y in run.lines if y.get("kind") in ("alert", "syscall"))
             if x["pid"] == pid}.values()  # the one call, whether shown as an alert or with --all
    assert ev["ret"] == report["ret"] >= 0
    assert ev["args"]["filename"] == f"{d}/harmless-xx.{pid}" and ev["reads"]["filename"]["verified"] is False
    assert ev["opened"]["status"] == "ok" and ev["opened"]["path"] == f"{d}/secret-fifo.{pid}"
    assert ev["args"]["filename"] != ev["opened"]["path"]  # what the exit re-read found: not the kernel's
    alerts = {x["rule"]: x for x in run.lines if x.get("kind") == "alert"}
    assert alerts["secret-open"]["matched"] == ["opened"] and "best_effort" not in alerts["secret-open"]
