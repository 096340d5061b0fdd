"""user_events live. The writer-side watch also runs on a kernel without user_events, with a stand-in: a fake
tracefs root whose user_events_data is a regular file (a write with an unreadable payload fails with EFAULT
there too), so the watch's real BPF programs report discarded writes with the name null (never guessed).
Everything else needs CONFIG_USER_EVENTS and runs in the VM lane (6.12 kernel): end to end through the
Session API, register flags / unregister / delete, the CLI (list, trace, console, record, replay, export)
with plain and EventHeader events from a writer process, many events and writers at once."""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import need_feature

from tracer.caps import check_user_events


def test_watch_reports_discarded_writes_on_a_stand_in(bpf_env, build_c, tmp_path: Path) -> None:
    from tracer.user_events.decode import SampleDecoder
    from tracer.user_events.watch import Watch

    root = tmp_path / "tracefs"
    (root / "events").mkdir(parents=True)
    data = root / "user_events_data"
    data.write_text("")
    exe = build_c("uevents_writer")
    w = Watch(data, 16, lambda pid, tid: True)
    try:
        out = json.loads(subprocess.run([str(exe), str(data)], capture_output=True, text=True, check=True,
                                        timeout=30).stdout)
        assert (out["writev"], out["writev_errno"], out["write"], out["write_errno"]) == (-1, 14, -1, 14)
        evs: list[dict] = []
        for _ in range(20):
            w.collect()
            evs += [SampleDecoder([])(s, cr.cpu) for cr in w.cpu_rings for s in cr.pending]  # as the source does
            for cr in w.cpu_rings:
                cr.pending = []
            if len([e for e in evs if e["pid"] == out["pid"]]) >= 2:
                break
            time.sleep(0.05)
        mine = sorted((e for e in evs if e["pid"] == out["pid"]), key=lambda e: e["ts"])
        assert [e["syscall"] for e in mine] == ["writev", "write"]
        for e in mine:
            assert (e["kind"], e["status"], e["errno"], e["fd"]) == ("user_event", "discarded", 14, out["fd"])
            assert e["event"] is None and e["name"] is None and e["write_index"] is None
            assert e["recognised"] == "kernel"  # marked at openat of the configured path
        assert mine[0]["name_reason"] == "write_index unreadable: errno 14 at 0x1"
        assert mine[1]["name_reason"] == f"write_index unreadable: errno 14 at {out['page']:#x}"
        assert mine[1]["count"] == 16 and mine[0]["iovcnt"] == 2
        stats = w.kernel_stats()
        assert stats["watch_fds_opened"] >= 1 and stats["watch_faults"] >= 2
    finally:
        w.close()


