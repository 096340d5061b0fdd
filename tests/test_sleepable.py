"""Sleepable programs: the read-mode choice for syscalls and uprobes, the loader of bcc-compiled
instructions (BPF_F_SLEEPABLE, kfunc calls, verifier log tail on refusal), the sleepable syscall readers
of bpf/trace.bpf.c (tp.s, fentry.s) and their records' decoding.

Kernels differ: 6.18 refuses fentry.s with EPERM, Debian's 6.1 and 6.12 with EINVAL (no error injection),
the VM lane's 6.12 kernel accepts it. The readers are compiled and shown to pass the sleepable verifier as
sleepable kprobe programs (uprobe.s, which every supported kernel has); where the kernel refuses tp.s or
fentry.s, tracer must report the refusal as the kernel's probe answer was (errno, verifier log), never a
constant; where it accepts one, the end-to-end sleepable read runs (the VM lane expects it there).
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_feature, require, scaled, workload_env, workload_reports
from test_decode import FNAME, HOW_BYTES, OPENAT2, TABLE, Data, ok_how, openat2_rec, slot

from tracer import attach, bpfload, bpfsys, btf, layout, sleepable
from tracer.decode import Decoder
from tracer.errors import EnvironmentProblem, LoadError, UsageError
from tracer.events import UNVERIFIED
from tracer.layout import const

ROOT = Path(__file__).resolve().parent.parent
REFUSED = {"tp.s": {"ok": False, "reason": "EINVAL: no sleepable tracepoints"},
           "fentry.s": {"ok": False, "reason": "EPERM"}, "uprobe.s": {"ok": True, "reason": "loaded"}}


def syscall_mode(requested: str, kinds: dict[str, dict]) -> str:
    return sleepable.read_mode(requested, "syscalls", lambda: kinds)


def test_syscall_read_mode_choice() -> None:
    assert syscall_mode("auto", REFUSED) == "nofault"
    assert syscall_mode("nofault", REFUSED) == "nofault"
    with pytest.raises(EnvironmentProblem, match=r"^--read-mode sleepable: no sleepable reader for syscalls loads on "
                                                 r"this kernel \(tp\.s: EINVAL: no sleepable tracepoints; fentry\.s: "
                                                 r"EPERM\); use --read-mode auto or nofault$"):
        syscall_mode("sleepable", REFUSED)
    tp = {**REFUSED, "tp.s": {"ok": True, "reason": "loaded"}}
    fentry = {**REFUSED, "fentry.s": {"ok": True, "reason": "loaded"}}
    both = {**tp, "fentry.s": fentry["fentry.s"]}
    for mode in ("auto", "sleepable"):  # auto = the best available; tp.s reads at entry in one program
        assert syscall_mode(mode, tp) == "tp.s"
        assert syscall_mode(mode, fentry) == "fentry.s"
        assert syscall_mode(mode, both) == "tp.s"
    assert syscall_mode("nofault", both) == "nofault"


def test_one_read_mode_decision_for_syscalls_and_uprobes() -> None:
    """The same rules and the same refusal text for both; the kernel is asked only when a sleepable
    reader may be used; a mode that is none of auto/sleepable/nofault is a usage error."""
    asked = []

    def kinds() -> dict[str, dict]:
        asked.append(1)
        return REFUSED

    assert sleepable.read_mode("nofault", "uprobes", kinds) == "nofault" and not asked
    assert sleepable.read_mode("auto", "uprobes", kinds) == "uprobe.s" and asked
    no = {**REFUSED, "uprobe.s": {"ok": False, "reason": "refused with EINVAL"}}
    assert sleepable.read_mode("auto", "uprobes", lambda: no) == "nofault"
    with pytest.raises(EnvironmentProblem) as up:
        sleepable.read_mode("sleepable", "uprobes", lambda: no)
    with pytest.raises(EnvironmentProblem) as sc:
        sleepable.read_mode("sleepable", "syscalls", lambda: no)
    assert str(up.value) == ("--read-mode sleepable: no sleepable reader for uprobes loads on this kernel "
                             "(uprobe.s: refused with EINVAL); use --read-mode auto or nofault")
    assert str(sc.value).replace("syscalls", "uprobes").split(" (")[0] == str(up.value).split(" (")[0]
    with pytest.raises(UsageError, match="--read-mode 'fast': one of auto, sleepable, nofault"):
        sleepable.read_mode("fast", "syscalls", kinds)


def test_kfunc_placeholder_calls_resolved() -> None:
    """Calls of bpf/reads.h's placeholder helper become kfunc calls (src_reg 2, imm = BTF id); a helper call
    and a 64-bit load whose second half holds the same number are left alone."""
    (holder, name), = bpfload.kfunc_placeholders().items()
    assert name == "bpf_copy_from_user_str" and holder == 0x7FF0
    insn = struct.Struct("<BBhi")
    prog = (insn.pack(0x18, 0x01, 0, 0) + insn.pack(0, 0, 0, holder)  # r1 = holder << 32 (ld_imm64)
            + insn.pack(0x85, 0, 0, holder) + insn.pack(0x85, 0, 0, 6) + insn.pack(0x95, 0, 0, 0))
    out = bpfload.resolve_kfuncs(prog, {"bpf_copy_from_user_str": 4242}.__getitem__)
    assert out[:16] == prog[:16] and out[24:] == prog[24:]
    assert insn.unpack_from(out, 16) == (0x85, bpfload.BPF_PSEUDO_KFUNC_CALL << 4, 0, 4242)


def test_reader_selection_and_fentry_attr(monkeypatch: pytest.MonkeyPatch) -> None:
    """fentry.s readers: one per syscall that reads at entry, loaded as BPF_PROG_TYPE_TRACING with
    expected_attach_type BPF_TRACE_FENTRY and the BTF id of __x64_sys_<name>; a refusal closes what was
    loaded and raises LoadError."""
    require(btf.VMLINUX.exists(), "kernel BTF (/sys/kernel/btf/vmlinux)")
    calls: list[dict] = []

    def refuse(prog_type: int, insns: bytes, **kw: object) -> int:
        calls.append({"prog_type": prog_type, **kw})
        raise bpfsys.BpfError(errno.EPERM, "BPF_PROG_LOAD: Operation not permitted")

    monkeypatch.setattr(bpfsys, "prog_load", refuse)
    exit_group, accept4 = TABLE[231], TABLE[288]
    assert [attach.SleepableSyscalls.wanted(s) for s in (OPENAT2, exit_group, accept4)] == [True, False, False]
    with pytest.raises(LoadError, match=r"sleepable program sys_fentry_s refused: .*\(EPERM\)"):
        attach.SleepableSyscalls("fentry.s", [exit_group, OPENAT2], lambda fn: bytes(16))
    (call,) = calls
    assert call["prog_type"] == bpfsys.BPF_PROG_TYPE_TRACING and call["prog_flags"] == bpfsys.BPF_F_SLEEPABLE
    assert call["expected_attach_type"] == bpfsys.BPF_TRACE_FENTRY == 24
    assert call["attach_btf_id"] == btf.func_id("__x64_sys_openat2") > 0
    attr = bpfsys.pack_prog_load_attr(call["prog_type"], 2, 0, 0, prog_flags=call["prog_flags"],
                                      expected_attach_type=call["expected_attach_type"],
                                      attach_btf_id=call["attach_btf_id"], prog_name=call["prog_name"])
    assert struct.unpack_from("<I", attr, 68)[0] == 24
    assert struct.unpack_from("<I", attr, 108)[0] == call["attach_btf_id"]
    calls.clear()
    with pytest.raises(LoadError, match="sys_enter_s_4 refused"):
        attach.SleepableSyscalls("tp.s", [OPENAT2], lambda fn: bytes(16))
    assert calls[0]["prog_type"] == bpfsys.BPF_PROG_TYPE_TRACEPOINT and calls[0]["attach_btf_id"] == 0
    with pytest.raises(ValueError, match="reader kind"):
        attach.SleepableSyscalls("lsm.s", [OPENAT2], lambda fn: b"")


# --- decoding records whose reads a sleepable program made ----------------------------------------

RSRC_SLEEPABLE, RSRC_FAULTED_IN, RF_SLEEPABLE = const("RSRC_SLEEPABLE"), const("RSRC_FAULTED_IN"), const("RF_SLEEPABLE")
RS_OK, RS_FAULT, RS_NONE = const("RS_OK"), const("RS_FAULT"), const("RS_NONE")
RK_STR = const("RK_STR")


def with_src(raw: bytes, src: int) -> bytes:
    off = layout.struct_of("read_slot").field("src").offset
    return raw[:off] + bytes([src]) + raw[off + 1:]


def test_decode_sleepable_reads() -> None:
    """Through the fast decoder and the reference one alike: a value a sleepable copy faulted in says
    source "sleepable" and faulted_in (with where the address lives); a failed sleepable copy that the exit
    re-read recovered says so; one that nothing could read is missing, source "sleepable"."""
    regions: list[tuple[int, int]] = []

    def explain(pid: int, addr: int) -> dict:
        regions.append((pid, addr))
        return {"kind": "file"}

    d = Data()
    f = d.add(b"/etc/hostname")
    faulted_in = with_src(slot(1, RK_STR, RS_OK, RS_OK, enter=f, exit=(0, f[1]), same=1),
                          RSRC_SLEEPABLE | RSRC_FAULTED_IN)
    recs = {
        "faulted_in": openat2_rec(faulted_in, ok_how(d), d, flags=4 | RF_SLEEPABLE),
        # tp.s: every read is the sleepable program's; this one needed no fault
        "plain": openat2_rec(with_src(slot(1, RK_STR, RS_OK, RS_NONE, enter=f), RSRC_SLEEPABLE),
                             with_src(slot(2, const("RK_OPEN_HOW"), RS_OK, RS_NONE, enter=d.add(HOW_BYTES), want=24),
                                      RSRC_SLEEPABLE), d, flags=RF_SLEEPABLE),
        "recovered": openat2_rec(with_src(slot(1, RK_STR, RS_FAULT, RS_OK, eerr=-14, exit=f), RSRC_SLEEPABLE),
                                 ok_how(d), d, flags=4 | RF_SLEEPABLE),
        "missing": openat2_rec(with_src(slot(1, RK_STR, RS_FAULT, RS_FAULT, eerr=-14, xerr=-14), RSRC_SLEEPABLE),
                               ok_how(d), d, flags=4 | RF_SLEEPABLE),
    }
    dec = Decoder(TABLE, explain)
    ev = {k: dec.decode(r, 0) for k, r in recs.items()}
    assert ev == {k: dec.decode_generic(r, 0) for k, r in recs.items()}
    assert ev["faulted_in"]["args"]["filename"] == "/etc/hostname" and ev["faulted_in"]["missing"] == []
    assert ev["faulted_in"]["reads"]["filename"] == {
        "status": "ok", "source": "sleepable", "errno": None, "addr": FNAME, "len": 13, "verified_at_exit": True,
        "verified": True, "verified_by": "enter_exit_equal", "faulted_in": True, "region": {"kind": "file"}}
    assert ev["faulted_in"]["reads"]["how"]["source"] == "enter"  # the nofault entry read made that one
    assert ev["plain"]["reads"]["filename"] == {"status": "ok", "source": "sleepable", "errno": None,
                                                "addr": FNAME, "len": 13, "verified": False,
                                                "unverified_reason": UNVERIFIED["no_exit"]}
    assert ev["plain"]["reads"]["how"]["source"] == "sleepable" and ev["plain"]["args"]["how"]["resolve"] == 8
    assert ev["recovered"]["reads"]["filename"] == {
        "status": "recovered", "source": "exit", "errno": 14, "addr": FNAME, "len": 13, "region": {"kind": "file"},
        "verified": False, "unverified_reason": UNVERIFIED["recovered"]}
    assert ev["missing"]["args"]["filename"] is None and ev["missing"]["missing"] == ["filename"]
    assert ev["missing"]["reads"]["filename"] == {"status": "missing", "source": "sleepable", "errno": 14,
                                                  "addr": FNAME, "exit_errno": 14, "region": {"kind": "file"},
                                                  "verified": False, "unverified_reason": UNVERIFIED["missing"]}
    assert regions == [(42, FNAME)] * 6  # three reads, each decoded by both decoders


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


def refusal_said(res: dict, err: bpfsys.BpfError, message: str) -> None:
    """A LoadError's message for a kind the probe saw refused: the kernel's errno by name, the probe's errno,
    and the verifier log's last lines (or that it was empty)."""
    assert err.errno == res["errno"], (err, res)
    assert f"({errno.errorcode[err.errno]})" in message
    tail = err.log_tail(6)
    if tail:
        assert f"verifier log ends: {' | '.join(tail)}" in message
        if res["log_tail"]:  # the same program type refused for the same reason as the probe's
            assert res["log_tail"][-1] in tail
    else:
        assert "empty verifier log" in message


