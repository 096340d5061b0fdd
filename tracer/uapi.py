"""Integer constants from the kernel's UAPI headers (the ABI's own definition of flag and command
values), for the symbolic decoding in tracer/symbols.py.

Headers are looked up in the kernel header tree bcc compiles against (tracer.kenv.kernel_headers:
include/uapi, arch/<arch>/include/uapi) and then in the C library's copy (/usr/include, Debian's
linux-libc-dev). Only `#define NAME <integer expression>` lines are taken, with a minimal
preprocessor for the conditionals these headers use (#ifdef/#ifndef/#if defined(...)/#else), so that
32-bit-only or kernel-internal definitions are not mistaken for this machine's values. An absent
header gives no names (values are then shown as numbers), never a guess.
"""

from __future__ import annotations

import ast
import operator
import os
import re
from functools import cache
from pathlib import Path

_ARCH = {"x86_64": "x86", "aarch64": "arm64", "riscv64": "riscv", "ppc64le": "powerpc", "s390x": "s390"}
_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)\s+(.+?)\s*$")
_COND = re.compile(r"^\s*#\s*(ifdef|ifndef|if|elif|else|endif)\b\s*(.*?)\s*$")
_SUFFIX = re.compile(r"\b((?:0[xX][0-9a-fA-F]+)|\d+)[uUlL]+\b")
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_BINOPS = {ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.LShift: operator.lshift,
           ast.RShift: operator.rshift, ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.BitXor: operator.xor}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge}


def include_dirs() -> list[Path]:
    arch = _ARCH.get(os.uname().machine, os.uname().machine)
    dirs: list[Path] = []
    try:
        from .kenv import kernel_headers

        trees = kernel_headers().roots  # Debian's split layout: build/ and source/
    except Exception:  # header discovery problems are reported by doctor; here they mean "no names"
        trees = []
    for tree in trees:
        dirs += [tree / "include" / "uapi", tree / "arch" / arch / "include" / "uapi",
                 tree / "arch" / arch / "include" / "generated" / "uapi"]
    multiarch = f"/usr/include/{os.uname().machine}-linux-gnu"
    dirs += [Path("/usr/include"), Path(multiarch)]
    return [d for d in dirs if d.is_dir()]


def find(header: str) -> Path | None:
    for d in include_dirs():
        if (d / header).is_file():
            return d / header
    return None


def evaluate(expr: str, known: dict[str, int]) -> int | None:
    """An integer C expression of literals and `known` names (None if it is anything else)."""
    return _eval(expr, known)


def _eval(expr: str, known: dict[str, int], logic: bool = False) -> int | None:
    """An integer C expression made of literals, known names and | & << >> + - * ^ ~ ( ); with `logic`
    (#if lines) also ! && || and comparisons. Evaluated on its syntax tree: nothing is executed."""
    expr = _SUFFIX.sub(r"\1", expr).strip()
    if not expr or any(c in expr for c in '"\'{'):
        return None
    expr = re.sub(r"\b0([0-7]+)\b", r"0o\1", expr)
    if logic:
        expr = expr.replace("&&", " and ").replace("||", " or ")
        expr = re.sub(r"!(?!=)", " not ", expr)
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return None

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name) and n.id in known:
            return known[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            return _BINOPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.Invert, ast.USub, ast.UAdd)):
            v = ev(n.operand)
            return ~v if isinstance(n.op, ast.Invert) else -v if isinstance(n.op, ast.USub) else v
        if logic and isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not):
            return int(not ev(n.operand))
        if logic and isinstance(n, ast.BoolOp):
            vals = [ev(x) for x in n.values]
            return int(all(vals) if isinstance(n.op, ast.And) else any(vals))
        if logic and isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _CMPOPS:
            return int(_CMPOPS[type(n.ops[0])](ev(n.left), ev(n.comparators[0])))
        raise ValueError(n)

    try:
        return ev(tree)
    except (ValueError, TypeError, OverflowError):
        return None


def _cond_true(kind: str, arg: str, known: dict[str, int], predefined: set[str]) -> bool:
    def defined(name: str) -> bool:
        return name in known or name in predefined

    if kind == "ifdef":
        return defined(arg.split()[0]) if arg else False
    if kind == "ifndef":
        return not defined(arg.split()[0]) if arg else True
    # #if / #elif: `defined(X)` and expressions of known names; anything else is false (a skipped
    # block loses names, it never adds a wrong one).
    e = re.sub(r"defined\s*\(?\s*(\w+)\s*\)?", lambda m: "1" if defined(m.group(1)) else "0", arg)
    return bool(_eval(e, known, logic=True))


def defines(header: str, base: tuple[tuple[str, int], ...] = ()) -> dict[str, int]:
    """`#define`d integers of one header (e.g. "linux/sched.h"), in file order, first definition kept.
    `base`: names defined elsewhere that its expressions may use (e.g. O_CLOEXEC)."""
    return scan(header, base)[0]


@cache
def scan(header: str, base: tuple[tuple[str, int], ...] = ()) -> tuple[dict[str, int], dict[str, str]]:
    """(integers as `defines` gives them, the expression text of every object-like #define of the active
    branches, e.g. `_IOR('f', 1, long)` or `FIONREAD` for an alias), both in file order, first kept."""
    path = find(header)
    if path is None:
        return {}, {}
    text = _COMMENT.sub(" ", path.read_text(errors="replace")).replace("\\\n", " ")
    known = dict(base)
    out: dict[str, int] = {}
    other: dict[str, str] = {}
    predefined = {"CONFIG_64BIT"} if os.uname().machine.endswith("64") or os.uname().machine == "s390x" else set()
    known.setdefault("__BITS_PER_LONG", 64 if predefined else 32)
    stack: list[tuple[bool, bool]] = []  # (this branch active, some branch of this #if taken)
    for line in text.splitlines():
        m = _COND.match(line)
        if m:
            kind, arg = m.groups()
            outer = all(active for active, _ in stack)
            if kind in ("ifdef", "ifndef", "if"):
                t = outer and _cond_true(kind, arg, known, predefined)
                stack.append((t, t))
            elif kind == "elif" and stack:
                _, taken = stack[-1]
                t = outer and not taken and _cond_true("if", arg, known, predefined)
                stack[-1] = (t, taken or t)
            elif kind == "else" and stack:
                _, taken = stack[-1]
                stack[-1] = (outer and not taken, True)
            elif kind == "endif" and stack:
                stack.pop()
            continue
        if not all(active for active, _ in stack):
            continue
        m = _DEFINE.match(line)
        if not m or "(" in m.group(1):
            continue
        name, expr = m.groups()
        if name in known and name in out:
            continue
        v = _eval(expr, known)
        if v is not None:
            known[name] = v
            out.setdefault(name, v)
        other.setdefault(name, expr)
    return out, other


@cache
def u64_struct_fields(header: str, struct: str) -> tuple[str, ...]:
    """Field names of a UAPI struct made only of 64-bit members (`__aligned_u64`/`__u64`), in order;
    () if the header is absent or the struct has another shape (then it is not decoded)."""
    path = find(header)
    if path is None:
        return ()
    text = _COMMENT.sub(" ", path.read_text(errors="replace"))
    m = re.search(r"\bstruct\s+" + re.escape(struct) + r"\s*\{(.*?)\}\s*;", text, re.S)
    if not m:
        return ()
    fields = []
    for decl in filter(None, (d.strip() for d in m.group(1).split(";"))):
        f = re.fullmatch(r"(?:__aligned_u64|__u64)\s+(\w+)", " ".join(decl.split()))
        if not f:
            return ()
        fields.append(f.group(1))
    return tuple(fields)
