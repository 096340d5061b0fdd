"""tracer/ringbuf.py on a real BPF ring buffer map (no program writes to it here: the live tests in
test_trace_live.py, test_accounting_live.py and test_truth_live.py read every syscall record through it,
wrapping around 1-page rings and losing records on purpose): its size from the memory budget, the maps
the kernel allows, what an empty ring drains to, and the programs' ring-full counts reported once each."""

from __future__ import annotations

import mmap
import os
import select
from collections.abc import Iterator

import pytest

from tracer import bpfsys
from tracer.ringbuf import HEAD, RingBuf, ring_bytes

BPF_MAP_TYPE_RINGBUF = 27


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
