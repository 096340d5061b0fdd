"""Syscalls as the kernel describes them: tracefs format files give argument names and types; the
syscall numbers come from libseccomp (Debian's python3-seccomp). Also: which pointer arguments to
read from user memory, and resolution of EVENT specs (name, glob, %group, full tracepoint name).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .errors import UnknownEvent
from .kenv import tracefs_root
from .layout import const
from .symbols import SIGSET_ARGS, sigaction_layout

# Tracepoint names that are not libseccomp's syscall names.
_ALIASES = {"newstat": "stat", "newlstat": "lstat", "newfstat": "fstat", "newuname": "uname",
            "sendfile64": "sendfile", "umount": "umount2"}
# x86_64 numbers newer than the libseccomp in Debian 12 (arch/x86/entry/syscalls/syscall_64.tbl).
_NEWER_X86_64 = {"uretprobe": 335, "uprobe": 336, "statmount": 457, "listmount": 458,
                 "lsm_get_self_attr": 459, "lsm_set_self_attr": 460, "lsm_list_modules": 461,
                 "mseal": 462, "setxattrat": 463, "getxattrat": 464, "listxattrat": 465,
                 "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468, "file_setattr": 469}

# Like strace's classes. %file is derived: every syscall with a path-like string argument.
GROUPS: dict[str, frozenset[str]] = {
    "net": frozenset("socket socketpair bind connect listen accept accept4 getsockname getpeername "
                     "sendto recvfrom setsockopt getsockopt shutdown sendmsg recvmsg sendmmsg "
                     "recvmmsg".split()),
    "process": frozenset("clone clone3 fork vfork execve execveat exit exit_group wait4 waitid kill "
                         "tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_open pidfd_send_signal "
                         "unshare setns".split()),
}
_PATH_ARG = re.compile(r"^(\w*filename|\w*pathname|path|oldname|newname|specialfile|new_root|put_old|"
                       r"dev_name|dir_name|library|special)$")
# Arguments named `name` that are paths (elsewhere `name` is an xattr, key or module name).
_PATH_NAMED_NAME = {"umount", "acct"}
# `const char *` arguments that are not NUL-terminated strings.
_NOT_STRING = {"buf", "u_msg_ptr"}
_NORETURN = {"exit", "exit_group"}
# Bytes of a clone3 struct clone_args read: 88 in Linux 5.7+ (CLONE_ARGS_SIZE_VER2); room for later fields.
CLONE_ARGS_CAP = 128
# Bytes of an input sigset_t read, at most (the caller's size argument says how many it passed: 8 on
# 64-bit, the kernel refuses others): 16 cover the signal numbers of every architecture.
SIGSET_CAP = 16
_EXEC = {"execve", "execveat"}
# Return a new file descriptor on success: the kernel's opened file is read at sys_exit (bpf/kfile.h).
OPEN_FAMILY = frozenset({"open", "openat", "openat2", "creat", "open_by_handle_at"})


@dataclass(frozen=True)
class Arg:
    name: str
    ctype: str

    @property
    def is_pointer(self) -> bool:
        return "*" in self.ctype or self.ctype in ("cap_user_header_t", "cap_user_data_t")


@dataclass(frozen=True)
class Read:
    arg: int
    kind: int
    lenarg: int = 255
    size: int = 0


@dataclass(frozen=True)
class Syscall:
    name: str          # tracepoint name: sys_enter_<name>
    nr: int
    args: tuple[Arg, ...]
    reads: tuple[Read, ...] = field(default=())
    noreturn: bool = False
    exec_: bool = False

    @property
    def enter_tp(self) -> str:
        return f"syscalls:sys_enter_{self.name}"

    @property
    def exit_tp(self) -> str:
        return f"syscalls:sys_exit_{self.name}"

    def read_for(self, argidx: int) -> Read | None:
        return next((r for r in self.reads if r.arg == argidx), None)

    @property
    def opens_file(self) -> bool:
        return self.name in OPEN_FAMILY

    @property
    def takes_path(self) -> bool:
        return any(r.kind == const("RK_STR") and is_path_arg(self.name, self.args[r.arg].name) for r in self.reads)


def is_path_arg(syscall: str, arg: str) -> bool:
    return bool(_PATH_ARG.match(arg)) or (arg == "name" and syscall in _PATH_NAMED_NAME)


_FIELD = re.compile(r"field:(.+?)\s*(\w+);\s*offset:(\d+);\s*size:(\d+);")


def parse_format(text: str) -> list[Arg]:
    """Arguments of a sys_enter format file (after common_* and __syscall_nr)."""
    args = []
    for m in _FIELD.finditer(text):
        ctype, name = " ".join(m.group(1).split()), m.group(2)
        if name.startswith("common_") or name == "__syscall_nr":
            continue
        args.append(Arg(name, ctype))
    return args


def plan_reads(name: str, args: list[Arg]) -> tuple[Read, ...]:
    """Which pointer arguments to read, and how (at most MAX_READS, in argument order)."""
    reads: list[Read] = []
    names = [a.name for a in args]
    for i, a in enumerate(args):
        t = a.ctype
        if (t == "const char *" and a.name not in _NOT_STRING) or (t == "char *" and is_path_arg(name, a.name)):
            reads.append(Read(i, const("RK_STR"), size=const("STR_CAP")))
        elif t == "const char *const *" and a.name in ("argv", "envp") and name in _EXEC:
            # lenarg: which area of the new process's memory holds the kernel's copy (bpf/strv.h)
            reads.append(Read(i, const("RK_STRV"), 0 if a.name == "argv" else 1, const("STRV_ELEM_CAP")))
        elif t == "struct open_how *" and "usize" in names:
            reads.append(Read(i, const("RK_OPEN_HOW"), names.index("usize"), const("HOW_CAP")))
        elif t == "struct clone_args *" and "size" in names:  # clone3: decoded by symbols.clone_args
            reads.append(Read(i, const("RK_BUF_LEN"), names.index("size"), CLONE_ARGS_CAP))
        elif t == "const struct sigaction *" and name == "rt_sigaction" and (sa := sigaction_layout()):
            reads.append(Read(i, const("RK_BUF"), size=sa[0]))  # the new action: symbols.sigaction
        elif t in ("sigset_t *", "const sigset_t *") and (name, a.name) in SIGSET_ARGS:  # symbols.sigset
            reads.append(Read(i, const("RK_BUF_LEN"), names.index(SIGSET_ARGS[name, a.name]), SIGSET_CAP))
        elif t == "struct sockaddr *" and i + 1 < len(args):
            lt = args[i + 1].ctype
            kind = const("RK_SOCKADDR_OUT") if lt == "int *" else const("RK_SOCKADDR")
            reads.append(Read(i, kind, i + 1, const("SOCKADDR_CAP")))
    return tuple(reads[: const("MAX_READS")])


def _seccomp_nr(name: str) -> int | None:
    from .pyenv import require

    seccomp = require("seccomp")  # Debian's python3-seccomp; a missing one is one line with its fix
    try:
        nr = seccomp.resolve_syscall(seccomp.Arch.NATIVE, _ALIASES.get(name, name))
    except (ValueError, TypeError):
        nr = -1
    if nr >= 0:
        return nr
    import os

    return _NEWER_X86_64.get(name) if os.uname().machine == "x86_64" else None


@cache
def table(root: Path | None = None) -> dict[str, Syscall]:
    """Every syscall with enter and exit tracepoints on this kernel, by tracepoint name."""
    base = (root or tracefs_root()) / "events" / "syscalls"
    out: dict[str, Syscall] = {}
    for d in sorted(base.glob("sys_enter_*")):
        name = d.name[len("sys_enter_"):]
        nr = _seccomp_nr(name)
        if nr is None or nr >= 1024:
            continue
        has_exit = (base / f"sys_exit_{name}").is_dir()
        if not has_exit and name not in _NORETURN:
            continue
        args = parse_format((d / "format").read_text())
        out[name] = Syscall(name, nr, tuple(args), plan_reads(name, args), name in _NORETURN, name in _EXEC)
    return out


@cache
def by_nr(root: Path | None = None) -> dict[int, Syscall]:
    return {s.nr: s for s in table(root).values()}


def resolve(specs: list[str], root: Path | None = None) -> list[Syscall]:
    """Syscalls named by EVENT specs: `openat2`, `open*`, `%file`, `syscalls:sys_enter_openat2`."""
    tab = table(root)
    chosen: dict[str, Syscall] = {}
    for spec in specs:
        names: list[str]
        if spec.startswith("%"):
            group = spec[1:]
            if group == "file":
                names = [n for n, s in tab.items() if s.takes_path]
            elif group in GROUPS:
                names = [n for n in tab if n in GROUPS[group]]
            else:
                raise UnknownEvent(f"unknown group {spec!r}; groups: %file, %net, %process")
        elif spec.startswith("syscalls:"):
            m = re.fullmatch(r"syscalls:sys_(?:enter|exit)_(\w+)", spec)
            names = [m.group(1)] if m and m.group(1) in tab else []
        elif any(c in spec for c in "*?["):
            names = fnmatch.filter(tab, spec)
        else:
            names = [spec] if spec in tab else []
        if not names:
            near = fnmatch.filter(tab, f"*{spec.strip('%*')}*")[:5] if spec.strip("%*") else []
            hint = f" (did you mean: {', '.join(near)}?)" if near else ""
            raise UnknownEvent(f"no syscall tracepoint matches {spec!r}{hint}")
        for n in names:
            chosen[n] = tab[n]
    return list(chosen.values())
