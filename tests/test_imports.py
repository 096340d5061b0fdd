"""The package's imports form no cycle: every module stands above what it imports (README "How it works").

Every import statement counts, at module level or inside a function (an import deferred to run time
to dodge a cycle is still a cycle), and so do modules named in strings that are imported dynamically
(capture.REPLAYERS). Imports under `if TYPE_CHECKING:` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "tracer"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `if TYPE_CHECKING:` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from . import x`: the module x
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("tracer."):
            found.add(node.value.partition(":")[0])  # "tracer.module:Name", imported by name
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = [p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    g = graph()
    found = cycles(g)
    detail = "; ".join(" <-> ".join(c) + " (" + ", ".join(f"{a} -> {b}" for a in c for b in sorted(g[a]) if b in c)
                       + ")" for c in found)
    assert not found, f"import cycles: {detail}"


@pytest.mark.parametrize("low, high", [
    ("tracer.events", "tracer.session"), ("tracer.events", "tracer.sources"), ("tracer.events", "tracer.output"),
    ("tracer.layout", "tracer.capture"), ("tracer.sources", "tracer.session"), ("tracer.capture", "tracer.session"),
    ("tracer.uprobes", "tracer.session"), ("tracer.user_events.source", "tracer.session"),
])
def test_layers(low: str, high: str) -> None:
    """The event model and the record layout import none of what is built on them; sources are below the
    session that runs them."""
    g = graph()
    seen, todo = set(), [low]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += g[m]
    assert high not in seen, f"{low} imports {high} (directly or not)"


def test_the_checker_sees_a_cycle() -> None:
    """A cycle through a deferred import and a `from . import` is found, a TYPE_CHECKING one is not."""
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .output import X\n"
           "def f():\n    from . import session\n")
    path = PKG / "_probe_imports.py"
    try:
        path.write_text(src)
        got = imports_of(path, {"tracer.output", "tracer.session"})
    finally:
        path.unlink()
    assert got == {"tracer.session"}
