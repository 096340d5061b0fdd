"""Symbolic names of integer syscall arguments, strace style: `socket(family=AF_INET,
type=SOCK_STREAM|SOCK_CLOEXEC)`, `clone(clone_flags=CLONE_CHILD_SETTID|CLONE_CHILD_CLEARTID|SIGCHLD)`,
`kill(sig=SIGTERM)`, `wait4(options=WNOHANG)`, `mmap(prot=PROT_READ|PROT_WRITE, ...)`.

Rules are keyed by syscall and argument name as the tracefs format files spell them. Values come from
Python's stdlib (socket, signal, os, mmap, fcntl, select, time, resource: the C library's constants)
and from the kernel's UAPI headers (tracer/uapi.py) for what the stdlib lacks (CLONE_*, MAP_FIXED,
__WALL, MREMAP_*, ...). Where both have a name for a value the stdlib's enums decide (they know the
canonical one: SIGABRT, not SIGIOT); the headers' file order decides among header names. No value
table is typed here: only which names belong to which argument (a name filter per table).
A value with no known name gets no symbol (the number is shown); unknown bits of a flag set are kept
in hex (`O_CLOEXEC|0x80000000`), never dropped.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import resource
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable
from functools import cache

from . import uapi
from .btf import Btf, BtfError
from .ioctls import ioctl_str

Render = Callable[[int], "str | None"]


def _module(mod: object, pattern: str) -> list[tuple[str, int]]:
    rx = re.compile(pattern)
    return [(n, int(v)) for n in dir(mod) if rx.fullmatch(n) and isinstance(v := getattr(mod, n), int)]


def _header(header: str, pattern: str, base: Iterable[tuple[str, int]] = ()) -> list[tuple[str, int]]:
    rx = re.compile(pattern)
    return [(n, v) for n, v in uapi.defines(header, tuple(base)).items() if rx.fullmatch(n)]


def _names(*sources: Iterable[tuple[str, int]], bits: bool = False) -> dict[int, str]:
    """value -> name, the first source naming a value wins; `bits`: single-bit values only."""
    out: dict[int, str] = {}
    for src in sources:
        for name, v in src:
            if v < 0 or (bits and (v == 0 or v & (v - 1))):
                continue
            out.setdefault(v, name)
    return out


def _os_o() -> list[tuple[str, int]]:
    return _module(os, r"O_[A-Z]+")


def flags_str(v: int, names: dict[int, str], zero: str | None = None) -> str | None:
    """`A|B|0x40` (unknown bits in hex); `zero` (or no symbol) for 0."""
    if v == 0:
        return zero
    parts = []
    rest = v
    for bit in sorted(names):
        if v & bit:
            parts.append(names[bit])
            rest &= ~bit
    if rest:
        parts.append(f"{rest:#x}")
    return "|".join(parts)


def _flags(names: Callable[[], dict[int, str]], zero: str | None = None) -> Render:
    return lambda v: flags_str(v, names(), zero)


def _enum(names: Callable[[], dict[int, str]]) -> Render:
    return lambda v: names().get(v)


# --- tables (each built once, on first use) --------------------------------------------------------

@cache
def address_families() -> dict[int, str]:
    return {m.value: m.name for m in socket.AddressFamily if m.name.startswith("AF_")}


@cache
def sock_types() -> dict[int, str]:
    return {m.value: m.name for m in socket.SocketKind if m.value < 16}


@cache
def sock_flags() -> dict[int, str]:
    return _names(_module(socket, r"SOCK_(CLOEXEC|NONBLOCK)"), bits=True)


@cache
def ip_protocols() -> dict[int, str]:
    # IPPROTO_IP before IPPROTO_HOPOPTS (both 0): the name a socket() caller means.
    return _names(_module(socket, r"IPPROTO_IP"), _module(socket, r"IPPROTO_\w+"))


@cache
def netlink_protocols() -> dict[int, str]:
    return _names(_header("linux/netlink.h", r"NETLINK_(?!ADD_|DROP_|PKTINFO|BROADCAST|NO_ENOBUFS|RX_|TX_|LISTEN|"
                                              r"CAP_ACK|EXT_ACK|GET_STRICT)[A-Z0-9_]+"))


@cache
def msg_flags() -> dict[int, str]:
    return _names(_module(socket, r"MSG_\w+"), bits=True)


@cache
def shutdown_how() -> dict[int, str]:
    return _names(_module(socket, r"SHUT_\w+"))


@cache
def sol_levels() -> dict[int, str]:
    return _names(_module(socket, r"SOL_(SOCKET|IP|TCP|UDP)"), [("SOL_IPV6", socket.IPPROTO_IPV6)],
                  _module(socket, r"SOL_\w+"), [(n, v) for v, n in ip_protocols().items()])


@cache
def so_options() -> dict[int, str]:
    return _names(_header("asm/socket.h", r"SO_\w+"), _header("asm-generic/socket.h", r"SO_\w+"),
                  _module(socket, r"SO_\w+"))


@cache
def ip_options() -> dict[int, str]:
    """IPPROTO_IP socket options (linux/in.h), without the values of IP_MTU_DISCOVER and the defaults."""
    return _names(_header("linux/in.h", r"IP_(?!PMTUDISC_|DEFAULT_)\w+"))


@cache
def ipv6_options() -> dict[int, str]:
    """IPPROTO_IPV6 socket options (linux/in6.h), without flow-label, priority, TLV and PMTU values."""
    return _names(_header("linux/in6.h", r"IPV6_(?!FL_|FLOWINFO_(?!SEND)|PRIORITY_|TLV_|PMTUDISC_)\w+"))


@cache
def tcp_options() -> dict[int, str]:
    return _names(_module(socket, r"TCP_[A-Z_]+"))


@cache
def clone_flags() -> dict[int, str]:
    return _names(_header("linux/sched.h", r"CLONE_(?!ARGS_)\w+"), bits=True)


@cache
def signals() -> dict[int, str]:
    """1..31 from signal.Signals (canonical names); real-time signals numbered from the kernel's SIGRTMIN
    (32, asm/signal.h: the C library reserves the first two and calls 34 SIGRTMIN)."""
    out = {m.value: m.name for m in signal.Signals if m.value < 32}
    rtmin = uapi.defines("asm/signal.h").get("SIGRTMIN")
    if rtmin is not None:
        out.update({rtmin + i: "SIGRTMIN" if i == 0 else f"SIGRTMIN+{i}" for i in range(signal.NSIG - rtmin)})
    return out


@cache
def sigprocmask_how() -> dict[int, str]:
    return {m.value: m.name for m in signal.Sigmasks}


def _wait_flags(stopped: str) -> dict[int, str]:
    return _names([(stopped, os.WUNTRACED)], _module(os, r"W(NOHANG|EXITED|CONTINUED|NOWAIT)"),
                  _header("linux/wait.h", r"__W\w+"), bits=True)


@cache
def wait4_options() -> dict[int, str]:
    return _wait_flags("WUNTRACED")


@cache
def waitid_options() -> dict[int, str]:
    return _wait_flags("WSTOPPED")


@cache
def idtypes() -> dict[int, str]:
    return _names(_module(os, r"P_(ALL|PID|PGID|PIDFD)"), _header("linux/wait.h", r"P_\w+"))


@cache
def prot_flags() -> dict[int, str]:
    return _names(_module(mmap, r"PROT_\w+"), _header("asm-generic/mman-common.h", r"PROT_\w+"), bits=True)


@cache
def map_types() -> dict[int, str]:
    return _names(_module(mmap, r"MAP_(SHARED|PRIVATE)"), _header("linux/mman.h", r"MAP_SHARED\w*|MAP_PRIVATE|"
                                                                                r"MAP_DROPPABLE"))


@cache
def map_flags() -> dict[int, str]:
    # MAP_ANONYMOUS before the stdlib's MAP_ANON alias; the type bits (MAP_TYPE) are named by map_types.
    return {v: n for v, n in _names(
        _header("asm-generic/mman-common.h", r"MAP_\w+"), _header("asm/mman.h", r"MAP_\w+"),
        _header("asm-generic/mman.h", r"MAP_\w+"), _module(mmap, r"MAP_(?!ANON$)\w+"), bits=True).items()
        if v & ~map_type_mask()}


@cache
def map_type_mask() -> int:
    return uapi.defines("asm-generic/mman-common.h").get("MAP_TYPE", 0x0F if map_types() else 0)


@cache
def madvise_advice() -> dict[int, str]:
    return _names(_module(mmap, r"MADV_\w+"), _header("asm-generic/mman-common.h", r"MADV_\w+"))


@cache
def mremap_flags() -> dict[int, str]:
    return _names(_header("linux/mman.h", r"MREMAP_\w+"), bits=True)


@cache
def msync_flags() -> dict[int, str]:
    return _names(_header("asm-generic/mman-common.h", r"MS_\w+"), bits=True)


@cache
def mlock_flags() -> dict[int, str]:
    return _names(_header("asm-generic/mman-common.h", r"MLOCK_\w+"), bits=True)


@cache
def mlockall_flags() -> dict[int, str]:
    return _names(_header("asm/mman.h", r"MCL_\w+"), _header("asm-generic/mman.h", r"MCL_\w+"), bits=True)


@cache
def fcntl_commands() -> dict[int, str]:
    # F_RDLCK/F_WRLCK/F_UNLCK (lock types), F_SEAL_* and F_OWNER_* share values with commands.
    cmd = r"F_(?!(RD|WR|UN|EX|SH)LCK|SEAL_|OWNER_|LINUX_SPECIFIC_BASE)[A-Z_]+(?<!64)"
    return _names(_module(fcntl, cmd), _header("asm-generic/fcntl.h", cmd), _header("linux/fcntl.h", cmd))


@cache
def fd_flags() -> dict[int, str]:
    return _names(_module(fcntl, r"FD_CLOEXEC"), bits=True)


@cache
def status_flags() -> dict[int, str]:
    """F_SETFL, pipe2, dup3: O_* file status bits (no access mode)."""
    return _names([(n, v) for n, v in _os_o() if n not in ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE",
                                                          "O_NDELAY", "O_FSYNC", "O_RSYNC", "O_SYNC", "O_TMPFILE")],
                  bits=True)


@cache
def seal_flags() -> dict[int, str]:
    return _names(_module(fcntl, r"F_SEAL_\w+"), _header("linux/fcntl.h", r"F_SEAL_\w+"), bits=True)


@cache
def lock_types() -> dict[int, str]:
    return _names(_module(fcntl, r"F_(RD|WR|UN)LCK"))


@cache
def access_modes() -> dict[int, str]:
    return _names(_module(os, r"[RWX]_OK"), bits=True)


@cache
def seek_whence() -> dict[int, str]:
    return _names(_module(os, r"SEEK_\w+"), _header("linux/fs.h", r"SEEK_(?!MAX)\w+"))


@cache
def flock_ops() -> dict[int, str]:
    return _names(_module(fcntl, r"LOCK_(SH|EX|NB|UN)"), bits=True)


@cache
def rename_flags() -> dict[int, str]:
    return _names(_header("linux/fs.h", r"RENAME_\w+"), bits=True)


@cache
def statx_mask() -> dict[int, str]:
    return _names(_header("linux/stat.h", r"STATX_(?!ATTR_|_RESERVED)\w+"), bits=True)


@cache
def eventfd_flags() -> dict[int, str]:
    return _names(_module(os, r"EFD_\w+"), bits=True)


@cache
def memfd_flags() -> dict[int, str]:
    return _names(_module(os, r"MFD_(CLOEXEC|ALLOW_SEALING|HUGETLB)"),
                  _header("linux/memfd.h", r"MFD_(?!HUGE_)\w+"), bits=True)


@cache
def random_flags() -> dict[int, str]:
    return _names(_module(os, r"GRND_\w+"), _header("linux/random.h", r"GRND_\w+"), bits=True)


@cache
def epoll_flags() -> dict[int, str]:
    return _names(_module(select, r"EPOLL_CLOEXEC"), bits=True)


@cache
def inotify_init_flags() -> dict[int, str]:
    return _names(_header("linux/inotify.h", r"IN_(CLOEXEC|NONBLOCK)", _os_o()), bits=True)


@cache
def pidfd_flags() -> dict[int, str]:
    return _names(_header("linux/pidfd.h", r"PIDFD_\w+", _os_o()), bits=True)


@cache
def clocks() -> dict[int, str]:
    return _names(_module(time, r"CLOCK_\w+"), _header("linux/time.h", r"CLOCK_(?!S_)\w+"))


@cache
def rlimits() -> dict[int, str]:
    return _names(_module(resource, r"RLIMIT_\w+"))


@cache
def futex_ops() -> dict[int, str]:
    return _names(_header("linux/futex.h", r"FUTEX_(?!OP_|WAITERS|OWNER_|TID_|BITSET_|32|CMD_MASK|WAITV)[A-Z0-9_]+"
                                           r"(?<!_PRIVATE)"))


@cache
def futex_flags() -> dict[int, str]:
    return _names(_header("linux/futex.h", r"FUTEX_(PRIVATE_FLAG|CLOCK_REALTIME)"), bits=True)


@cache
def ptrace_requests() -> dict[int, str]:
    return _names(_header("linux/ptrace.h", r"PTRACE_(?!O_|EVENT|SYSCALL_INFO_|PEEKSIGINFO_SHARED)[A-Z_]+"),
                  _header("asm/ptrace-abi.h", r"PTRACE_[A-Z_0-9]+"))


@cache
def prctl_options() -> dict[int, str]:
    """linux/prctl.h in file order: each option comes before the values of its arguments, so the first
    name of a value is the option's; argument values that no option has (0, bit masks) are left out."""
    sub = r"PR_(?!FP_EXC_|SVE_VL_|SVE_SET_VL_ONEXEC|SME_VL_|SME_SET_VL_ONEXEC|MTE_|RISCV_V_VSTATE_|PPC_DEXCR_)\w+"
    return {v: n for v, n in _names(_header("linux/prctl.h", sub)).items() if v}


