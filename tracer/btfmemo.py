"""Facts taken from the running kernel's BTF, remembered beside the program cache.

Every start needs a few struct offsets from /sys/kernel/btf/vmlinux (tracer/kstructs.py: they are part of
the program cache key; symbols.sigaction_layout), and parsing its ~150,000 types costs ~70 ms of CPU,
about a seventh of a warm start. The answers are kept in `$TRACER_CACHE_DIR/btf-<digest>.json`, keyed by
a digest of the BTF blob itself (a rebuilt kernel of the same release has other offsets) and, per fact,
of the code that computes it (its module's and tracer.btf's source, or their .pyc files where only those
are installed: a key never fails); reading the blob and hashing it costs ~15 ms. The file is trusted only as
the program cache is (owned by root or us, not writable by others, in such a directory); anything
missing, malformed or in doubt is computed again from the BTF.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import CodeType
from typing import Any

from . import __version__, btf
from .bpfcache import _trusted, cache_dir, enabled, usable_dir

SCHEMA = 1


@functools.cache
def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _module_bytes(name: str) -> bytes:
    """What module `name` runs, for a key: its source through its loader (a zip too), else the file it was
    loaded from (an install of .pyc files only), else its compiled code; b"" when none can be had.
    Loaders raise ImportError, OSError, SyntaxError (a bad coding line) and more: a key never fails."""
    spec: Any = getattr(sys.modules.get(name), "__spec__", None)
    loader: Any = getattr(spec, "loader", None)
    with contextlib.suppress(Exception):
        src = loader.get_source(name)
        if src is not None:
            return src.encode("utf-8", "surrogateescape")
    with contextlib.suppress(Exception):
        if spec.has_location:
            return Path(spec.origin).read_bytes()
    with contextlib.suppress(Exception):
        code = loader.get_code(name)
        if code is not None:
            return _code_bytes(code)
    return b""


def _framed(parts: Iterable[bytes]) -> bytes:
    """Parts joined unambiguously (each behind its length: bytecode holds any byte)."""
    return b"".join(len(p).to_bytes(8, "little") + p for p in parts)


def _code_bytes(co: CodeType) -> bytes:
    """A code object's bytecode, names and constants, nested code included. Not marshal: its bytes for
    equal code differ with reference counts (back references), which would miss the memo each start."""
    def const(c: object) -> bytes:
        if isinstance(c, CodeType):
            return _code_bytes(c)
        if isinstance(c, (tuple, frozenset)):  # a frozenset's order follows string hashes: sorted
            items = [const(x) for x in c]
            return type(c).__name__.encode() + _framed(items if type(c) is tuple else sorted(items))
        return f"{type(c).__name__}:{c!r}".encode()

    names = repr((co.co_name, co.co_names, co.co_varnames, co.co_freevars, co.co_cellvars, co.co_argcount))
    return _framed([co.co_code, getattr(co, "co_exceptiontable", b""), names.encode(), *map(const, co.co_consts)])


@functools.cache
def _code(fn: Callable) -> str:
    """The computation's identity: its module's code and the BTF parser's (tracer.btf), and its name.
    Without any (a frozen module), the function's own compiled code and tracer's version stand in."""
    return hashlib.blake2b(_framed([_module_bytes(fn.__module__) or _code_bytes(fn.__code__),
                                    _module_bytes(btf.__name__) or f"tracer {__version__}".encode(),
                                    fn.__qualname__.encode()]), digest_size=8).hexdigest()


def _path() -> Path:
    return cache_dir() / f"btf-{_digest(btf.VMLINUX)}.json"


def _load(path: Path) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        if not _trusted(os.fstat(fd)):
            return {}
        try:
            data = json.loads(f.read())
        except ValueError:
            return {}
    ok = isinstance(data, dict) and data.get("schema") == SCHEMA and isinstance(data.get("facts"), dict)
    return data["facts"] if ok else {}


def _store(path: Path, facts: dict) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".btf-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"schema": SCHEMA, "facts": facts}, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def remembered(label: str, compute: Callable[[btf.Btf], Any]) -> Any:
    """compute(the running kernel's BTF), a JSON value (tuples come back as lists), from the file of this
    kernel's BTF facts when it holds it for the same code, else computed and added to it. Raises what
    reading or parsing the BTF raises (OSError, btf.BtfError)."""
    if not (enabled() and usable_dir()):
        return compute(btf.vmlinux())
    path = _path()
    facts = _load(path)
    fact = facts.get(label)
    code = _code(compute)
    if isinstance(fact, dict) and fact.get("code") == code and "value" in fact:
        return fact["value"]
    value = json.loads(json.dumps(compute(btf.vmlinux())))  # as a later start will read it
    _store(path, {**facts, label: {"code": code, "value": value}})
    return value