def test_syscall_sleepable_kinds_and_read_mode(kinds: dict[str, dict]) -> None:
    """The probes' results (checked against the kernel's own answers in test_caps) decide --read-mode auto."""
    for kind in attach.SYSCALL_KINDS:
        res = kinds[kind]
        assert isinstance(res["ok"], bool), res
        if not res["ok"] and res["errno"]:
            assert errno.errorcode[res["errno"]] in res["reason"]
    best = next((k for k in attach.SYSCALL_KINDS if kinds[k]["ok"]), "nofault")
    assert syscall_mode("auto", kinds) == best


def test_cli_sleepable_mode_refused_auto_falls_back(bpf_env, kinds: dict[str, dict]) -> None:
    if kinds["tp.s"]["ok"] or kinds["fentry.s"]["ok"]:
        pytest.skip("this kernel has sleepable syscall programs: the refusal cannot be shown here")
    run = [sys.executable, "-m", "tracer", "trace", "getpid", "--json", "--no-summary"]
    refused = subprocess.run([*run, "--read-mode", "sleepable", "--", "true"], cwd=ROOT, capture_output=True,
                             text=True, timeout=scaled(120))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1
    for kind in attach.SYSCALL_KINDS:  # each kind's refusal as the probe saw it
        assert f"{kind}: {kinds[kind]['reason']}" in refused.stderr
    auto = subprocess.run([*run, "--read-mode", "auto", "--", "true"], cwd=ROOT, capture_output=True, text=True,
                          timeout=scaled(120))
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
    insns = bpfload.compiled_insns(compiled, "up_enter_s_0")
    assert len(insns) % 8 == 0 and len(insns) > 100 * 8
    fd = bpfload.load_compiled(compiled, "up_enter_s_0", kprobe, sleepable=True)
    try:
        info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        assert re.search(r"prog_type:\s+2\b", info)
    finally:
        os.close(fd)
    # The return program writes to a perf event array: refused as sleepable, with the verifier's words.
    with pytest.raises(LoadError) as e:
        bpfload.load_compiled(compiled, "up_ret_0", kprobe, sleepable=True)
    assert e.value.error.errno == errno.EINVAL
    assert any("Sleepable programs can only use" in line for line in e.value.log_tail)
    assert "\n" not in str(e.value) and "sleepable program up_ret_0 refused" in str(e.value)
    # The nofault entry twin never calls bpf_copy_from_user, so it loads as a plain program.
    os.close(bpfload.load_compiled(compiled, "up_enter_0", kprobe))
    with pytest.raises(KeyError, match="no_such_fn"):
        bpfload.compiled_insns(compiled, "no_such_fn")


