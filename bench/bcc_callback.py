"""The baseline for bench/run.py: bcc's usual consumer pattern on the same BPF program and records.

`open_perf_buffer` with a Python callback per record, the record cast to a ctypes struct (the sys_record
layout from bpf/record.h), then decoded into the same event dicts as tracer's stream. Everything else
(program, configuration, filters, tracepoints) is tracer's own SyscallProbes, so only the consumer differs.
"""

from __future__ import annotations

import ctypes as ct
import struct
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
    """SyscallProbes whose `events` map is read by bcc's perf buffer, one callback per record."""

    def __init__(self, *args, decode: Callable[[bytes, int], dict], **kw) -> None:
        self.decode = decode
        self.count = 0  # events decoded; only the last is kept, as a consumer that prints them would
        self.last: dict | None = None
        self.lost = 0
        super().__init__(*args, **kw)

    def open_output(self, map_name: str, pages: int) -> None:  # type: ignore[override]
        """bcc's open_perf_buffer, done through bcc's library on the output map tracer loaded (SyscallProbes
        holds no bcc BPF object on a warm start): one bcc perf reader per CPU, one C-to-Python callback per
        record, in place of tracer's batched rings (bpfcache.ObjectOwner.open_output)."""
        from bcc.libbcc import _LOST_CB_TYPE, _RAW_CB_TYPE, bcc_perf_buffer_opts, lib

        from tracer.perf import online_cpus

        def on_lost(_cookie: object, count: int) -> None:
            self.lost += count

        self._cbs, readers = [], []
        for cpu in online_cpus():
            def on_record(_cookie: object, data: int, size: int, cpu: int = cpu) -> None:
                rec = ct.cast(data, _RecPtr).contents  # the classic bcc cast
                self.last = self.decode(ct.string_at(data, rec.size), cpu)
                self.count += 1

            fn, lost_fn = _RAW_CB_TYPE(on_record), _LOST_CB_TYPE(on_lost)
            opts = bcc_perf_buffer_opts()
            opts.pid, opts.cpu, opts.wakeup_events = -1, cpu, 1
            reader = lib.bpf_open_perf_buffer_opts(fn, lost_fn, None, pages, ct.byref(opts))
            if not reader:
                raise OSError(f"bcc could not open a perf buffer on CPU {cpu}")
            self._cbs.append((fn, lost_fn))
            readers.append(reader)
            self._map(map_name).update(struct.pack("<I", cpu), struct.pack("<I", lib.perf_reader_fd(reader)))
        self._readers = (ct.c_void_p * len(readers))(*readers)

    def consume(self, count: int, timeout_ms: int = 100) -> int:
        """Poll until `count` more events were decoded (or a poll finds nothing); returns how many were."""
        from bcc.libbcc import lib

        start = self.count
        while self.count - start < count:
            before = self.count
            lib.perf_reader_poll(len(self._readers), self._readers, timeout_ms)
            if self.count == before:
                break
        return self.count - start

    def close(self) -> None:
        from bcc.libbcc import lib

        for reader in getattr(self, "_readers", ()):
            lib.perf_reader_free(ct.c_void_p(reader))
        self._readers = ()
        super().close()
