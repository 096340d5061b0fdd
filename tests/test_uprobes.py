"""uprobe: event specs — spec parsing, symbol resolution (PIE, shared library, stripped, versions), record
decoding on synthesized records, and live runs on tests/workloads/uprobe_target.c: a sleepable uprobe reads
an argument in a never-touched file page that a nofault read of the same pointer cannot read.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import require, scaled, workload_env, workload_reports
from elftools.elf.elffile import ELFFile

from tracer import elfsyms, uprobes
from tracer.layout import const, struct_of

ROOT = Path(__file__).resolve().parent.parent
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
FN = "uprobe_target_fn"
FN_ARGS = "(int n, str s, buf[len] buf, long len):int"
TIMEOUT = scaled(120)  # covers bcc compiles: longer under emulation (TRACER_TIMEOUT_SCALE)


# --- spec parsing ------------------------------------------------------------------------------------


def test_parse_spec_types_names_and_ret() -> None:
    s = uprobes.parse_spec(f"uprobe:/x/y:{FN}(int n, str, buf[len] b, long len, buf[64], ptr):void")
    assert (s.path, s.symbol, s.ret) == ("/x/y", FN, "void")
    assert [(a.name, a.type, a.size, a.lenarg) for a in s.args] == [
        ("n", "int", 0, -1), ("arg1", "str", 0, -1), ("b", "buf", 0, 3), ("len", "long", 0, -1),
        ("arg4", "buf", 64, -1), ("arg5", "ptr", 0, -1)]
    assert s.reads == [1, 2, 4]
    bare = uprobes.parse_spec("uprobe:/lib/libc.so.6:openat@@GLIBC_2.4")
    assert (bare.path, bare.symbol, bare.args, bare.ret) == ("/lib/libc.so.6", "openat@@GLIBC_2.4", [], "long")


@pytest.mark.parametrize("spec, says", [
    ("uprobe:/x:f(int", "missing ')'"),
    ("uprobe:f(int)", "expected uprobe:PATH:SYMBOL"),
    ("uprobe:/x:f(float)", "argument 0 'float'"),
    ("uprobe:/x:f(int a, int a)", "names repeat"),
    ("uprobe:/x:f(buf[n])", "no integer argument named 'n'"),
    ("uprobe:/x:f(str n, buf[n])", "no integer argument named 'n'"),
    ("uprobe:/x:f(buf[0])", "1..65535"),
    ("uprobe:/x:f(int,int,int,int,int,int,int)", "at most 6"),
    ("uprobe:/x:f(str,str,str,str,str)", "at most 4 str/buf"),
    ("uprobe:/x:f(int):float", "only :RET"),
    ("uprobe:/x:f:void", ":RET needs an argument list before it, e.g. /x:f():void"),
])
def test_parse_spec_errors(spec: str, says: str) -> None:
    with pytest.raises(uprobes.SpecError, match=says.replace("(", r"\(").replace(")", r"\)")):
        uprobes.parse_spec(spec)


def test_read_mode_choice() -> None:
    """uprobes take their read mode from the one decision (tracer.sleepable.read_mode)."""
    from tracer.errors import EnvironmentProblem
    from tracer.sleepable import read_mode

    yes = {"uprobe.s": {"ok": True, "reason": "loaded"}}
    no = {"uprobe.s": {"ok": False, "reason": "refused with EINVAL"}}
    assert read_mode("auto", "uprobes", lambda: yes) == "uprobe.s"
    assert read_mode("auto", "uprobes", lambda: no) == "nofault"
    assert read_mode("nofault", "uprobes", lambda: yes) == "nofault"
    assert read_mode("sleepable", "uprobes", lambda: yes) == "uprobe.s"
    with pytest.raises(EnvironmentProblem, match="refused with EINVAL"):
        read_mode("sleepable", "uprobes", lambda: no)


# --- symbol resolution -------------------------------------------------------------------------------


def _expected_offset(path: str | Path, vaddr: int) -> int:
    """File offset of vaddr from the program headers, as `readelf -l` lists them (independent of elfsyms)."""
    out = subprocess.run(["readelf", "-lW", str(path)], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            off, va, filesz = int(f[1], 16), int(f[2], 16), int(f[4], 16)
            if va <= vaddr < va + filesz:
                return vaddr - va + off
    raise AssertionError(f"{vaddr:#x} in no LOAD segment of {path}")


def _nm(path: str | Path, *flags: str) -> dict[str, int]:
    out = subprocess.run(["nm", "--defined-only", *flags, str(path)], check=True, capture_output=True,
                         text=True).stdout
    return {f[2]: int(f[0], 16) for f in (line.split() for line in out.splitlines()) if len(f) == 3}


@pytest.fixture(scope="module")
def binutils() -> None:
    require(all(shutil.which(t) for t in ("nm", "readelf", "strip")), "binutils (nm, readelf, strip)")


@pytest.fixture(scope="module")
def pie(build_c) -> Path:
    return build_c("uprobe_target", "-fPIE", "-pie")


def test_resolve_pie(pie: Path, binutils) -> None:
    with open(pie, "rb") as f:
        assert ELFFile(f).header.e_type == "ET_DYN", "precondition: a PIE executable"
    r = elfsyms.resolve(str(pie), FN)
    vaddr = _nm(pie)[FN]
    assert (r.symbol, r.vaddr, r.table, r.path) == (FN, vaddr, ".symtab", str(pie))
    assert r.offset == _expected_offset(pie, vaddr) and r.size > 0


def test_resolve_stripped_uses_dynsym(pie: Path, tmp_path: Path, binutils, build_c) -> None:
    exported = build_c("uprobe_target", "-fPIE", "-pie", "-rdynamic")
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "--strip-all", "-o", str(stripped), str(exported)], check=True)
    r = elfsyms.resolve(str(stripped), FN)
    assert r.table == ".dynsym" and r.offset == _expected_offset(exported, _nm(exported)[FN])
    with pytest.raises(elfsyms.SymbolError, match=r"no function mapped in .*stripped: only exported"):
        elfsyms.resolve(str(stripped), "mapped")  # a static function: gone with .symtab
    bare = tmp_path / "bare"
    subprocess.run(["strip", "--strip-all", "-o", str(bare), str(pie)], check=True)
    with pytest.raises(elfsyms.SymbolError, match="no function"):
        elfsyms.resolve(str(bare), FN)


def test_resolve_shared_library_versions(binutils) -> None:
    require(Path(LIBC).exists(), LIBC)
    dyn = _nm(LIBC, "-D")
    r = elfsyms.resolve(LIBC, "openat")
    assert r.table == ".dynsym" and r.symbol.startswith("openat@@GLIBC_")
    assert r.vaddr == dyn[r.symbol] and r.offset == _expected_offset(LIBC, r.vaddr)
    assert elfsyms.resolve(LIBC, r.symbol) == r
    # realpath has a default version and an older hidden one at another address: both reachable by name.
    default = elfsyms.resolve(LIBC, "realpath")
    old = [n for n in dyn if n.startswith("realpath@") and not n.startswith("realpath@@")]
    assert default.symbol.startswith("realpath@@") and default.vaddr == dyn[default.symbol]
    for name in old:
        assert elfsyms.resolve(LIBC, name).vaddr == dyn[name] != default.vaddr
    with pytest.raises(elfsyms.SymbolError, match="IFUNC"):
        elfsyms.resolve(LIBC, "strlen")
    with pytest.raises(elfsyms.SymbolError, match="STT_OBJECT, not a function"):
        elfsyms.resolve(LIBC, "stdout")


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(elfsyms.SymbolError, match="is not an ELF file"):
        elfsyms.resolve("/etc/hostname" if os.path.exists("/etc/hostname") else __file__, "main")
    with pytest.raises(elfsyms.SymbolError, match="No such file"):
        elfsyms.resolve(str(tmp_path / "nope"), "main")
    assert elfsyms.split_version("a@@V1") == ("a", "V1", True)
    assert elfsyms.split_version("a@V1") == ("a", "V1", False) and elfsyms.split_version("a") == ("a", None, False)


# --- decoding, on synthesized records ----------------------------------------------------------------


def _record(probe: int, flags: int, regs: list[int], slots: list[tuple], data: bytes, ret: int,
            rflags: tuple = (0, 0, 0, 0)) -> bytes:
    st = struct_of("uprobe_record")
    buf = bytearray(st.field("data").offset + len(data))
    struct.pack_into("<HHHBB", buf, 0, const("REC_UPROBE"), len(buf), probe, len(slots), flags)
    struct.pack_into("<IIII", buf, st.field("pid").offset, 10, 11, 0, 0)
    struct.pack_into("<QQq", buf, st.field("ts_enter").offset, 100, 150, ret)
    struct.pack_into("<6Q", buf, st.field("args").offset, *regs)
    buf[st.field("comm").offset:st.field("comm").offset + 4] = b"prog"
    buf[st.field("rflags").offset:st.field("rflags").offset + 4] = bytes(rflags)
    slot = struct_of("read_slot")
    for k, (arg, kind, status, err, off, n, want) in enumerate(slots):
        struct.pack_into("<BBBBhhHHHHBBHI", buf, st.field("reads").offset + k * slot.size,
                         arg, kind, status, 0, err, 0, off, n, 0, 0, 0, 0, 0, want)
    buf[st.field("data").offset:] = data
    return bytes(buf)


def test_decode_statuses() -> None:
    spec = uprobes.parse_spec("uprobe:/x:f(int n, str s, buf[4] b, str t, str u):int")
    RS = {n: const(f"RS_{n}") for n in ("OK", "FAULT", "TRUNC", "NULL")}
    data = b"hi\0" + b"\x01\x02\x03\x04" + b"\xff\xfe\0"
    slots = [(1, const("RK_STR"), RS["OK"], 0, 0, 2, 0), (2, const("RK_BUF"), RS["OK"], 0, 3, 4, 4),
             (3, const("RK_STR"), RS["FAULT"], -14, 7, 0, 0), (4, const("RK_STR"), RS["TRUNC"], 0, 7, 2, 0)]
    regs = [0xFFFFFFFF, 0x1000, 0x2000, 0x3000, 0x4000, 0]
    rec = _record(0, const("UPF_SLEEPABLE"), regs, slots, data, ret=0x1_FFFF_FFFE,
                  rflags=(const("URF_FAULTED_IN"), 0, 0, 0))
    spec.where = elfsyms.Resolved("/x", "f", 0x1100, 0x100, 8, ".symtab")
    seen = []
    ev = uprobes.decode_record(rec, 1, [spec], lambda pid, addr: seen.append((pid, addr)) or {"kind": "anon"})
    assert ev["kind"] == "uprobe" and ev["function"] == "f" and ev["offset"] == 0x100 and ev["cpu"] == 1
    assert (ev["pid"], ev["tid"], ev["comm"]) == (10, 11, "prog")
    assert (ev["ts"], ev["ts_exit"], ev["duration_ns"]) == (100, 150, 50)
    assert ev["ret"] == -2 and ev["ret_str"] == "-2"  # an int return: the register's upper half is not the value
    assert ev["args"] == {"n": -1, "s": "hi", "b": "01020304", "t": None, "u": "\udcff\udcfe"}
    assert ev["reads"]["s"] == {"status": "ok", "source": "sleepable", "errno": None, "addr": 0x1000, "len": 2,
                                "faulted_in": True}
    assert ev["reads"]["b"] == {"status": "ok", "source": "sleepable", "errno": None, "addr": 0x2000, "len": 4,
                                "size": 4}
    assert ev["reads"]["t"] == {"status": "missing", "source": "sleepable", "errno": 14, "addr": 0x3000,
                                "region": {"kind": "anon"}}
    assert ev["reads"]["u"]["status"] == "truncated" and ev["reads"]["u"]["hex"] == "fffe"
    assert ev["missing"] == ["t"] and seen == [(10, 0x3000)] and ev["source"] == "sleepable"
    null = uprobes.decode_record(_record(0, 0, [0] * 6, [(1, const("RK_STR"), RS["NULL"], 0, 0, 0, 0)], b"", 5),
                                 0, [uprobes.parse_spec("uprobe:/x:f(int, str s):void")])
    assert null["args"]["s"] is None and null["reads"]["s"]["status"] == "null"
    assert null["reads"]["s"]["source"] == "enter" and null["ret"] is None


# --- live: a sleepable and a nofault run of the same workload ----------------------------------------


def _run(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "tracer", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=TIMEOUT)
    try:
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()] + workload_reports(proc.stderr)
    except json.JSONDecodeError:
        pytest.fail(f"not JSON Lines:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc, lines


@pytest.fixture(scope="module")
def live(bpf_env, pie: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    from tracer import caps

    kinds = caps.sleepable_kinds()
    require(bool(kinds["uprobe.s"]["ok"]), f"sleepable uprobes: {kinds['uprobe.s']['reason']}")
    tmp = tmp_path_factory.mktemp("uprobes")
    target = f"uprobe:{pie}:{FN}{FN_ARGS}"
    libc = f"uprobe:{LIBC}:openat(int dfd, str path, int flags):int"
    jobs = {"sleepable": ["trace", "--json", "--read-mode", "sleepable", target, libc, "--", str(pie)],
            "nofault": ["trace", "--json", "--read-mode", "nofault", target, "--", str(pie)]}
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        futs = {k: pool.submit(_run, v, workload_env(tmp)) for k, v in jobs.items()}
        out = {k: f.result() for k, f in futs.items()}
    assert time.monotonic() - started < TIMEOUT
    return out


def _pairs(proc: subprocess.CompletedProcess, lines: list[dict], function: str) -> dict[str, tuple[dict, dict]]:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    reports = {x["case"]: x for x in lines if x.get("kind") == "workload"}
    events = [x for x in lines if x.get("kind") == "uprobe" and x["function"] == function]
    by_n = {ev["args"]["n"] if "n" in ev["args"] else ev["args"]["dfd"]: ev for ev in events}
    return {case: (r, by_n.get(r["n"])) for case, r in reports.items()}


def test_live_sleepable_reads_untouched_page(live) -> None:
    proc, lines = live["sleepable"]
    pairs = _pairs(proc, lines, FN)
    report, ev = pairs["untouched"]
    assert report["mapped_before"] == [0], "precondition: the page was not mapped before the call"
    assert report["mapped_after"] == [1], "the sleepable read faulted the page in (the function never touches it)"
    assert ev is not None, lines
    assert ev["source"] == "sleepable" and ev["pid"] == ev["tid"] == report["pid"]
    assert ev["comm"] == Path(ev["path"]).name[:15]
    assert ev["args"] == {"n": 2, "s": report["str"], "buf": report["buf_hex"], "len": report["len"]}
    assert ev["ret"] == report["ret"] == 1002
    assert ev["reads"]["s"] == {"status": "ok", "source": "sleepable", "errno": None, "addr": report["s"],
                                "len": len(report["str"]), "faulted_in": True}
    assert ev["reads"]["buf"] == {"status": "ok", "source": "sleepable", "errno": None, "addr": report["buf"],
                                  "len": 16, "size": 16}
    assert ev["missing"] == []
    report, ev = pairs["resident"]
    assert ev["args"] == {"n": 1, "s": "resident-string", "buf": "deadbeef00010203", "len": 8}
    assert "faulted_in" not in ev["reads"]["s"] and ev["reads"]["s"]["status"] == "ok"
    report, ev = pairs["null"]
    assert ev["args"] == {"n": 3, "s": None, "buf": None, "len": 0}
    assert {a: r["status"] for a, r in ev["reads"].items()} == {"s": "null", "buf": "null"}


def test_live_shared_library_probe(live) -> None:
    proc, lines = live["sleepable"]
    report, ev = _pairs(proc, lines, "openat")["openat"]
    assert ev is not None, lines
    assert ev["path"] == os.path.realpath(LIBC) and ev["offset"] == elfsyms.resolve(LIBC, "openat").offset
    assert ev["args"] == {"dfd": -100, "path": "/etc/hostname", "flags": report["len"]}
    assert ev["ret"] == report["ret"] >= 0
    assert ev["reads"]["path"] == {"status": "ok", "source": "sleepable", "errno": None, "addr": report["s"],
                                   "len": 13}
    kernel = next(x for x in lines if x.get("kind") == "summary")["kernel"]
    assert kernel["uprobe_emitted"] >= 4 and kernel["uprobe_submit_fail"] == 0


def test_live_nofault_cannot_read_untouched_page(live) -> None:
    proc, lines = live["nofault"]
    pairs = _pairs(proc, lines, FN)
    report, ev = pairs["untouched"]
    assert report["mapped_before"] == [0] and report["mapped_after"] == [0]
    assert ev["source"] == "nofault" and ev["ret"] == 1002
    assert ev["args"] == {"n": 2, "s": None, "buf": None, "len": 16}
    assert ev["missing"] == ["s", "buf"]
    for arg, off in (("s", 0), ("buf", 2048)):
        info = ev["reads"][arg]
        assert {k: v for k, v in info.items() if k != "region"} == {
            "status": "missing", "source": "enter", "errno": 14, "addr": report[arg]}
        assert info["region"]["kind"] == "file" and info["region"]["file_offset"] == off
        assert info["region"]["perms"] == "r--p"
    report, ev = pairs["resident"]
    assert ev["args"]["s"] == "resident-string" and ev["reads"]["s"]["source"] == "enter"
    assert not [x for x in lines if x.get("kind") == "uprobe" and x["function"] == "openat"]


# --- accounting: every call of a probed function delivered or counted lost ------------------------------


def test_live_recursive_calls_are_counted_not_lost_silently(bpf_env, pie: Path) -> None:
    """uprobe_recursive_fn(3) calls itself down to 0: records are per (thread, function), so each nested
    call replaces its caller's; the innermost is delivered and the 3 replaced ones are counted no_exit."""
    from tracer.session import Session

    with Session([f"uprobe:{pie}:uprobe_recursive_fn(int depth):int"], command=[str(pie), "recurse"]) as s:
        out = [ev.data for ev in s]
    summary = s.summary()
    assert s.exit_code == 0
    assert [(e["kind"], e.get("args"), e.get("ret")) for e in out if e["kind"] == "uprobe"] == [
        ("uprobe", {"depth": 0}, 0)]
    assert [(e["count"], e["reason"]) for e in out if e["kind"] == "lost"] == [(3, "no_exit")]
    assert summary["events"] + summary["lost"] == 4 and summary["kernel"]["uprobe_no_exit"] == 3


