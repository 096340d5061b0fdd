"""Symbolic decoding of integer arguments (tracer/symbols.py, tracer/uapi.py) on synthesized records:
exact renderings of known values, the fast decoder equal to the reference one, and the UAPI header
values agreeing with the C library's where both define a name."""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import signal
import socket
import struct
import subprocess

import pytest
from test_decode import CONNECT, Data, record, slot

from tracer import layout, symbols, syscalls, uapi
from tracer.decode import Decoder
from tracer.syscalls import Arg, Read, Syscall

C = layout.const
RS_OK = C("RS_OK")
U64 = (1 << 64) - 1


def sc(name: str, nr: int, *args: tuple[str, str]) -> Syscall:
    a = tuple(Arg(n, t) for n, t in args)
    return Syscall(name, nr, a, syscalls.plan_reads(name, list(a)))


SOCKET = sc("socket", 41, ("family", "int"), ("type", "int"), ("protocol", "int"))
CLONE = sc("clone", 56, ("clone_flags", "unsigned long"), ("newsp", "unsigned long"), ("parent_tidptr", "int *"),
           ("child_tidptr", "int *"), ("tls", "unsigned long"))
CLONE3 = sc("clone3", 435, ("uargs", "struct clone_args *"), ("size", "size_t"))
KILL = sc("kill", 62, ("pid", "pid_t"), ("sig", "int"))
WAIT4 = sc("wait4", 61, ("upid", "pid_t"), ("stat_addr", "int *"), ("options", "int"), ("ru", "struct rusage *"))
WAITID = sc("waitid", 247, ("which", "int"), ("upid", "pid_t"), ("infop", "struct siginfo *"), ("options", "int"),
            ("ru", "struct rusage *"))
MMAP = sc("mmap", 9, ("addr", "unsigned long"), ("len", "unsigned long"), ("prot", "unsigned long"),
          ("flags", "unsigned long"), ("fd", "unsigned long"), ("off", "unsigned long"))
MPROTECT = sc("mprotect", 10, ("start", "unsigned long"), ("len", "size_t"), ("prot", "unsigned long"))
FCNTL = sc("fcntl", 72, ("fd", "unsigned int"), ("cmd", "unsigned int"), ("arg", "unsigned long"))
ACCESS = sc("access", 21, ("filename", "const char *"), ("mode", "int"))
SETSOCKOPT = sc("setsockopt", 54, ("fd", "int"), ("level", "int"), ("optname", "int"), ("optval", "char *"),
                ("optlen", "int"))
RT_SIGPROCMASK = sc("rt_sigprocmask", 14, ("how", "int"), ("nset", "sigset_t *"), ("oset", "sigset_t *"),
                    ("sigsetsize", "size_t"))
FUTEX = sc("futex", 202, ("uaddr", "u32 *"), ("op", "int"), ("val", "u32"),
           ("utime", "const struct __kernel_timespec *"), ("uaddr2", "u32 *"), ("val3", "u32"))
HAND_BUILT = (SOCKET, CLONE, CLONE3, KILL, WAIT4, WAITID, MMAP, MPROTECT, FCNTL, ACCESS, SETSOCKOPT, RT_SIGPROCMASK,
              FUTEX)
TABLE = {s.nr: s for s in (*HAND_BUILT, CONNECT)}


def event(scall: Syscall, args: list[int], **kw) -> dict:
    rec = record(scall.nr, args, **kw)
    d = Decoder(TABLE)
    fast, ref = d.decode(rec, 0), d.decode_generic(rec, 0)
    assert json.dumps(fast) == json.dumps(ref)  # byte-identical JSON from both decoders
    return fast


def test_hand_built_syscalls_match_tracefs() -> None:
    try:
        tab = syscalls.table()
    except Exception as e:  # no tracefs access here
        pytest.skip(f"live tracefs unavailable: {e}")
    for s in HAND_BUILT:
        assert (tab[s.name].args, tab[s.name].reads) == (s.args, s.reads), s.name


