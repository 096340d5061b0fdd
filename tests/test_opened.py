"""The kernel's opened file without BPF: BTF member offsets summed through anonymous members (a synthesized
BTF blob), kstructs' defines, struct kfile records decoded into `opened`, and the filename check against
it (tracer/opened.py): what is proven, what conflicts, what stays undecided."""

from __future__ import annotations

import os
import struct

import pytest

from tracer import btf, kstructs, layout, opened
from tracer.decode import Decoder
from tracer.events import UNVERIFIED
from tracer.syscalls import Arg, Read, Syscall

C = layout.const
KFILE = layout.packer("kfile")


# --- BTF: offsets through anonymous members ----------------------------------------------------------

def btf_blob(types: list[bytes], strings: bytes) -> bytes:
    tsec = b"".join(types)
    hdr = struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(tsec), len(tsec), len(strings))
    return hdr + tsec + strings


def btf_type(name_off: int, kind: int, vlen: int, size: int, kflag: int = 0) -> bytes:
    return struct.pack("<III", name_off, kflag << 31 | kind << 24 | vlen, size)


def member(name_off: int, type_id: int, bit_off: int) -> bytes:
    return struct.pack("<III", name_off, type_id, bit_off)


def test_offsetof_sums_through_anonymous_members() -> None:
    # struct outer { long a; union { long x; struct { int pad; int deep; }; }; };  (ids: 1 int, 2 anon struct,
    # 3 anon union, 4 outer)
    strings = b"\0int\0outer\0a\0x\0pad\0deep\0"
    s = {n: strings.index(n.encode() + b"\0") for n in ("int", "outer", "a", "x", "pad", "deep")}
    types = [
        btf_type(s["int"], 1, 0, 4) + struct.pack("<I", 32),
        btf_type(0, 4, 2, 8) + member(s["pad"], 1, 0) + member(s["deep"], 1, 32),
        btf_type(0, 5, 2, 8) + member(s["x"], 1, 0) + member(0, 2, 0),
        btf_type(s["outer"], 4, 2, 16) + member(s["a"], 1, 0) + member(0, 3, 64),
    ]
    b = btf.Btf(btf_blob(types, strings))
    assert b.offsetof("outer", "a") == 0
    assert b.offsetof("outer", "x") == 8
    assert b.offsetof("outer", "deep") == 12  # 8 (the union) + 0 (the struct in it) + 4
    with pytest.raises(KeyError, match="no member 'nope'"):
        b.offsetof("outer", "nope")
    with pytest.raises(KeyError, match="no BTF struct named 'missing'"):
        b.offsetof("missing", "a")


def test_kstructs_reports_what_the_kernel_lacks() -> None:
    strings = b"\0task_struct\0files\0"
    types = [btf_type(0, 1, 0, 8) + struct.pack("<I", 64),
             btf_type(1, 4, 1, 8) + member(13, 1, 0)]
    off = kstructs.compute(btf.Btf(btf_blob(types, strings)))
    assert not off.ok and off.cflags() == ()
    assert off.problem.startswith("kernel BTF lacks task_struct.fs, fs_struct.root")


def test_kstructs_on_the_running_kernel() -> None:
    if not btf.VMLINUX.exists():
        pytest.skip(f"{btf.VMLINUX} absent")
    off = kstructs.offsets()
    assert off.ok, off.problem
    assert set(off.values) == set(kstructs.OFFSETS)
    assert "-DTRACER_KFILE" in off.cflags()
    # qstr.name follows the hash/len pair; path.mnt precedes path.dentry (layouts fixed since 2.6)
    assert off.values["KO_QSTR_NAME"] == 8 and (off.values["KO_PATH_MNT"], off.values["KO_PATH_DENTRY"]) == (0, 8)


# --- struct kfile -> opened ----------------------------------------------------------------------------

def kfile(status: int, names: list[bytes], *, ino: int = 1234, dev: int = (8 << 20) | 1, mode: int = 0o100644,
          err: int = 0) -> bytes:
    tail = b"".join(n + b"\0" for n in names)
    return KFILE.pack(ino, dev, 0, mode, status, len(names), KFILE.size + len(tail), err) + tail


def test_kfile_ok_is_the_whole_path() -> None:
    op = opened.decode_kfile(kfile(C("KF_OK"), [b"passwd", b"etc"]))
    assert op == {"status": "ok", "path": "/etc/passwd", "dev": "8:1", "ino": 1234, "mode": "0o100644",
                  "reason": None}
    assert opened.decode_kfile(kfile(C("KF_OK"), [], mode=0o40755))["path"] == "/"


