"""`tracer monitor openat2` with real BPF: tests/workloads/monitor_cases.c makes openat2 calls that must
raise an exact set of alerts under the bundled default policy (every default rule, plus the monitor's
own unreadable / changed / unresolved alerts), and calls that must raise none. Three monitor runs, started
in parallel once for the module, serve every assertion.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_policy import DEFAULT_IDS
from test_trace_live import Run, expect_ok, run_parallel, workload_env

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


@dataclass
class Monitored:
    runs: dict[str, Run]
    dirs: dict[str, Path]


@pytest.fixture(scope="module")
def monitored(build_c, tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    exe = build_c("monitor_cases")
    tmp = tmp_path_factory.mktemp("monitor")
    dirs = {name: tmp / name for name in ("triggers", "benign", "console")}
    for d in dirs.values():
        d.mkdir()
    console_env = {**workload_env(dirs["console"]), "TERM": "dumb", "COLUMNS": "400"}
    console_env.pop("FORCE_COLOR", None)
    runs = run_parallel({
        "triggers": (("monitor", "openat2", "--json", "--", exe, "triggers"),
                     workload_env(dirs["triggers"], EXIT_CODE="5")),
        "benign": (("monitor", "openat2", "--json", "--all", "--", exe, "benign"),
                   workload_env(dirs["benign"], EXIT_CODE="5")),
        "console": (("monitor", "openat2", "--", exe, "escape"), console_env),
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
            assert a["kind"] == "alert" and a["event"] == ev and a["severity"] in ("medium", "high", "critical")


def test_absolute_paths_are_certain(triggered) -> None:
    _, ev, (alert,) = triggered["shadow"]
    assert alert == {"kind": "alert", "rule": "shadow-access", "severity": "critical",
                     "description": "Open of a password hash database", "event": ev}
    assert ev["args"]["filename"] == "/etc/shadow" and ev["args"]["how"]["flags_str"] == "O_RDONLY|O_CLOEXEC"
    assert ev["target"] == {"path": "/etc/shadow", "best_effort": False, "basis": "absolute"}
    _, ev, _ = triggered["world_writable"]
    assert ev["args"]["how"]["mode"] == 0o666


def test_relative_paths_resolved_best_effort(triggered, monitored: Monitored) -> None:
    report, ev, (alert,) = triggered["dfd_shadow"]
    assert alert["best_effort"] is True
    assert ev["args"]["dfd"] >= 0 and ev["args"]["filename"] == "shadow"
    assert ev["dfd_path"] == {"path": "/etc", "best_effort": True, "via": "fd"}
    assert ev["target"] == {"path": "/etc/shadow", "best_effort": True, "basis": "fd"}
    report, ev, (alert,) = triggered["cwd_mem"]
    assert alert["rule"] == "proc-mem" and alert["best_effort"] is True
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
    assert alert["severity"] == "high" and alert["unreadable"] == ["filename"]
    assert alert["could_match"] == ["proc-mem", "raw-memory-device", "shadow-access", "ssh-private-key"]
    assert "errno 14 at 0x1" in alert["description"]
    _, ev, (alert,) = triggered["how_badptr"]
    assert ev["args"]["how"] is None and alert["unreadable"] == ["how"]
    assert alert["could_match"] == ["sensitive-write", "sensitive-write-follows-symlinks", "world-writable-create"]


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
    lines = [x for x in run.stdout.splitlines() if not x.startswith('{"kind":"workload"')]
    assert lines[0] == (" HIGH  sensitive-write-follows-symlinks  Write under a system tree that follows symlinks "
                        "(no RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH or RESOLVE_IN_ROOT)")
    assert "esc\\x1b[7m\\n[b][" in lines[1]
    assert 'filename="/etc/tracer-no-dir/[bold red]x[/]\\x1b[31m\\nFORGED\\u202e"' in lines[1]
    assert lines[1].endswith("= -2 ENOENT")
    assert lines[2] == ("    target /etc/tracer-no-dir/[bold red]x[/]\\x1b[31m\\nFORGED\\u202e  "
                        "(absolute, lexical: symlinks not resolved)")
    assert lines[3].startswith("1 openat2 calls checked, 1 alerts (sensitive-write-follows-symlinks: 1)")
    assert len(lines) == 4