@cache
def sched_policies() -> dict[int, str]:
    return _names(_header("linux/sched.h", r"SCHED_(?!FLAG_|RESET_)\w+"), _module(os, r"SCHED_(?!RESET_)\w+"))


# --- renderers -------------------------------------------------------------------------------------

def signal_str(v: int) -> str | None:
    return signals().get(v)


def socket_type_str(v: int) -> str | None:
    t = sock_types().get(v & 0xF)
    if t is None:
        return None
    rest = flags_str(v & ~0xF, sock_flags())
    return t if rest is None else f"{t}|{rest}"


def clone_flags_str(v: int) -> str | None:
    """Flags, then the exit signal in the low byte (CSIGNAL), as strace writes them."""
    parts = [p for p in (flags_str(v & ~0xFF, clone_flags()), signal_str(v & 0xFF) if v & 0xFF else None) if p]
    if v & 0xFF and signal_str(v & 0xFF) is None:
        parts.append(str(v & 0xFF))
    return "|".join(parts) or None


def mmap_flags_str(v: int) -> str | None:
    mask = map_type_mask()
    t = map_types().get(v & mask) if mask else None
    rest = flags_str(v & ~mask if t else v, map_flags())
    return "|".join(p for p in (t, rest) if p) or None


def access_mode_str(v: int) -> str | None:
    """F_OK, or R_OK|W_OK|X_OK in that order (strace's)."""
    if v == 0:
        return "F_OK"
    names = access_modes()
    parts = [names[b] for b in sorted(names, reverse=True) if v & b]
    rest = v & ~sum(names)
    return "|".join(parts + ([f"{rest:#x}"] if rest else []))


