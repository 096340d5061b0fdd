#!/usr/bin/env python3
"""A workload whose openat2 arguments are not all readable when the syscall starts.

Run it under the tracer (`tracer demo` does exactly this):

    tracer trace openat2 -- python3 examples/missing_data.py

It makes four openat2 calls:
  1. ordinary arguments on the heap                        -> status ok
  2. path and open_how in an untouched private file mapping -> entry read fails (EFAULT, the page is
     not in the page table yet); the kernel's own copy faults it in; the exit re-read recovers it
  3. a bad pointer for the path                            -> status missing, errno 14, ret -14
  4. resolve flags the security monitor cares about        -> RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS

A plain entry-only tracer shows call 2 as an empty path with flags=0 and resolve=0 — false values.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import tempfile
import time

SYS_openat2 = 437  # x86_64 and aarch64 (asm-generic)
AT_FDCWD = -100
RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x04, 0x08

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def openat2(dfd: int, path_addr: int, how_addr: int, size: int = 24) -> int:
    ret = libc.syscall(ctypes.c_long(SYS_openat2), ctypes.c_int(dfd), ctypes.c_void_p(path_addr),
                       ctypes.c_void_p(how_addr), ctypes.c_size_t(size))
    if ret >= 0:
        os.close(ret)
        return ret
    return -ctypes.get_errno()


def open_how(flags: int, mode: int = 0, resolve: int = 0) -> bytes:
    return struct.pack("<QQQ", flags, mode, resolve)


def show(label: str, ret: int) -> None:
    print(f"  {label}: {ret if ret >= 0 else os.strerror(-ret)}", flush=True)


def main() -> None:
    print("missing_data: four openat2 calls", flush=True)
    # 1. Ordinary: buffers on the heap, touched when they were filled.
    path = ctypes.create_string_buffer(b"/etc/hostname")
    how = ctypes.create_string_buffer(open_how(os.O_RDONLY | os.O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS))
    show("heap arguments", openat2(AT_FDCWD, ctypes.addressof(path), ctypes.addressof(how)))

    # 2. Untouched private file mapping: the file's data is in the page cache, but this process has
    #    no page-table entry for it until something touches the page.
    page = mmap.PAGESIZE
    with tempfile.NamedTemporaryFile(prefix="tracer-demo-", suffix=".args") as f:
        blob = bytearray(2 * page)
        target = b"/etc/passwd\0"
        blob[16:16 + len(target)] = target
        blob[page - 8: page + 16] = open_how(os.O_RDONLY | os.O_NOFOLLOW, 0, RESOLVE_NO_SYMLINKS)
        f.write(blob)
        f.flush()
        m = mmap.mmap(f.fileno(), len(blob), mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))  # takes the address, touches nothing
        # The open_how straddles the two pages: a struct that crosses into a non-resident page.
        show("untouched mapping", openat2(AT_FDCWD, base + 16, base + page - 8))

        # 3. A pointer into nothing.
        show("bad pointer", openat2(AT_FDCWD, 1, ctypes.addressof(how)))

        # 4. Confined lookup: beneath the directory, no symlinks.
        dfd = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)
        rel = ctypes.create_string_buffer(b"hostname")
        confined = ctypes.create_string_buffer(open_how(os.O_RDONLY, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS))
        show("RESOLVE_BENEATH", openat2(dfd, ctypes.addressof(rel), ctypes.addressof(confined)))
        os.close(dfd)
        # The tracer explains addresses from /proc/<pid>/maps when the records arrive (within
        # 100 ms); a process that has exited by then can only be reported as gone.
        time.sleep(0.3)
        del base
        m.close()


if __name__ == "__main__":
    main()