def test_kfile_cut_or_unreachable_is_never_whole() -> None:
    cut = opened.decode_kfile(kfile(C("KF_TRUNC"), [b"leaf", b"dir"]))
    assert cut["status"] == "truncated" and cut["path"] == "dir/leaf" and "path cut" in cut["reason"]
    away = opened.decode_kfile(kfile(C("KF_UNREACHABLE"), [b"pipe:[77]"], mode=0o10600))
    assert away["status"] == "truncated" and away["path"] == "pipe:[77]" and "not reachable" in away["reason"]
    assert away["mode"] == "0o10600"


def test_kfile_unavailable() -> None:
    gone = opened.decode_kfile(kfile(C("KF_NOFILE"), []))
    assert gone == opened.unavailable("no file at fd = ret when sys_exit ran (another thread closed it)")
    assert opened.decode_kfile(kfile(C("KF_FAULT"), [], err=4))["reason"] == "a kernel read failed at fd[ret]"
    assert opened.decode_kfile(b"\0" * 8)["status"] == "unavailable"


# --- does the filename name the opened file? ----------------------------------------------------------

NOFOLLOW = os.O_NOFOLLOW


@pytest.mark.parametrize("value,kpath,flags,resolve,verdict", [
    ("/etc/passwd", "/etc/passwd", 0, 0, "same"),
    ("//etc/./passwd", "/etc/passwd", 0, 0, "same"),
    ("/etc/../etc/passwd", "/etc/passwd", 0, 0, "undecided"),           # '..' is not resolved lexically
    ("/etc/localtime", "/usr/share/zoneinfo/UTC", 0, 0, "undecided"),  # a symlink may lead there
    ("/etc/localtime", "/usr/share/zoneinfo/UTC", NOFOLLOW, 0, "conflict"),
    ("/tmp/harmless", "/tmp/secret", NOFOLLOW, 0, "conflict"),
    ("/tmp/harmless", "/tmp/secret", 0, 0, "undecided"),
    ("/a/link/f", "/b/f", 0, 0, "undecided"),                         # same leaf, dirs through a symlink
    ("/a/link/f", "/b/f", 0, 0x04, "conflict"),                      # ... not with RESOLVE_NO_SYMLINKS
    ("f", "/home/u/f", 0, 0, "undecided"),                           # relative: base directory unknown
    ("sub/f", "/home/u/other/f", 0, 0x04, "conflict"),               # no symlinks: must end with sub/f
    ("sub/f", "/home/u/sub/f", 0, 0x04, "undecided"),
    ("/x", "/srv/root/x", 0, 0x10, "undecided"),                     # RESOLVE_IN_ROOT: relative to dfd
    ("/tmp/", "/tmp", 0, 0, "same"),
    ("/tmp/..", "/", 0, 0, "undecided"),
    ("/tmp", "/tmp/#123", os.O_TMPFILE, 0, "undecided"),
    ("/tmp/File", "/tmp/file", NOFOLLOW, 0, "undecided"),            # case-insensitive directory?
])
def test_agreement(value: str, kpath: str, flags: int, resolve: int, verdict: str) -> None:
    got, why = opened.agreement(value, kpath, flags, resolve)
    assert got == verdict, why
    assert (why is None) == (verdict == "same")


def test_agreement_without_flags_is_undecided() -> None:
    assert opened.agreement("/tmp/x", "/tmp/y", None, 0)[0] == "undecided"


# --- through the decoder -------------------------------------------------------------------------------

REC = layout.struct_of("sys_record")
SLOT = layout.packer("read_slot")
DATA_OFF = REC.field("data").offset
OPENAT = Syscall("openat", 257, (Arg("dfd", "int"), Arg("filename", "const char *"), Arg("flags", "int"),
                                 Arg("mode", "umode_t")), (Read(1, C("RK_STR"), size=C("STR_CAP")),))
FNAME = 0x7FFD_0000_1000


def openat_record(value: bytes, kf: bytes | None, *, entry_ok: bool, flags: int = 0, ret: int = 3) -> bytes:
    data = value + b"\0"
    es, xs = (C("RS_OK"), C("RS_OK")) if entry_ok else (C("RS_FAULT"), C("RS_OK"))
    if entry_ok:
        sl = SLOT.pack(1, C("RK_STR"), es, xs, 0, 0, 0, len(value), 0, len(value), 1, 0, 0, 0)
    else:
        sl = SLOT.pack(1, C("RK_STR"), es, xs, -14, 0, 0, 0, 0, len(value), 0, 0, 0, 0)
    rflags = C("RF_EXIT_READS")
    xoff = 0
    if kf is not None:
        xoff = (len(data) + 7) & ~7
        data = data.ljust(xoff, b"\0") + kf
        rflags |= C("RF_OPENED")
    hdr = layout.packer("sys_record", "reads").pack(
        C("REC_SYSCALL"), DATA_OFF + len(data), 257, 1, rflags, 42, 43, 0, xoff, 1000, 2000, ret,
        (1 << 64) - 100, FNAME, flags, 0, 0, 0, b"cat")
    return hdr + sl + bytes(REC.field("reads").size * REC.field("reads").count - SLOT.size) + data


