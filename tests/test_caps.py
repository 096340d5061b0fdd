"""Capability probing: bpf(2) attr packing, BTF parsing, the sleepable probes and the doctor report.

Kernel-dependent tests describe kernels, not one kernel: what a probe reports is compared with the kernel's
own answer to the same request (accepted, or refused with this errno and this verifier log), taken as data.
Capabilities every supported kernel has are required (a failure when CI=true); features only some kernels
have go through conftest.need_feature (a failure where the VM lane expects them).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import check_expected
from rich.console import Console

from tracer import bpfsys, btf, caps, doctor, kenv, sleepable
from tracer.caps import Check

CI = os.environ.get("CI") == "true"
RELEASE = os.uname().release


def require(present: bool, what: str) -> None:
    """A capability the reference kernel has: fail in CI, skip elsewhere, when missing."""
    if present:
        return
    if CI:
        pytest.fail(f"{what} is missing on {RELEASE} (CI=true: missing capabilities are failures)")
    pytest.skip(f"{what} is missing on {RELEASE}")


# --- bpf(2) wrapper, no kernel needed ---------------------------------------------------------------


def test_prog_load_attr_offsets() -> None:
    attr = bpfsys.pack_prog_load_attr(
        prog_type=26, insn_cnt=2, insns_addr=0x1111222233334444, license_addr=0x5555666677778888,
        log_level=1, log_size=4096, log_buf_addr=0x99990000AAAA0000, prog_flags=bpfsys.BPF_F_SLEEPABLE,
        prog_name="probe_x", expected_attach_type=bpfsys.BPF_TRACE_FENTRY, attach_btf_id=57019,
    )
    assert len(attr) >= 128

    def u32(off: int) -> int:
        return struct.unpack_from("<I", attr, off)[0]

    def u64(off: int) -> int:
        return struct.unpack_from("<Q", attr, off)[0]

    assert u32(0) == 26 and u32(4) == 2
    assert u64(8) == 0x1111222233334444 and u64(16) == 0x5555666677778888
    assert u32(24) == 1 and u32(28) == 4096 and u64(32) == 0x99990000AAAA0000
    assert u32(40) == 0  # kern_version
    assert u32(44) == 1 << 4
    assert attr[48:64] == b"probe_x".ljust(16, b"\0")
    assert u32(64) == 0  # prog_ifindex
    assert u32(68) == 24 and u32(108) == 57019
    # Everything we did not set stays zero: the kernel rejects unknown non-zero tail bytes.
    known = [(0, 40), (44, 64), (68, 72), (108, 112)]
    rest = bytearray(attr)
    for start, end in known:
        rest[start:end] = bytes(end - start)
    assert not any(rest)


def test_constants() -> None:
    assert (bpfsys.BPF_PROG_TYPE_KPROBE, bpfsys.BPF_PROG_TYPE_TRACEPOINT) == (2, 5)
    assert (bpfsys.BPF_PROG_TYPE_TRACING, bpfsys.BPF_PROG_TYPE_LSM) == (26, 29)
    assert bpfsys.BPF_TRACE_FENTRY == 24 and bpfsys.BPF_F_SLEEPABLE == 16


@pytest.mark.parametrize("name", ["sixteen_chars_xx", "bad-name", "sp ace"])
def test_prog_name_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="prog_name"):
        bpfsys.pack_prog_load_attr(5, 2, 0, 0, prog_name=name)


def test_return_zero_prog() -> None:
    # r0 = 0 (BPF_ALU64|BPF_MOV|BPF_K = 0xb7); exit (BPF_JMP|BPF_EXIT = 0x95)
    assert bpfsys.return_zero_prog() == bytes.fromhex("b700000000000000" "9500000000000000")


def test_bpf_error() -> None:
    log = "0: R1=ctx() R10=fp0\nsome reason here\nprocessed 0 insns (limit 1000000) max_states_per_insn 0\n\n"
    e = bpfsys.BpfError(errno.EINVAL, "BPF_PROG_LOAD: Invalid argument", log)
    assert isinstance(e, OSError) and e.errno == errno.EINVAL and e.verifier_log == log
    assert e.log_tail(1) == ["processed 0 insns (limit 1000000) max_states_per_insn 0"]
    assert e.log_tail(2)[0] == "some reason here" and e.log_tail(0) == []
    assert e.reason == "some reason here"
    assert "EINVAL" in str(e) and "some reason here" in str(e)
    assert bpfsys.BpfError(errno.EPERM, "x").reason == ""


# --- BTF ---------------------------------------------------------------------------------------------


def _synthetic_btf() -> tuple[bytes, dict[str, int]]:
    """A BTF blob holding one type of every kind, each with trailing data, and FUNCs after all of them."""
    strings = bytearray(b"\0")

    def name(s: str) -> int:
        off = len(strings)
        strings.extend(s.encode() + b"\0")
        return off

    def t(kind: int, vlen: int, size_or_type: int, nm: str = "", tail: bytes = b"") -> bytes:
        return struct.pack("<III", name(nm) if nm else 0, kind << 24 | vlen, size_or_type) + tail

    types = [
        t(1, 0, 4, "int", struct.pack("<I", 32)),  # 1 INT
        t(2, 0, 1),  # 2 PTR
        t(3, 0, 0, "", struct.pack("<III", 1, 1, 8)),  # 3 ARRAY
        t(4, 2, 8, "s", struct.pack("<III", name("a"), 1, 0) * 2),  # 4 STRUCT
        t(5, 3, 4, "u", struct.pack("<III", name("b"), 1, 0) * 3),  # 5 UNION
        t(6, 2, 4, "e", struct.pack("<Ii", name("E0"), 0) * 2),  # 6 ENUM
        t(7, 0, 0, "fwd"),  # 7 FWD
        t(8, 0, 1, "td"),  # 8 TYPEDEF
        t(9, 0, 1), t(10, 0, 1), t(11, 0, 2),  # 9-11 VOLATILE CONST RESTRICT
        t(13, 2, 1, "", struct.pack("<II", name("x"), 1) * 2),  # 12 FUNC_PROTO
        t(14, 0, 1, "var", struct.pack("<I", 1)),  # 13 VAR
        t(15, 1, 8, ".data", struct.pack("<III", 13, 0, 4)),  # 14 DATASEC
        t(16, 0, 8, "double"),  # 15 FLOAT
        t(17, 0, 4, "tag", struct.pack("<i", -1)),  # 16 DECL_TAG
        t(18, 0, 2, "ttag"),  # 17 TYPE_TAG
        t(19, 2, 8, "e64", struct.pack("<III", name("E1"), 1, 2) * 2),  # 18 ENUM64
        t(12, 1, 12, "first_func"),  # 19 FUNC (vlen = linkage)
        t(12, 0, 12, "second_func"),  # 20 FUNC
    ]
    type_sec = b"".join(types)
    header = struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(type_sec), len(type_sec), len(strings))
    return header + type_sec + bytes(strings), {"first_func": 19, "second_func": 20}


def test_btf_walk_skips_every_kind() -> None:
    blob, funcs = _synthetic_btf()
    parsed = btf.Btf(blob)
    assert len(parsed) == 20
    assert [parsed.type(i).kind for i in range(1, 21)] == [*range(1, 12), *range(13, 20), 12, 12]
    for fname, type_id in funcs.items():
        assert parsed.func_id(fname) == type_id
        assert parsed.type(type_id).name == fname and parsed.type(type_id).kind_name == "FUNC"
    assert parsed.type(4).name == "s" and parsed.type(4).vlen == 2
    with pytest.raises(KeyError):
        parsed.func_id("int")  # an INT, not a FUNC


def test_btf_rejects_garbage() -> None:
    blob, _ = _synthetic_btf()
    with pytest.raises(btf.BtfError, match="magic"):
        btf.Btf(b"\0" * 32)
    unknown_kind = bytearray(blob)
    struct.pack_into("<I", unknown_kind, 24 + 4, 25 << 24)  # first type's info: kind 25
    with pytest.raises(btf.BtfError, match="unknown BTF kind 25"):
        btf.Btf(bytes(unknown_kind))


def test_btf_live_openat2() -> None:
    require(btf.VMLINUX.exists(), str(btf.VMLINUX))
    type_id = btf.func_id("__x64_sys_openat2")
    found = btf.vmlinux().type(type_id)
    assert found.kind == btf.BTF_KIND_FUNC and found.name == "__x64_sys_openat2"
    assert btf.vmlinux().type(found.size_or_type).kind_name == "FUNC_PROTO"
    assert btf.vmlinux() is btf.vmlinux()  # parsed once per process
    if shutil.which("bpftool"):
        dump = subprocess.run(["bpftool", "btf", "dump", "file", str(btf.VMLINUX)], capture_output=True,
                              text=True, check=True).stdout
        assert f"[{type_id}] FUNC '__x64_sys_openat2'" in dump


# --- checks that read tracefs, against a fake root ---------------------------------------------------


@pytest.fixture
def fake_tracefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "events" / "syscalls" / "sys_enter_openat2").mkdir(parents=True)
    monkeypatch.setenv("TRACER_TRACEFS", str(tmp_path))
    return tmp_path


def test_checks_on_fake_tracefs(fake_tracefs: Path) -> None:
    assert caps.check_tracefs().ok is True
    assert caps.check_syscall_tracepoints().ok is True
    ue = caps.check_user_events()
    assert ue.ok is False and ue.fix
    (fake_tracefs / "user_events_data").touch()
    assert caps.check_user_events().ok is True
    (fake_tracefs / "events" / "syscalls" / "sys_enter_openat2").rmdir()
    assert caps.check_syscall_tracepoints().ok is False


def test_tracefs_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACER_TRACEFS", str(tmp_path))  # no events/: not a tracefs root
    assert caps.check_tracefs().ok is False
    assert caps.check_syscall_tracepoints().ok is None
    assert caps.check_user_events().ok is None


# --- sleepable cache ---------------------------------------------------------------------------------


def test_sleepable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake(kind: str):
        def probe() -> sleepable.Probe:
            calls.append(kind)
            return sleepable.Probe(kind == "uprobe.s", None if kind == "uprobe.s" else 22, kind, [])
        return probe

    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    monkeypatch.setattr(sleepable, "BOOT_ID", boot_id)
    monkeypatch.setattr(sleepable, "PROBES", {k: fake(k) for k in sleepable.KINDS})
    cache = tmp_path / "run" / "caps.json"

    first = sleepable.sleepable_kinds(cache=cache)
    assert len(calls) == 3 and first["uprobe.s"]["ok"] is True and first["tp.s"]["errno"] == 22
    stored = json.loads(cache.read_text())
    assert stored["boot_id"] == "boot-1" and stored["release"] == RELEASE
    assert sleepable.sleepable_kinds(cache=cache) == first and len(calls) == 3
    assert sleepable.sleepable_kinds(refresh=True, cache=cache) == first and len(calls) == 6
    boot_id.write_text("boot-2\n")  # a reboot invalidates the cache
    sleepable.sleepable_kinds(cache=cache)
    assert len(calls) == 9
    # Unprivileged: nothing probed, nothing cached.
    other = tmp_path / "other.json"
    skipped = sleepable.sleepable_kinds(privileged=False, cache=other)
    assert all(r["ok"] is None for r in skipped.values()) and not other.exists() and len(calls) == 9


# --- doctor ------------------------------------------------------------------------------------------

KINDS = {
    "tp.s": {"ok": False, "errno": 22, "reason": "refused [bold]x[/bold]", "log_tail": []},
    "fentry.s": {"ok": False, "errno": 1, "reason": "refused", "log_tail": []},
    "uprobe.s": {"ok": True, "errno": None, "reason": "loaded", "log_tail": []},
}


def _base(missing: str = "") -> list[Check]:
    keys = [*caps.REQUIRED, "btf", "lockdown", "user_events"]
    return [
        Check(k, k, k != missing and k != "user_events", "x", f"detail of {k} [red]", "do [this]")
        for k in keys
    ]


def _run(monkeypatch: pytest.MonkeyPatch, as_json: bool, missing: str = "") -> tuple[int, str]:
    monkeypatch.setattr(caps, "base_checks", lambda mount=False: _base(missing))
    monkeypatch.setattr(caps, "sleepable_kinds", lambda refresh=False: KINDS)
    out = io.StringIO()
    rc = doctor.doctor(as_json, Console(file=out, width=200, color_system=None))
    return rc, out.getvalue()


def test_doctor_json_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    rc, text = _run(monkeypatch, as_json=True)
    doc = json.loads(text)
    assert rc == 0 and doc["ok"] is True  # user_events and sleepable kinds missing are not failures
    assert doc["user_events"] == {"available": False, "reason": "detail of user_events [red]"}
    assert set(doc["sleepable"]) == {"tp.s", "fentry.s", "uprobe.s"}
    for res in doc["sleepable"].values():
        assert set(res) >= {"ok", "errno", "reason"}
    assert doc["sleepable"]["tp.s"] == {"ok": False, "errno": 22, "reason": "refused [bold]x[/bold]"}
    keys = [c["key"] for c in doc["checks"]]
    assert {*caps.REQUIRED, "user_events", "sleepable.uprobe.s"} <= set(keys)
    for c in doc["checks"]:
        assert set(c) >= {"key", "title", "ok", "verdict", "detail", "fix"}


@pytest.mark.parametrize("missing", caps.REQUIRED)
def test_doctor_fails_without_required(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    rc, text = _run(monkeypatch, as_json=True, missing=missing)
    assert rc == 1 and json.loads(text)["ok"] is False


def test_doctor_console(monkeypatch: pytest.MonkeyPatch) -> None:
    rc, text = _run(monkeypatch, as_json=False, missing="headers")
    assert rc == 1
    # Data is shown literally, never interpreted as rich markup.
    assert "detail of headers [red]" in text and "refused [bold]x[/bold]" in text
    assert "fix: do [this]" in text
    assert "detail of bcc [red]" in text and text.count("fix:") == 2 + 2  # headers, user_events, 2 refused


# --- live probes on this kernel ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    require(caps.is_privileged(), "root or CAP_BPF+CAP_PERFMON")
    fds_before = set(os.listdir("/proc/self/fd"))
    kinds = sleepable.sleepable_kinds(refresh=True, cache=tmp_path_factory.mktemp("caps") / "caps.json")
    assert set(os.listdir("/proc/self/fd")) <= fds_before, "a probe leaked a file descriptor"
    return kinds


def kernel_answer(prog_type: int, **kw: object) -> bpfsys.BpfError | None:
    """The kernel's own answer to loading `r0 = 0; exit` as a sleepable program: None when it accepts."""
    try:
        os.close(bpfsys.prog_load(prog_type, bpfsys.return_zero_prog(), prog_flags=bpfsys.BPF_F_SLEEPABLE,
                                  prog_name="test_answer", **kw))
    except bpfsys.BpfError as e:
        return e
    return None


