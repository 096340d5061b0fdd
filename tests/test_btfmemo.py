"""tracer/btfmemo.py: facts from the running kernel's BTF, computed once per kernel and code, trusted only as
the program cache is."""

from __future__ import annotations

import compileall
import importlib.util
import json
import os
import py_compile
import shutil
import subprocess
import sys
from importlib.machinery import SourcelessFileLoader
from pathlib import Path
from types import ModuleType

import pytest

from tracer import btf, btfmemo, kstructs, symbols
from tracer.bpfcache import CACHE_DIR_ENV

pytestmark = pytest.mark.skipif(not btf.VMLINUX.exists(), reason="the kernel has no BTF")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(d))
    return d


def _counting(calls: list):
    def size_of_task_struct(b: btf.Btf) -> list:
        calls.append(1)
        return [b.struct_named("task_struct").size_or_type, None]
    return size_of_task_struct


def test_computed_once_then_read_back(cache) -> None:
    calls: list = []
    fn = _counting(calls)
    first = btfmemo.remembered("t", fn)
    assert first == btfmemo.remembered("t", fn) == [btf.vmlinux().struct_named("task_struct").size_or_type, None]
    assert len(calls) == 1
    (path,) = cache.glob("btf-*.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["facts"]["t"]["value"] == first


def test_other_code_or_a_doubtful_file_is_computed_again(cache, monkeypatch) -> None:
    calls: list = []
    fn = _counting(calls)
    btfmemo.remembered("t", fn)
    (path,) = cache.glob("btf-*.json")
    monkeypatch.setattr(btfmemo, "_code", lambda f: "another version")
    btfmemo.remembered("t", fn)
    assert len(calls) == 2  # the code changed: not the same fact
    os.chmod(path, 0o666)  # writable by others: not read
    btfmemo.remembered("t", fn)
    assert len(calls) == 3
    path.write_text("{not json")
    os.chmod(path, 0o600)
    btfmemo.remembered("t", fn)
    assert len(calls) == 4
    path.write_text(json.dumps({"schema": 1, "facts": {"t": {"code": "another version", "value": [1, None]}}}))
    assert btfmemo.remembered("t", fn) == [1, None]  # a trusted file is believed: it is what it stores
    assert len(calls) == 4


def test_no_cache_computes_and_writes_nothing(cache, monkeypatch) -> None:
    monkeypatch.setenv("TRACER_NO_CACHE", "1")
    calls: list = []
    btfmemo.remembered("t", _counting(calls))
    btfmemo.remembered("t", _counting(calls))
    assert len(calls) == 2 and not cache.exists()


def test_remembered_offsets_equal_the_btf(cache) -> None:
    """kstructs and the sigaction layout, through a written file and back, equal what the BTF says."""
    for _ in range(2):  # the first computes and writes, the second reads
        kstructs.offsets.cache_clear()
        symbols.sigaction_layout.cache_clear()
        assert kstructs.offsets() == kstructs.compute(btf.vmlinux())
        assert symbols.sigaction_layout() == symbols._sigaction_layout(btf.vmlinux())
    facts = json.loads(next(cache.glob("btf-*.json")).read_text())["facts"]
    assert set(facts) == {"kstructs", "sigaction"}


# -- the code key without source files (an install of .pyc files only) ----------------------------------

PROBE = '''
calls = []


def compute(b):
    calls.append(1)
    return [b.struct_named("task_struct").size_or_type, {offset}]
'''


def sourceless(tmp: Path, monkeypatch: pytest.MonkeyPatch, offset: int) -> ModuleType:
    """A module imported from a .pyc whose .py is gone, as a .pyc-only install has it."""
    name = "btfmemo_probe"
    src, pyc = tmp / f"{name}.py", tmp / f"{name}.pyc"
    src.write_text(PROBE.replace("{offset}", str(offset)))
    py_compile.compile(str(src), cfile=str(pyc), doraise=True)
    src.unlink()
    spec = importlib.util.spec_from_file_location(name, pyc, loader=SourcelessFileLoader(name, str(pyc)))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    with pytest.raises(OSError):  # what the key read before: the source file the code was compiled from
        Path(mod.compute.__code__.co_filename).read_bytes()
    return mod


def test_a_module_without_source_is_keyed_by_its_compiled_file(cache, tmp_path, monkeypatch) -> None:
    v1 = sourceless(tmp_path, monkeypatch, 1)
    size = btf.vmlinux().struct_named("task_struct").size_or_type
    assert btfmemo.remembered("t", v1.compute) == btfmemo.remembered("t", v1.compute) == [size, 1]
    assert len(v1.calls) == 1  # computed once, then read back
    v2 = sourceless(tmp_path, monkeypatch, 2)  # the same module, other code
    assert btfmemo._code(v2.compute) != btfmemo._code(v1.compute)
    assert btfmemo.remembered("t", v2.compute) == btfmemo.remembered("t", v2.compute) == [size, 2]
    assert len(v2.calls) == 1


class NoFileLoader:
    """A loader that has neither source nor file nor code to give (a frozen or vanished module)."""

    def get_source(self, name: str) -> str:
        raise ImportError(name)

    def get_code(self, name: str) -> None:
        raise OSError(name)


def test_nothing_to_read_is_still_a_key(cache, tmp_path, monkeypatch) -> None:
    """The BTF parser's module and the computation's without any file: the key falls back to the
    function's compiled code and tracer's version, and the memo still works."""
    for mod in (btf, sys.modules[__name__]):
        gone = importlib.util.spec_from_file_location(mod.__name__, tmp_path / "gone.py", loader=NoFileLoader())
        monkeypatch.setattr(mod, "__spec__", gone)
    assert btfmemo._module_bytes(btf.__name__) == b""
    calls: list = []
    fn = _counting(calls)
    btfmemo.remembered("t", fn)
    assert btfmemo.remembered("t", fn) == [btf.vmlinux().struct_named("task_struct").size_or_type, None]
    assert len(calls) == 1
    same, changed = _counting(calls), _counting(calls)
    changed.__code__ = changed.__code__.replace(co_consts=tuple(
        "thread_struct" if c == "task_struct" else c for c in changed.__code__.co_consts))
    assert btfmemo._code(same) == btfmemo._code(fn)  # the same code: the same key
    assert btfmemo._code(changed) != btfmemo._code(fn)  # other code, same name: another key


def test_a_module_with_source_is_keyed_by_its_source() -> None:
    assert btfmemo._module_bytes(btf.__name__) == Path(btf.__file__).read_bytes()
    assert btfmemo._module_bytes("no.such.module") == b""


def test_pyc_only_install_keeps_the_opened_file_walk(cache, tmp_path) -> None:
    """tracer compiled to .pyc files with every .py removed: kstructs' offsets still come from the memo,
    with no problem (an OSError for a missing source used to disable the opened-file walk)."""
    pkg = tmp_path / "site" / "tracer"
    shutil.copytree(Path(btf.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(pkg, quiet=1, legacy=True)
    for py in pkg.rglob("*.py"):
        py.unlink()
    probe = ("import json, tracer.kstructs as k; from tracer import btfmemo;"
             "o = k.offsets(); print(json.dumps([o.problem, len(o.values), btfmemo.__file__]))")
    env = {**os.environ, "PYTHONPATH": str(pkg.parent)}
    for _ in range(2):  # computes and writes, then reads back
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        problem, n, where = json.loads(out.stdout)
        assert where.endswith(".pyc") and where.startswith(str(pkg)), where
        assert problem is None and n == len(kstructs.offsets().values) > 0
    assert "kstructs" in json.loads(next(cache.glob("btf-*.json")).read_text())["facts"]


def test_the_compiled_code_key_is_the_same_in_every_process() -> None:
    """The last fallback serializes code objects itself: equal across processes and string hash seeds
    (symbols.py has frozenset constants: sorted), or the memo would miss at every start."""
    probe = ("import hashlib, sys; from tracer import btfmemo, symbols;"
             "print(hashlib.sha256(btfmemo._code_bytes(symbols.__spec__.loader.get_code('tracer.symbols'))).hexdigest())")
    keys = {subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(keys) == 1 and len(keys.pop()) == 65
