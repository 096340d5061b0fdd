"""tracer.regions against live processes, with truth from binutils (nm, objdump), never from pyelftools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracer import regions
from tracer.regions import Mapping, RegionResolver, describe, parse_maps

WORKLOADS = Path(__file__).parent / "workloads"
PAGE = os.sysconf("SC_PAGE_SIZE")
LITERAL = b"regions literal marker 5e1f\0"
HALF_MIB = 1 << 19  # into the 1 MiB .bss arrays, past any file-backed page


# --- truth from binutils ------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjSection:
    name: str
    size: int
    vma: int
    file_off: int
    flags: str

    @property
    def alloc(self) -> bool:
        return "ALLOC" in self.flags and "THREAD_LOCAL" not in self.flags


def objdump_sections(path: Path) -> list[ObjSection]:
    out = subprocess.run(
        ["objdump", "-h", "-w", str(path)], check=True, capture_output=True, text=True
    ).stdout
    row = re.compile(
        r"\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+2\*\*\d+\s+(.*)"
    )
    return [
        ObjSection(m[1], int(m[2], 16), int(m[3], 16), int(m[4], 16), m[5])
        for m in map(row.fullmatch, out.splitlines())
        if m
    ]


def nm_symbols(path: Path) -> dict[str, int]:
    out = subprocess.run(
        ["nm", "--defined-only", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return {f[2]: int(f[0], 16) for f in (line.split() for line in out.splitlines()) if len(f) == 3}


def section_at_vaddr(secs: list[ObjSection], vaddr: int) -> ObjSection:
    (hit,) = [s for s in secs if s.alloc and s.vma <= vaddr < s.vma + s.size]
    return hit


def expected_place(path: Path, vaddr: int) -> dict:
    """Fields explain() must give for link-time vaddr inside a file-backed section of path."""
    sec = section_at_vaddr(objdump_sections(path), vaddr)
    off = vaddr - sec.vma
    return {"section": sec.name, "section_offset": off, "elf_vaddr": vaddr, "file_offset": sec.file_off + off}


# --- workloads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    dir: Path
    lib: Path
    exes: dict[str, Path]


def compile_workloads(out: Path) -> Build:
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()  # /proc/<pid>/maps shows resolved paths
    lib = out / "libregions.so"
    gcc = ["gcc", "-O0", "-Wall"]
    subprocess.run([*gcc, "-shared", "-fPIC", "-o", lib, WORKLOADS / "libregions.c"], check=True)
    link = [WORKLOADS / "regions.c", f"-L{out}", "-lregions", f"-Wl,-rpath,{out}"]
    exes = {"pie": out / "regions-pie", "nopie": out / "regions-nopie"}
    subprocess.run([*gcc, "-fPIE", "-pie", "-o", exes["pie"], *link], check=True)
    subprocess.run([*gcc, "-fno-pie", "-no-pie", "-o", exes["nopie"], *link], check=True)
    return Build(out, lib, exes)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    if not shutil.which("gcc") or not shutil.which("objdump"):
        pytest.skip("needs gcc and binutils")
    return compile_workloads(tmp_path_factory.mktemp("regions"))


@dataclass
class Running:
    proc: subprocess.Popen
    addrs: dict[str, int]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, line: str) -> tuple[str, int]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        name, _, value = self.proc.stdout.readline().strip().partition("=")
        return name, int(value, 16)


@contextmanager
def running(exe: Path, *wrapper: str) -> Iterator[Running]:
    argv = [*wrapper, str(exe)] if wrapper else [exe]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        addrs = {}
        assert proc.stdout
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            name, _, value = line.strip().partition("=")
            addrs[name] = int(value, 16)
        yield Running(proc, addrs)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def raw_maps(pid: int) -> list[tuple[int, int]]:
    with open(f"/proc/{pid}/maps") as f:
        return [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in f]


def gap_below_first_mapping(pid: int) -> int:
    first = raw_maps(pid)[0][0]
    assert first > 2 * PAGE
    return first - PAGE


# --- live processes -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["pie", "nopie"])
def test_executable_objects(build: Build, variant: str) -> None:
    exe = build.exes[variant]
    syms = nm_symbols(exe)
    image = exe.read_bytes()
    assert image.count(LITERAL) == 1
    lit_off = image.index(LITERAL)
    (lit_sec,) = [s for s in objdump_sections(exe) if s.alloc and s.file_off <= lit_off < s.file_off + s.size]
    resolver = RegionResolver()
    with running(exe) as w:
        assert resolver.snapshot(w.pid)
        cases = {
            "literal": lit_sec.vma + lit_off - lit_sec.file_off,
            "rodata": syms["regions_rodata_str"],
            "data": syms["regions_data_var"],
        }
        biases = set()
        for name, vaddr in cases.items():
            r = resolver.explain(w.pid, w.addrs[name])
            want = expected_place(exe, vaddr)
            assert r["kind"] == "file" and r["path"] == str(exe)
            assert r["perms"] == ("rw-p" if name == "data" else "r--p")
            assert {k: r[k] for k in want} == want, name
            assert r["start"] <= w.addrs[name] < r["end"]
            biases.add(w.addrs[name] - r["elf_vaddr"])
        assert cases["literal"] == resolver.explain(w.pid, w.addrs["literal"])["elf_vaddr"]
        (bias,) = biases
        assert bias % PAGE == 0 and (bias == 0) == (variant == "nopie")

        # The data segment starts mid-page (.init_array), so its first mapped page begins with bytes of
        # the file that belong to the read-only segment; they are mapped at an address no section has.
        secs = objdump_sections(exe)
        (init_array,) = [s for s in secs if s.name == ".init_array"]
        pad = init_array.vma // PAGE * PAGE
        assert not [s for s in secs if s.alloc and s.vma <= pad < s.vma + s.size]
        r = resolver.explain(w.pid, bias + pad)
        assert r["kind"] == "file" and r["file_offset"] == init_array.file_off // PAGE * PAGE
        assert "section" not in r and "elf_vaddr" not in r

        r = resolver.explain(w.pid, w.addrs["rodata"])
        want = expected_place(exe, syms["regions_rodata_str"])
        assert (
            describe(r)
            == f"{exe} .rodata+{want['section_offset']:#x} (r--p, file off {want['file_offset']:#x})"
        )


@pytest.mark.parametrize("variant", ["pie", "nopie"])
def test_bss(build: Build, variant: str) -> None:
    exe = build.exes[variant]
    syms = nm_symbols(exe)
    secs = objdump_sections(exe)
    file_end = max(s.vma + s.size for s in secs if s.alloc and "CONTENTS" in s.flags)
    bss_var = syms["regions_bss_var"]
    bss = section_at_vaddr(secs, bss_var)
    assert bss.name == ".bss" and "CONTENTS" not in bss.flags
    resolver = RegionResolver()
    with running(exe) as w:
        # A small .bss variable shares the last file-backed page of the data segment (zeroed past
        # p_filesz); the section table must be searched by address, not by file offset.
        r = resolver.explain(w.pid, w.addrs["bss"])
        in_file_page = bss_var < (file_end + PAGE - 1) // PAGE * PAGE
        assert r["kind"] == ("file" if in_file_page else "anon")
        assert (r["section"], r["section_offset"], r["elf_vaddr"]) == (".bss", bss_var - bss.vma, bss_var)

        # Deep inside a 1 MiB array: anonymous zero pages right after the file's last mapping.
        big = syms["regions_big_bss"]
        r = resolver.explain(w.pid, w.addrs["big_bss"] + HALF_MIB)
        # A non-randomized brk could sit right after .bss and take the [heap] name.
        assert r["kind"] in ("anon", "heap")
        assert r["near"] == f"{exe} .bss"
        assert (r["section_offset"], r["elf_vaddr"]) == (big + HALF_MIB - bss.vma, big + HALF_MIB)
        assert "path" not in r and "file_offset" not in r


@pytest.mark.parametrize("variant", ["pie", "nopie"])
def test_shared_library(build: Build, variant: str) -> None:
    lib = build.lib
    syms = nm_symbols(lib)
    bss = section_at_vaddr(objdump_sections(lib), syms["regions_lib_big_bss"])
    resolver = RegionResolver()
    with running(build.exes[variant]) as w:
        r = resolver.explain(w.pid, w.addrs["lib_function"])
        want = expected_place(lib, syms["regions_lib_function"])
        assert want["section"] == ".text"
        assert (r["kind"], r["path"], r["perms"]) == ("file", str(lib), "r-xp")
        assert {k: r[k] for k in want} == want

        addr = w.addrs["lib_big_bss"] + HALF_MIB
        vaddr = syms["regions_lib_big_bss"] + HALF_MIB
        r = resolver.explain(w.pid, addr)
        assert r["kind"] == "anon"
        assert r["near"] == f"{lib} .bss" and r["section"] == ".bss"
        assert (r["elf_vaddr"], r["section_offset"]) == (vaddr, vaddr - bss.vma)
        assert describe(r) == (
            f"anonymous rw-p {r['start']:#x}-{r['end']:#x} ({lib} .bss+{vaddr - bss.vma:#x})"
        )


def test_heap_stack_and_unmapped(build: Build) -> None:
    resolver = RegionResolver()
    with running(build.exes["pie"]) as w:
        heap = resolver.explain(w.pid, w.addrs["heap"])
        stack = resolver.explain(w.pid, w.addrs["stack"])
        assert (heap["kind"], describe(heap)) == ("heap", "heap")
        assert (stack["kind"], describe(stack)) == ("stack", "stack")
        assert heap["start"] <= w.addrs["heap"] < heap["end"] and heap["perms"] == "rw-p"

        assert resolver.explain(w.pid, 0) == {"kind": "unmapped", "where": "NULL page"}
        assert describe(resolver.explain(w.pid, 0xFFF)) == "unmapped (NULL page)"
        assert resolver.explain(w.pid, 0x800000000000) == {"kind": "unmapped", "where": "kernel half"}
        assert describe(resolver.explain(w.pid, 0xFFFF888000000000)) == "unmapped (kernel half)"
        gap = gap_below_first_mapping(w.pid)
        assert resolver.explain(w.pid, gap) == {"kind": "unmapped", "where": "user space"}


def test_elf_tables_are_cached_per_file(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = regions.read_tables
    monkeypatch.setattr(regions, "read_tables", lambda p: reads.append(p) or real(p))
    resolver = RegionResolver(max_elf_files=1)
    with running(build.exes["pie"]) as w, running(build.exes["nopie"]) as w2:
        for run in (w, w2, w):
            for name in ("lib_function", "lib_big_bss"):
                assert "elf_vaddr" in resolver.explain(run.pid, run.addrs[name])
        assert reads == [str(build.lib)]  # one parse for two processes and both mappings
        resolver.explain(w.pid, w.addrs["data"])
        resolver.explain(w.pid, w.addrs["lib_function"])
        assert reads == [str(build.lib), str(build.exes["pie"]), str(build.lib)]  # bounded at one file


def test_miss_refreshes_once(build: Build) -> None:
    resolver = RegionResolver()
    with running(build.exes["pie"]) as w:
        before = resolver.snapshot(w.pid)
        assert before
        _, addr = w.command("mmap")
        assert not any(m.start <= addr < m.end for m in before)
        r = resolver.explain(w.pid, addr)
        assert r["kind"] == "anon" and r["perms"] == "rw-p" and r["start"] <= addr < r["end"]
        assert "note" not in r


def test_deleted_files_resolve_through_map_files(build: Build, tmp_path: Path) -> None:
    moved = compile_workloads(tmp_path)
    syms = nm_symbols(moved.lib)
    want = expected_place(moved.lib, syms["regions_lib_function"])
    resolver = RegionResolver()
    with running(moved.exes["pie"]) as w:
        for path in (moved.lib, *moved.exes.values()):
            path.unlink()
        r = resolver.explain(w.pid, w.addrs["lib_function"])
        assert (r["path"], r["deleted"]) == (str(moved.lib), True)
        assert {k: r[k] for k in want} == want
        assert describe(r).startswith(f"{moved.lib} (deleted) .text+")


def test_other_mount_namespace(tmp_path: Path) -> None:
    """The path in maps names a different file out here; only map_files reaches the mapped one."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1)")
    inside = compile_workloads(tmp_path / "ns")  # rpath points at tmp_path/ns
    staged = tmp_path / "staged"
    shutil.copytree(inside.dir, staged)
    for f in inside.dir.iterdir():  # what a reader in our namespace sees at those paths
        shutil.copy("/bin/true", f)
    syms = nm_symbols(staged / "libregions.so")
    want = expected_place(staged / "libregions.so", syms["regions_lib_function"])
    ns = inside.dir
    script = f'mount -t tmpfs none {ns} && cp {staged}/* {ns}/ && exec "$0"'
    resolver = RegionResolver()
    with running(
        inside.exes["pie"], "unshare", "--mount", "--propagation", "private", "sh", "-c", script
    ) as w:
        if not w.addrs:
            pytest.skip("could not set up a mount namespace")
        r = resolver.explain(w.pid, w.addrs["lib_function"])
        assert (r["kind"], r["path"]) == ("file", str(inside.lib))
        assert {k: r[k] for k in want} == want


