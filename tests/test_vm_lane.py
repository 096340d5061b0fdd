"""The VM lane's host side (tests/vm/lane.py) on canned guest output: junit parsing, what each kernel must
show, the table, and the skip/fail decision when no image is there. The lane itself boots real kernels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "vm"))
import lane

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_user_events_live" name="test_end_to_end_user_events" time="3"/>
<testcase classname="tests.test_sleepable" name="test_live_sleepable_syscall_reads" time="2">
  <skipped message="fentry.s is not available">x</skipped></testcase>
<testcase classname="tests.test_sleepable" name="test_x" time="1"><failure message="boom">tb</failure></testcase>
<testcase classname="tests.test_caps" name="test_y" time="1"><error message="fixture">tb</error></testcase>
</testsuite></testsuites>"""


STEPS = "doctor 0 90.5\ndemo 0 130.0\nwarm 0 9\npytest 1 600.2\n"


def guest_output(out: Path, doctor: dict, steps: str = STEPS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "release").write_text("6.12.117\n")
    (out / "steps").write_text("booted 13.2\n" + steps)
    (out / "doctor.out").write_text(json.dumps(doctor))
    (out / "junit.xml").write_text(JUNIT)
    (out / "demo.out").write_text("openat2(dfd=AT_FDCWD, filename=<missing: errno 14 at 0x1 in unmapped (NULL "
                                  "page)>, ...) = -14 EFAULT\n")
    (out / "demo.err").write_text("tracing openat2\n4 events, 0 lost\n")  # the summary is on stderr
    (out / "pytest.out").write_text("FAILED tests/test_sleepable.py::test_x - boom\n")


DOCTOR = {"headers": {"kind": "kheaders", "ok": True, "detail": "d"},
          "user_events": {"available": True}, "sleepable": {"tp.s": {"ok": False}, "fentry.s": {"ok": True},
                                                             "uprobe.s": {"ok": True}}}


def kernel(**kw: object) -> lane.Kernel:
    args = {"name": "6.12-tracer", "image": Path("/x"), "reason": "", "expect": ("user_events", "fentry.s"),
            "headers": "kheaders", "timeout": 100, **kw}
    return lane.Kernel(**args)  # type: ignore[arg-type]


def test_parse_junit(tmp_path: Path) -> None:
    (tmp_path / "j.xml").write_text(JUNIT)
    totals, by_file, outcomes = lane.parse_junit(tmp_path / "j.xml")
    assert totals == {"passed": 1, "failed": 1, "skipped": 1, "errors": 1}
    assert by_file["tests/test_sleepable.py"] == {"passed": 0, "failed": 1, "skipped": 1, "errors": 0}
    assert outcomes["tests/test_user_events_live.py::test_end_to_end_user_events"] == "passed"


def test_a_kernel_must_show_its_features(tmp_path: Path) -> None:
    k = kernel(must_pass=("tests/test_user_events_live.py::test_end_to_end_user_events",
                          "tests/test_sleepable.py::test_live_sleepable_syscall_reads"))
    guest_output(tmp_path, DOCTOR)
    res = lane.Result(k)
    lane.read_results(k, tmp_path, res)
    assert res.boot == 13.2 and res.steps["pytest"] == (1, 600.2) and res.release == "6.12.117"
    assert res.problems == [
        "pytest exited 1: FAILED tests/test_sleepable.py::test_x - boom",
        "tests/test_sleepable.py::test_live_sleepable_syscall_reads: skipped (must run and pass on this kernel)"]
    bad = {**DOCTOR, "headers": {"kind": "generic", "ok": True, "detail": "other kernel"},
           "user_events": {"available": False}}
    guest_output(tmp_path, bad, steps="doctor 0 1\n")
    res = lane.Result(k)
    lane.read_results(k, tmp_path, res)
    assert "doctor: headers generic (expected kheaders): other kernel" in res.problems
    assert "doctor: user_events expected on this kernel but not available" in res.problems
    assert {"demo did not finish", "pytest did not finish"} <= set(res.problems)
    (tmp_path / "steps").write_text("booted 1\ndoctor 0 1\ndemo 0 1\npytest 0 1\n")
    (tmp_path / "demo.err").write_text("3 events, 1 lost\n")
    res = lane.Result(k)
    lane.read_results(k, tmp_path, res)
    assert "demo: output lacks '4 events, 0 lost'" in res.problems


