"""Symbolic decoding live: tests/workloads/decode_cases.c makes socket, setsockopt, fcntl, access, mmap,
mprotect, ioctl, signal, clone, clone3 and wait calls with known arguments; `tracer trace --json` must show
each one's symbols exactly (and the console line strace's way)."""

from __future__ import annotations

import datetime

import pytest
from schema_check import check_stream
from test_trace_live import expect_ok, run_tracer

pytestmark = pytest.mark.usefixtures("bpf_env")

EVENTS = ("socket", "setsockopt", "shutdown", "fcntl", "ioctl", "access", "faccessat", "mmap", "mprotect",
          "rt_sigaction", "rt_sigprocmask", "prctl", "kill", "tgkill", "clone", "clone3", "wait4", "waitid")


@pytest.fixture(scope="module")
def traced(build_c) -> tuple[dict, list[dict], str, list[dict]]:
    exe = build_c("decode_cases")
    run = run_tracer("trace", *EVENTS, "--json", "--", exe)
    expect_ok(run)
    (report,) = run.workload
    console = run_tracer("trace", "socket", "clone", "rt_sigprocmask", "rt_sigaction", "--", exe,
                         env={"TERM": "dumb", "COLUMNS": "300"})
    expect_ok(console)
    return report, run.of(report["pid"]), console.stderr + console.stdout, run.lines


