"""Kernel header discovery (tracer/kenv.py) on fake trees laid out as distributions install them, and the
compile test doctor's verdict rests on, against the real headers and a deliberately broken tree."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from tracer import caps, kenv

REL = "6.12.99-test-amd64"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    monkeypatch.delenv(kenv.CHOSEN_ENV, raising=False)
    monkeypatch.setenv(kenv.KHEADERS_CACHE_ENV, str(tmp_path / "kcache"))


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def find(tmp: Path, release: str = REL, version: str = "#1 SMP 2026-01-01", **kw: object) -> kenv.Headers:
    args = {"modules": tmp / "modules", "kheaders": tmp / "kheaders.tar.xz", "generic": tmp / "for", **kw}
    return kenv.kernel_headers(release, version=version, **args)  # type: ignore[arg-type]


def debian(tmp: Path, release: str = REL, with_common: bool = True) -> Path:
    """linux-headers-<rel>: build/ holds the generated headers, source/ (the -common package) the rest."""
    build = tmp / "usr/src" / f"linux-headers-{release}"
    common = tmp / "usr/src" / "linux-headers-common"
    touch(build / "include/generated/autoconf.h")
    common.mkdir(parents=True, exist_ok=True)
    if with_common:
        touch(common / "include/linux/kconfig.h")
    kdir = tmp / "modules" / release
    kdir.mkdir(parents=True)
    (kdir / "build").symlink_to(build)
    (kdir / "source").symlink_to(common)
    return kdir / "build"


def kheaders_archive(path: Path, marker: str = "one") -> Path:
    with tarfile.open(path, "w:xz") as tar:
        for name, text in (("./include/linux/kconfig.h", marker), ("./include/generated/utsrelease.h", REL)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_debian_split_tree_is_left_to_bcc(tmp_path: Path) -> None:
    build = debian(tmp_path)
    found = find(tmp_path)
    assert found.kind == "own" and found.path == build and found.matches_kernel
    # bcc follows source/ only while BCC_KERNEL_SOURCE is unset: pointing it at build/ breaks every compile.
    assert found.bcc_env is None and "build/ + source/" in found.how
    assert found.roots == [build, tmp_path / "modules" / REL / "source"]  # where uapi.py looks for headers
    env = {"BCC_KERNEL_SOURCE": "/old/choice", kenv.CHOSEN_ENV: "/old/choice", "OTHER": "x"}
    kenv.apply_headers(found, env)
    assert env == {"OTHER": "x"}


def test_fedora_single_tree(tmp_path: Path) -> None:
    touch(tmp_path / "modules" / REL / "build/include/linux/kconfig.h")
    found = find(tmp_path)
    assert (found.kind, found.path, found.bcc_env) == ("own", tmp_path / "modules" / REL / "build", None)
    assert "one tree" in found.how


def test_incomplete_own_tree_falls_through(tmp_path: Path) -> None:
    debian(tmp_path, with_common=False)  # source/ without the headers bcc needs
    assert find(tmp_path).kind == "none"
    kheaders_archive(tmp_path / "kheaders.tar.xz")
    assert find(tmp_path).kind == "kheaders"


def test_kheaders_extracted_once_per_kernel_build(tmp_path: Path) -> None:
    archive = kheaders_archive(tmp_path / "kheaders.tar.xz", "first")
    assert find(tmp_path, extract=False).path is not None  # reported, not extracted
    assert not (tmp_path / "kcache").exists()
    found = find(tmp_path)
    assert found.kind == "kheaders" and found.matches_kernel and found.bcc_env == str(found.path)
    assert found.path.parent == tmp_path / "kcache" and found.path.name.startswith(REL + "-")
    assert (found.path / "include/linux/kconfig.h").read_text() == "first"
    kheaders_archive(archive, "second")  # same build: the extracted tree is reused as it is
    assert find(tmp_path).path == found.path
    assert (found.path / "include/linux/kconfig.h").read_text() == "first"
    rebuilt = find(tmp_path, version="#2 SMP 2026-02-02")  # same release, another build: its own entry
    assert rebuilt.path != found.path and (rebuilt.path / "include/linux/kconfig.h").read_text() == "second"
    assert sorted(p.name for p in (tmp_path / "kcache").iterdir()) == sorted([found.path.name, rebuilt.path.name])


def test_own_headers_beat_kheaders(tmp_path: Path) -> None:
    debian(tmp_path)
    kheaders_archive(tmp_path / "kheaders.tar.xz")
    assert find(tmp_path).kind == "own"


def test_generic_headers_per_release(tmp_path: Path) -> None:
    tree = tmp_path / "merged-6.1.0-57-amd64"
    touch(tree / "include/linux/kconfig.h")
    (tmp_path / "for").mkdir()
    (tmp_path / "for" / "6.18.1-other").symlink_to(tree)
    assert find(tmp_path).kind == "none"  # linked for another kernel: not ours to use
    (tmp_path / "for" / REL).symlink_to(tree)
    found = find(tmp_path)
    assert found.kind == "generic" and not found.matches_kernel
    assert found.path == tree and found.bcc_env == str(tree)
    kheaders_archive(tmp_path / "kheaders.tar.xz")
    assert find(tmp_path).kind == "kheaders"  # the kernel's own headers come first


def test_user_setting_wins_but_not_our_own_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian(tmp_path)
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/usr/src/mine")
    found = find(tmp_path)
    assert (found.kind, found.path) == ("environment", Path("/usr/src/mine"))
    monkeypatch.setenv(kenv.CHOSEN_ENV, "/usr/src/mine")  # a parent tracer chose it: discover again
    assert find(tmp_path).kind == "own"


def test_doctor_verdicts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    headers = {"generic": kenv.Headers(tmp_path, "generic", "linked", str(tmp_path)),
               "own": kenv.Headers(tmp_path, "own", "own tree"), "none": kenv.Headers(None, "none", "none found")}
    errors: list[str | None] = [None]
    monkeypatch.setattr(kenv, "compile_test", lambda h, timeout=600: errors[0])
    for kind, h in headers.items():
        monkeypatch.setattr(kenv, "kernel_headers", lambda h=h: h)
        check = caps.check_headers()
        assert check.verdict == {"none": "missing"}.get(kind, kind)
        assert check.ok is (kind != "none")
    monkeypatch.setattr(kenv, "kernel_headers", lambda: headers["generic"])
    check = caps.check_headers()
    assert check.detail.startswith("generic headers for another kernel: syscall tracepoints work, anything that "
                                   "walks kernel structs uses BTF") and "a test program compiled" in check.detail
    errors[0] = "fatal error: './include/linux/kconfig.h' file not found"
    check = caps.check_headers()
    assert (check.ok, check.verdict) == (False, "broken") and errors[0] in check.detail and check.fix


# --- the compile test, for real --------------------------------------------------------------------------


def test_compile_test_passes_on_the_chosen_headers(bpf_env) -> None:
    headers = kenv.kernel_headers()
    assert kenv.compile_test(headers) is None
    assert caps.check_headers().ok is True


def test_compile_test_catches_a_tree_bcc_cannot_use(bpf_env, tmp_path: Path) -> None:
    """A tree that exists and looks complete, but does not compile: doctor must not say it is fine."""
    touch(tmp_path / "include/linux/kconfig.h", "#error this header tree is broken on purpose\n")
    broken = kenv.Headers(tmp_path, "generic", "test tree", str(tmp_path))
    error = kenv.compile_test(broken)
    assert error is not None and "broken on purpose" in error
    assert os.environ.get("BCC_KERNEL_SOURCE") != str(tmp_path)  # the test ran in a child process
