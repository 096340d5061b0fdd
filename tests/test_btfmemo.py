"""tracer/btfmemo.py: facts from the running kernel's BTF, computed once per kernel and code, trusted only as
the program cache is."""

from __future__ import annotations

import json
import os

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