def test_process_gone_keeps_last_snapshot(build: Build) -> None:
    exe = build.exes["nopie"]
    resolver = RegionResolver()
    with running(exe) as w:
        assert resolver.snapshot(w.pid)
        gap = gap_below_first_mapping(w.pid)
        data = w.addrs["data"]
        w.proc.stdin.close()
        w.proc.wait(timeout=10)
        # A hit needs no re-read; the ELF file is reached by its path now that map_files is gone.
        r = resolver.explain(w.pid, data)
        assert (r["kind"], r["section"], r["elf_vaddr"]) == (
            "file",
            ".data",
            nm_symbols(exe)["regions_data_var"],
        )
        assert "note" not in r
        r = resolver.explain(w.pid, gap)
        assert (r["kind"], r["where"]) == ("unmapped", "user space")
        assert r["note"].startswith("process exited before its memory map could be re-read")

        fresh = RegionResolver()
        assert fresh.snapshot(w.pid) is None
        assert fresh.explain(w.pid, data) == {
            "kind": "unknown",
            "note": f"process {w.pid} is gone; its memory map could not be read",
        }
        assert describe(fresh.explain(w.pid, 0)).startswith("unknown: process ")


def test_file_replaced_after_exit_is_not_read(tmp_path: Path) -> None:
    own = compile_workloads(tmp_path)
    resolver = RegionResolver()
    with running(own.exes["pie"]) as w:
        assert resolver.snapshot(w.pid)
        w.proc.stdin.close()
        w.proc.wait(timeout=10)
        own.lib.rename(own.dir / "old.so")  # kept, so the new file cannot reuse its inode number
        shutil.copy("/bin/true", own.lib)
        r = resolver.explain(w.pid, w.addrs["lib_function"])
        assert (r["kind"], r["path"]) == ("file", str(own.lib))
        assert "section" not in r and "elf_vaddr" not in r


