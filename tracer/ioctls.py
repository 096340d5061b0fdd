"""ioctl request names, strace style: `ioctl(fd=1, cmd=TCGETS, ...)`, from the kernel's UAPI headers.

A request number is what `_IO/_IOR/_IOW/_IOWR(type, nr, argtype)` make of a subsystem letter, a number
and the size of the argument (include/uapi/asm-generic/ioctl.h; the field widths are the arch's
asm/ioctl.h). The headers below are read with tracer/uapi.py's preprocessor; the size of `argtype` is
this machine's C ABI for scalars and pointers (Python's native struct sizes) and the running kernel's
BTF for structs and unions. A define whose size cannot be known gives no name (never a guessed one).
Numbers are not unique across subsystems: every name a number has is shown, `A or B`, as strace does
(the fd's device decides, and the tracer does not know it). A number with no name is shown as strace
shows it, `_IOC(_IOC_READ, 0x66, 0x1, 0x8)`: its fields, which the number itself holds.
"""

from __future__ import annotations

import re
import struct
from functools import cache

from . import uapi

# Most common first (terminals, sockets, files): the order of the names shown for a shared number. With
# each header, the type bytes of its requests written as plain numbers (old style, type << 8 | nr:
# TCGETS 0x5401, SIOCGIFNAME 0x8910), so that other numbers beside them (flags) are not taken for one.
HEADERS: dict[str, tuple[int, ...]] = {
    "asm-generic/ioctls.h": (0x54,), "linux/sockios.h": (0x89,), "linux/fs.h": (), "linux/perf_event.h": (),
    "linux/user_events.h": (), "linux/random.h": (), "linux/nsfs.h": (), "linux/pidfd.h": (),
    "linux/userfaultfd.h": (), "linux/seccomp.h": (), "linux/inotify.h": (), "linux/fuse.h": (),
    "linux/loop.h": (0x4C,), "linux/nbd.h": (), "linux/blkzoned.h": (), "linux/fsverity.h": (),
    "linux/fscrypt.h": (), "linux/btrfs.h": (), "linux/if_tun.h": (), "linux/kvm.h": (), "linux/vhost.h": (),
    "linux/vfio.h": (), "linux/kd.h": (0x4B,), "linux/vt.h": (0x56,), "linux/input.h": (),
    "linux/uinput.h": (), "linux/hidraw.h": (), "linux/rtc.h": (), "linux/watchdog.h": (),
    "linux/cdrom.h": (0x53,), "linux/fd.h": (), "linux/hdreg.h": (0x03,), "linux/dma-buf.h": (),
    "linux/sync_file.h": (), "linux/gpio.h": (), "linux/spi/spidev.h": (), "linux/i2c-dev.h": (0x07,),
    "linux/usbdevice_fs.h": (), "linux/ppdev.h": (), "linux/ptp_clock.h": (), "linux/media.h": (),
    "linux/videodev2.h": (), "linux/tee.h": (), "linux/auto_fs.h": (), "linux/ublk_cmd.h": (),
    "linux/android/binder.h": (), "sound/asound.h": (),
}

_CALL = re.compile(r"^(_IOWR|_IOR|_IOW|_IO|_IOC)\s*\((.*)\)$", re.S)
_ALIAS = re.compile(r"[A-Za-z_]\w*")  # `#define TIOCINQ FIONREAD`: another name of a request, not one of its own
_CHAR = re.compile(r"'(\\?.)'")
_NATIVE = {  # C scalar type -> struct format character (native size)
    "char": "b", "signed char": "b", "unsigned char": "B", "short": "h", "unsigned short": "H",
    "int": "i", "unsigned int": "I", "unsigned": "I", "long": "l", "unsigned long": "L",
    "long long": "q", "unsigned long long": "Q", "size_t": "N", "__kernel_size_t": "N",
    "__kernel_ulong_t": "L", "__kernel_long_t": "l", "__kernel_pid_t": "i", "pid_t": "i",
    "__kernel_loff_t": "q", "loff_t": "q", "__kernel_off_t": "l", "__kernel_uid32_t": "I",
    "__kernel_mode_t": "I", "uint32_t": "I", "int32_t": "i", "uint64_t": "Q", "int64_t": "q",
    "uint8_t": "B", "uint16_t": "H",
    "__s8": "b", "__u8": "B", "__s16": "h", "__u16": "H", "__s32": "i", "__u32": "I", "__s64": "q",
    "__u64": "Q",
    "__aligned_u64": "Q", "__le16": "H", "__le32": "I", "__le64": "Q", "__be16": "H", "__be32": "I",
    "__be64": "Q",
}


@cache
def layout() -> dict[str, int]:
    """The arch's ioctl fields (_IOC_*SHIFT, _IOC_*BITS, _IOC_NONE/READ/WRITE)."""
    arch = uapi.defines("asm/ioctl.h")  # an arch that overrides the generic widths (powerpc, mips...)
    return uapi.defines("asm-generic/ioctl.h", tuple(arch.items()))


