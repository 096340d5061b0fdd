"""Live: what the kernel used versus what memory held after the call (tests/workloads/truth_cases.c).

A racing thread rewrites a path (openat of a FIFO) or a sockaddr (connect to a full AF_UNIX backlog) after
the kernel's own copy; the entry read failed (untouched page), so only the exit re-read has a value — and it
is the decoy. The event must not present it as certain; where the kernel's opened file settles it, it says
so either way. Needs what tests/test_trace_live.py needs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest
from conftest import sb_dev
from test_trace_live import Run, expect_ok, run_parallel, workload_env

from tracer.events import UNVERIFIED

pytestmark = pytest.mark.usefixtures("bpf_env")

CASES = ["fifo_race", "fifo_race_nofollow", "untouched_abs", "untouched_rel", "unix_race", "accept4_untouched_len",
         "exec_fail_untouched", "exec_ok_untouched"]
EXEC_ARGS = ["/bin/true", "arg-one", "arg two"]


@pytest.fixture(scope="module")
def truth(build_c, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[dict, dict]]]:
    exe = build_c("truth_cases")
    tmp = tmp_path_factory.mktemp("truth")
    # nofault: what the entry read cannot see is the subject here (a sleepable reader, where the kernel has
    # one, would fault the pages in at entry instead).
    runs = run_parallel({"all": (("trace", "openat", "connect", "accept4", "execve", "--json", "--read-mode",
                                  "nofault", "--", exe, *CASES),
                                 workload_env(tmp))})
    run: Run = runs["all"]
    expect_ok(run)
    reports = {r["case"]: r for r in run.workload}
    assert sorted(reports) == sorted(CASES), run.describe()
    evs = run.of(reports["fifo_race"]["pid"])
    by_case = {}
    for case, r in reports.items():
        if case.startswith("exec_"):
            match = [e for e in run.of(r["pid"]) if e["syscall"] == "execve" and e["reads"].get("argv", {}).get(
                "addr") == r["argv"]]
        elif case == "accept4_untouched_len":
            match = [e for e in evs if e["syscall"] == "accept4" and e["ret"] == r["ret"]]
        elif case == "unix_race":
            match = [e for e in evs if e["syscall"] == "connect" and e["args"]["uservaddr"] is not None
                     and e["reads"]["uservaddr"]["addr"] == r["addr"]]
        else:
            match = [e for e in evs if e["syscall"] == "openat" and e["reads"]["filename"]["addr"] == r["filename"]]
        assert len(match) == 1, (case, run.describe())
        by_case[case] = (r, match[0])
    yield by_case


def opened_of(r: dict, path: str) -> dict:
    return {"dev": sb_dev(os.path.realpath(path)), "ino": r["ino"], "mode": oct(r["mode"])}


def test_fifo_rewritten_after_the_kernels_copy_is_not_shown_as_certain(truth) -> None:
    r, ev = truth["fifo_race"]
    assert r["after"] == r["decoy"] and ev["ret"] == r["ret"] >= 0
    assert ev["args"]["filename"] == r["decoy"]  # all that memory held after the call
    info = ev["reads"]["filename"]
    assert info["status"] == "recovered" and info["errno"] == 14
    assert info["verified"] is False and info["opened_match"] == "undecided"
    assert info["unverified_reason"] == (
        f"{UNVERIFIED['recovered']}; the kernel's opened file does not settle it: the kernel opened "
        f"{r['fifo']!r}; this value names it only if it goes through a symbolic link")
    assert ev["opened"] == {"status": "ok", "path": r["fifo"], **opened_of(r, r["fifo"]), "reason": None}
    assert stat.S_ISFIFO(r["mode"])


def test_fifo_rewritten_with_o_nofollow_is_changed(truth) -> None:
    r, ev = truth["fifo_race_nofollow"]
    assert r["flags"] & os.O_NOFOLLOW and ev["args"]["flags"] == r["flags"]
    info = ev["reads"]["filename"]
    assert ev["args"]["filename"] == r["decoy"]
    assert (info["status"], info["verified"], info["opened_match"], info["kernel_path"]) == (
        "changed", False, "conflict", r["fifo"])
    leaf, kleaf = os.path.basename(r["decoy"]), os.path.basename(r["fifo"])
    assert info["unverified_reason"] == (
        f"cannot be the file the kernel opened: its last component {leaf!r} is not the opened file's name "
        f"{kleaf!r}, and the last component cannot be a symbolic link (O_NOFOLLOW or RESOLVE_NO_SYMLINKS)")
    assert ev["opened"]["path"] == r["fifo"] and ev["opened"]["ino"] == r["ino"]


def test_recovered_absolute_path_verified_by_the_opened_file(truth) -> None:
    r, ev = truth["untouched_abs"]
    info = ev["reads"]["filename"]
    path = ev["args"]["filename"]
    assert info["status"] == "recovered" and info["verified"] is True and info["verified_by"] == "opened_file"
    assert "unverified_reason" not in info
    assert ev["opened"] == {"status": "ok", "path": path, **opened_of(r, path), "reason": None}
    assert r["mode"] == 0o100640


def test_recovered_relative_path_stays_unverified(truth) -> None:
    r, ev = truth["untouched_rel"]
    info = ev["reads"]["filename"]
    assert ev["args"]["dfd"] == r["dfd"] >= 0
    assert info["status"] == "recovered" and info["verified"] is False and info["opened_match"] == "undecided"
    assert info["unverified_reason"].endswith(
        "a relative path: the directory it was resolved from (dfd or the working directory) is not known to "
        "tracer at the time of the call")
    assert ev["opened"]["path"].endswith("/" + ev["args"]["filename"])
    assert ev["opened"]["status"] == "ok" and ev["opened"]["ino"] == r["ino"]
    assert ev["opened"]["dev"] == sb_dev(ev["opened"]["path"])


def test_sockaddr_rewritten_after_the_kernels_copy_is_unverified(truth) -> None:
    r, ev = truth["unix_race"]
    assert r["ret"] == 0 == ev["ret"] and r["after"] == r["decoy"]
    assert ev["args"]["uservaddr"] == {"family": "AF_UNIX", "path": r["decoy"]}
    info = ev["reads"]["uservaddr"]
    assert (info["status"], info["verified"], info["unverified_reason"]) == (
        "recovered", False, UNVERIFIED["recovered"])
    assert "opened" not in ev


def test_accept4_with_untouched_addrlen_reads_what_the_kernel_wrote(truth) -> None:
    r, ev = truth["accept4_untouched_len"]
    assert r["ret"] >= 0 and r["addrlen_after"] == 16
    assert ev["args"]["upeer_addrlen"] == r["addrlen_ptr"]
    assert ev["args"]["upeer_sockaddr"] == {"family": "AF_INET", "port": r["client_port"], "addr": "127.0.0.1"}
    info = ev["reads"]["upeer_sockaddr"]
    # Whole (16 bytes, as the kernel reported), not cut: the buffer's size was unknown, which is said.
    assert {k: v for k, v in info.items() if k != "addr"} == {
        "status": "ok", "source": "exit", "errno": None, "len_errno": 14, "len": 16, "size": 16,
        "verified": False, "unverified_reason": UNVERIFIED["output_size"]}
    assert info["addr"] == r["addr"]


def test_exec_argv_from_the_new_programs_memory(truth) -> None:
    """A successful exec whose argv/envp were unreadable at entry: the kernel's own copy, read at exit from
    the new process's mm->arg_start..arg_end and env_start..env_end, is the value — and proves it."""
    r, ev = truth["exec_ok_untouched"]
    assert ev["ret"] == 0 and ev["args"]["argv"] == EXEC_ARGS and ev["args"]["envp"] == ["TRUTH=1"]
    argv = ev["reads"]["argv"]
    assert argv == {
        "status": "recovered", "source": "exit", "errno": None, "addr": r["argv"], "count": 3, "len": 23,
        "elements": [{"status": "ok", "len": 9}, {"status": "ok", "len": 7}, {"status": "ok", "len": 7}],
        "entry_status": "missing", "entry_errno": 14,
        "exit_from": "the new program's memory, as the kernel copied it during the exec",
        "verified": True, "verified_by": "kernel_copy"}
    envp = ev["reads"]["envp"]
    assert (envp["status"], envp["count"], envp["verified_by"], envp["addr"]) == ("recovered", 1, "kernel_copy",
                                                                                 r["envp"])
    assert ev["missing"] == ["filename"]  # its page was untouched too; the new program has no copy of it


def test_failed_exec_argv_recovered_from_the_old_memory_unverified(truth) -> None:
    r, ev = truth["exec_fail_untouched"]
    assert ev["ret"] == r["ret"] == -8  # ENOEXEC: after the kernel copied argv and envp
    assert ev["args"]["argv"] == EXEC_ARGS and ev["args"]["envp"] == ["TRUTH=1"]
    for arg in ("argv", "envp"):
        info = ev["reads"][arg]
        assert (info["status"], info["source"], info["entry_status"], info["entry_errno"]) == (
            "recovered", "exit", "missing", 14)
        assert info["verified"] is False and info["unverified_reason"] == UNVERIFIED["recovered"]
    assert ev["reads"]["argv"]["count"] == 3 and ev["reads"]["envp"]["count"] == 1