def test_a_vm_that_ends_mid_run_says_where_and_why(tmp_path: Path) -> None:
    """The guest script never finished pytest (the 6.12 VM once powered off during the last test): the lane
    names the test pytest -v had started and quotes the kernel's last messages from the --verbose console."""
    guest_output(tmp_path, DOCTOR, steps="doctor 0 30\ndemo 0 20\n")
    (tmp_path / "pytest.out").write_text(
        "tests/test_trace_live.py::test_clean_detach_and_exit[sigterm] PASSED      [ 98%]\n"
        "tests/test_trace_live.py::test_session_close_releases_everything_in_process ")
    (tmp_path / "console.log").write_text(
        "$ vng ...\n[    6.08] virtme-ng-init: starting script\nlane guest: doctor exit 0\n"
        "[  540.10] Out of memory: Killed process 812 (python)\n[  541.20] Kernel panic - not syncing: x\n")
    k = kernel()
    res = lane.Result(k)
    lane.read_results(k, tmp_path, res)
    assert ("pytest did not finish (last test it started: "
            "tests/test_trace_live.py::test_session_close_releases_everything_in_process)") in res.problems
    assert lane.ended_early(res, 0, tmp_path) == (
        "the VM ended before the guest script did (vng exit 0); the kernel's last messages: Out of memory: "
        "Killed process 812 (python) | Kernel panic - not syncing: x")
    (tmp_path / "console.log").write_text("$ vng ...\n[    6.08] virtme-ng-init: starting script\n[  9.5] reboot: "
                                          "Power down\nlane guest: doctor exit 0\n")
    assert lane.ended_early(res, 3, tmp_path) == (
        "the VM ended before the guest script did (vng exit 3); the kernel's last messages: [    6.08] "
        "virtme-ng-init: starting script | [  9.5] reboot: Power down")
    (tmp_path / "steps").write_text("booted 1\ndoctor 0 1\ndemo 0 1\npytest 0 1\n")
    res = lane.Result(k)
    lane.read_results(k, tmp_path, res)
    assert lane.ended_early(res, 0, tmp_path) is None


def test_tcg_runs_both_vcpus_on_one_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Multi-threaded TCG panics the guest when it patches code another vCPU runs (lane.TCG_ACCEL): under TCG
    the VM runs single-threaded; with KVM, QEMU's own defaults."""
    monkeypatch.delenv("TRACER_VM_KVM", raising=False)
    cmd = lane.vng_command(kernel(), tmp_path)
    assert "--disable-kvm" in cmd and "--qemu-opts=-accel tcg,thread=single" in cmd and "--verbose" in cmd
    monkeypatch.setenv("TRACER_VM_KVM", "1")
    assert not {"--disable-kvm", "--qemu-opts=-accel tcg,thread=single"} & set(lane.vng_command(kernel(), tmp_path))


def test_never_booted(tmp_path: Path) -> None:
    res = lane.Result(kernel())
    lane.read_results(kernel(), tmp_path, res)
    assert res.problems == ["the VM never ran the lane's guest script (see console.log)"]


def test_table(tmp_path: Path) -> None:
    guest_output(tmp_path, DOCTOR)
    res = lane.Result(kernel(), seconds=700)
    lane.read_results(kernel(), tmp_path, res)
    text = lane.table([res])
    head, _, row = text.splitlines()[:3]
    assert head.split() == ["kernel", "release", "headers", "user_events", "fentry.s", "uprobe.s", "tp.s", "demo",
                            "passed", "failed", "skipped", "errors", "boot", "s", "total", "s", "cpu", "s",
                            "verdict"]
    assert row.split() == ["6.12-tracer", "6.12.117", "kheaders", "yes", "yes", "yes", "no", "ok", "1", "1", "1",
                           "1", "13", "700", "0", "FAIL"]
    assert "tests/test_sleepable.py" in text and "0/1/1/0" in text


def test_missing_lane_skips_outside_ci_fails_in_ci(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(lane, "kernels", lambda full: [kernel(image=None, reason="/nowhere/bzImage not found")])
    monkeypatch.setattr(lane, "CI", False)
    assert lane.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("lane: skipped (6.12-tracer: /nowhere/bzImage not found")
    monkeypatch.setattr(lane, "CI", True)
    assert lane.main([]) == 1
    assert "FAILED, the VM lane cannot run under CI=true" in capsys.readouterr().out


def test_budget_used_up_is_a_failure(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    monkeypatch.setattr(lane, "kernels", lambda full: [kernel()])
    monkeypatch.setattr(lane.tempfile, "mkdtemp", lambda prefix: str(tmp_path))
    monkeypatch.setattr(lane, "BUDGET", 60)
    monkeypatch.setattr(lane.shutil, "which", lambda name, path=None: f"/usr/bin/{name}")
    monkeypatch.setattr(lane, "run_kernel", lambda k, base: pytest.fail("no VM may boot without budget"))
    assert lane.main([]) == 1
    out = capsys.readouterr().out
    assert "6.12-tracer: not run: the lane's 1-minute budget is used up" in out and "FAIL" in out
