"""`tracer list syscalls [GLOB|%group]...` and the EVENT names shell completion offers.

Both come from tracer.syscalls (the tracefs formats of this kernel), so they list exactly what `trace`
accepts. Completion runs as the user typing: without tracefs access (not root) it falls back to
libseccomp's names for this architecture, which need no privilege.
"""

from __future__ import annotations

from .syscalls import GROUPS, Syscall, resolve, table

# The prefixes of the other EVENT kinds (tracer/sources.py), offered by completion.
OTHER_KINDS = ("syscalls:sys_enter_", "uprobe:", "user_events:", "user_events_multi:")


def group_names() -> list[str]:
    return sorted(["file", *GROUPS])


def groups_of(sc: Syscall) -> list[str]:
    return [f"%{g}" for g in group_names() if (sc.takes_path if g == "file" else sc.name in GROUPS[g])]


def syscall_rows(patterns: list[str]) -> list[dict]:
    """One dict per syscall matched (all of them without patterns), by name: number, arguments as the
    tracepoint declares them, %groups, and the arguments read from user memory."""
    chosen = resolve(patterns) if patterns else list(table().values())
    rows = []
    for sc in sorted(chosen, key=lambda s: s.name):
        rows.append({
            "name": sc.name,
            "nr": sc.nr,
            "args": [{"name": a.name, "type": a.ctype} for a in sc.args],
            "groups": groups_of(sc),
            "reads": [sc.args[r.arg].name for r in sc.reads],
            "returns": not sc.noreturn,
        })
    return rows


def syscall_line(row: dict) -> str:
    """openat2(int dfd, const char * filename, ...)  nr 437  %file  reads filename, how"""
    args = ", ".join(f"{a['type']} {a['name']}" for a in row["args"])
    line = f"{row['name']}({args})  nr {row['nr']}"
    if row["groups"]:
        line += "  " + " ".join(row["groups"])
    if row["reads"]:
        line += "  reads " + ", ".join(row["reads"])
    if not row["returns"]:
        line += "  (does not return)"
    return line


def _seccomp_names() -> list[str]:
    try:
        import seccomp
    except ImportError:
        return []
    names = []
    for nr in range(1024):
        try:
            name = seccomp.resolve_syscall(seccomp.Arch.NATIVE, nr)
        except (ValueError, TypeError):
            continue
        names.append(name.decode() if isinstance(name, bytes) else str(name))
    return names


def event_candidates(incomplete: str) -> list[str]:
    """What completes an EVENT argument: %groups, syscall names, the other kinds' prefixes. Never raises:
    completion must not print errors into the user's shell."""
    if incomplete.startswith("%"):
        return [f"%{g}" for g in group_names() if f"%{g}".startswith(incomplete)]
    try:
        names = list(table())
    except Exception:  # no tracefs access (not root), no seccomp for the fallback's numbers...
        names = _seccomp_names()
    if incomplete.startswith("syscalls:"):
        names = [f"syscalls:sys_enter_{n}" for n in names] + [f"syscalls:sys_exit_{n}" for n in names]
    else:
        names = [*names, *OTHER_KINDS]
    return sorted(n for n in names if n.startswith(incomplete))
