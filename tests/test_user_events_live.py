"""user_events live. The writer-side watch runs on this kernel with a stand-in: a fake tracefs root whose
user_events_data is a regular file (a writev/write with an unreadable payload fails with EFAULT on a
regular file too), so the watch's real BPF programs recognise the descriptor and report both discarded
writes with the write_index unreadable and the name null (never guessed). The full end-to-end test
(register, enable through perf, write, decode; then a discarded write) needs CONFIG_USER_EVENTS and is
skipped here with the reason."""

from __future__ import annotations

import json
import struct
import subprocess
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
    check = check_user_events()
    need_feature("user_events", check.ok is True, f"{check.verdict}: {check.detail}")
    from tracer.session import Session
    from tracer.user_events.emitter import PayloadDiscarded, UserEvents

    name = f"tracer_e2e_{time.monotonic_ns() % 100000}"
    with UserEvents() as ue:
        ev = ue.register(f"{name} u32 n;__rel_loc char[] s")
        assert not ev.enabled
        with Session([f"user_events:{name}"], duration=1.5) as s:
            assert ev.enabled  # opening the perf events set the enable bit
            ev.write(n=7, s="hello")
            import ctypes
            iov = (ctypes.c_uint64 * 4)(ctypes.addressof(ctypes.c_uint32(ev.write_index)), 4, 1, 8)
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.writev(ue.fd, iov, 2) == -1 and ctypes.get_errno() == 14
            with pytest.raises(PayloadDiscarded):  # a __rel_loc past the end: the kernel's validator refuses it
                ev.write_payload(struct.pack("<II", 7, 0xFFFF_0000))
            events = [e.data for e in s]
        ok = [e for e in events if e.get("status") == "ok"]
        assert ok and ok[0]["fields"] == {"n": 7, "s": "hello"} and ok[0]["event"] == f"user_events:{name}"
        bad = [e for e in events if e.get("status") == "discarded"]
        assert bad and bad[0]["event"] == f"user_events:{name}" and bad[0]["write_index"] == ev.write_index
    with UserEvents() as ue:
        ue.delete(name)
