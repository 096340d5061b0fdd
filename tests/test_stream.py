"""The consumer's fast paths against their plain definitions, without BPF: ring parsing and discarding
on an anonymous mmap laid out like a perf ring, time ordering, batch statistics, JSON encoding and the
default ring size."""

from __future__ import annotations

import json
import mmap
import random
import struct

from tracer import jsonenc, perf
from tracer.ordering import SLACK_NS, TimeOrder, in_time_order
from tracer.output import JsonOutput, dumps
from tracer.session import Stats

PAGE = mmap.PAGESIZE


def fake_ring(pages: int = 2) -> perf.Ring:
    ring = perf.Ring.__new__(perf.Ring)
    ring.cpu, ring.fd, ring.raw_only, ring.page = 1, -1, True, PAGE
    ring.map = mmap.mmap(-1, (pages + 1) * PAGE)
    ring.size, ring.lost_total, ring.backlog = pages * PAGE, 0, False
    struct.pack_into("<QQ", ring.map, perf._META_OFF + 16, PAGE, pages * PAGE)  # data_offset, data_size
    ring.meta = perf.u64_view(ring.map, perf._META_OFF, 4)
    return ring


def put(ring: perf.Ring, records: list[bytes]) -> None:
    """Append perf records at data_head, wrapping at the end of the ring like the kernel."""
    m, size = ring.map, ring.size
    head = struct.unpack_from("<Q", m, perf._META_OFF)[0]
    for rec in records:
        for i, b in enumerate(rec):
            m[PAGE + (head + i) % size] = b
        head += len(rec)
    struct.pack_into("<Q", m, perf._META_OFF, head)


def sample(payload: bytes) -> bytes:
    raw = struct.pack("<I", len(payload)) + payload
    raw += b"\0" * (-(8 + len(raw)) % 8)
    return struct.pack("<IHH", perf.PERF_RECORD_SAMPLE, 0, 8 + len(raw)) + raw


def lost(n: int) -> bytes:
    return struct.pack("<IHHQQ", perf.PERF_RECORD_LOST, 0, 24, 7, n)


def test_drain_and_discard_across_the_ring_end() -> None:
    ring = fake_ring(4)
    payloads = [bytes([i + 1]) * (20 + 13 * i) for i in range(40)]  # ~12 KiB of 16: the second round wraps
    for _ in range(2):
        put(ring, [sample(p) for p in payloads[:20]] + [lost(5)] + [sample(p) for p in payloads[20:]])
        batch = ring.drain()
        assert batch.samples == payloads and batch.lost == 5 and not ring.backlog
    put(ring, [sample(p) for p in payloads[:10]] + [lost(3)] + [sample(p) for p in payloads[10:20]])
    before = ring.lost_total
    assert ring.discard() == (20, 3)  # samples released unread, and the kernel's lost count among them
    assert ring.lost_total == before + 3
    assert ring.drain().samples == []  # nothing left, and the tail was released
    put(ring, [sample(b"after")])
    assert ring.drain().samples == [b"after"]


def test_in_time_order_is_a_stable_sort_by_completion_time() -> None:
    rnd = random.Random(7)
    runs = []
    for cpu in range(3):
        ts = sorted(rnd.randrange(1000) for _ in range(50))
        run = [{"ts": t - 5, "ts_exit": t, "cpu": cpu, "i": i} if i % 7 else {"ts": t, "cpu": cpu, "i": i}
               for i, t in enumerate(ts)]
        if cpu == 2:
            run[10], run[11] = run[11], run[10]  # a ring slightly out of order
        runs.append(run)
    flat = [ev for run in runs for ev in run]
    assert in_time_order(runs) == sorted(flat, key=lambda e: e.get("ts_exit") or e["ts"])
    assert in_time_order(runs[:1]) is runs[0]  # one ring, in order: kept as it is
    assert in_time_order(runs[2:]) == sorted(runs[2], key=lambda e: e.get("ts_exit") or e["ts"])


def call(name: str, end: int) -> dict:
    return {"syscall": name, "ts": end - 10, "ts_exit": end}


def names(evs: list[dict]) -> list[str]:
    return [ev["syscall"] for ev in evs]


def test_a_record_that_reached_its_ring_late_still_prints_in_order() -> None:
    """The race seen in CI: ring A (the child's kill) is read empty, then kill completes on A and the
    parent's wait4 on B, and B is read: wait4 must wait for the next drain, which brings kill."""
    order = TimeOrder()
    began = 10 * SLACK_NS
    early = call("read", began - SLACK_NS - 1)  # completed before the drain began (less the slack)
    assert names(order.order([[], [early, call("wait4", began + 20)]], [False, False], began)) == ["read"]
    nxt = order.order([[call("kill", began + 10)], [call("exit", began + 30)]], [False, False], began + 3 * SLACK_NS)
    assert names(nxt) == ["kill", "wait4", "exit"]
    assert order.flush() == []


def test_a_ring_with_more_to_read_holds_back_later_records() -> None:
    """A bounded drain left records in ring A: nothing later than the last one read from A is shown."""
    order = TimeOrder()
    began = 100 * SLACK_NS
    a = [call("a1", 100), call("a2", 200)]
    b = [call("b1", 150), call("b2", 250)]
    assert names(order.order([a, b], [True, False], began)) == ["a1", "b1", "a2"]
    assert names(order.order([[call("a3", 240)]], [False], began)) == ["a3", "b2"]
    assert order.held == []
    order.order([[call("late", began)]], [False], began)
    assert names(order.flush()) == ["late"] and order.flush() == []  # the end of the session shows all