def reported_as_refused(res: dict, answer: bpfsys.BpfError) -> None:
    """A probe result says what the kernel said: refused, its errno by name, its verifier log (or that
    there was none)."""
    assert res["ok"] is False and res["errno"] == answer.errno, res
    assert f"load refused with {errno.errorcode[answer.errno]}" in res["reason"]
    if answer.reason:
        assert f"verifier: {answer.reason}" in res["reason"] and res["log_tail"] == answer.log_tail(3)
    else:
        assert "empty verifier log" in res["reason"] and res["log_tail"] == []


def test_live_tp_s_as_the_kernel_says(probed: dict[str, dict]) -> None:
    tp = probed["tp.s"]
    answer = kernel_answer(bpfsys.BPF_PROG_TYPE_TRACEPOINT)
    check_expected("tp.s", answer is None, f"sleepable syscall tracepoints refused: {answer}")
    if answer is None:
        assert tp["ok"] is True or "attaching" in tp["reason"], tp
        return
    reported_as_refused(tp, answer)
    # The one refusal tracer explains in its own words: the program type cannot be sleepable at all.
    if "can be sleepable" in answer.reason:
        assert tp["reason"].endswith("This kernel has no sleepable tracepoint programs")


def test_live_fentry_s_as_the_kernel_says(probed: dict[str, dict]) -> None:
    fentry = probed["fentry.s"]
    require(btf.VMLINUX.exists(), str(btf.VMLINUX))
    answer = kernel_answer(bpfsys.BPF_PROG_TYPE_TRACING, expected_attach_type=bpfsys.BPF_TRACE_FENTRY,
                           attach_btf_id=btf.func_id(sleepable.FENTRY_TARGET))
    check_expected("fentry.s", answer is None, f"sleepable fentry refused: {answer}")
    if answer is None:
        assert fentry["ok"] is True or "attaching" in fentry["reason"], fentry
        return
    reported_as_refused(fentry, answer)
    config = kenv.kernel_config("CONFIG_FUNCTION_ERROR_INJECTION")
    said = {"y": "CONFIG_FUNCTION_ERROR_INJECTION=y here", None: "CONFIG_FUNCTION_ERROR_INJECTION: unknown here"}
    assert said.get(config, "CONFIG_FUNCTION_ERROR_INJECTION is not set here") in fentry["reason"]