def test_stream_follows_the_json_contract(traced) -> None:
    """Header line first, every line valid against its schema, `time` = ts + the summary's offset."""
    _, events, _, lines = traced
    check_stream(lines)
    offset = lines[-1]["mono_to_wall_ns"]
    (header,) = [x for x in lines if x["kind"] == "stream"]
    assert header["clock"]["mono_to_wall_ns"] == offset and lines[-1]["kind"] == "summary"
    for ev in events:
        t = datetime.datetime.strptime(ev["time"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
        assert int(t.timestamp()) * 10**6 + int(ev["time"][20:26]) == (ev["ts"] + offset) // 1000


def calls(events: list[dict], name: str, **args: int) -> list[dict]:
    return [e for e in events if e["syscall"] == name and all(e["args"].get(k) == v for k, v in args.items())]


def test_socket_family_type_protocol(traced) -> None:
    _, events, _, _ = traced
    socks = [e["args_str"] for e in calls(events, "socket")]
    assert socks == [{"family": "AF_INET", "type": "SOCK_STREAM|SOCK_CLOEXEC", "protocol": "IPPROTO_IP"},
                     {"family": "AF_UNIX", "type": "SOCK_DGRAM|SOCK_NONBLOCK"},
                     {"family": "AF_INET6", "type": "SOCK_DGRAM", "protocol": "IPPROTO_UDP"}]
    (sso,) = calls(events, "setsockopt")
    assert sso["args_str"] == {"level": "SOL_SOCKET", "optname": "SO_REUSEADDR"}
    (sh,) = calls(events, "shutdown")
    assert sh["args_str"] == {"how": "SHUT_RDWR"} and sh["ret_str"] == "-107 ENOTCONN"


def test_ioctl_requests(traced) -> None:
    """Request numbers as gcc made them from the C headers, named from the UAPI headers (tracer/ioctls.py);
    a number no header names shown by its fields, as strace does."""
    report, events, _, _ = traced
    mine = [e for e in events if e["pid"] == report["pid"]]
    got = [(e["args_str"].get("cmd"), e["ret_str"]) for e in calls(mine, "ioctl")]
    assert got == [("FIONREAD", "0"), ("PERF_EVENT_IOC_ENABLE", "-9 EBADF"),
                   ("_IOC(_IOC_READ, 0xf7, 0xe3, 0x4)", "-25 ENOTTY")], got


def test_fcntl_and_access(traced) -> None:
    _, events, _, _ = traced
    assert [e["args_str"] for e in calls(events, "fcntl")] == [
        {"cmd": "F_SETFD", "arg": "FD_CLOEXEC"}, {"cmd": "F_SETFL", "arg": "O_NONBLOCK"}, {"cmd": "F_GETFL"}]
    (acc,) = calls(events, "access", mode=6)
    assert acc["args"]["filename"] == "/etc/hostname" and acc["args_str"] == {"mode": "R_OK|W_OK"}
    (fat,) = calls(events, "faccessat")
    assert fat["args_str"] == {"dfd": "AT_FDCWD", "mode": "X_OK"}


def test_mmap_and_mprotect(traced) -> None:
    report, events, _, _ = traced
    (mm,) = calls(events, "mmap", len=7 * 4096)
    assert mm["args_str"] == {"prot": "PROT_READ|PROT_WRITE", "flags": "MAP_PRIVATE|MAP_ANONYMOUS", "fd": "-1"}
    assert mm["ret"] == report["map"]
    prots = [e["args_str"]["prot"] for e in calls(events, "mprotect", start=report["map"])]
    assert prots == ["PROT_READ", "PROT_NONE"]


def test_signals_clone_and_wait(traced) -> None:
    report, events, _, _ = traced
    (sa,) = [e for e in calls(events, "rt_sigaction") if e["args"]["sig"] == 10]
    assert sa["args_str"] == {"sig": "SIGUSR1"}
    # The kernel's struct sigaction (layout from BTF) as glibc's sigaction() passes it: SA_RESTORER and its
    # restorer added to the workload's SA_RESTART, handler and mask.
    act = sa["args"]["act"]
    assert sa["reads"]["act"]["status"] == "ok" and act["sa_restorer"] != 0
    assert {k: v for k, v in act.items() if k != "sa_restorer"} == {
        "sa_handler": report["handler"], "sa_flags": 0x14000000, "sa_flags_str": "SA_RESTORER|SA_RESTART",
        "sa_mask": {"signals": ["SIGINT"], "mask": "0x2"}}
    ignored = [e["args"]["act"] for e in calls(events, "rt_sigaction") if isinstance(e["args"]["act"], dict)
               and e["args"]["act"].get("sa_handler_str") == "SIG_IGN"]
    assert len(ignored) == 1 and ignored[0]["sa_handler"] == 1  # the SIGPIPE the workload ignores
    assert [e["args_str"] for e in calls(events, "kill")] == [{"sig": "SIGUSR1"}, {"sig": "SIGTERM"}]
    masks = [e for e in calls(events, "rt_sigprocmask", sigsetsize=8) if e["args"]["nset"] is not None
             and e["args"]["nset"]["signals"] == ["SIGINT", "SIGTERM"]]
    assert [(e["args_str"]["how"], e["args"]["nset"]["mask"], e["reads"]["nset"]["status"]) for e in masks] == [
        ("SIG_BLOCK", "0x4002", "ok"), ("SIG_UNBLOCK", "0x4002", "ok")]
    (pr,) = calls(events, "prctl", arg2=0)
    assert pr["args_str"] == {"option": "PR_GET_DUMPABLE"}
    (tg,) = calls(events, "tgkill")
    assert "args_str" not in tg  # signal 0: a number, no name
    clones = calls(events, "clone")
    assert [(e["args_str"]["clone_flags"], e["ret"]) for e in clones] == [
        ("SIGCHLD", report["child1"]), ("CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD", report["child3"])]
    (c3,) = calls(events, "clone3")
    uargs = c3["args"]["uargs"]
    assert c3["reads"]["uargs"]["status"] in ("ok", "recovered")
    assert c3["reads"]["uargs"]["addr"] == report["clone_args"]
    assert (uargs["flags_str"], uargs["exit_signal_str"], c3["ret"]) == ("CLONE_PIDFD", "SIGCHLD", report["child2"])
    assert [(e["args"]["upid"], e.get("args_str", {}).get("options")) for e in calls(events, "wait4")] == [
        (report["child1"], None), (-1, "WNOHANG"), (report["child3"], "__WALL")]
    (wid,) = calls(events, "waitid")
    assert wid["args_str"] == {"which": "P_PID", "options": "WEXITED"} and wid["args"]["upid"] == report["child2"]


def test_console_shows_symbols(traced) -> None:
    _, _, text, _ = traced
    assert "socket(family=AF_INET, type=SOCK_STREAM|SOCK_CLOEXEC, protocol=IPPROTO_IP) = 3" in text
    assert "clone(clone_flags=SIGCHLD, " in text
    assert "rt_sigprocmask(how=SIG_BLOCK, nset=[INT TERM], oset=0, sigsetsize=8) = 0" in text
    assert "rt_sigaction(sig=SIGPIPE, act={sa_handler=SIG_IGN, sa_mask=[PIPE], sa_flags=SA_RESTORER|SA_RESTART, " \
           "sa_restorer=0x" in text