@pytest.mark.parametrize("args, expected", [
    ([2, 0x80001, 0], {"family": "AF_INET", "type": "SOCK_STREAM|SOCK_CLOEXEC", "protocol": "IPPROTO_IP"}),
    ([1, 2 | 0x800, 0], {"family": "AF_UNIX", "type": "SOCK_DGRAM|SOCK_NONBLOCK"}),
    ([10, 2, 17], {"family": "AF_INET6", "type": "SOCK_DGRAM", "protocol": "IPPROTO_UDP"}),
    ([16, 3, 0], {"family": "AF_NETLINK", "type": "SOCK_RAW", "protocol": "NETLINK_ROUTE"}),
    ([2, 1 | 0x40000000, 0], {"family": "AF_INET", "type": "SOCK_STREAM|0x40000000", "protocol": "IPPROTO_IP"}),
    ([4242, 15, 7], {}),  # nothing known: numbers only
])
def test_socket(args: list[int], expected: dict) -> None:
    assert event(SOCKET, args).get("args_str", {}) == expected


def test_clone_flags_and_exit_signal() -> None:
    ev = event(CLONE, [0x1200011, 0, 0, 0x7FFD0000, 0])
    assert ev["args_str"] == {"clone_flags": "CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD"}
    threads = 0x3D0F00  # glibc's pthread_create
    assert event(CLONE, [threads, 0, 0, 0, 0])["args_str"]["clone_flags"] == (
        "CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|"
        "CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID")
    assert event(CLONE, [17, 0, 0, 0, 0])["args_str"]["clone_flags"] == "SIGCHLD"


def test_clone3_struct_decoded() -> None:
    d = Data()
    raw = struct.pack("<11Q", 0x1000, 0x7FFD0100, 0, 0, 17, 0, 0, 0, 0, 0, 0)
    off = d.add(raw)
    rec_slot = slot(0, C("RK_BUF_LEN"), RS_OK, enter=off, want=88)
    ev = event(CLONE3, [0x7FFD0000, 88], slots=(rec_slot,), data=bytes(d.buf))
    assert ev["args"]["uargs"] == {"flags": 0x1000, "pidfd": 0x7FFD0100, "child_tid": 0, "parent_tid": 0,
                                   "exit_signal": 17, "stack": 0, "stack_size": 0, "tls": 0, "set_tid": 0,
                                   "set_tid_size": 0, "cgroup": 0, "flags_str": "CLONE_PIDFD",
                                   "exit_signal_str": "SIGCHLD"}
    assert ev["reads"]["uargs"]["status"] == "ok" and ev["reads"]["uargs"]["size"] == 88
    assert CLONE3.reads == (Read(0, C("RK_BUF_LEN"), 1, syscalls.CLONE_ARGS_CAP),)


def test_clone_args_short_struct_keeps_what_was_passed() -> None:
    v0 = symbols.clone_args(struct.pack("<8Q", 0x100, 0, 0, 0, 0, 0, 0, 0))  # CLONE_ARGS_SIZE_VER0
    assert v0 is not None and "set_tid" not in v0 and v0["flags_str"] == "CLONE_VM"
    assert symbols.clone_args(b"\x01\x02") is None  # too short to hold flags: shown as hex instead


@pytest.mark.parametrize("scall, args, expected", [
    (KILL, [1234, 15], {"sig": "SIGTERM"}),
    (KILL, [1234, 0], {}),
    (KILL, [1234, 6], {"sig": "SIGABRT"}),  # not SIGIOT
    (KILL, [1234, 32], {"sig": "SIGRTMIN"}),  # the kernel's SIGRTMIN, not glibc's 34
    (KILL, [1234, 35], {"sig": "SIGRTMIN+3"}),
    (KILL, [1234, 99], {}),
    (WAIT4, [U64, 0, 1, 0], {"options": "WNOHANG"}),
    (WAIT4, [U64, 0, 2 | 0x40000000, 0], {"options": "WUNTRACED|__WALL"}),
    (WAITID, [1, 55, 0, 4, 0], {"which": "P_PID", "options": "WEXITED"}),
    (WAITID, [3, 5, 0, 2 | 0x1000000, 0], {"which": "P_PIDFD", "options": "WSTOPPED|WNOWAIT"}),
    (RT_SIGPROCMASK, [0, 0, 0, 8], {"how": "SIG_BLOCK"}),
    (RT_SIGPROCMASK, [2, 0, 0, 8], {"how": "SIG_SETMASK"}),
])
def test_signals_and_wait(scall: Syscall, args: list[int], expected: dict) -> None:
    assert event(scall, args).get("args_str", {}) == expected


