"""Sleepable programs: the read-mode choice for syscalls and uprobes, the loader of bcc-compiled
instructions (BPF_F_SLEEPABLE, verifier log tail on refusal) and, on this kernel, the refusal of
sleepable syscall programs (tp.s, fentry.s) with the kernel's reason and the fallback of auto mode.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from tracer import bpfsys, sleepable
from tracer.kenv import EnvironmentProblem

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_KERNEL = re.match(r"6\.18\.", os.uname().release) is not None
REFUSED = {"tp.s": {"ok": False, "reason": "EINVAL: no sleepable tracepoints"},
           "fentry.s": {"ok": False, "reason": "EPERM"}, "uprobe.s": {"ok": True, "reason": "loaded"}}


def test_syscall_read_mode_choice() -> None:
    assert sleepable.syscall_read_mode("auto", REFUSED) == "nofault"
    assert sleepable.syscall_read_mode("nofault", REFUSED) == "nofault"
    with pytest.raises(EnvironmentProblem, match=r"tp\.s: EINVAL: no sleepable tracepoints; fentry\.s: EPERM"):
        sleepable.syscall_read_mode("sleepable", REFUSED)
    with pytest.raises(EnvironmentProblem, match=r"accepts tp\.s, but"):
        sleepable.syscall_read_mode("sleepable", {**REFUSED, "tp.s": {"ok": True, "reason": "loaded"}})


def test_sleepable_flag_packed() -> None:
    """The loader's attr: BPF_F_SLEEPABLE in prog_flags (offset 44), a KPROBE program with no BTF target."""
    attr = bpfsys.pack_prog_load_attr(bpfsys.BPF_PROG_TYPE_KPROBE, 10, 0x1000, 0x2000,
                                      prog_flags=bpfsys.BPF_F_SLEEPABLE, prog_name="up_enter_s_0")
    assert struct.unpack_from("<II", attr, 0) == (2, 10)
    assert struct.unpack_from("<I", attr, 44)[0] == 16 and attr[48:60] == b"up_enter_s_0"
    assert struct.unpack_from("<I", attr, 68)[0] == 0 and struct.unpack_from("<I", attr, 108)[0] == 0


@pytest.fixture(scope="module")
def kinds() -> dict[str, dict]:
    from tracer import caps

    require(caps.is_privileged(), "root or CAP_BPF+CAP_PERFMON")
    return caps.sleepable_kinds()


def test_syscall_sleepable_kinds_refused_here(kinds: dict[str, dict]) -> None:
    """tp.s and fentry.s: refused with the kernel's reason on 6.18; their live paths are skipped here."""
    if kinds["tp.s"]["ok"] or kinds["fentry.s"]["ok"]:
        assert not REFERENCE_KERNEL, "the 6.18 reference kernel refuses both"
        pytest.skip(f"this kernel accepts tp.s={kinds['tp.s']['ok']} fentry.s={kinds['fentry.s']['ok']}: "
                    "sleepable syscall reads are not implemented yet")
    assert kinds["tp.s"]["errno"] == errno.EINVAL and "can be sleepable" in kinds["tp.s"]["reason"]
    assert kinds["fentry.s"]["errno"] == errno.EPERM
    assert sleepable.syscall_read_mode("auto", kinds) == "nofault"


def test_cli_sleepable_mode_refused_auto_falls_back(bpf_env, kinds: dict[str, dict]) -> None:
    if kinds["tp.s"]["ok"] or kinds["fentry.s"]["ok"]:
        pytest.skip("this kernel has sleepable syscall programs: the refusal cannot be shown here")
    run = [sys.executable, "-m", "tracer", "trace", "getpid", "--json", "--no-summary"]
    refused = subprocess.run([*run, "--read-mode", "sleepable", "--", "true"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "can be sleepable" in refused.stderr
    auto = subprocess.run([*run, "--read-mode", "auto", "--", "true"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert auto.returncode == 0, auto.stderr


@pytest.fixture(scope="module")
def compiled(bpf_env, kinds: dict[str, dict]):
    """bpf/uprobe.bpf.c compiled by bcc (nothing attached)."""
    from tracer.kenv import BPF_DIR, bpf_source, prepare_bcc

    prepare_bcc()
    from bcc import BPF

    b = BPF(src_file=str(bpf_source("uprobe.bpf.c")).encode(), cflags=[f"-I{BPF_DIR}", "-Wno-unused-function"])
    yield b
    b.cleanup()


def test_loader_sleepable_and_refusal_tail(compiled, kinds: dict[str, dict]) -> None:
    require(bool(kinds["uprobe.s"]["ok"]), "sleepable uprobes")
    kprobe = bpfsys.BPF_PROG_TYPE_KPROBE
    insns = sleepable.compiled_insns(compiled, "up_enter_s_0")
    assert len(insns) % 8 == 0 and len(insns) > 100 * 8
    fd = sleepable.load_compiled(compiled, "up_enter_s_0", kprobe, sleepable=True)
    try:
        info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        assert re.search(r"prog_type:\s+2\b", info)
    finally:
        os.close(fd)
    # The return program writes to a perf event array: refused as sleepable, with the verifier's words.
    with pytest.raises(sleepable.LoadError) as e:
        sleepable.load_compiled(compiled, "up_ret_0", kprobe, sleepable=True)
    assert e.value.error.errno == errno.EINVAL
    assert any("Sleepable programs can only use" in line for line in e.value.log_tail)
    assert "\n" not in str(e.value) and "sleepable program up_ret_0 refused" in str(e.value)
    # The nofault entry twin never calls bpf_copy_from_user, so it loads as a plain program.
    os.close(sleepable.load_compiled(compiled, "up_enter_0", kprobe))
    with pytest.raises(KeyError, match="no_such_fn"):
        sleepable.compiled_insns(compiled, "no_such_fn")
