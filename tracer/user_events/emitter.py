"""The writer side of user_events, for Python programs and scripted sessions:

    with UserEvents() as ue:
        ev = ue.register("myapp_req u32 id;__rel_loc char[] path")
        if ev.enabled:                       # some tracer has the event enabled
            ev.write(id=7, path="/srv/a")    # raises EventDisabled, PayloadDiscarded, ... with the kernel's meaning

Each registration gets its own 32-bit enable word in this process; the kernel sets bit 0 of it when a
tracer enables the event (and clears it when the last one stops).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Mapping
from pathlib import Path

from ..errors import UserEventError
from . import data_path, require
from .abi import (
    DIAG_IOCSDEL,
    DIAG_IOCSREG,
    DIAG_IOCSUNREG,
    MEANING,
    TRACE_ENTRY_SIZE,
    USER_EVENT_REG_MAX,
    UserReg,
    UserUnreg,
)
from .formats import Field, parse_name_args

_libc = ctypes.CDLL(None, use_errno=True)
_INT_CODES = {(1, True): "b", (1, False): "B", (2, True): "h", (2, False): "H", (4, True): "i", (4, False): "I",
              (8, True): "q", (8, False): "Q"}


class EventDisabled(UserEventError):
    """EBADF on write: no tracer has the event enabled."""


class PayloadDiscarded(UserEventError):
    """EFAULT on write: the kernel discarded the event (payload unreadable or invalid)."""


class BadFormat(UserEventError):
    """EINVAL: the registration string or the payload does not fit the event's format."""


_BY_ERRNO = {errno.EBADF: EventDisabled, errno.EFAULT: PayloadDiscarded, errno.EINVAL: BadFormat}


def _error(op: str, err: int, what: str) -> UserEventError:
    name = errno.errorcode.get(err, str(err))
    meaning = MEANING.get(op, {}).get(name, os.strerror(err))
    cls = _BY_ERRNO.get(err, UserEventError)
    if op != "write" and cls is not BadFormat:
        cls = UserEventError
    return cls(err, f"{op} {what}: {name}: {meaning}")


def encode(fields: tuple[Field, ...], values: Mapping[str, object]) -> bytes:
    """The payload (what follows the write_index) for these field values, laid out as the format says.
    Strings of __data_loc/__rel_loc fields are NUL-terminated; data_loc offsets count from the record
    start (the 8 common bytes the kernel puts first), rel_loc offsets from the end of the field."""
    unknown = set(values) - {f.name for f in fields}
    if unknown:
        raise BadFormat(errno.EINVAL, f"no field named {', '.join(sorted(unknown))} in this event")
    fixed = bytearray(max((f.offset + f.size for f in fields), default=TRACE_ENTRY_SIZE) - TRACE_ENTRY_SIZE)
    dynamic = bytearray()
    for f in fields:
        v = values.get(f.name)
        at = f.offset - TRACE_ENTRY_SIZE
        kind = f.kind
        if kind == "int":
            iv = 0 if v is None else int(v)  # type: ignore[call-overload]
            try:
                struct.pack_into("<" + _INT_CODES[(f.size, f.signed)], fixed, at, iv)
            except struct.error:
                raise BadFormat(errno.EINVAL, f"{f.name}: {iv} does not fit {f.ctype}") from None
            continue
        data = v.encode() if isinstance(v, str) else bytes(v or b"")  # type: ignore[call-overload]
        if kind in ("chars", "bytes"):
            if len(data) > f.size:
                raise BadFormat(errno.EINVAL, f"{f.name}: {len(data)} bytes do not fit {f.ctype} ({f.size} bytes)")
            fixed[at:at + len(data)] = data
            continue
        if kind == "loc_str":
            if b"\0" in data:
                raise BadFormat(errno.EINVAL, f"{f.name}: a string field cannot contain NUL bytes")
            data += b"\0"
        start = TRACE_ENTRY_SIZE + len(fixed) + len(dynamic)  # in the record
        off = start - (f.offset + 4) if f.rel else start
        if len(data) > 0xFFFF or off > 0xFFFF:
            raise BadFormat(errno.EINVAL, f"{f.name}: {len(data)} bytes at {off} do not fit a 16-bit length/offset")
        struct.pack_into("<I", fixed, at, len(data) << 16 | off)
        dynamic += data
    return bytes(fixed + dynamic)