def futex_op_str(v: int) -> str | None:
    """FUTEX_WAIT_PRIVATE, FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME: the command, then its flags."""
    bits = {n: b for b, n in futex_flags().items()}
    private, realtime = bits.get("FUTEX_PRIVATE_FLAG", 0), bits.get("FUTEX_CLOCK_REALTIME", 0)
    cmd = futex_ops().get(v & ~(private | realtime))
    if cmd is None:
        return None
    return cmd + ("_PRIVATE" if v & private else "") + ("|FUTEX_CLOCK_REALTIME" if v & realtime else "")


def _minus_one(v: int) -> str | None:
    """An fd passed in an unsigned long (mmap): the kernel uses its low 32 bits (fget takes an
    unsigned int), so -1 as the caller wrote it, whether it arrived sign-extended or not."""
    return "-1" if v & 0xFFFFFFFF == 0xFFFFFFFF else None


_SIG = signal_str
_WAIT4 = _flags(wait4_options)
_CLONE = _flags(clone_flags)

# (syscall, argument) -> renderer. Argument names are those of the tracefs format files.
BY_ARG: dict[tuple[str, str], Render] = {
    **{(sc, "family"): _enum(address_families) for sc in ("socket", "socketpair")},
    **{(sc, "type"): socket_type_str for sc in ("socket", "socketpair")},
    ("accept4", "flags"): _flags(sock_flags),
    ("shutdown", "how"): _enum(shutdown_how),
    **{(sc, "flags"): _flags(msg_flags) for sc in ("sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg",
                                                    "recvmmsg")},
    **{(sc, "level"): _enum(sol_levels) for sc in ("setsockopt", "getsockopt")},
    ("clone", "clone_flags"): clone_flags_str,
    ("unshare", "unshare_flags"): _CLONE,
    ("setns", "flags"): _CLONE,  # the CLONE_NEW* type expected of fd (0: any)
    **{(sc, "sig"): _SIG for sc in ("kill", "tkill", "tgkill", "rt_sigaction", "rt_sigqueueinfo",
                                     "rt_tgsigqueueinfo", "pidfd_send_signal")},
    ("rt_sigprocmask", "how"): _enum(sigprocmask_how),
    ("wait4", "options"): _WAIT4,
    ("waitid", "options"): _flags(waitid_options),
    ("waitid", "which"): _enum(idtypes),
    ("mmap", "prot"): _flags(prot_flags, "PROT_NONE"),
    ("mmap", "flags"): mmap_flags_str,
    ("mmap", "fd"): _minus_one,
    ("mprotect", "prot"): _flags(prot_flags, "PROT_NONE"),
    ("pkey_mprotect", "prot"): _flags(prot_flags, "PROT_NONE"),
    ("mremap", "flags"): _flags(mremap_flags),
    ("msync", "flags"): _flags(msync_flags),
    ("madvise", "behavior"): _enum(madvise_advice),
    ("process_madvise", "behavior"): _enum(madvise_advice),
    ("mlock2", "flags"): _flags(mlock_flags),
    ("mlockall", "flags"): _flags(mlockall_flags),
    ("fcntl", "cmd"): _enum(fcntl_commands),
    ("ioctl", "cmd"): ioctl_str,
    **{(sc, "mode"): access_mode_str for sc in ("access", "faccessat", "faccessat2")},
    ("lseek", "whence"): _enum(seek_whence),
    ("flock", "cmd"): _flags(flock_ops),
    ("dup3", "flags"): _flags(status_flags),
    ("pipe2", "flags"): _flags(status_flags),
    ("renameat2", "flags"): _flags(rename_flags),
    ("statx", "mask"): _flags(statx_mask),
    ("eventfd2", "flags"): _flags(eventfd_flags),
    ("memfd_create", "flags"): _flags(memfd_flags),
    ("getrandom", "flags"): _flags(random_flags),
    ("epoll_create1", "flags"): _flags(epoll_flags),
    ("inotify_init1", "flags"): _flags(inotify_init_flags),
    ("pidfd_open", "flags"): _flags(pidfd_flags),
    **{(sc, "which_clock"): _enum(clocks) for sc in ("clock_gettime", "clock_settime", "clock_getres",
                                                      "clock_nanosleep", "clock_adjtime")},
    ("timerfd_create", "clockid"): _enum(clocks),
    ("timer_create", "which_clock"): _enum(clocks),
    **{(sc, "resource"): _enum(rlimits) for sc in ("prlimit64", "getrlimit", "setrlimit")},
    ("futex", "op"): futex_op_str,
    ("ptrace", "request"): _enum(ptrace_requests),
    ("sched_setscheduler", "policy"): _enum(sched_policies),
    ("prctl", "option"): _enum(prctl_options),
}