def test_end_to_end_user_events(bpf_env) -> None:
    """Register, enable through perf (the writer's enable bit set, then cleared), write, decode; discarded
    writes of a registration made before tracing (name unknown: the watch never saw it, so the event says
    why) and of one made while tracing (named); bytes past the format reported."""
    check = check_user_events()
    need_feature("user_events", check.ok is True, f"{check.verdict}: {check.detail}")
    from tracer.session import Session
    from tracer.user_events.emitter import PayloadDiscarded, UserEvents
    from tracer.user_events.watch import kernel_walk

    name = f"tracer_e2e_{time.monotonic_ns() % 100000}"
    libc = ctypes.CDLL(None, use_errno=True)
    with UserEvents() as ue:
        ev = ue.register(f"{name} u32 n;__rel_loc char[] s")
        assert not ev.enabled
        with Session([f"user_events:{name}"], duration=2.0) as s:
            assert ev.enabled  # opening the perf events set the enable bit
            ev.write(n=7, s="hello")
            ev.write_payload(ev.encode(n=8, s="x") + b"\xde\xad")  # 2 bytes past the last field
            index = ctypes.c_uint32(ev.write_index)
            iov = (ctypes.c_uint64 * 4)(ctypes.addressof(index), 4, 1, 8)  # payload at address 1: EFAULT
            assert libc.writev(ue.fd, iov, 2) == -1 and ctypes.get_errno() == 14
            with UserEvents() as ue2:  # the same event registered again while tracing: the watch sees it
                again = ue2.register(f"{name} u32 n;__rel_loc char[] s")
                assert again.enabled
                again_index = ctypes.c_uint32(again.write_index)
                iov2 = (ctypes.c_uint64 * 4)(ctypes.addressof(again_index), 4, 1, 8)
                assert libc.writev(ue2.fd, iov2, 2) == -1 and ctypes.get_errno() == 14
                fd2 = ue2.fd
            with pytest.raises(PayloadDiscarded):  # a __rel_loc past the end: the kernel's validator refuses it
                ev.write_payload(struct.pack("<II", 7, 0xFFFF_0000))
            events = [e.data for e in s]
        assert not ev.enabled  # the tracer left: the kernel cleared the bit
        ok = [e for e in events if e.get("event") == f"user_events:{name}" and e["status"] != "discarded"]
        assert [(e["status"], e["fields"]) for e in ok] == [("ok", {"n": 7, "s": "hello"}),
                                                            ("extra_bytes", {"n": 8, "s": "x"})]
        assert ok[1]["extra_bytes"] == {"offset": 8 + 2, "length": 2, "hex": "dead"}
        assert all(e["pid"] == os.getpid() and e["comm"] for e in ok)
        bad = [e for e in events if e.get("status") == "discarded"]
        early = [e for e in bad if e["fd"] == ue.fd]
        assert len(early) == 2 and all(e["errno"] == 14 and e["write_index"] == ev.write_index for e in early)
        # Registered before tracing: the watch never saw the registration. Where the kernel's BTF and
        # kallsyms allow it, the watch reads the kernel's own write_index table (named_by "kernel");
        # elsewhere the name stays null with the reason.
        why = kernel_walk()[1]
        if why is None:
            assert all((e["event"], e["name"], e["named_by"]) == (f"user_events:{name}", name, "kernel") for e in early)
            assert all("name_reason" not in e for e in early)
        else:
            assert all(e["event"] is None and "registered before tracing started" in e["name_reason"]
                       and why in e["name_reason"] for e in early)
        named = [e for e in bad if e["fd"] == fd2]
        assert len(named) == 1 and named[0]["event"] == f"user_events:{name}"
        assert named[0]["name_args"] == f"{name} u32 n;__rel_loc char[] s" and "name_reason" not in named[0]
    # (not persistent: the kernel deletes the event itself once nothing references it)


# -- every user_events path on a kernel that has them (the VM lane's 6.12 kernel) ----------------------

REPO = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).parent / "workloads" / "uevents_emit.py"


def need_user_events() -> None:
    check = check_user_events()
    need_feature("user_events", check.ok is True, f"{check.verdict}: {check.detail}")


def tracer_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def writer_cmd(spec: dict) -> list[str]:
    return [sys.executable, str(WRITER), json.dumps(spec)]


def uniq(stem: str) -> str:
    return f"{stem}_{os.getpid()}_{time.monotonic_ns() % 100000}"