# --- the sleepable syscall readers of bpf/trace.bpf.c ---------------------------------------------


@pytest.fixture(scope="module")
def readers(bpf_env, kinds: dict[str, dict]):
    """bpf/trace.bpf.c compiled by bcc with the sleepable readers in (nothing attached)."""
    from tracer.kenv import prepare_bcc
    from tracer.probes import SPEC

    prepare_bcc()
    from bcc import BPF

    from tracer.kenv import bpf_source

    b = BPF(src_file=str(bpf_source(SPEC.source)).encode(), cflags=[*SPEC.cflags, *attach.syscall_cflags()])
    yield b
    b.cleanup()


def test_syscall_readers_verified_and_refused_here(readers, kinds: dict[str, dict]) -> None:
    """The readers' bodies pass the sleepable verifier (loaded as sleepable kprobe programs: maps allowed in
    sleepable programs, kfunc calls resolved); as tp.s and fentry.s programs this kernel refuses them with
    its reason, through the loader tracer uses."""
    require(bool(kinds["uprobe.s"]["ok"]), f"sleepable uprobes: {kinds['uprobe.s']['reason']}")
    for fn in ("sys_enter_s_0", "sys_enter_s_4", "sys_enter_s_6", "sys_fentry_s"):
        os.close(bpfload.load_compiled(readers, fn, bpfsys.BPF_PROG_TYPE_KPROBE, sleepable=True))
    # The nofault entry program sends the records of syscalls that never return, on the BPF ring buffer: a
    # map sleepable programs may use too (a perf event array, the stream before, is not).
    os.close(bpfload.load_compiled(readers, "sys_enter_4", bpfsys.BPF_PROG_TYPE_KPROBE, sleepable=True))
    raw = bpfload.compiled_insns(readers, "sys_enter_s_4")
    insn = struct.Struct("<BBhi")
    calls = [insn.unpack_from(raw, i) for i in range(0, len(raw), 8) if raw[i] == 0x85]
    resolved = bpfload.resolve_kfuncs(raw)
    kcalls = [insn.unpack_from(resolved, i) for i in range(0, len(resolved), 8)
              if resolved[i] == 0x85 and resolved[i + 1] >> 4 == bpfload.BPF_PSEUDO_KFUNC_CALL]
    if bpfload.has_kfunc("bpf_copy_from_user_str"):  # 6.12+: strings copied by the kfunc
        assert kcalls and {c[3] for c in kcalls} == {btf.func_id("bpf_copy_from_user_str")}
        assert len(kcalls) == sum(c[3] == 0x7FF0 for c in calls)
    else:
        assert not kcalls
    insns = lambda fn: bpfload.compiled_insns(readers, fn)  # noqa: E731
    refused = [k for k in attach.SYSCALL_KINDS if not kinds[k]["ok"]]
    if not refused:
        pytest.skip("this kernel accepts tp.s and fentry.s: no refusal to show here")
    for kind, fn in (("tp.s", "sys_enter_s_4"), ("fentry.s", "sys_fentry_s")):
        if kind not in refused:
            continue
        with pytest.raises(LoadError) as e:
            attach.SleepableSyscalls(kind, [OPENAT2], insns)
        assert f"sleepable program {fn} refused" in str(e.value)
        refusal_said(kinds[kind], e.value.error, str(e.value))
        print(f"{kind}: {e.value}")