def _socket_protocol(args: dict) -> str | None:
    fam, proto = args.get("family"), args.get("protocol")
    if not isinstance(proto, int):
        return None
    if fam in (socket.AF_INET, socket.AF_INET6):
        return ip_protocols().get(proto)
    if fam == socket.AF_NETLINK:
        return netlink_protocols().get(proto)
    return None


def _sockopt_name(args: dict) -> str | None:
    level, opt = args.get("level"), args.get("optname")
    if level == socket.SOL_SOCKET:
        return so_options().get(opt)  # type: ignore[arg-type]
    if level == socket.IPPROTO_TCP:
        return tcp_options().get(opt)  # type: ignore[arg-type]
    if level == socket.IPPROTO_IP:
        return ip_options().get(opt)  # type: ignore[arg-type]
    if level == socket.IPPROTO_IPV6:
        return ipv6_options().get(opt)  # type: ignore[arg-type]
    return None


def _fcntl_arg(args: dict) -> str | None:
    cmd, arg = args.get("cmd"), args.get("arg")
    if not isinstance(arg, int):
        return None
    name = fcntl_commands().get(cmd)  # type: ignore[arg-type]
    if name == "F_SETFD":
        return flags_str(arg, fd_flags(), "0")
    if name == "F_SETFL":
        return flags_str(arg, status_flags(), "0")
    if name == "F_ADD_SEALS":
        return flags_str(arg, seal_flags())
    if name == "F_SETLEASE":
        return lock_types().get(arg)
    if name == "F_SETSIG":
        return signal_str(arg)
    return None


