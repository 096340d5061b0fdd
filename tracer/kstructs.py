"""Kernel struct offsets for the BPF programs that walk kernel objects (bpf/kfile.h), from the running
kernel's BTF (/sys/kernel/btf/vmlinux) — never from a header tree, whose layouts belong to another build.

`cflags()` gives them as -DKO_* defines (part of the program cache key, like every cflag), or explains
why they cannot be had; then the walk is not compiled in and events say `opened: unavailable`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from . import btf, btfmemo

# define -> (struct, member); members inside anonymous structs/unions are found through them.
OFFSETS: dict[str, tuple[str, str]] = {
    "KO_TASK_FILES": ("task_struct", "files"),
    "KO_TASK_FS": ("task_struct", "fs"),
    "KO_FS_ROOT": ("fs_struct", "root"),
    "KO_FILES_FDT": ("files_struct", "fdt"),
    "KO_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "KO_FDT_FD": ("fdtable", "fd"),
    "KO_FILE_PATH": ("file", "f_path"),
    "KO_FILE_INODE": ("file", "f_inode"),
    "KO_FILE_FLAGS": ("file", "f_flags"),
    "KO_PATH_MNT": ("path", "mnt"),
    "KO_PATH_DENTRY": ("path", "dentry"),
    "KO_DENTRY_PARENT": ("dentry", "d_parent"),
    "KO_DENTRY_NAME": ("dentry", "d_name"),
    "KO_QSTR_NAME": ("qstr", "name"),
    "KO_VFSMOUNT_ROOT": ("vfsmount", "mnt_root"),
    "KO_MOUNT_MNT": ("mount", "mnt"),
    "KO_MOUNT_PARENT": ("mount", "mnt_parent"),
    "KO_MOUNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
    "KO_INODE_INO": ("inode", "i_ino"),
    "KO_INODE_MODE": ("inode", "i_mode"),
    "KO_INODE_SB": ("inode", "i_sb"),
    "KO_SB_DEV": ("super_block", "s_dev"),
    # execve argv/envp as the kernel copied them into the new process (bpf/strv.h)
    "KO_TASK_MM": ("task_struct", "mm"),
    "KO_MM_ARG_START": ("mm_struct", "arg_start"),
    "KO_MM_ARG_END": ("mm_struct", "arg_end"),
    "KO_MM_ENV_START": ("mm_struct", "env_start"),
    "KO_MM_ENV_END": ("mm_struct", "env_end"),
}


@dataclass(frozen=True)
class Offsets:
    values: dict[str, int]  # define -> byte offset; empty when unavailable
    problem: str | None     # why the walk cannot be compiled in, or None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def cflags(self) -> tuple[str, ...]:
        if not self.ok:
            return ()
        return ("-DTRACER_KFILE", *(f"-D{k}={v}" for k, v in sorted(self.values.items())))


def compute(b: btf.Btf) -> Offsets:
    values: dict[str, int] = {}
    missing = []
    for define, (sname, member) in OFFSETS.items():
        try:
            values[define] = b.offsetof(sname, member)
        except KeyError:
            missing.append(f"{sname}.{member}")
    if missing:
        return Offsets({}, f"kernel BTF lacks {', '.join(missing)}")
    return Offsets(values, None)


@functools.cache
def offsets() -> Offsets:
    """The running kernel's offsets (once per process; from BTF once per kernel: tracer/btfmemo.py)."""
    if not btf.VMLINUX.exists():
        return Offsets({}, f"{btf.VMLINUX} does not exist (kernel built without CONFIG_DEBUG_INFO_BTF)")
    try:
        got = btfmemo.remembered("kstructs", _as_json)
    except (OSError, btf.BtfError) as e:
        return Offsets({}, f"{btf.VMLINUX}: {e}")
    return Offsets({str(k): int(v) for k, v in got["values"].items()}, got["problem"])


def _as_json(b: btf.Btf) -> dict:
    o = compute(b)
    return {"values": o.values, "problem": o.problem}