def test_live_uprobe_s_accepted(probed: dict[str, dict]) -> None:
    uprobe = probed["uprobe.s"]
    require(bool(uprobe["ok"]), f"sleepable uprobe (uprobe.s): {uprobe['reason']}")
    assert uprobe["errno"] is None and "attached" in uprobe["reason"]


def test_live_user_events_as_the_kernel_is() -> None:
    check = caps.check_user_events()
    require(check.ok is not None, "tracefs")
    data = caps._tracefs() / "user_events_data"
    check_expected("user_events", data.exists(), check.detail)
    if data.exists():
        assert check.ok is True and check.detail == f"{data} present"
        return
    assert check.ok is False
    major, minor = map(int, re.match(r"(\d+)\.(\d+)", RELEASE).groups())
    config = kenv.kernel_config("CONFIG_USER_EVENTS")
    if (major, minor) < (6, 4):
        assert check.detail == f"needs Linux 6.4+; this kernel is {RELEASE}"
    elif config in ("y", "m"):
        assert check.detail == f"CONFIG_USER_EVENTS={config} but {data} is missing"
    else:
        assert check.detail == "kernel built without CONFIG_USER_EVENTS (Linux 6.4+)"


def test_live_syscall_tracing_ready() -> None:
    checks = {c.key: c for c in caps.base_checks()}
    for key in caps.REQUIRED:
        require(checks[key].ok is True, f"{key}: {checks[key].detail}")
