"""The user_events uapi (include/uapi/linux/user_events.h): packed structs and ioctl numbers.

The ioctl numbers are computed with the kernel's _IOC encoding (asm-generic/ioctl.h) rather than
copied, and checked against the header's values in tests/test_user_events.py.
"""

from __future__ import annotations

import ctypes
import struct

USER_EVENTS_SYSTEM = "user_events"
USER_EVENTS_MULTI_SYSTEM = "user_events_multi"
USER_EVENTS_PREFIX = "u:"  # dynamic_events prefix

USER_EVENT_REG_PERSIST = 1 << 0       # survives the last close; needs CAP_PERFMON
USER_EVENT_REG_MULTI_FORMAT = 1 << 1  # same name, several formats: events/user_events_multi/<name>.<id>
USER_EVENT_REG_MAX = 1 << 2

MAX_EVENT_DESC = 512          # name_args, including the NUL
MAX_FIELD_ARRAY_SIZE = 1024
TRACE_ENTRY_SIZE = 8          # struct trace_entry: the common_* fields before every payload

# asm-generic/ioctl.h
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE, _IOC_READ = 1, 2


def _IOC(dir_: int, type_: str, nr: int, size: int) -> int:
    return (dir_ << _IOC_DIRSHIFT) | (ord(type_) << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IOW(type_: str, nr: int, size: int) -> int:
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOWR(type_: str, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


DIAG_IOC_MAGIC = "*"
_PTR = ctypes.sizeof(ctypes.c_void_p)  # the header encodes `struct user_reg *`: a pointer's size
DIAG_IOCSREG = _IOWR(DIAG_IOC_MAGIC, 0, _PTR)
DIAG_IOCSDEL = _IOW(DIAG_IOC_MAGIC, 1, _PTR)
DIAG_IOCSUNREG = _IOW(DIAG_IOC_MAGIC, 2, _PTR)


class UserReg(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("size", ctypes.c_uint32), ("enable_bit", ctypes.c_uint8), ("enable_size", ctypes.c_uint8),
                ("flags", ctypes.c_uint16), ("enable_addr", ctypes.c_uint64), ("name_args", ctypes.c_uint64),
                ("write_index", ctypes.c_uint32)]


class UserUnreg(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("size", ctypes.c_uint32), ("disable_bit", ctypes.c_uint8), ("reserved", ctypes.c_uint8),
                ("reserved2", ctypes.c_uint16), ("disable_addr", ctypes.c_uint64)]


# The same layouts as struct formats, for code that reads them from raw bytes (the watch).
USER_REG = struct.Struct("<IBBHQQI")
USER_UNREG = struct.Struct("<IBBHQ")
WRITE_INDEX = struct.Struct("<I")

# What the kernel means by each errno of the user_events_data calls (kernel/trace/trace_events_user.c).
MEANING = {
    "write": {
        "EBADF": "the event is disabled: no tracer has it enabled, nothing was recorded",
        "EFAULT": "discarded: the payload (or its write_index) was not readable, or a __data_loc/__rel_loc "
                  "field points outside the payload or a string lacks its NUL; no tracer saw the event",
        "EINVAL": "payload shorter than the event's fixed fields, or a negative write_index",
        "ENOENT": "no event is registered with this write_index on this file descriptor",
    },
    "register": {
        "EINVAL": "bad name_args (unknown type, `long`, array over 1024, struct without size, text flags), "
                  "bad enable_size (4 or 8), enable_addr not aligned, enable_bit out of range, or a flag this "
                  "kernel does not know",
        "EADDRINUSE": "an event with this name exists with other fields (or this enable_addr/bit is taken)",
        "EFAULT": "enable_addr or name_args is not readable",
        "EPERM": "USER_EVENT_REG_PERSIST needs CAP_PERFMON",
        "EMFILE": "too many user events (kernel.user_events_max)",
        "E2BIG": "struct user_reg size is larger than a page",
    },
    "delete": {
        "EBUSY": "the event is still in use (registered by someone, or enabled by a tracer)",
        "ENOENT": "no event with this name",
        "EPERM": "deleting a persistent event needs CAP_PERFMON",
    },
    "unregister": {
        "ENOENT": "nothing registered at this disable_addr/bit in this process",
        "EINVAL": "reserved fields not zero or size too small",
    },
}