def test_live_sleepable_syscall_reads(bpf_env, build_c, kinds: dict[str, dict], tmp_path: Path) -> None:
    """End to end, where the kernel has tp.s or fentry.s: openat2 on an untouched file mapping is read at
    the call by the sleepable reader (faulting the page in), not recovered at exit."""
    usable = [k for k in attach.SYSCALL_KINDS if kinds[k]["ok"]]
    need_feature("fentry.s", bool(usable), "needs sleepable syscall programs; this kernel refuses them: "
                 + "; ".join(f"{k}: {kinds[k]['reason']}" for k in attach.SYSCALL_KINDS))
    cases = build_c("openat2_cases")
    proc = subprocess.run([sys.executable, "-m", "tracer", "trace", "openat2", "--json", "--no-summary",
                           "--read-mode", "sleepable", "--", str(cases), "untouched"], cwd=ROOT,
                          env={**os.environ, **workload_env(tmp_path)}, capture_output=True, text=True,
                          timeout=scaled(120))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    (report,) = workload_reports(proc.stderr)
    (ev,) = [x for x in lines if x.get("kind") == "syscall" and x["tid"] == report["tid"]]
    assert report["mapped_before"] == [0], "precondition: the mapping was not resident before the call"
    assert ev["ret"] == report["ret"] >= 0
    assert ev["args"]["filename"] == "/etc/hostname" and ev["missing"] == []
    assert ev["args"]["how"]["flags"] == os.O_RDONLY | os.O_CLOEXEC and ev["args"]["how"]["resolve"] == 4
    page = os.sysconf("SC_PAGE_SIZE")
    region = {"kind": "file", "start": report["filename"], "end": report["filename"] + page, "perms": "r--p",
              "path": report["file"]}
    assert ev["reads"]["filename"] == {
        "status": "ok", "source": "sleepable", "errno": None, "addr": report["filename"], "len": 13,
        "verified_at_exit": True, "faulted_in": True, "region": {**region, "file_offset": 0},
        # read at the call, the same bytes at exit, and the name of the very file the kernel opened
        "verified": True, "verified_by": "opened_file", "opened_match": "same"}
    how = ev["reads"]["how"]
    assert how["status"] == "ok" and how["source"] == "sleepable" and how["len"] == how["size"] == 24


def test_probes_hook_refusal_releases_everything(bpf_env, kinds: dict[str, dict]) -> None:
    """SyscallProbes with a sleepable reader kind this kernel refuses: LoadError with the kernel's reason,
    and every fd the half-built session held (programs, maps, rings, perf events) is closed again."""
    from tracer import syscalls
    from tracer.probes import Filters, SyscallProbes

    if kinds["fentry.s"]["ok"]:
        pytest.skip("this kernel accepts fentry.s: the refusal cannot be shown here")
    openat2 = syscalls.by_nr()[437]
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(LoadError, match=r"sys_fentry_s refused: ") as e:
        SyscallProbes([openat2], Filters(pids=[os.getpid()]), pages=8, sleepable_kind="fentry.s")
    refusal_said(kinds["fentry.s"], e.value.error, str(e.value))
    assert set(os.listdir("/proc/self/fd")) <= before
