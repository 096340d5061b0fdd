"""Which line encoder `trace --json` uses: the C module tracer._recline (tracer/_recline.c, built by
setup.py where a C compiler and Python's headers are), or recjson's generated Python functions.

The C module takes the record layout from bpf/record.h when it is compiled; a checkout whose record.h
changed since the build (an editable install not rebuilt) would read records at old offsets, so the module
is used only when what it was built from equals what tracer/layout.py parses now. TRACER_PY_LINES=1 turns
the C path off (A/B measurements; the tests run both paths).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from types import ModuleType

from .layout import const, struct_of


# The parsed layout's view of each entry of _recline.OFFSETS ("struct.field", "struct" (its size), constants).
def _expected(name: str) -> int:
    if "." in name:
        s, f = name.split(".")
        return struct_of(s).field(f).offset
    if name in ("sys_record", "read_slot"):
        return struct_of(name).size
    return const(name)


@cache
def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("TRACER_PY_LINES") == "1":
        return None, "TRACER_PY_LINES=1: the Python line functions"
    try:
        from . import _recline
    except ImportError as e:
        return None, f"tracer._recline is not built ({e}): the Python line functions (~5x the CPU)"
    stale = sorted(k for k, v in _recline.OFFSETS.items() if _expected(k) != v)
    if stale:
        return None, (f"tracer._recline was built from another bpf/record.h ({', '.join(stale)} differ): "
                      "rebuild it (pip install -e . or ./bootstrap)")
    return _recline, f"tracer._recline ({_recline.__file__})"


def status() -> tuple[bool, str]:
    """(the C line encoder is used, what is used and why)."""
    mod, why = _load()
    return mod is not None, why


def c_line(spec: dict) -> Callable[[bytes, int], tuple | None] | None:
    """The C line function of one layout (recjson.LineEncoder._c_spec's spec), or None: no C module."""
    mod = _load()[0]
    return None if mod is None else mod.Line(spec).line


def c_encode() -> Callable[[list, object, dict, Callable, Callable], list] | None:
    """The C module's loop over one drain's records (recjson.LineEncoder.encode), or None: no C module."""
    mod = _load()[0]
    return None if mod is None else mod.encode