def test_mmap_and_mprotect() -> None:
    ev = event(MMAP, [0, 4096, 3, 0x22, U64, 0])
    assert ev["args_str"] == {"prot": "PROT_READ|PROT_WRITE", "flags": "MAP_PRIVATE|MAP_ANONYMOUS", "fd": "-1"}
    ev = event(MMAP, [0x7F0000000000, 4096, 5, 0x812, 3, 0])
    assert ev["args_str"] == {"prot": "PROT_READ|PROT_EXEC", "flags": "MAP_PRIVATE|MAP_FIXED|MAP_DENYWRITE"}
    assert event(MMAP, [0, 4096, 1, 0x100001, 3, 0])["args_str"]["flags"] == "MAP_SHARED|MAP_FIXED_NOREPLACE"
    assert event(MPROTECT, [0x1000, 4096, 0])["args_str"] == {"prot": "PROT_NONE"}
    assert event(MPROTECT, [0x1000, 4096, 1 | 0x1000000])["args_str"] == {"prot": "PROT_READ|PROT_GROWSDOWN"}


@pytest.mark.parametrize("args, expected", [
    ([3, fcntl.F_SETFD, fcntl.FD_CLOEXEC], {"cmd": "F_SETFD", "arg": "FD_CLOEXEC"}),
    ([3, fcntl.F_SETFL, os.O_NONBLOCK | os.O_APPEND], {"cmd": "F_SETFL", "arg": "O_APPEND|O_NONBLOCK"}),
    ([3, fcntl.F_GETFL, 0], {"cmd": "F_GETFL"}),
    ([3, fcntl.F_DUPFD_CLOEXEC, 10], {"cmd": "F_DUPFD_CLOEXEC"}),
    ([3, fcntl.F_SETLKW, 0x7FFD0000], {"cmd": "F_SETLKW"}),
    ([3, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_WRITE], {"cmd": "F_ADD_SEALS",
                                                                    "arg": "F_SEAL_SEAL|F_SEAL_WRITE"}),
    ([3, 15, 0x7FFD0000], {"cmd": "F_SETOWN_EX"}),  # from linux/fcntl.h (the stdlib lacks it)
])
def test_fcntl(args: list[int], expected: dict) -> None:
    assert event(FCNTL, args)["args_str"] == expected


def test_access_modes() -> None:
    assert event(ACCESS, [0x7FFD0000, 0])["args_str"] == {"mode": "F_OK"}
    assert event(ACCESS, [0x7FFD0000, 6])["args_str"] == {"mode": "R_OK|W_OK"}
    assert event(ACCESS, [0x7FFD0000, 7 | 8])["args_str"] == {"mode": "R_OK|W_OK|X_OK|0x8"}


