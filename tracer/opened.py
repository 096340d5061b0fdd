"""The kernel's opened file (struct kfile from bpf/kfile.h) as the event's `opened` object, and what it
proves about the decoded filename.

The filename read from user memory (at entry, or recovered at exit) is what the caller's memory held, not
necessarily what the kernel used. The opened file is the kernel's own result; comparing the two:
  - `same`: the value names exactly the opened file (an absolute path, no `..`, equal to the kernel's
    path): a recovered value becomes verified;
  - `conflict`: the value cannot have named the opened file (see `agreement`): status `changed`;
  - `undecided`: neither can be shown (relative path, symbolic links possible): stays as it was.
"""

from __future__ import annotations

import os
import struct

from .layout import const, packer, struct_of

_KFILE = packer("kfile")
_SIZE_AT = struct_of("kfile").field("size").offset
KF_OK, KF_TRUNC, KF_UNREACHABLE, KF_NOFILE, KF_FAULT = (
    const(n) for n in ("KF_OK", "KF_TRUNC", "KF_UNREACHABLE", "KF_NOFILE", "KF_FAULT"))
KF_DEPTH = const("KF_DEPTH")
_FAULT_STEP = {1: "task.files", 2: "files.fdt", 3: "fdtable.fd", 4: "fd[ret]", 5: "file.f_inode", 6: "dentry walk"}

O_NOFOLLOW = os.O_NOFOLLOW
O_TMPFILE = os.O_TMPFILE
O_CREAT, O_WRONLY, O_TRUNC = os.O_CREAT, os.O_WRONLY, os.O_TRUNC
RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH, RESOLVE_IN_ROOT = 0x04, 0x08, 0x10


def unavailable(reason: str) -> dict:
    return {"status": "unavailable", "path": None, "dev": None, "ino": None, "mode": None, "reason": reason}


def decode_kfile(raw: bytes) -> dict:
    """The `opened` object from a struct kfile and the path components after it (leaf first)."""
    if len(raw) < _KFILE.size:
        return unavailable("the record holds no complete struct kfile")
    ino, dev, _f_flags, mode, status, nparts, size, err = _KFILE.unpack_from(raw)
    names = raw[_KFILE.size:size].split(b"\0")[:nparts]
    rel = "/".join(n.decode("utf-8", "surrogateescape") for n in reversed(names))
    base = {"dev": f"{dev >> 20}:{dev & 0xFFFFF}", "ino": ino, "mode": f"{mode:#o}"}
    if status == KF_OK:
        return {"status": "ok", "path": "/" + rel, **base, "reason": None}
    if status == KF_TRUNC:
        why = f"more than {KF_DEPTH} steps (components and mount crossings) or no room left in the record"
        return {"status": "truncated", "path": rel, **base, "reason": f"path cut: {why}; only its last {nparts} "
                "components are shown"}
    if status == KF_UNREACHABLE:
        return {"status": "truncated", "path": rel, **base,
                "reason": "not reachable from the process's root directory (outside a chroot, a detached "
                          "mount, or a pseudo filesystem): the components up to where the chain ends"}
    if status == KF_NOFILE:
        return unavailable("no file at fd = ret when sys_exit ran (another thread closed it)")
    if status == KF_FAULT and err == 6:  # the file was read; its path only in part
        return {"status": "truncated", "path": rel, **base,
                "reason": "a kernel read failed during the walk up the path: the components read until then"}
    if status == KF_FAULT:
        return unavailable(f"a kernel read failed at {_FAULT_STEP.get(err, f'step {err}')}")
    return unavailable(f"unknown kfile status {status}")


def open_flags(ev: dict) -> tuple[int | None, int]:
    """(open flags, RESOLVE_* flags) of an open-family event; flags None when unknown (how unreadable)."""
    sc, args = ev.get("syscall"), ev.get("args", {})
    if sc == "openat2":
        how = args.get("how")
        if not isinstance(how, dict):
            return None, 0
        return int(how.get("flags", 0)), int(how.get("resolve", 0))
    if sc == "creat":
        return O_CREAT | O_WRONLY | O_TRUNC, 0
    f = args.get("flags")
    return (int(f) if isinstance(f, int) else None), 0