def test_register_persist_multi_format_unregister_delete(bpf_env) -> None:
    need_user_events()
    from tracer.kenv import tracefs_root
    from tracer.perf import perf_event_open
    from tracer.user_events import status
    from tracer.user_events.emitter import UserEventError, UserEvents
    from tracer.user_events.source import tracepoint_attr

    root = tracefs_root()
    names = lambda: {e["event"]: e for e in status.list_events(root)}  # noqa: E731
    p, m, u = uniq("tr_persist"), uniq("tr_multi"), uniq("tr_unreg")
    with UserEvents() as ue:
        ue.register(f"{p} u32 a", persist=True)
        ue.register(f"{m} u32 a", multi_format=True)
        ue.register(f"{m} u64 b;char[4] c", multi_format=True)  # same name, another format
        kept = ue.register(f"{u} u32 a")
        gone = ue.register(f"{u}_x u32 a")
        gone.unregister()  # the kernel stops updating its enable word
        with pytest.raises(UserEventError, match="EBUSY"):
            ue.delete(p)  # still registered here
        evs = names()
        multi = sorted((e for e in evs.values() if e["registered_name"] == m), key=lambda e: e["id"])
        assert [e["system"] for e in multi] == ["user_events_multi"] * 2
        assert [[f["type"] for f in e["fields"]] for e in multi] == [["u32"], ["u64", "char[4]"]]
        assert all(e["name"].startswith(f"{m}.") for e in multi)
        ids = {e["name"]: e["id"] for e in evs.values() if e["system"] == "user_events"}
        fds = [perf_event_open(tracepoint_attr(ids[n], 4096), -1, 0) for n in (u, f"{u}_x")]
        try:
            assert kept.enabled and not gone.enabled
            assert names()[f"user_events:{u}"]["enabled"]
        finally:
            for fd in fds:
                os.close(fd)
        assert not kept.enabled
    assert f"user_events:{p}" in names()  # PERSIST: still there after the last close
    with UserEvents() as ue:
        for _ in range(100):  # EBUSY was seen once right after the close (a reference not yet dropped): retry
            try:
                ue.delete(p)
                break
            except UserEventError as e:
                if "EBUSY" not in str(e):
                    raise
                time.sleep(0.05)
        with pytest.raises(UserEventError, match="ENOENT"):
            ue.delete(p)
    for _ in range(100):  # the others are removed by the kernel's deferred cleanup once unreferenced
        left = [e for e in names().values() if e["registered_name"] in (p, m, u, f"{u}_x")]
        if not left:
            break
        time.sleep(0.05)
    assert left == []