def in_pipe_read(pid: int) -> bool:
    """Blocked in read(2) on another fd than stdin (/proc/PID/syscall: number and arguments while blocked)."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    return fields[:1] == ["0"] and fields[1] != "0x0"


@pytest.mark.parametrize("killed", [False, True], ids=["running", "killed"])
def test_live_call_in_flight_when_tracing_stops_is_counted(bpf_env, pie: Path, killed: bool) -> None:
    """A -p process enters uprobe_block_fn after tracing started and never returns from it: at the end
    that call is in_flight_at_exit while its thread lives, no_exit once it was killed inside the function."""
    from tracer.session import Session

    proc = subprocess.Popen([str(pie), "block"], stdin=subprocess.PIPE)
    try:
        with Session([f"uprobe:{pie}:uprobe_block_fn(int fd):int"], pids=[proc.pid]) as s:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            deadline = time.monotonic() + TIMEOUT
            while not in_pipe_read(proc.pid):  # in the function, blocked
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            if killed:
                proc.kill()
                proc.wait()
            s.stop()
            out = [ev.data for ev in s]
        summary = s.summary()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
    reason = "no_exit" if killed else "in_flight_at_exit"
    assert out == [{"kind": "lost", "source": "uprobes", "cpu": None, "count": 1, "reason": reason}]
    assert summary["events"] == 0 and summary["lost"] == summary["lost_by_reason"][reason] == 1


def test_live_unknown_symbol_is_usage_error(bpf_env, pie: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tracer", "trace", f"uprobe:{pie}:no_such_fn(int)", "--", "true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "no function no_such_fn" in proc.stderr


def test_console_shows_buffers_as_hex_not_strings() -> None:
    """A buf[N] argument's value is the hex of its bytes; on the console it must not pass for a string."""
    import io

    from rich.console import Console

    from tracer.output import ConsoleOutput

    buf = io.StringIO()
    out = ConsoleOutput(Console(file=buf, width=300, color_system=None))
    out.event({"kind": "uprobe", "function": "f", "ts": 1, "comm": "w", "pid": 1, "tid": 1,
               "args": {"s": "7878", "b": "7878"}, "ret": 0, "ret_str": "0", "missing": [],
               "reads": {"s": {"status": "ok", "addr": 1, "len": 4},
                         "b": {"status": "ok", "addr": 2, "len": 2, "size": 2}}})
    line = buf.getvalue()
    assert 's="7878"' in line and "b=<hex 7878>" in line, line
