"""Facts taken from the running kernel's BTF, remembered beside the program cache.

Every start needs a few struct offsets from /sys/kernel/btf/vmlinux (tracer/kstructs.py: they are part of
the program cache key; symbols.sigaction_layout), and parsing its ~150,000 types costs ~70 ms of CPU,
about a seventh of a warm start. The answers are kept in `$TRACER_CACHE_DIR/btf-<digest>.json`, keyed by
a digest of the BTF blob itself (a rebuilt kernel of the same release has other offsets) and, per fact,
of the code that computes it; reading the blob and hashing it costs ~15 ms. The file is trusted only as
the program cache is (owned by root or us, not writable by others, in such a directory); anything
missing, malformed or in doubt is computed again from the BTF.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import btf
from .bpfcache import _trusted, cache_dir, enabled, usable_dir

SCHEMA = 1


@functools.cache
def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@functools.cache
def _code(fn: Callable) -> str:
    """The computation's identity: its module's source and the BTF parser's."""
    h = hashlib.blake2b(digest_size=8)
    for f in (fn.__code__.co_filename, btf.__file__):
        h.update(Path(f).read_bytes())
    h.update(fn.__qualname__.encode())
    return h.hexdigest()


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
