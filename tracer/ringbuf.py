"""The syscall records' BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8+), read in batches.

One ring shared by every CPU (bpf/trace.bpf.c sends each record behind a struct ring_head naming its CPU)
instead of one perf ring per CPU: bpf_ringbuf_output costs the traced call ~60 ns where
bpf_perf_event_output cost ~320 ns. Read as perf.Ring is, with the same interface for the session: each
drain takes up to DRAIN_MAX bytes per online CPU and hands the records over as one Batch.

Layout (kernel/bpf/ringbuf.c): the consumer position on the first page (ours to write), the producer
position on the second, then the data, mapped twice in a row so that no record wraps. Each record has an
8-byte header: its length with BUSY (reserved, not committed yet: the reader stops there) and DISCARD
bits, and a page offset; records are 8-byte aligned. The data is mapped per drain, only the window being
read: the kernel maps every page of a ring mapping at once, so a mapping of the whole ring (twice its
size) would count in the tracer's RSS (256 MiB for the default ring; the window is at most ~1 MiB).

Wake-ups: the programs send without waking the reader except at their own watermark (trace.bpf.c), but
the map's poll() says "readable" whenever any byte is there, which would wake the session for every
record. So the map fd is watched through an epoll of its own, edge-triggered: that epoll fd becomes
readable only after a wake-up from the programs, and each drain first takes that wake-up (epoll_wait
with no timeout), so that the session's next poll waits for the next one, as with a perf ring's
watermark (a wake-up coming during the drain stays pending). Without that the session's poll returned at
once while any record was in the ring, and a busy ring was read in small batches (~6% more consumer CPU
per event at 300,000 calls).

Positions: the consumer and producer positions are read, and the consumer position written, each in one
aligned 8-byte load or store (perf.u64_view), as the kernel reads and writes them. Not struct.pack_into:
CPython packs by zeroing the destination (memset), then converting the integer and writing it byte by
byte, so the kernel could read a consumer position of 0 (or a torn one) for a few hundred ns at every
drain; once the producer position is past the ring's size, a reservation that reads 0 finds the ring
"full" and bpf_ringbuf_output refuses the record (-EAGAIN) with the ring nearly empty. Measured: 2-15
records of 1,000,000 at 200k/s, and the programs' own bpf_ringbuf_query saw consumer_pos 0 at the refusal
(README Performance; tests/test_ringbuf.py samples the kernel's view of every position written).

Lost records: the ring writes no marker. A full ring makes bpf_ringbuf_output fail with -EAGAIN, which the
programs count per CPU (record.h ST_RING_FULL); each drain reports what those counters added since the
previous one (`lost_by_cpu`), as the perf rings' lost markers did.
"""

from __future__ import annotations

import mmap
import select
import struct
from collections.abc import Callable

from .layout import struct_of
from .perf import DRAIN_MAX, Batch, RingSet, online_cpus, u64_view

BUSY = 1 << 31
DISCARD = 1 << 30
_HDR = struct.Struct("<II")  # length (and flags), page offset
_REC = struct.Struct("<III")  # the header, then struct ring_head.cpu
HEAD = struct_of("ring_head").size
MAX_BYTES = 1 << 30  # a ring larger than this is a typo, not a budget


def ring_bytes(pages_per_cpu: int, ncpus: int | None = None) -> int:
    """The one ring's size for the perf rings' per-CPU budget (`--buffer-pages`, perf.default_pages()):
    the same memory, pages times online CPUs, rounded down to a power of two (the kernel wants one)."""
    total = pages_per_cpu * mmap.PAGESIZE * max(ncpus or len(online_cpus()), 1)
    return min(1 << (total.bit_length() - 1), MAX_BYTES)


