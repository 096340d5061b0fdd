"""Path globs of monitor policies: normalised when a policy is loaded, matched at a bounded cost.

A glob is matched component by component: `*`, `?`, `[...]` within one component (fnmatch rules), a
`**` component spans any number of components. Matching is dynamic programming over (glob component,
path component) pairs, so its cost is at most len(glob) x len(path) component tests however many `**`
a glob has: the backtracking matcher it replaces took 98 s per event for 4 `**` against a 250-component
path, and a policy file is untrusted input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fnmatch import translate
from functools import cache

_WILD = re.compile(r"[*?[]")
Component = Callable[[str], bool] | None  # None: the component is `**`


def _component(pat: str) -> Component:
    if pat == "**":
        return None
    if not _WILD.search(pat):
        return pat.__eq__
    match = re.compile(translate(pat)).match
    return lambda s: match(s) is not None


@cache
def compile_glob(glob: str) -> tuple[Component, ...]:
    return tuple(_component(p) for p in glob.split("/"))


def _suffix_matches(pat: tuple[Component, ...], parts: list[str]) -> list[bool]:
    """r[i] is True when pat[i:] matches the whole of parts, for every i: one pass from the last glob
    component back, keeping one row of `pat[i:] matches parts[j:]` for j = 0..len(parts)."""
    n = len(parts)
    row = [False] * n + [True]  # the empty glob matches only the empty tail
    first = [False] * len(pat) + [row[0]]
    for i in range(len(pat) - 1, -1, -1):
        test = pat[i]
        new = [False] * (n + 1)
        if test is None:  # `**`: skip it, or let it take one more component
            new[n] = row[n]
            for j in range(n - 1, -1, -1):
                new[j] = row[j] or new[j + 1]
        else:
            for j in range(n):
                new[j] = row[j + 1] and test(parts[j])
        row = new
        first[i] = row[0]
    return first


def glob_match(glob: str, path: str) -> bool:
    pat, parts = compile_glob(glob), path.split("/")
    k = _leading(glob)
    if k == len(pat):  # no `**`: one test per component
        return len(parts) == k and all(t(p) for t, p in zip(pat, parts, strict=True))  # type: ignore[misc]
    # Components before the first `**` face the path's first components: most paths fail there.
    if len(parts) < k or not all(t(p) for t, p in zip(pat[:k], parts, strict=False)):  # type: ignore[misc]
        return False
    return _suffix_matches(pat[k:], parts[k:])[0]


@cache
def _leading(glob: str) -> int:
    """How many components come before the first `**` (all of them when there is none)."""
    pat = compile_glob(glob)
    return next((i for i, t in enumerate(pat) if t is None), len(pat))


def could_match_below(glob: str, rel: str) -> bool:
    """Could `glob` match DIR/rel for some directory DIR? (rel normalised, without leading `..`.)"""
    return any(_suffix_matches(compile_glob(glob), rel.split("/"))[1:-1])


def normalise(glob: str) -> tuple[str | None, str | None]:
    """(the glob as the monitor will match it, None) or (None, why it cannot be normalised).

    Target paths are normalised lexically (no `//`, `.`, `..` or trailing `/`), so a glob written with
    them would never match: it is rewritten the same way. A `..` after a wildcard component has no
    single lexical meaning (`/etc/*/../shadow`) and is refused."""
    out: list[str] = []
    for c in glob.split("/")[1:]:
        if c in ("", "."):
            continue
        if c == "..":
            if out and (out[-1] == "**" or _WILD.search(out[-1])):
                return None, (f"`..` after the wildcard component {out[-1]!r} cannot be normalised; "
                              "write the path without `..`")
            if out:
                out.pop()
            continue
        out.append(c)
    return "/" + "/".join(out), None
