"""tracer/ringbuf.py on a real BPF ring buffer map (no program writes to it here: the live tests in
test_trace_live.py, test_accounting_live.py and test_truth_live.py read every syscall record through it,
wrapping around 1-page rings and losing records on purpose): its size from the memory budget, the maps
the kernel allows, what an empty ring drains to, the programs' ring-full counts reported once each, and
that the kernel never sees a consumer position we did not write (a BPF program samples it)."""

from __future__ import annotations

import mmap
import os
import select
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import require, scaled

from tracer import bpfsys
from tracer.ringbuf import HEAD, RingBuf, ring_bytes

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_RAW_TRACEPOINT = 17


def test_ring_bytes_is_the_per_cpu_budget_times_the_cpus_as_a_power_of_two() -> None:
    page = mmap.PAGESIZE
    assert ring_bytes(16384, 2) == 128 << 20  # the default budget on 2 CPUs
    assert ring_bytes(256, 3) == 2 * 256 * page  # 768 pages: rounded down
    assert ring_bytes(1, 1) == page
    assert ring_bytes(1 << 20, 64) == 1 << 30  # capped
    assert HEAD == 8  # struct ring_head: cpu, pad


@pytest.fixture
def ring_fd(bpf_env: None) -> Iterator[int]:
    info = bpfsys.MapInfo(BPF_MAP_TYPE_RINGBUF, 0, 0, 4 * mmap.PAGESIZE, 0, "test_ring")
    fd = bpfsys.map_create(info)
    yield fd
    os.close(fd)


def test_empty_ring_and_lost_counts_reported_once(ring_fd: int) -> None:
    counts = [[0, 0], [3, 0], [3, 2], [3, 2]]  # the programs' ST_RING_FULL per CPU, drain after drain
    ring = RingBuf(ring_fd, 4 * mmap.PAGESIZE, lambda: counts.pop(0))
    try:
        batches = [ring.drain() for _ in range(4)]
        assert all(b.samples == [] and b.cpus == [] for b in batches)
        assert [b.losses() for b in batches] == [[], [(0, 3)], [(1, 2)], []]
        assert ring.lost_total == 5 and ring.reported(0) == 3 and ring.reported(1) == 2 and ring.reported(7) == 0
        assert ring.discard() == (0, 0)
        # No program woke it: the session's poll on the ring's epoll does not return.
        p = select.poll()
        p.register(ring.fd, select.POLLIN)
        assert p.poll(0) == []
        assert ring.kernel_lost() is None and ring.cpu is None
    finally:
        ring.close()


# Two consumer positions that share no byte (8-byte aligned, as the kernel's are): a value written in parts,
# or zeroed first, is neither.
POS_A, POS_B = 0x0123456789ABCDE8, 0x7EDCBA9876543210
_I = struct.Struct("<BBhI")  # code, registers, offset, immediate (as its 32 bits)
# The sampled side: syscalls as fast as Python makes them, for 0.5 s (scaled: under TCG each is slow), on the
# CPU given.
SYSCALLS = ("import os, sys, time\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
            "end = time.monotonic() + float(sys.argv[2])\n"
            "while time.monotonic() < end:\n    os.getppid()\n")


def _sampler(ring: int, seen: int) -> bytes:
    """A raw_syscalls:sys_enter program: at every syscall, bpf_ringbuf_query(ring, BPF_RB_CONS_POS); counts
    in `seen` (array of 3 u64) [0] the samples that were POS_A or POS_B, [1] the others, [2] the last other."""

    def ins(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
        return _I.pack(code, src << 4 | dst, off, imm & 0xFFFFFFFF)

    def ld64(dst: int, value: int, src: int = 0) -> bytes:  # ld_imm64; src 1: `value` is a map fd
        return ins(0x18, dst, src, 0, value & 0xFFFFFFFF) + ins(0, imm=value >> 32)

    def count(key: int, store: bool) -> bytes:  # seen[key] += 1, or seen[key] = r6; 9 slots
        return (ins(0x62, 10, off=-4, imm=key) + ld64(1, seen, 1) + ins(0xBF, 2, 10) + ins(0x07, 2, imm=-4)
                + ins(0x85, imm=1) + ins(0x15, 0, off=2) + ins(0xB7, 1, imm=1)
                + (ins(0x7B, 0, 6) if store else ins(0xDB, 0, 1)))  # *(u64 *)r0 = r6 / lock += r1

    # Slots: query 0-4, POS_A 5-7, POS_B 8-10, count(2) 11-19, count(1) 20-28, goto 29, count(0) 30-38, exit 39-40.
    return b"".join((
        ld64(1, ring, 1), ins(0xB7, 2, imm=2), ins(0x85, imm=134),  # r6 = bpf_ringbuf_query(ring, CONS_POS)
        ins(0xBF, 6, 0),
        ld64(7, POS_A), ins(0x1D, 6, 7, off=30 - 8),  # == POS_A: to count(0)
        ld64(7, POS_B), ins(0x1D, 6, 7, off=30 - 11),
        count(2, True), count(1, False), ins(0x05, off=39 - 30),
        count(0, False),
        ins(0xB7, 0, imm=0), ins(0x95),
    ))


def test_the_kernel_sees_only_the_consumer_positions_written(ring_fd: int) -> None:
    """RingBuf.release() publishes the consumer position in one 8-byte store: a BPF program sampling the
    kernel's view of it at every syscall, on another CPU, sees only the positions written. struct.pack_into
    (the code before) zeroes the field first and then writes it byte by byte: the kernel read 0 there, and a
    ring whose producer position had gone past its size refused records with room left (README Performance)."""
    cpus = sorted(os.sched_getaffinity(0))
    require(len(cpus) >= 2, "two CPUs: one writes the consumer position while the other samples it")
    seen_map = bpfsys.Map(bpfsys.map_create(bpfsys.MapInfo(BPF_MAP_TYPE_ARRAY, 4, 8, 3, 0, "test_seen")))
    ring = RingBuf(ring_fd, 4 * mmap.PAGESIZE, lambda: [])
    ring.release(POS_A)
    fds: list[int] = []
    writes = 0
    try:
        fds.append(bpfsys.prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, _sampler(ring_fd, seen_map.fd),
                                    prog_name="test_cons_pos"))
        fds.append(bpfsys.raw_tracepoint_open(fds[0], "sys_enter"))
        os.sched_setaffinity(0, {cpus[0]})
        child = subprocess.Popen([sys.executable, "-c", SYSCALLS, str(cpus[1]), str(scaled(0.5))])
        try:
            while child.poll() is None:
                for _ in range(1000):
                    ring.release(POS_B)
                    ring.release(POS_A)
                writes += 2000
        finally:
            assert child.wait() == 0
    finally:
        os.sched_setaffinity(0, cpus)
        for fd in reversed(fds):
            os.close(fd)
        ring.close()
    seen = [int.from_bytes(seen_map.lookup(struct.pack("<I", k)) or b"", "little") for k in range(3)]
    os.close(seen_map.fd)
    assert seen[1] == 0, (f"the kernel read {seen[1]:,} consumer positions that were never written (of "
                          f"{seen[0] + seen[1]:,} samples, {writes:,} writes), e.g. {seen[2]:#x}")
    assert seen[0] >= 10_000 and writes >= 100_000, (seen, writes)  # both sides ran, side by side
