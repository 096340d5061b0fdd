"""The open family's calls as the monitor reads them: which argument holds the path, the flags and
mode (openat2's from user memory, the others' from registers), the directory a relative path starts
from (/proc after the call: best effort), the absolute path the call targets, and the file the kernel
opened when the event carries it.
"""

from __future__ import annotations

import os
import posixpath

from .decode import AT_FDCWD
from .policy import RESOLVE_NAMES

RESOLVE_IN_ROOT = RESOLVE_NAMES["RESOLVE_IN_ROOT"]

# The open family. openat2 takes its flags, mode and resolve flags from user memory (struct open_how,
# which can be unreadable or change); the others take them in registers, which the tracepoint records.
FAMILY = ("open", "openat", "openat2", "creat", "open_by_handle_at")
_CREAT_FLAGS = os.O_CREAT | os.O_WRONLY | os.O_TRUNC  # creat(2) is open(path, these, mode)


def path_arg(ev: dict) -> str | None:
    """The argument that holds the path (None: open_by_handle_at names its file by a handle)."""
    return {"creat": "pathname", "open_by_handle_at": None}.get(ev["syscall"], "filename")


def dfd_of(ev: dict) -> int:
    args = ev["args"]
    return args["dfd"] if "dfd" in args else args.get("mountdirfd", AT_FDCWD)


def how_of(ev: dict) -> dict | None:
    """openat2's open_how as read, or the same fields from the other calls' registers."""
    args = ev["args"]
    if ev["syscall"] == "openat2":
        return args.get("how")
    if ev["syscall"] == "creat":
        return {"flags": _CREAT_FLAGS, "mode": args.get("mode", 0), "resolve": 0}
    return {"flags": args.get("flags", 0), "mode": args.get("mode", 0), "resolve": 0}

# --- paths ------------------------------------------------------------------------------------------


def normpath(path: str) -> str:
    """Lexical normalisation (symlinks are not resolved: the monitor sees names, not inodes)."""
    p = posixpath.normpath(path)
    return "/" + p.lstrip("/") if p.startswith("//") else p


# --- where the call points: dfd directory and target path ------------------------------------------


def _readlink(pid: int, tid: int, what: str) -> tuple[str | None, str | None]:
    """(path, None) or (None, reason), from /proc at the time of the call's decoding."""
    last = "process exited"
    for base in (f"/proc/{pid}/task/{tid}", f"/proc/{pid}"):  # a thread may have its own cwd or fd table
        try:
            link = os.readlink(f"{base}/{what}")
        except FileNotFoundError:
            if os.path.exists(base):
                return None, "fd not open any more" if what.startswith("fd/") else "not found"
            continue
        except OSError as e:
            return None, f"readlink {base}/{what}: {e.strerror}"
        if link.endswith(" (deleted)"):
            return None, f"directory deleted ({link})"
        if not link.startswith("/"):
            return None, f"not a directory ({link})"
        return link, None
    return None, last


def dfd_path(ev: dict) -> dict:
    """The directory dfd refers to: the cwd for AT_FDCWD, else /proc/PID/fd/DFD; always best effort."""
    dfd = dfd_of(ev)
    if dfd == AT_FDCWD:
        via, what = "cwd", "cwd"
    elif isinstance(dfd, int) and dfd >= 0:
        via, what = "fd", f"fd/{dfd}"
    else:
        return {"path": None, "best_effort": True, "via": "fd", "unknown": f"invalid dfd {dfd}"}
    path, why = _readlink(ev["pid"], ev["tid"], what)
    out = {"path": path, "best_effort": True, "via": via}
    if why:
        out["unknown"] = why
    return out


HANDLE_TARGET = {"path": None, "best_effort": False, "basis": "handle",
                 "unknown": "opened by file handle: the call names no path"}


def opened_of(ev: dict) -> dict | None:
    """The file the kernel installed for a successful call (tracer's `opened` object), when it is whole."""
    op = ev.get("opened")
    if ev.get("ret", -1) >= 0 and isinstance(op, dict) and op.get("status") == "ok" and isinstance(op.get("path"), str):
        return op
    return None


NOT_READ = {"path": None, "best_effort": True, "via": "cwd", "unknown": "not read: the path is absolute"}


def needs_dir(ev: dict) -> bool:
    """Whether any reading of the call's path is relative to a directory (reading /proc costs a syscall
    or two per call: not for the absolute paths most calls use)."""
    parg = path_arg(ev)
    if parg is None:
        return True
    info = ev.get("reads", {})
    paths = [ev["args"].get(parg)] + ([info[parg].get("value_at_exit")] if parg in info
                                       and info[parg].get("status") == "changed" else [])
    hows = [how_of(ev)] + ([info["how"].get("value_at_exit")] if info.get("how", {}).get("status") == "changed"
                           else [])
    return (any(not isinstance(p, str) or not p.startswith("/") for p in paths)
            or any(not isinstance(h, dict) or h.get("resolve", 0) & RESOLVE_IN_ROOT for h in hows))


def target(filename: str | None, how: dict | None, dirinfo: dict, truncated: bool = False) -> dict:
    """The absolute path the call targets: exact for an absolute path, best effort via the dfd
    directory otherwise, or unknown with the reason (a truncated path is only a prefix: unknown)."""
    if filename is None:
        return {"path": None, "best_effort": False, "basis": "unknown", "unknown": "path unreadable"}
    if truncated:
        return {"path": None, "best_effort": False, "basis": "truncated",
                "unknown": f"path truncated after {len(filename.encode('utf-8', 'surrogateescape'))} bytes "
                           "(the read limit): only its beginning is known"}
    in_root = bool(how and how.get("resolve", 0) & RESOLVE_IN_ROOT)
    if filename.startswith("/") and not in_root:
        if dotdot_after_name(filename):  # `lnk/..` is lnk's target's parent for the kernel, not lnk's
            return {"path": normpath(filename), "best_effort": True, "basis": "absolute",
                    "uncertain": "`..` after a name that may be a symlink: collapsed as text"}
        return {"path": normpath(filename), "best_effort": False, "basis": "absolute"}
    basis = "in_root" if in_root else dirinfo["via"]
    if not filename:
        return {"path": None, "best_effort": True, "basis": basis, "unknown": "empty path"}
    if dirinfo["path"] is None:
        return {"path": None, "best_effort": True, "basis": basis, "unknown": dirinfo["unknown"]}
    rel = normpath("/" + filename)[1:] if in_root else filename  # IN_ROOT: `..` stops at the root
    return {"path": normpath(posixpath.join(dirinfo["path"], rel)), "best_effort": True, "basis": basis}


def dotdot_after_name(path: str) -> bool:
    """A `..` follows a name (not the root): if that name is a symlink, the kernel goes up from where it
    points, so collapsing the pair as text may name another file."""
    seen_name = False
    for c in path.split("/"):
        if c == ".." and seen_name:
            return True
        seen_name = seen_name or c not in ("", ".", "..")
    return False


def known_tail(path: str) -> str:
    """The components of `path` after its last `..` (all of them without one): whatever the directories
    and symlinks before, the target is SOMEDIR/tail."""
    comps = [c for c in path.split("/") if c not in ("", ".")]
    last = max((i for i, c in enumerate(comps) if c == ".."), default=-1)
    return "/".join(comps[last + 1:])