def agreement(value: str, kpath: str, flags: int | None, resolve: int) -> tuple[str, str | None]:
    """Does the filename `value` name the file the kernel opened at `kpath` (walked to the process root)?
    ('same' | 'conflict' | 'undecided', why)."""
    if flags is None:
        return "undecided", "the open flags could not be read, so symbolic links cannot be ruled out"
    if flags & O_TMPFILE == O_TMPFILE:
        return "undecided", "O_TMPFILE: the kernel opened an unnamed file in the directory this value names"
    no_symlinks = bool(resolve & RESOLVE_NO_SYMLINKS)
    leaf_nofollow = no_symlinks or bool(flags & O_NOFOLLOW)
    parts = [p for p in value.split("/") if p not in ("", ".")]
    absolute = value.startswith("/") and not resolve & RESOLVE_IN_ROOT
    kparts = [p for p in kpath.split("/") if p]
    plain = ".." not in parts
    if absolute and plain and parts == kparts:
        return "same", None
    if plain and no_symlinks:
        # No symbolic link anywhere and no `..`: the lookup goes down from its base directory through exactly
        # these names (mount points keep them), so the kernel's path ends with them — or is them.
        want = kparts if absolute else kparts[len(kparts) - len(parts):]
        if want != parts and [p.casefold() for p in want] != [p.casefold() for p in parts]:
            return "conflict", (f"with symbolic links excluded (RESOLVE_NO_SYMLINKS) this value can only name "
                                f"a path {'equal to' if absolute else 'ending with'} its own components; "
                                f"the kernel opened {kpath!r}")
    leaf = parts[-1] if parts else None
    if leaf is None or leaf == "..":
        return "undecided", "the value ends in '/', '.' or '..': it names a directory by position, not by name"
    kleaf = kparts[-1] if kparts else ""
    if leaf != kleaf:
        if leaf_nofollow and leaf.casefold() != kleaf.casefold():
            return "conflict", (f"its last component {leaf!r} is not the opened file's name {kleaf!r}, and "
                                "the last component cannot be a symbolic link (O_NOFOLLOW or RESOLVE_NO_SYMLINKS)")
        return "undecided", (f"the kernel opened {kpath!r}; this value names it only if it goes through a "
                             "symbolic link" + ("" if leaf.casefold() != kleaf.casefold() else
                                                " or a case-insensitive directory"))
    if absolute:
        return "undecided", (f"same file name, but the kernel's path is {kpath!r}: this value names it only "
                             "through '..', symbolic links or the process's root directory")
    return "undecided", ("a relative path: the directory it was resolved from (dfd or the working directory) "
                         "is not known to tracer at the time of the call")


def attach(ev: dict, raw: bytes | None, problem: str | None) -> None:
    """Add `opened` to a successful open-family event and check its filename against it."""
    if raw is not None:
        op = decode_kfile(raw)
    else:
        op = unavailable(problem or "not in the record (no room left in its data area)")
    ev["opened"] = op
    info = ev.get("reads", {}).get("filename")
    value = ev.get("args", {}).get("filename")
    if info is None or not isinstance(value, str) or info["status"] in ("missing", "null"):
        return
    if op["status"] != "ok":
        return
    flags, resolve = open_flags(ev)
    verdict, why = agreement(value, op["path"], flags, resolve)
    info["opened_match"] = verdict
    if verdict == "same":
        if not info["verified"]:
            info["verified"] = True
            info.pop("unverified_reason", None)
        info["verified_by"] = "opened_file"
    elif verdict == "conflict":
        info["status"] = "changed"
        info["kernel_path"] = op["path"]
        info["verified"] = False
        info.pop("verified_by", None)
        info["unverified_reason"] = f"cannot be the file the kernel opened: {why}"
    elif not info["verified"]:
        info["unverified_reason"] += f"; the kernel's opened file does not settle it: {why}"


def unpack_xoff(rec: bytes, data_off: int, xoff: int) -> bytes:
    """The struct kfile and its components, from a record."""
    start = data_off + xoff
    if len(rec) < start + _KFILE.size:
        return rec[start:]
    size = struct.unpack_from("<H", rec, start + _SIZE_AT)[0]
    return rec[start:start + size]