class Event:
    """One registration on a UserEvents file: its write_index and enable word."""

    def __init__(self, owner: UserEvents, name_args: str, flags: int) -> None:
        self.owner = owner
        self.name_args = name_args
        self.name, self.text_flags, self.fields = parse_name_args(name_args)
        self.flags = flags
        self.enable_word = ctypes.c_uint32(0)  # the kernel writes bit 0 here
        self.enable_bit = 0
        self.write_index: int | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.enable_word.value >> self.enable_bit & 1)

    def encode(self, **values: object) -> bytes:
        return encode(self.fields, values)

    def write(self, **values: object) -> int:
        return self.write_payload(self.encode(**values))

    def write_payload(self, payload: bytes) -> int:
        if self.write_index is None:
            raise UserEventError(errno.ENOENT, f"{self.name}: not registered")
        try:
            return os.writev(self.owner.fd, [struct.pack("<I", self.write_index), payload])
        except OSError as e:
            raise _error("write", e.errno or 0, self.name) from None

    def unregister(self) -> None:
        """DIAG_IOCSUNREG: stop the kernel updating the enable word (the write_index stays valid until the
        file is closed)."""
        if self.write_index is None:
            return
        unreg = UserUnreg(ctypes.sizeof(UserUnreg), self.enable_bit, 0, 0, ctypes.addressof(self.enable_word))
        self.owner._ioctl(DIAG_IOCSUNREG, ctypes.addressof(unreg), "unregister", self.name)
        self.write_index = None


class UserEvents:
    """An open <tracefs>/user_events_data."""

    def __init__(self, tracefs: Path | str | None = None) -> None:
        from ..kenv import tracefs_root

        root = Path(tracefs) if tracefs is not None else tracefs_root()
        require(root)
        self.path = data_path(root)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self.events: list[Event] = []

    def __enter__(self) -> UserEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ioctl(self, cmd: int, arg: int, op: str, what: str) -> None:
        """ioctl(fd, cmd, pointer). Through libc: fcntl.ioctl converts an int argument to a C int, and a
        64-bit address overflows it (OverflowError before any call is made)."""
        if _libc.ioctl(self.fd, ctypes.c_ulong(cmd), ctypes.c_void_p(arg)) < 0:
            raise _error(op, ctypes.get_errno(), what)

    def register(self, name_args: str, *, persist: bool = False, multi_format: bool = False) -> Event:
        """DIAG_IOCSREG. The name_args are checked here first with the kernel's rules (BadFormat)."""
        from .abi import USER_EVENT_REG_MULTI_FORMAT, USER_EVENT_REG_PERSIST

        flags = (USER_EVENT_REG_PERSIST if persist else 0) | (USER_EVENT_REG_MULTI_FORMAT if multi_format else 0)
        assert flags < USER_EVENT_REG_MAX
        ev = Event(self, name_args, flags)
        name = ctypes.create_string_buffer(name_args.encode())
        reg = UserReg(ctypes.sizeof(UserReg), ev.enable_bit, 4, flags, ctypes.addressof(ev.enable_word),
                      ctypes.addressof(name), 0)
        self._ioctl(DIAG_IOCSREG, ctypes.addressof(reg), "register", repr(name_args))
        ev.write_index = reg.write_index
        self.events.append(ev)
        return ev

    def register_eventheader(self, provider: str, level: int, keyword: int = 0, options: str = "") -> Event:
        """An EventHeader tracepoint `<provider>_L<level>K<keyword><options>` with the header's six fields;
        write its events with `ev.write_payload(eh_write.encode_event(...))`."""
        from .eh_write import tracepoint_name
        from .eventheader import COMMAND_TYPES

        return self.register(f"{tracepoint_name(provider, level, keyword, options)} {COMMAND_TYPES}")

    def delete(self, name: str) -> None:
        """DIAG_IOCSDEL: remove the event from the kernel (EBUSY while registered or enabled)."""
        buf = ctypes.create_string_buffer(name.encode())
        self._ioctl(DIAG_IOCSDEL, ctypes.addressof(buf), "delete", repr(name))

    def close(self) -> None:
        if self.fd >= 0:
            for ev in self.events:
                try:
                    ev.unregister()
                except UserEventError:
                    pass
            os.close(self.fd)
            self.fd = -1


def parse_value(f: Field, text: str) -> object:
    """A CLI FIELD=VALUE value: integers for int fields (0x.. allowed), text for strings, hex for bytes."""
    if f.kind == "int":
        return int(text, 0)
    if f.kind in ("bytes", "loc_bytes"):
        return bytes.fromhex(text)
    return text