def test_own_vdso_and_vvar() -> None:
    resolver = RegionResolver()
    maps = resolver.snapshot(os.getpid())
    assert maps
    for m in maps:
        if m.path in ("[vdso]", "[vvar]", "[vvar_vclock]"):
            r = resolver.explain(os.getpid(), m.start)
            assert r["kind"] == m.path.strip("[]").removesuffix("_vclock")
            assert r.get("name") == (m.path if m.path == "[vvar_vclock]" else None)


# --- synthetic maps -----------------------------------------------------------------------------

# \x20: the kernel ends an unnamed mapping's line with a space; the second one below lacks it.
SYNTHETIC = """\
555555554000-555555556000 r--p 00000000 fe:00 1234                       /opt/my app/bin/my prog
555555556000-555555557000 r-xp 00002000 fe:00 1234                       /opt/my app/bin/my prog
555555557000-555555558000 rw-p 00000000 00:00 0\x20
555555558000-555555579000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 r--p 00000000 00:00 0                          [anon:glibc.malloc arena]
7f0000001000-7f0000002000 r-xp 00001000 08:01 99                         /tmp/lib (deleted) x.so (deleted)
7f0000002000-7f0000003000 rw-s 00000000 00:01 4242                       /memfd:ring buf (deleted)
7f0000003000-7f0000004000 rw-p 00000000 00:00 0
7f0000004000-7f0000005000 r--p 00000000 00:00 0                          [vvar]
7f0000005000-7f0000006000 r-xp 00000000 00:00 0                          [vdso]
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_parse_maps_synthetic() -> None:
    maps = parse_maps(SYNTHETIC)
    assert maps[0] == Mapping(
        0x555555554000, 0x555555556000, "r--p", 0, "fe:00", 1234, "/opt/my app/bin/my prog"
    )
    assert maps[1].offset == 0x2000 and maps[1].kind == "file"
    assert [m.kind for m in maps] == [
        "file", "file", "anon", "heap", "anon", "file", "file", "anon", "vvar", "vdso", "stack", "special",
    ]  # fmt: skip
    assert (maps[2].path, maps[7].path) == ("", "")
    assert maps[4].path == "[anon:glibc.malloc arena]"
    assert (maps[5].path, maps[5].deleted, maps[5].dev, maps[5].inode) == (
        "/tmp/lib (deleted) x.so",
        True,
        "08:01",
        99,
    )
    assert (maps[6].path, maps[6].deleted, maps[6].perms) == ("/memfd:ring buf", True, "rw-s")
    assert maps[0].deleted is False
    assert maps[-1].start == 0xFFFFFFFFFF600000
    with pytest.raises(ValueError, match="not a /proc"):
        parse_maps("garbage line\n")


def test_parse_maps_own_process() -> None:
    with open("/proc/self/maps") as f:
        text = f.read()
    maps = parse_maps(text)
    assert len(maps) == len(text.splitlines())
    assert {"heap", "stack", "file"} <= {m.kind for m in maps}
    assert all(m.start < m.end for m in maps)


def fake_proc(root: Path, pid: int, maps: str, starttime: int = 1000) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "maps").write_text(maps)
    # comm with spaces and parentheses; starttime is field 22
    (d / "stat").write_text(f"{pid} (a (b) c) S " + " ".join(["1"] * 18) + f" {starttime} 0 0\n")


def test_synthetic_resolution_and_exit(tmp_path: Path) -> None:
    fake_proc(tmp_path, 77, SYNTHETIC)
    resolver = RegionResolver(proc=str(tmp_path))
    r = resolver.explain(77, 0x7F0000000010)
    assert r == {
        "kind": "anon",
        "start": 0x7F0000000000,
        "end": 0x7F0000001000,
        "perms": "r--p",
        "name": "[anon:glibc.malloc arena]",
    }
    assert describe(r) == "anonymous [anon:glibc.malloc arena] r--p 0x7f0000000000-0x7f0000001000"
    r = resolver.explain(77, 0x7F0000001010)  # the file is not on disk: no ELF fields, no guesses
    assert r == {
        "kind": "file",
        "start": 0x7F0000001000,
        "end": 0x7F0000002000,
        "perms": "r-xp",
        "path": "/tmp/lib (deleted) x.so",
        "deleted": True,
        "file_offset": 0x1010,
    }
    assert describe(r) == "/tmp/lib (deleted) x.so (deleted) (r-xp, file off 0x1010)"
    assert describe(resolver.explain(77, 0xFFFFFFFFFF600000)) == "[vsyscall] --xp"
    assert describe(resolver.explain(77, 0x7F0000003000)) == "anonymous rw-p 0x7f0000003000-0x7f0000004000"

    # The process maps more, then the miss triggers one re-read.
    more = SYNTHETIC.replace(
        "7ffffffde000-", "7f1000000000-7f1000001000 rw-p 00000000 00:00 0\n7ffffffde000-"
    )
    fake_proc(tmp_path, 77, more)
    assert resolver.explain(77, 0x7F1000000000)["kind"] == "anon"

    shutil.rmtree(tmp_path / "77")
    assert resolver.explain(77, 0x555555558010)["kind"] == "heap"  # hit: from the snapshot, as taken
    r = resolver.explain(77, 0x7F2000000000)
    assert (r["kind"], r["where"]) == ("unmapped", "user space")
    assert r["note"] == "process exited before its memory map could be re-read; this is its last snapshot"
    assert describe(r) == f"unmapped: {r['note']}"
    assert resolver.snapshot(77) is None
    assert resolver.explain(77, 0x555555558010)["kind"] == "heap"  # a failed snapshot keeps the old one


def test_recycled_pid_is_not_taken_for_the_old_process(tmp_path: Path) -> None:
    fake_proc(tmp_path, 88, SYNTHETIC, starttime=1000)
    resolver = RegionResolver(proc=str(tmp_path))
    assert resolver.snapshot(88)
    fake_proc(tmp_path, 88, "7f3000000000-7f3000001000 rw-p 00000000 00:00 0\n", starttime=2000)
    r = resolver.explain(88, 0x7F3000000000)
    assert r["kind"] == "unmapped"
    assert r["note"].startswith("process exited (88 is now another process's pid) before")
    assert resolver.snapshot(88) and resolver.explain(88, 0x7F3000000000)["kind"] == "anon"


def test_unreadable_and_zombie(tmp_path: Path) -> None:
    fake_proc(tmp_path, 99, "")  # a zombie's maps are empty
    resolver = RegionResolver(proc=str(tmp_path))
    assert resolver.explain(99, 0x1000) == {
        "kind": "unknown",
        "note": "process 99 is gone; its memory map could not be read",
    }
    with pytest.raises(ValueError):
        resolver.explain(99, -1)


def test_caches_are_bounded(tmp_path: Path) -> None:
    resolver = RegionResolver(proc=str(tmp_path), max_processes=2)
    for pid in (1, 2, 3):
        fake_proc(tmp_path, pid, SYNTHETIC)
        assert resolver.snapshot(pid)
    shutil.rmtree(tmp_path / "1")
    assert resolver.explain(1, 0x555555558010)["kind"] == "unknown"  # evicted, and gone
    assert resolver.explain(3, 0x555555558010)["kind"] == "heap"