def test_setsockopt_names_depend_on_level() -> None:
    ev = event(SETSOCKOPT, [3, socket.SOL_SOCKET, socket.SO_REUSEADDR, 0x7FFD0000, 4])
    assert ev["args_str"] == {"level": "SOL_SOCKET", "optname": "SO_REUSEADDR"}
    ev = event(SETSOCKOPT, [3, socket.IPPROTO_TCP, socket.TCP_NODELAY, 0x7FFD0000, 4])
    assert ev["args_str"] == {"level": "SOL_TCP", "optname": "TCP_NODELAY"}
    assert list(ev["args_str"]) == ["level", "optname"]  # argument order, context symbols included
    if uapi.find("linux/in.h"):
        ev = event(SETSOCKOPT, [3, socket.IPPROTO_IP, 0, 0x7FFD0000, 4])  # IP_PMTUDISC_DONT is a value, not an option
        assert ev["args_str"] == {"level": "SOL_IP"}
        ev = event(SETSOCKOPT, [3, socket.IPPROTO_IP, socket.IP_TTL, 0x7FFD0000, 4])
        assert ev["args_str"] == {"level": "SOL_IP", "optname": "IP_TTL"}
        ev = event(SETSOCKOPT, [3, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0x7FFD0000, 4])
        assert ev["args_str"] == {"level": "SOL_IPV6", "optname": "IPV6_V6ONLY"}


def test_futex_op() -> None:
    assert event(FUTEX, [0x7FFD0000, 128, 1, 0, 0, 0])["args_str"] == {"op": "FUTEX_WAIT_PRIVATE"}
    assert event(FUTEX, [0x7FFD0000, 9 | 128 | 256, 1, 0, 0, 0])["args_str"] == {
        "op": "FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME"}


def test_header_values_agree_with_the_c_library() -> None:
    """Where the stdlib and the UAPI headers both define a name, they agree (else one source is stale)."""
    if not uapi.find("linux/sched.h"):
        pytest.skip("no UAPI headers on this machine (./bootstrap installs them)")
    pairs = [("asm-generic/mman-common.h", mmap, r"(PROT|MADV)_\w+"), ("linux/mman.h", mmap, r"MAP_(SHARED|PRIVATE)"),
             ("linux/wait.h", os, r"W(NOHANG|UNTRACED|EXITED|CONTINUED|NOWAIT)|P_(ALL|PID|PGID|PIDFD)"),
             ("asm-generic/fcntl.h", fcntl, r"F_(DUPFD|GETFD|SETFD|GETFL|SETFL|GETLK|SETLK|SETLKW|SETOWN|GETOWN)"),
             ("asm/signal.h", signal, r"SIG(HUP|INT|TERM|KILL|CHLD|USR1|USR2|STOP|CONT)")]
    checked = 0
    for header, mod, pattern in pairs:
        for name, v in symbols._header(header, pattern):
            if hasattr(mod, name):
                assert int(getattr(mod, name)) == v, (header, name)
                checked += 1
    assert checked >= 30


def test_uapi_conditionals() -> None:
    """32-bit-only definitions (asm-generic/fcntl.h's F_GETLK64 = 12 under `#ifndef CONFIG_64BIT`) are
    not taken on a 64-bit machine, and the first definition of a name is kept."""
    if not uapi.find("asm-generic/fcntl.h"):
        pytest.skip("no UAPI headers on this machine")
    d = uapi.defines("asm-generic/fcntl.h")
    if os.uname().machine.endswith("64"):
        assert d.get("F_GETLK64") in (None, fcntl.F_GETLK)
    assert 12 not in symbols.fcntl_commands()


def test_uapi_eval() -> None:
    known = {"A": 4}
    assert uapi._eval("(1UL << 3) | A", known) == 12
    assert uapi._eval("0x10u", known) == 16
    assert uapi._eval("010", known) == 8
    assert uapi._eval("B | 1", known) is None  # unknown name: no value, not a guess
    assert uapi._eval('"str"', known) is None


