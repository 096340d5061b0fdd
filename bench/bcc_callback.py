"""The baseline for bench/run.py: bcc's usual consumer pattern on the same BPF program and records.

`open_ring_buffer` with a Python callback per record, the record cast to a ctypes struct (the sys_record
layout from bpf/record.h), then decoded into the same event dicts as tracer's stream. Everything else
(program, configuration, filters, tracepoints) is tracer's own SyscallProbes, so only the consumer differs.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable

from tracer.layout import struct_of
from tracer.probes import SyscallProbes

_CTYPES = {"B": ct.c_uint8, "b": ct.c_int8, "c": ct.c_char, "H": ct.c_uint16, "h": ct.c_int16,
           "I": ct.c_uint32, "i": ct.c_int32, "Q": ct.c_uint64, "q": ct.c_int64}


def ctypes_struct(name: str) -> type[ct.Structure]:
    """A ctypes Structure for a record.h struct (what bcc's table `.event()` builds from the map's type)."""
    fields = []
    for f in struct_of(name).fields:
        t = ctypes_struct(f.struct) if f.struct else _CTYPES[f.code]
        fields.append((f.name, t * f.count if f.count > 1 else t))
    return type(name, (ct.Structure,), {"_fields_": fields})


SysRecord = ctypes_struct("sys_record")
_RecPtr = ct.POINTER(SysRecord)


class CallbackProbes(SyscallProbes):
    """SyscallProbes whose `events` ring buffer is read by bcc, one callback per record."""

    def __init__(self, *args, decode: Callable[[bytes, int], dict], **kw) -> None:
        self.decode = decode
        self.count = 0  # events decoded; only the last is kept, as a consumer that prints them would
        self.last: dict | None = None
        super().__init__(*args, **kw)

    def open_ringbuf(self, map_name: str, lost_counts: Callable[[], list[int]]) -> None:  # type: ignore[override]
        """bcc's ring buffer reader (what `BPF.open_ring_buffer` does), through bcc's library on the map tracer
        loaded (SyscallProbes holds no bcc BPF object on a warm start): one C-to-Python callback per record,
        in place of tracer's batched reader (tracer/ringbuf.py)."""
        from bcc.libbcc import _RINGBUF_CB_TYPE, lib

        head = struct_of("ring_head").size

        def on_record(_ctx: object, data: int, size: int) -> int:
            cpu = ct.cast(data, ct.POINTER(ct.c_uint32)).contents.value  # struct ring_head.cpu
            rec = ct.cast(data + head, _RecPtr).contents  # the classic bcc cast
            self.last = self.decode(ct.string_at(data + head, rec.size), cpu)
            self.count += 1
            return 0

        self._cb = _RINGBUF_CB_TYPE(on_record)
        self._reader = lib.bpf_new_ringbuf(self._map(map_name).fd, self._cb, None)
        if not self._reader:
            raise OSError("bcc could not open the ring buffer")

    def consume(self, count: int, timeout_ms: int = 100) -> int:
        """Poll until `count` more events were decoded (or a poll finds nothing); returns how many were."""
        from bcc.libbcc import lib

        start = self.count
        while self.count - start < count:
            before = self.count
            lib.bpf_consume_ringbuf(self._reader)  # what is there: the programs wake readers at a watermark only
            if self.count == before:
                lib.bpf_poll_ringbuf(self._reader, timeout_ms)
                if self.count == before:
                    break
        return self.count - start

    def close(self) -> None:
        from bcc.libbcc import lib

        if getattr(self, "_reader", None):
            lib.bpf_free_ringbuf(ct.c_void_p(self._reader))
        self._reader = None
        super().close()