class RingBuf:
    """A BPF ring buffer map, mmap'd. `lost_counts()` returns the programs' per-CPU ring-full counters."""

    cpu = None  # not one CPU's: each record says its own

    def __init__(self, map_fd: int, size: int, lost_counts: Callable[[], list[int]]) -> None:
        self.map_fd = map_fd
        self.size = size
        self.page = mmap.PAGESIZE
        self.lost_counts = lost_counts
        self.cons = mmap.mmap(map_fd, self.page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self.prod = mmap.mmap(map_fd, self.page, mmap.MAP_SHARED, mmap.PROT_READ, offset=self.page)
        except BaseException:
            self.cons.close()
            raise
        self.cons_pos = u64_view(self.cons, 0, 1)  # see "Positions" above
        self.prod_pos = u64_view(self.prod, 0, 1)
        self.ep = select.epoll()
        self.ep.register(map_fd, select.EPOLLIN | select.EPOLLET)
        self.fd = self.ep.fileno()  # what the session polls
        self.seen: list[int] = []  # ring-full counts already reported, per CPU
        self.lost_total = 0
        self.backlog = False
        self.limit = DRAIN_MAX * max(len(online_cpus()), 1)

    def _lost(self) -> dict[int, int]:
        counts = self.lost_counts()
        seen = self.seen + [0] * (len(counts) - len(self.seen))
        out = {cpu: n - seen[cpu] for cpu, n in enumerate(counts) if n > seen[cpu]}
        if out:
            self.seen = [max(a, b) for a, b in zip(counts, seen, strict=True)]
            self.lost_total += sum(out.values())
        return out

    def drain(self, max_bytes: int = 0) -> Batch:
        """The committed records up to `max_bytes` (DRAIN_MAX per CPU by default); `backlog` says whether
        more are waiting. Lost records counted since the last drain come in `lost_by_cpu`."""
        self.ep.poll(0)  # take the wake-up that brought us here (if any) before reading the records
        lost = self._lost()
        cons = self.cons_pos[0]
        prod = self.prod_pos[0]
        samples: list[bytes] = []
        cpus: list[int] = []
        n = prod - cons
        limit = max_bytes or self.limit
        self.backlog = n > limit
        if n <= 0:
            return Batch(-1, samples, 0, cpus, lost)
        if self.backlog:
            n = limit  # records cut at the limit are left whole for the next drain (the parser stops)
        data = self._read(cons, n)
        pos = 0
        unpack = _REC.unpack_from
        append, cpu_append = samples.append, cpus.append
        while pos + 12 <= n:  # a whole record is at least its header and a struct ring_head (16 bytes)
            ln, _pg, cpu = unpack(data, pos)  # one unpack: the ring's header and ring_head.cpu
            if ln >= DISCARD:  # BUSY or DISCARD set (rare)
                if ln & BUSY:
                    self.backlog = False  # the rest waits for its writer to commit: the next poll takes it
                    break
                pos += ((ln & ~DISCARD) + 8 + 7) & ~7
                continue
            end = pos + 8 + ln
            if end > n:
                break
            cpu_append(cpu)
            append(data[pos + 8 + HEAD: end])
            pos = (end + 7) & ~7
        self.release(cons + pos)
        return Batch(-1, samples, 0, cpus, lost)

    def release(self, pos: int) -> None:
        """Give the ring back up to `pos`: one 8-byte store, never a value the kernel did not get from us.
        The records before `pos` were copied out first (their window unmapped: a syscall), and x86 keeps
        stores after earlier loads."""
        self.cons_pos[0] = pos

    def _read(self, pos: int, n: int) -> bytes:
        """n bytes of data from ring position `pos`, copied through a mapping of just their pages (the
        double mapping keeps them contiguous: data page k is at file page 2 + k, and again at 2 + k + npages)."""
        start = pos & (self.size - 1)
        first, skip = divmod(start, self.page)
        length = -(-(skip + n) // self.page) * self.page
        window = mmap.mmap(self.map_fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=(2 + first) * self.page)
        try:
            return window[skip: skip + n]
        finally:
            window.close()

    def reported(self, cpu: int) -> int:
        """Ring-full drops on `cpu` already reported by drains."""
        return self.seen[cpu] if cpu < len(self.seen) else 0

    def kernel_lost(self) -> None:
        """The ring keeps no count of its own (see lost_counts)."""
        return None

    def discard(self) -> tuple[int, int]:
        """Release everything the ring holds, unread; returns (records released, 0). Headers only, read a
        window at a time."""
        cons = self.cons_pos[0]
        prod = self.prod_pos[0]
        count = 0
        while cons < prod:
            data = self._read(cons, min(prod - cons, self.limit))
            pos = 0
            while pos + 8 <= len(data):
                ln, _pg = _HDR.unpack_from(data, pos)
                step = ((ln & ~(BUSY | DISCARD)) + 8 + 7) & ~7
                if ln & BUSY or pos + step > len(data):
                    break
                count += not ln & DISCARD
                pos += step
            if not pos:
                break  # a record not committed yet, or longer than the window: left for nobody
            cons += pos
            self.release(cons)
        self.backlog = False
        return count, 0

    def close(self) -> None:
        self.cons_pos.release()
        self.prod_pos.release()
        for m in (self.prod, self.cons):
            try:
                m.close()
            except (BufferError, ValueError):
                pass
        self.ep.close()


class RingBufSet(RingSet):
    """A RingSet of the one ring."""

    def enable(self) -> None:
        """The programs' CF_OFF starts and stops them (record.h): the ring itself has no switch."""

    def disable(self) -> None:
        """See enable()."""

    def drain(self) -> list[Batch]:
        return [b for b in (r.drain() for r in self.rings) if b.samples or b.losses()]


def open_ringbuf(map_fd: int, size: int, lost_counts: Callable[[], list[int]]) -> RingBufSet:
    return RingBufSet([RingBuf(map_fd, size, lost_counts)])