def test_sigset_read_and_rendered() -> None:
    assert RT_SIGPROCMASK.reads == (Read(1, C("RK_BUF_LEN"), 3, syscalls.SIGSET_CAP),)  # nset, not oset
    d = Data()
    off = d.add(struct.pack("<Q", 1 << 1 | 1 << 14 | 1 << 33))
    ev = event(RT_SIGPROCMASK, [0, 0x7FFD0000, 0, 8], slots=(slot(1, C("RK_BUF_LEN"), RS_OK, enter=off, want=8),),
               data=bytes(d.buf))
    assert ev["args"]["nset"] == {"signals": ["SIGINT", "SIGTERM", "SIGRTMIN+2"],
                                  "mask": hex(1 << 1 | 1 << 14 | 1 << 33)}
    assert symbols.sigset_str(ev["args"]["nset"]) == "[INT TERM RTMIN+2]"
    everything_but = symbols.sigset(struct.pack("<Q", ~(1 << 8 | 1 << 18) & U64))
    assert symbols.sigset_str(everything_but) == "~[KILL STOP]"
    assert symbols.sigset_str(symbols.sigset(bytes(8))) == "[]"


def test_prctl_options() -> None:
    names = symbols.prctl_options()
    if not names:
        pytest.skip("no linux/prctl.h on this machine")
    assert (names[15], names[38], names[23]) == ("PR_SET_NAME", "PR_SET_NO_NEW_PRIVS", "PR_CAPBSET_READ")
    assert 0 not in names and 128 not in names  # argument values (PR_FP_EXC_*), not options


# --- ioctl request names (tracer/ioctls.py) -----------------------------------------------------------

IOCTL_HEADERS = ("asm-generic/ioctls.h", "linux/sockios.h", "linux/fs.h", "linux/perf_event.h", "linux/kvm.h",
                 "linux/if_tun.h", "linux/input.h", "linux/loop.h", "linux/kd.h", "linux/vt.h", "linux/rtc.h",
                 "linux/userfaultfd.h", "linux/nsfs.h", "linux/random.h", "sound/asound.h", "linux/btrfs.h")

# What the C library's copy needs besides the header for its structs to be complete.
IOCTL_INCLUDES = {"asm-generic/ioctls.h": "<asm/termbits.h>\n#include <linux/serial.h>\n#include <asm/ioctls.h>",
                  "linux/fs.h": "<linux/fs.h>\n#include <linux/blktrace_api.h>\n#include <linux/fiemap.h>"}


def test_ioctl_numbers_are_what_gcc_makes_of_the_same_names(tmp_path) -> None:
    """Every request the tracer names from these headers has the number gcc computes from the C library's
    copy of them (_IOR/_IOW sizes: struct sizes from BTF, scalars from the C ABI)."""
    from tracer import ioctls

    compared = 0
    for header in IOCTL_HEADERS:
        mine = ioctls.requests(header)
        assert mine, f"no requests read from {header}"
        inc = IOCTL_INCLUDES.get(header, f"<{header}>")
        lines = [f"#ifdef {n}\n\tprintf(\"{n} %u\\n\", (unsigned)({n}));\n#endif" for n in mine]
        src = tmp_path / "ioc.c"
        src.write_text(f"#include <stdio.h>\n#include <sys/ioctl.h>\n#include {inc}\nint main(void)\n{{\n"
                       + "\n".join(lines) + "\n\treturn 0;\n}\n")
        exe = tmp_path / "ioc"
        cc = subprocess.run(["gcc", "-w", "-o", str(exe), str(src)], capture_output=True, text=True)
        assert cc.returncode == 0, f"{header}: {cc.stderr[-2000:]}"
        theirs = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                               check=True).stdout.splitlines())
        for name, v in theirs.items():
            assert mine[name] == int(v), f"{header}: {name} is {int(v):#x} for gcc, {mine[name]:#x} here"
        compared += len(theirs)
    assert compared > 500, compared
    assert ioctls.ioctl_str(0x5401) == "TCGETS" and ioctls.ioctl_str(0x541B) == "FIONREAD"  # not TIOCINQ
    assert ioctls.ioctl_str(0x40049409) == "FICLONE or BTRFS_IOC_CLONE"  # one number, two names: both
    assert ioctls.ioctl_str(0xC004F7E3) == "_IOC(_IOC_READ|_IOC_WRITE, 0xf7, 0xe3, 0x4)"
    assert ioctls.ioctl_str(0x5400) == "_IOC(_IOC_NONE, 0x54, 0x0, 0x0)"