def test_cli_list_trace_console_record_replay_export(bpf_env, tmp_path: Path) -> None:
    need_user_events()
    from tracer.user_events.emitter import UserEvents

    name, prov = uniq("tr_cli"), uniq("TracerCli").replace("_", "")
    tp = f"{prov}_L4K1"
    spec = {"wait": 120, "plain": [{"name_args": f"{name} u32 n;__rel_loc char[] s",
                                    "values": {"n": 5, "s": "a\x1b[31m"}, "count": 3}],
            "eventheader": [{"provider": prov, "level": 4, "keyword": 1, "event": "Req", "count": 2, "activity": True,
                             "opcode": 1},
                            {"provider": prov, "level": 4, "keyword": 1, "event": "ReqBE", "count": 1,
                             "order": "big"}]}
    specs = [f"user_events:{name}", f"user_events:{tp}"]
    with UserEvents() as ue:  # the events must exist when tracing starts
        ue.register(f"{name} u32 n;__rel_loc char[] s")
        ue.register_eventheader(prov, 4, 1)
        listed = [json.loads(x) for x in tracer_cli("list", "user_events", "--json").stdout.splitlines()]
        by = {e["event"]: e for e in listed}
        assert [f["name"] for f in by[f"user_events:{tp}"]["fields"]] == [
            "eventheader_flags", "version", "id", "tag", "opcode", "level"]
        assert [f["type"] for f in by[f"user_events:{name}"]["fields"]] == ["u32", "__rel_loc char[]"]
        assert by[f"user_events:{tp}"]["eventheader"] == {"provider": prov, "level": 4, "keyword": 1, "options": ""}
        assert by[f"user_events:{name}"]["eventheader"] is None
        shown = tracer_cli("list", "user_events").stdout
        assert f"user_events:{tp} id={by[f'user_events:{tp}']['id']}  disabled  EventHeader: provider {prov}, " \
               "level 4, keyword 0x1" in shown

        live = tracer_cli("trace", *specs, "--json", "--no-summary", "--", *writer_cmd(spec))
        assert live.returncode == 0, live.stderr
        lines = [json.loads(x) for x in live.stdout.splitlines()]
        # the command's stdout goes to stderr while events go to stdout
        wrote = next(json.loads(x) for x in live.stderr.splitlines() if x.startswith('{"pid"'))
        assert wrote["written"] == {name: 3, tp: 3}
        evs = [x for x in lines if x.get("kind") == "user_event"]
        plain = [e for e in evs if e["event"] == f"user_events:{name}"]
        assert [(e["status"], e["fields"], e["pid"]) for e in plain] == [("ok", {"n": 5, "s": "a\x1b[31m"},
                                                                        wrote["pid"])] * 3
        ehs = [e for e in evs if e["event"] == f"user_events:{tp}"]
        assert [e["status"] for e in ehs] == ["ok"] * 3
        d = [e["eventheader"] for e in ehs]
        assert [(x["provider"], x["event"], x["level"], x["keyword"], x["byte_order"]) for x in d] == [
            (prov, "Req", 4, 1, "little"), (prov, "Req", 4, 1, "little"), (prov, "ReqBE", 4, 1, "big")]
        assert d[0]["opcode_name"] == "activity_start" and d[0]["activity_id"] == "00010203-0405-0607-0809-0a0b0c0d0e0f"
        fields = {f["name"]: f["value"] for f in d[1]["fields"]}
        assert fields == {"i": 1, "msg": "event 1", "u16s": "wide", "arr": [1, 2], "pt": fields["pt"], "f": 0.25,
                          "ip": "192.0.2.1"}
        assert [(f["name"], f["value"]) for f in fields["pt"]] == [("x", -1), ("ok", True)]
        assert {f["name"]: f["value"] for f in d[2]["fields"]}["msg"] == "event 0"

        con = tracer_cli("trace", *specs, "--", *writer_cmd(spec))
        assert con.returncode == 0, con.stderr
        out = con.stdout
        assert out.count(f'user_events:{name}(n=5, s="a\\x1b[31m")') == 3 and "\x1b" not in out
        assert out.count(f"{prov}:Req [level=4 keyword=0x1 opcode=activity_start activity=00010203-") == 2
        assert 'msg="event 0", u16s="wide", arr=[0, 1], pt={x=0, ok=True}, f=0.25, ip="192.0.2.1")' in out
        assert f"{prov}:ReqBE [level=4 keyword=0x1 big-endian]" in out

        cap = tmp_path / "ue.trc"
        rec = tracer_cli("record", "-o", str(cap), *specs, "--", *writer_cmd(spec))
        assert rec.returncode == 0, rec.stderr
    rep = tracer_cli("replay", str(cap), "--json", "--no-summary")
    assert rep.returncode == 0, rep.stderr
    replayed = [json.loads(x) for x in rep.stdout.splitlines()]
    assert [(e["event"], e["status"]) for e in replayed if e.get("kind") == "user_event"] == \
        [(f"user_events:{name}", "ok")] * 3 + [(f"user_events:{tp}", "ok")] * 3
    assert [e["eventheader"]["event"] for e in replayed if "eventheader" in e] == ["Req", "Req", "ReqBE"]
    shown = tracer_cli("replay", str(cap))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count(f'user_events:{name}(n=5, s="a\\x1b[31m")') == 3
    assert f"{prov}:ReqBE [level=4 keyword=0x1 big-endian]" in shown.stdout
    jl = tracer_cli("export", str(cap), "--format", "jsonl")
    assert jl.returncode == 0, jl.stderr
    exported = [json.loads(x) for x in jl.stdout.splitlines()]
    user = lambda evs: [e for e in evs if e.get("kind") == "user_event"]  # noqa: E731
    assert user(exported) == user(replayed)
    chrome = tracer_cli("export", str(cap), "--format", "chrome")
    assert chrome.returncode == 0, chrome.stderr
    trace_events = json.loads(chrome.stdout)["traceEvents"]
    ue_marks = [t for t in trace_events if t.get("name") in (f"user_events:{name}", f"user_events:{tp}")]
    assert len(ue_marks) == 6 and ue_marks[-1]["args"]["eventheader"]["event"] == "ReqBE"