# Arguments whose meaning depends on another argument: syscall -> (argument, renderer of all args).
BY_CONTEXT: dict[str, tuple[tuple[str, Callable[[dict], str | None]], ...]] = {
    "socket": (("protocol", _socket_protocol),),
    "socketpair": (("protocol", _socket_protocol),),
    "setsockopt": (("optname", _sockopt_name),),
    "getsockopt": (("optname", _sockopt_name),),
    "fcntl": (("arg", _fcntl_arg),),
}


def renderer(syscall: str, arg: str) -> Render | None:
    return BY_ARG.get((syscall, arg))


def context_symbols(syscall: str, args: dict) -> dict[str, str]:
    """Symbols of the context-dependent arguments of one call (BY_CONTEXT)."""
    out = {}
    for name, fn in BY_CONTEXT.get(syscall, ()):
        sym = fn(args)
        if sym is not None:
            out[name] = sym
    return out


# --- structs passed by pointer and read by the tracer (plan in tracer/syscalls.py) ------------------

def clone_args(raw: bytes) -> dict | None:
    """struct clone_args (clone3), fields as include/uapi/linux/sched.h declares them, each u64; a
    caller's shorter struct (CLONE_ARGS_SIZE_VER0 = 64 bytes) has fewer fields. `flags_str` and
    `exit_signal_str` as in clone(2)'s rendering."""
    fields = uapi.u64_struct_fields("linux/sched.h", "clone_args")
    n = min(len(fields), len(raw) // 8)
    if n == 0:
        return None
    vals = dict(zip(fields, struct.unpack_from(f"<{n}Q", raw), strict=False))
    out: dict = dict(vals)
    if "flags" in vals:
        out["flags_str"] = flags_str(vals["flags"], clone_flags()) or "0"
    if vals.get("exit_signal"):
        out["exit_signal_str"] = signal_str(vals["exit_signal"])
    if len(raw) > n * 8:
        out["ext"] = raw[n * 8:].hex()
    return out


def sigset(raw: bytes) -> dict | None:
    """A sigset_t as the kernel reads it (bit N-1 for signal N, little-endian words): the signals, and
    the mask in hex. strace's `[INT TERM]` / `~[KILL STOP]` is the console's rendering of it."""
    if not raw:
        return None
    mask = int.from_bytes(raw, "little")
    names = [signal_str(i + 1) or str(i + 1) for i in range(len(raw) * 8) if mask >> i & 1]
    return {"signals": names, "mask": hex(mask)}


def sigset_str(d: dict) -> str:
    """strace's rendering of a decoded sigset: `[INT TERM]`, or `~[KILL STOP]` when most signals are in."""
    bits = int(d["mask"], 16).bit_length()
    known = [n for v, n in sorted(signals().items()) if v <= max(bits, 64)]
    short = [n.removeprefix("SIG") for n in d["signals"]]
    if len(short) > len(known) // 2:
        inside = set(d["signals"])
        return "~[" + " ".join(n.removeprefix("SIG") for n in known if n not in inside) + "]"
    return "[" + " ".join(short) + "]"


def sa_flags() -> dict[int, str]:
    return _names(_header("asm/signal.h", r"SA_\w+"), _header("asm-generic/signal-defs.h", r"SA_\w+"),
                  bits=True)


@cache
def sigaction_layout() -> tuple[int, dict[str, int]] | None:
    """(size, field -> offset) of the kernel's struct sigaction (what rt_sigaction reads from the caller),
    from the running kernel's BTF (tracer/btfmemo.py): sa_restorer exists on some architectures only;
    None without BTF."""
    from .btfmemo import remembered  # deferred: the memo (and the program cache) only where needed

    try:
        got = remembered("sigaction", _sigaction_layout)
    except (OSError, BtfError):
        return None
    return None if got is None else (int(got[0]), {str(k): int(v) for k, v in got[1].items()})


def _sigaction_layout(btf: Btf) -> tuple[int, dict[str, int]] | None:
    try:
        size = btf.struct_named("sigaction").size_or_type
    except KeyError:
        return None
    offsets = {}
    for name in ("sa_handler", "sa_flags", "sa_restorer", "sa_mask"):
        try:
            offsets[name] = btf.offsetof("sigaction", name)
        except (KeyError, ValueError):
            continue
    if {"sa_handler", "sa_flags", "sa_mask"} - set(offsets) or max(offsets.values()) != offsets["sa_mask"]:
        return None  # another shape than the one decoded here: left as a pointer
    return size, offsets


def sigaction(raw: bytes) -> dict | None:
    """struct sigaction as rt_sigaction(2) reads it: handler (SIG_DFL/SIG_IGN named), flags, restorer,
    and the mask as a signal set (strace: `{sa_handler=SIG_IGN, sa_mask=[INT], sa_flags=SA_RESTART}`)."""
    layout = sigaction_layout()
    if layout is None or len(raw) < layout[0]:
        return None
    size, at = layout
    word = struct.calcsize("P")

    def ulong(name: str) -> int:
        return int.from_bytes(raw[at[name]: at[name] + word], "little")

    out: dict = {"sa_handler": ulong("sa_handler")}
    if out["sa_handler"] in (0, 1):
        out["sa_handler_str"] = ("SIG_DFL", "SIG_IGN")[out["sa_handler"]]
    out["sa_flags"] = ulong("sa_flags")
    out["sa_flags_str"] = flags_str(out["sa_flags"], sa_flags()) or "0"
    if "sa_restorer" in at:
        out["sa_restorer"] = ulong("sa_restorer")
    out["sa_mask"] = sigset(raw[at["sa_mask"]: size])
    return out


def sigaction_str(d: dict) -> str:
    """strace's rendering of a decoded struct sigaction."""
    parts = [f"sa_handler={d.get('sa_handler_str') or hex(d['sa_handler'])}"]
    if d.get("sa_mask") is not None:
        parts.append(f"sa_mask={sigset_str(d['sa_mask'])}")
    parts.append(f"sa_flags={d['sa_flags_str']}")
    if d.get("sa_restorer"):
        parts.append(f"sa_restorer={d['sa_restorer']:#x}")
    return "{" + ", ".join(parts) + "}"


# Input signal sets (sigset_t *) read by the tracer: (syscall, argument) -> its size argument.
SIGSET_ARGS = {("rt_sigprocmask", "nset"): "sigsetsize", ("rt_sigsuspend", "unewset"): "sigsetsize",
               ("rt_sigtimedwait", "uthese"): "sigsetsize", ("signalfd4", "user_mask"): "sizemask",
               ("signalfd", "user_mask"): "sizemask"}

# (syscall, argument) -> decoder of the bytes read at that pointer (a dict), for read kinds RK_BUF*.
STRUCTS: dict[tuple[str, str], Callable[[bytes], dict | None]] = {
    ("clone3", "uargs"): clone_args,
    ("rt_sigaction", "act"): sigaction,
    **dict.fromkeys(SIGSET_ARGS, sigset),
}