def reference_add(s: Stats, ev: dict) -> None:
    """Stats.add as it was, one event at a time."""
    s.events += 1
    if ev.get("kind") == "user_event":
        s.user_events[ev.get("status", "ok")] += 1
        if ev.get("status") == "discarded":
            s.user_events[f"discarded:{ev.get('event') or 'unknown event'}"] += 1
    reads = ev.get("reads") or {}
    if reads:
        s.events_with_reads += 1
    wrong = False
    for arg, info in reads.items():
        s.reads[info["status"]] += 1
        s.by_arg[f"{ev.get('syscall') or ev.get('function')}.{arg}"][info["status"]] += 1
        wrong |= info["status"] in ("recovered", "changed")
    s.wrong_without_recovery += wrong


def test_batch_statistics_equal_per_event_counting() -> None:
    rnd = random.Random(3)
    statuses = ("ok", "recovered", "changed", "missing", "truncated", "null")
    evs = []
    for i in range(500):
        kind = rnd.choice(("syscall", "syscall", "uprobe", "user_event"))
        ev: dict = {"kind": kind}
        if kind == "user_event":
            ev["event"] = rnd.choice(("user_events:a", None))
            if rnd.random() < 0.7:
                ev["status"] = rnd.choice(("ok", "malformed", "discarded"))
        elif kind == "uprobe":
            ev["function"] = "f"
        else:
            ev["syscall"] = rnd.choice(("openat2", "connect"))
        if kind != "user_event" or i % 3:
            ev["reads"] = {a: {"status": rnd.choice(statuses)} for a in rnd.sample(("x", "y", "z"), rnd.randrange(4))}
        evs.append(ev)
    evs.append({"kind": "user_event", "status": None, "event": "user_events:b"})  # status null, not "ok"
    ref, fast, one = Stats(), Stats(), Stats()
    for ev in evs:
        reference_add(ref, ev)
        one.add(ev)
    for k in range(0, len(evs), 64):
        fast.add_many(evs[k:k + 64])
    for got in (fast, one):
        assert got == ref
        assert {k: dict(v) for k, v in got.by_arg.items()} == {k: dict(v) for k, v in ref.by_arg.items()}


def compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def test_json_encoder_is_json_dumps(tmp_path) -> None:
    """The JSON Lines bytes are json.dumps's (compact, every non-ASCII character escaped) whichever
    encoder made them: orjson for syscall events, json's for what orjson spells otherwise."""
    assert jsonenc.orjson is not None, "orjson (install_requires) is missing: its path would go untested"
    objs = [{"kind": "syscall", "s": "é\u202e\x1b\n", "n": None, "f": 1.5, "big": 1 << 70, "neg": -3,
             "nested": {"l": [1, "two", {"t": True}], "e": {}}, "nan": float("nan")}, {"kind": "lost", "count": 3},
            {"kind": "summary", "share": 1e-05, "big": 1e16, "inf": float("inf"), "lost_per_cpu": {1: 2}}]
    hard = ["plain", "é", "\x7f", "\x00\x1f\"\\/", "\udcff/tmp", "\U0001f600", "\u2028", "a,b:c", '":,']
    for s in hard:  # each string alone in a syscall event: orjson where it can, json where it cannot
        objs.append({"kind": "syscall", "comm": s, "args": {"filename": s, "n": [1, -(1 << 63), (1 << 64) - 1]},
                     "reads": {"filename": {"status": "ok", "errno": None, "verified": True}}, "missing": []})
    objs.append({"kind": "syscall", "big": 1 << 64, "k": {5: "int key"}})
    for obj in objs:
        assert dumps(obj) == compact(obj), obj
    path = tmp_path / "out.jsonl"
    with open(path, "w") as f:
        out = JsonOutput(f, batched=True)
        out.events(objs)
        out.event(objs[1])
    assert path.read_text() == "".join(compact(o) + "\n" for o in [*objs, objs[1]])


def test_default_ring_size_shares_a_budget() -> None:
    budget = perf.BUFFER_BUDGET // PAGE
    assert perf.default_pages(ncpus=2) == budget // 2
    assert perf.default_pages(ncpus=3) == 1 << ((budget // 3).bit_length() - 1)  # a power of two
    assert perf.default_pages(ncpus=4096) == perf.MIN_PAGES
    assert perf.default_pages(budget=1 << 30, ncpus=1) == (1 << 30) // PAGE


def test_wakeup_watermark_is_capped() -> None:
    attr = perf.bpf_output_attr(64 << 20)
    assert struct.unpack_from("<I", attr, 48)[0] == perf.WAKEUP_MAX
    assert struct.unpack_from("<I", perf.bpf_output_attr(4096), 48)[0] == 4096


def test_the_first_event_is_polled_for_often(monkeypatch) -> None:
    """The programs wake the reader only at a watermark: until the first event of its first second, a session
    polls every FIRST_POLL_MS, so that its start is confirmed at once; then every POLL_MS."""
    from tracer import session as sess

    s = sess.Session(["openat2"])
    s.started = 1000.0
    now = [1000.5]
    monkeypatch.setattr(sess.time, "monotonic", lambda: now[0])
    assert s._poll_ms() == sess.FIRST_POLL_MS < sess.POLL_MS
    now[0] = 1000.0 + sess.FIRST_S
    assert s._poll_ms() == sess.POLL_MS  # a quiet start: no faster polling for ever
    now[0] = 1000.5
    s.stats.events = 1
    assert s._poll_ms() == sess.POLL_MS