def test_cli_emitters_end_to_end(bpf_env) -> None:
    """`tracer user-events emit` and `emit-eventheader` as the commands a user runs, traced by tracer:
    each waits until tracing enables its event, writes it, and the decoded fields are the ones given."""
    need_user_events()
    from tracer.user_events.emitter import UserEvents

    name, prov = uniq("tr_emit"), uniq("TracerEmit").replace("_", "")
    tp = f"{prov}_L3K1"
    act = "00112233-4455-6677-8899-aabbccddeeff"
    emit = [sys.executable, "-m", "tracer", "user-events"]
    with UserEvents() as ue:  # the events must exist when tracing starts
        ue.register(f"{name} u32 n;__rel_loc char[] s")
        ue.register_eventheader(prov, 3, 1)
        plain = tracer_cli("trace", f"user_events:{name}", "--json", "--no-summary", "--",
                           *emit, "emit", name, "u32 n;__rel_loc char[] s", "n=7", "s=hey", "--wait", "120",
                           "--count", "2")
        assert plain.returncode == 0, plain.stderr
        evs = [json.loads(x) for x in plain.stdout.splitlines()]
        assert [(e["status"], e["fields"]) for e in evs if e.get("kind") == "user_event"] == \
            [("ok", {"n": 7, "s": "hey"})] * 2
        eh = tracer_cli("trace", f"user_events:{tp}", "--json", "--no-summary", "--",
                        *emit, "emit-eventheader", prov, "CliReq", "--level", "warning", "--keyword", "1",
                        "--opcode", "activity_start", "--activity", act, "--id", "9", "--wait", "120",
                        "n:i32=-5", "msg:str=hi", "ids:u16[]=1,2", "ok:bool=true", "ip:ipv4=192.0.2.1",
                        "raw:value32/hex_int=0x10")
        assert eh.returncode == 0, eh.stderr
        (ev,) = [json.loads(x) for x in eh.stdout.splitlines() if '"user_event"' in x]
        assert ev["status"] == "ok", ev
        d = ev["eventheader"]
        assert (d["provider"], d["event"], d["level"], d["keyword"], d["opcode_name"], d["id"], d["activity_id"]) \
            == (prov, "CliReq", 3, 1, "activity_start", 9, act)
        assert {f["name"]: f["value"] for f in d["fields"]} == {"n": -5, "msg": "hi", "ids": [1, 2], "ok": True,
                                                                "ip": "192.0.2.1", "raw": 16}
        bad = tracer_cli("user-events", "emit-eventheader", prov, "X", "n:i8=999")
        assert bad.returncode == 2 and bad.stderr.strip() == "tracer: 'n:i8=999': a value does not fit i8", bad.stderr


def test_many_events_and_writers(bpf_env) -> None:
    need_user_events()
    from tracer.session import Session
    from tracer.user_events.emitter import UserEvents

    names = [uniq(f"tr_many{i}") for i in range(4)]
    spec = {"wait": 120, "plain": [{"name_args": f"{n} u32 k;__data_loc char[] s", "values": {"k": i, "s": n},
                                    "count": 50} for i, n in enumerate(names)]}
    with UserEvents() as ue:
        for n in names:
            ue.register(f"{n} u32 k;__data_loc char[] s")
        with Session([f"user_events:{n}" for n in names], duration=None) as s:
            procs = [subprocess.Popen(writer_cmd(spec), stdout=subprocess.PIPE, text=True) for _ in range(4)]
            outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
            got: list[dict] = []
            deadline = time.monotonic() + 30
            for e in s:
                got.append(e.data)
                if len(got) == 4 * 4 * 50 or time.monotonic() > deadline:
                    break
            summary = s.summary()
    assert all(o["written"] == dict.fromkeys(names, 50) for o in outs)
    from collections import Counter

    counts = Counter((e["pid"], e["event"]) for e in got)
    assert counts == {(o["pid"], f"user_events:{n}"): 50 for o in outs for n in names}
    assert all(e["status"] == "ok" and e["fields"] == {"k": names.index(e["name"]), "s": e["name"]} for e in got)
    assert summary["lost"] == 0