def decode(rec: bytes, problem: str | None = None) -> dict:
    return Decoder({257: OPENAT}, kfile_problem=problem).decode(rec, 0)


def test_recovered_value_naming_the_opened_file_is_verified() -> None:
    ev = decode(openat_record(b"/etc/hostname", kfile(C("KF_OK"), [b"hostname", b"etc"]), entry_ok=False))
    info = ev["reads"]["filename"]
    assert ev["opened"]["path"] == "/etc/hostname"
    assert (info["status"], info["verified"], info["verified_by"], info["opened_match"]) == (
        "recovered", True, "opened_file", "same")
    assert "unverified_reason" not in info


def test_recovered_value_that_cannot_be_the_file_is_changed() -> None:
    ev = decode(openat_record(b"/tmp/harmless", kfile(C("KF_OK"), [b"secret", b"tmp"]), entry_ok=False,
                              flags=NOFOLLOW))
    info = ev["reads"]["filename"]
    assert ev["args"]["filename"] == "/tmp/harmless"
    assert (info["status"], info["verified"], info["kernel_path"], info["opened_match"]) == (
        "changed", False, "/tmp/secret", "conflict")
    assert info["unverified_reason"].startswith("cannot be the file the kernel opened: its last component")


def test_recovered_value_left_unverified_says_why() -> None:
    ev = decode(openat_record(b"/tmp/harmless", kfile(C("KF_OK"), [b"secret", b"tmp"]), entry_ok=False))
    info = ev["reads"]["filename"]
    assert (info["status"], info["verified"], info["opened_match"]) == ("recovered", False, "undecided")
    assert info["unverified_reason"].startswith(UNVERIFIED["recovered"] + "; the kernel's opened file does not")


def test_entry_value_equal_at_exit_still_checked_against_the_file() -> None:
    """Memory rewritten and restored during the call (equal at entry and exit) is caught by the file."""
    ev = decode(openat_record(b"/tmp/harmless", kfile(C("KF_OK"), [b"secret", b"tmp"]), entry_ok=True,
                              flags=NOFOLLOW))
    assert ev["reads"]["filename"]["status"] == "changed"
    ev = decode(openat_record(b"/etc/x", kfile(C("KF_OK"), [b"y", b"etc"]), entry_ok=True))
    info = ev["reads"]["filename"]
    assert (info["status"], info["verified"], info["verified_by"]) == ("ok", True, "enter_exit_equal")


def test_opened_unavailable_reasons() -> None:
    ev = decode(openat_record(b"/etc/x", None, entry_ok=False), problem="kernel BTF lacks mount.mnt")
    assert ev["opened"] == opened.unavailable("kernel BTF lacks mount.mnt")
    assert ev["reads"]["filename"]["verified"] is False and "opened_match" not in ev["reads"]["filename"]
    assert "opened" not in decode(openat_record(b"/etc/x", None, entry_ok=True, ret=-2))  # failed: no file


def test_kstructs_agree_with_pahole() -> None:
    """Every offset, against a reader we did not write (pahole prints members of anonymous structs and
    unions at their offsets in the outer struct)."""
    import re
    import shutil
    import subprocess

    from conftest import require

    require(btf.VMLINUX.exists(), str(btf.VMLINUX))
    require(shutil.which("pahole") is not None, "pahole (apt-get install dwarves)")
    off = kstructs.offsets()
    assert off.ok, off.problem
    names = sorted({s for s, _ in kstructs.OFFSETS.values()})
    out = subprocess.run(["pahole", "-C", ",".join(names), str(btf.VMLINUX)], capture_output=True, text=True,
                         check=True).stdout
    bodies = dict(re.findall(r"^struct (\w+) \{\n(.*?)^\}[^\n]*;", out, re.S | re.M))
    assert set(bodies) == set(names)
    for define, (sname, mname) in kstructs.OFFSETS.items():
        text = bodies[sname]
        found = {int(m) for m in re.findall(rf"[\s*]{mname}(?:\[\d*\])?;\s*/\*\s*(\d+)", text)}
        assert found == {off.values[define]}, (define, sname, mname, found)
