"""Perf rings read in batches: one perf event and one mmap'd ring per CPU.

Serves the BPF output map (PERF_COUNT_SW_BPF_OUTPUT events whose fds go into BPF_PERF_OUTPUT) and,
with PERF_TYPE_TRACEPOINT, dynamic tracepoints. Instead of bcc's one Python callback per record, each
wake-up drains every ring completely and hands the records over as one list, and the ring's tail is
written back once per drain. Wake-ups come from a watermark, not per record.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Protocol

PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_TIME = 1 << 2
PERF_SAMPLE_CPU = 1 << 7
PERF_SAMPLE_RAW = 1 << 10
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
PERF_FORMAT_LOST = 1 << 4  # read() also returns the event's lost_samples (Linux 6.0)
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
_ATTR_SIZE = 128
_ATTR_WATERMARK = 1 << 14
_READ_FORMAT_OFF = 32
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_HDR = struct.Struct("<IHH")
_SAMPLE = struct.Struct("<IHHI")  # perf_event_header + u32 size of PERF_SAMPLE_RAW
_LOST = struct.Struct("<QQ")
# struct perf_event_mmap_page: data_head, data_tail, data_offset, data_size from here.
_META_OFF = 1024
DRAIN_MAX = 512 * 1024  # bytes parsed per ring per drain: about 2,000 syscall records
# Default ring memory for one source, all CPUs together (kernel memory, not in the tracer's RSS): on a
# 2-CPU machine a 1 s burst of 200,000 typical syscall records on one CPU (~290 bytes each with their perf
# headers, ~58 MB) fits in that CPU's ring even if the consumer took none of it meanwhile.
BUFFER_BUDGET = 128 << 20
MIN_PAGES = 256  # per CPU, whatever the budget: 1 MiB, ~3,600 typical records
WAKEUP_MAX = 1 << 20  # wake the reader at a quarter of the ring, but never later than 1 MiB of records


def u64_view(m: mmap.mmap, offset: int, count: int) -> memoryview:
    """`count` unsigned 64-bit words of a shared mapping from `offset`, each read or written in one aligned
    8-byte load or store. Positions the kernel reads from a ring's mapping (a perf ring's data_tail, a BPF
    ring's consumer_pos) must be written this way: struct.pack_into zeroes its destination, then writes the
    integer byte by byte, and the kernel reads the 0 or the half-written value in between (tracer/ringbuf.py
    says what that did). The view must be released before the mapping is closed."""
    return memoryview(m)[offset: offset + 8 * count].cast("Q")


def default_pages(budget: int = BUFFER_BUDGET, ncpus: int | None = None) -> int:
    """Ring size per CPU, in pages: `budget` bytes shared by the online CPUs, rounded down to a power of
    two (the kernel wants one), at least MIN_PAGES."""
    per_cpu = budget // max(ncpus or len(online_cpus()), 1) // mmap.PAGESIZE
    return max(MIN_PAGES, 1 << (per_cpu.bit_length() - 1) if per_cpu else 0)


def pack_attr(type_: int, config: int, sample_type: int, wakeup_bytes: int) -> bytes:
    """struct perf_event_attr (size 128) for a sampling event that wakes the reader by watermark (at most
    WAKEUP_MAX bytes: in a big ring a quarter would let a burst pile up before the reader wakes)."""
    buf = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQQQQ", buf, 0, type_, _ATTR_SIZE, config, 1, sample_type, PERF_FORMAT_LOST)
    struct.pack_into("<QI", buf, 40, _ATTR_WATERMARK, min(wakeup_bytes, WAKEUP_MAX))
    return bytes(buf)


def perf_event_open(attr: bytes, pid: int, cpu: int) -> int:
    nr = _NR_PERF_EVENT_OPEN.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"perf_event_open: unsupported architecture {os.uname().machine}")
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc.syscall(nr, buf, ctypes.c_int(pid), ctypes.c_int(cpu), ctypes.c_int(-1),
                       ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        e = ctypes.get_errno()
        read_format = struct.unpack_from("<Q", attr, _READ_FORMAT_OFF)[0]
        if e == errno.EINVAL and read_format & PERF_FORMAT_LOST:  # before 6.0: no lost count to read
            plain = bytearray(attr)
            struct.pack_into("<Q", plain, _READ_FORMAT_OFF, read_format & ~PERF_FORMAT_LOST)
            return perf_event_open(bytes(plain), pid, cpu)
        raise OSError(e, f"perf_event_open(cpu {cpu}): {os.strerror(e)}")
    return fd


@dataclass
class Batch:
    cpu: int               # -1: a ring shared by the CPUs (see cpus)
    samples: list[bytes]   # the RAW payload of each sample (or the whole sample body, see Ring)
    lost: int              # records the kernel dropped on this CPU since the previous drain
    # A ring shared by the CPUs (tracer/ringbuf.py): each sample's CPU, and the drops per CPU
    cpus: list[int] | None = None
    lost_by_cpu: dict[int, int] | None = None

    def sample_cpus(self) -> Iterable[int]:
        """The CPU of each sample, in order."""
        return self.cpus if self.cpus is not None else repeat(self.cpu)

    def losses(self) -> list[tuple[int, int]]:
        """(cpu, records dropped) since the previous drain."""
        if self.lost_by_cpu is not None:
            return sorted(self.lost_by_cpu.items())
        return [(self.cpu, self.lost)] if self.lost else []


class Ring:
    """One CPU's perf event and its mmap'd ring buffer."""

    def __init__(self, cpu: int, fd: int, pages: int, raw_only: bool) -> None:
        self.cpu = cpu
        self.fd = fd
        self.raw_only = raw_only
        self.page = mmap.PAGESIZE
        self.map = mmap.mmap(fd, (pages + 1) * self.page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.size = pages * self.page
        self.meta = u64_view(self.map, _META_OFF, 4)  # data_head, data_tail, data_offset, data_size
        self.lost_total = 0
        self.backlog = False  # the last drain left records behind (see DRAIN_MAX)

    def drain(self, max_bytes: int = 0) -> Batch:
        """Records up to `max_bytes` (DRAIN_MAX by default) of the ring; `backlog` says whether more
        are waiting. Bounded batches keep the decoder's live objects few: a 32 MiB ring drained at once
        would make the garbage collector rescan ~100,000 young events over and over."""
        m = self.map
        head, tail, off, size = self.meta
        off = off or self.page
        size = size or self.size
        samples: list[bytes] = []
        lost = 0
        if head == tail:
            self.backlog = False
            return Batch(self.cpu, samples, 0)
        # Copy the readable span once (unwrapped), then parse it.
        start = tail % size
        n = head - tail
        limit = max_bytes or DRAIN_MAX
        self.backlog = n > limit
        if self.backlog:
            n = limit  # records cut at the limit are left whole for the next drain (the parser stops)
        if start + n <= size:
            data = m[off + start: off + start + n]
        else:
            data = m[off + start: off + size] + m[off: off + n - (size - start)]
        pos = 0
        append = samples.append
        unpack = _SAMPLE.unpack_from
        raw_only = self.raw_only
        end = n - 8
        while pos <= end:
            # One unpack per record: perf_event_header, then (for samples) the RAW size.
            if pos + 12 <= n:
                typ, _misc, rsize, raw = unpack(data, pos)
            else:
                (typ, _misc, rsize), raw = _HDR.unpack_from(data, pos), 0
            if rsize < 8 or pos + rsize > n:
                break
            if typ == PERF_RECORD_SAMPLE:
                if raw_only:
                    append(data[pos + 12: pos + 12 + raw])
                else:
                    append(data[pos + 8: pos + rsize])
            elif typ == PERF_RECORD_LOST:
                lost += _LOST.unpack_from(data, pos + 8)[1]
            pos += rsize
        # Release what we consumed, in one store (x86 stores are ordered; the copy above happened first).
        self.meta[1] = tail + pos
        self.lost_total += lost
        return Batch(self.cpu, samples, lost)

    def kernel_lost(self) -> int | None:
        """Records the kernel could not write to this ring since it was opened (every failed write:
        the same drops its PERF_RECORD_LOST markers report, including those no marker was written for
        yet); None where the kernel cannot say (before 6.0, see perf_event_open)."""
        try:
            data = os.read(self.fd, 16)
        except OSError:
            return None
        return struct.unpack("<QQ", data)[1] if len(data) == 16 else None

    def discard(self) -> tuple[int, int]:
        """Release everything the ring holds, unread; returns (samples released, the kernel's lost
        counts among them). Headers only: ~0.3 µs per record."""
        m = self.map
        head, tail, off, size = self.meta
        off = off or self.page
        size = size or self.size
        unpack = _HDR.unpack_from
        count = lost = pos = 0
        while tail + pos + 8 <= head:
            at = off + (tail + pos) % size  # records are 8-byte aligned: a header never wraps
            typ, _misc, rsize = unpack(m, at)
            if rsize < 8 or tail + pos + rsize > head:
                break
            if typ == PERF_RECORD_SAMPLE:
                count += 1
            elif typ == PERF_RECORD_LOST:
                lost += _LOST.unpack_from(m[at + 8: at + 24] if (tail + pos) % size + 24 <= size else
                                          bytes(m[at + 8: off + size]) + bytes(m[off: off + 24]), 0)[1]
            pos += rsize
        self.meta[1] = tail + pos
        self.backlog = False
        self.lost_total += lost
        return count, lost

    def close(self) -> None:
        try:
            self.meta.release()
            self.map.close()
        finally:
            os.close(self.fd)


class RingLike(Protocol):
    """What a session reads: a perf Ring, or the syscall records' BPF ring buffer (tracer/ringbuf.py)."""

    fd: int  # polled for wake-ups
    backlog: bool  # the last drain left records behind
    lost_total: int  # drops reported by drains so far

    @property
    def cpu(self) -> int | None: ...  # None: a ring shared by the CPUs

    def drain(self, max_bytes: int = 0) -> Batch: ...

    def discard(self) -> tuple[int, int]: ...

    def kernel_lost(self) -> int | None: ...

    def close(self) -> None: ...