def _btf_size(kind: str, name: str) -> int | None:
    try:
        from .btf import vmlinux

        t = vmlinux().struct_named(name)
    except (OSError, KeyError, ValueError):
        return None
    return t.size_or_type if t.kind_name == kind.upper() else None


def sizeof(ctype: str) -> int | None:
    """Size in bytes of a C type as an ioctl macro names it; None when it cannot be known here."""
    t = " ".join(ctype.replace("const ", " ").split())
    m = re.fullmatch(r"(.+?)\s*\[(\w+)\]", t)
    if m:  # an array: element size times count
        elem, count = sizeof(m.group(1)), uapi.evaluate(m.group(2), {})
        return elem * count if elem is not None and count is not None else None
    if t.endswith("*"):
        return struct.calcsize("P")
    m = re.fullmatch(r"(struct|union)\s+(\w+)", t)
    if m:
        return _btf_size(*m.groups())
    fmt = _NATIVE.get(t)
    return struct.calcsize(fmt) if fmt else None


def _args(text: str) -> list[str]:
    """Top-level comma-separated arguments of a macro call."""
    out, depth, cur = [], 0, ""
    for c in text:
        if c == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += (c in "([") - (c in ")]")
        cur += c
    return [*out, cur.strip()]


def request(expr: str, known: dict[str, int]) -> int | None:
    """The number an `_IO*(...)` expression makes, None if any part of it is unknown here."""
    m = _CALL.match(expr.strip())
    if not m:
        return None
    f = layout()
    try:
        shifts = [f[k] for k in ("_IOC_DIRSHIFT", "_IOC_TYPESHIFT", "_IOC_NRSHIFT", "_IOC_SIZESHIFT")]
        dirs = {"_IO": f["_IOC_NONE"], "_IOR": f["_IOC_READ"], "_IOW": f["_IOC_WRITE"],
                "_IOWR": f["_IOC_READ"] | f["_IOC_WRITE"]}
    except KeyError:
        return None
    macro, args = m.group(1), _args(_CHAR.sub(lambda c: str(ord(c.group(1)[-1])), m.group(2)))
    scope = {**known, **{k: f[k] for k in ("_IOC_NONE", "_IOC_READ", "_IOC_WRITE")}}
    if macro == "_IOC":
        if len(args) != 4:
            return None
        vals = [uapi.evaluate(a, scope) for a in args]
        if None in vals:
            return None
        d, typ, nr, size = vals
    else:
        if len(args) != (2 if macro == "_IO" else 3):
            return None
        typ, nr = uapi.evaluate(args[0], scope), uapi.evaluate(args[1], scope)
        size = 0 if macro == "_IO" else sizeof(args[2])
        if typ is None or nr is None or size is None:
            return None
        d = dirs[macro]
    assert d is not None and typ is not None and nr is not None and size is not None
    return d << shifts[0] | typ << shifts[1] | nr << shifts[2] | size << shifts[3]


@cache
def requests(header: str) -> dict[str, int]:
    """The request names one header defines, with their numbers (empty if the header is absent)."""
    ints, exprs = uapi.scan(header)
    known = dict(ints)  # and the subsystem letters: `#define UINPUT_IOCTL_BASE 'U'`
    known.update((n, ord(m.group(1)[-1])) for n, e in exprs.items() if (m := _CHAR.fullmatch(e)))
    plain_types = HEADERS.get(header, ())
    out = {}
    for name, expr in exprs.items():
        if name in ints:  # a plain number: a request if its type byte is one of the header's
            v = ints[name] if not _ALIAS.fullmatch(expr) and (ints[name] >> 8) in plain_types else None
        else:
            v = request(expr, known)
        if v is not None:
            out[name] = v
    return out


@cache
def names() -> dict[int, tuple[str, ...]]:
    """request number -> its names, in HEADERS order; an alias (`#define TIOCINQ FIONREAD`) is not a
    name of its own."""
    out: dict[int, list[str]] = {}
    for header in HEADERS:
        for name, v in requests(header).items():
            out.setdefault(v, []).append(name)
    return {v: tuple(dict.fromkeys(ns)) for v, ns in out.items()}


def fields(v: int) -> str | None:
    """strace's `_IOC(dir, type, nr, size)` for a number with no name."""
    f = layout()
    try:
        def field(kind: str) -> int:
            return v >> f[f"_IOC_{kind}SHIFT"] & ((1 << f[f"_IOC_{kind}BITS"]) - 1)

        d = field("DIR")
        dirs = [n for n in ("_IOC_READ", "_IOC_WRITE") if f[n] and d & f[n] == f[n]]
    except KeyError:
        return None
    return f"_IOC({'|'.join(dirs) or '_IOC_NONE'}, {field('TYPE'):#x}, {field('NR'):#x}, {field('SIZE'):#x})"


def ioctl_str(v: int) -> str | None:
    known = names().get(v)
    return " or ".join(known) if known else fields(v)