class RingSet:
    """Rings on every online CPU, polled together."""

    def __init__(self, rings: list[RingLike]) -> None:
        self.rings = rings
        self.poll = select.poll()
        self.by_fd = {r.fd: r for r in rings}
        for r in rings:
            self.poll.register(r.fd, select.POLLIN)

    @classmethod
    def open(cls, cpus: Iterable[int], attr: bytes, pages: int, pid: int = -1, raw_only: bool = True) -> RingSet:
        rings: list[RingLike] = []
        try:
            for cpu in cpus:
                fd = perf_event_open(attr, pid, cpu)
                try:
                    rings.append(Ring(cpu, fd, pages, raw_only))
                except Exception:
                    os.close(fd)
                    raise
        except Exception:
            for r in rings:
                r.close()
            raise
        return cls(rings)

    def per_cpu(self) -> list[tuple[int, int]]:
        """(cpu, fd) of each CPU's perf ring: what a BPF_PERF_OUTPUT map is filled with."""
        return [(r.cpu, r.fd) for r in self.rings if isinstance(r, Ring)]

    def enable(self) -> None:
        import fcntl

        for r in self.rings:
            fcntl.ioctl(r.fd, PERF_EVENT_IOC_ENABLE, 0)

    def disable(self) -> None:
        """Stop the events: nothing more is written (nor counted lost); what the rings hold stays."""
        import fcntl

        for r in self.rings:
            fcntl.ioctl(r.fd, PERF_EVENT_IOC_DISABLE, 0)

    def wait(self, timeout_ms: int) -> None:
        if any(r.backlog for r in self.rings):
            timeout_ms = 0  # records are waiting already
        try:
            self.poll.poll(timeout_ms)
        except InterruptedError:
            pass

    def drain(self) -> list[Batch]:
        return [b for b in (r.drain() for r in self.rings) if b.samples or b.lost]

    @property
    def lost_total(self) -> int:
        return sum(r.lost_total for r in self.rings)

    def close(self) -> None:
        for r in self.rings:
            r.close()
        self.rings = []


def bpf_output_attr(wakeup_bytes: int) -> bytes:
    return pack_attr(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_BPF_OUTPUT, PERF_SAMPLE_RAW, wakeup_bytes)


def output_rings(pages: int) -> RingSet:
    """A ring of `pages` on every online CPU for a BPF_PERF_OUTPUT map. The reader is woken when a
    quarter of a ring is used (capped, see pack_attr); the session's poll timeout bounds latency otherwise."""
    return RingSet.open(online_cpus(), bpf_output_attr(pages * 4096 // 4), pages)


def online_cpus() -> list[int]:
    text = open("/sys/devices/system/cpu/online").read().strip()
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus
