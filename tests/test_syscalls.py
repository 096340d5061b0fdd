"""tracer/syscalls.py against a FAKE tracefs root built from real format files (copied from
/sys/kernel/tracing/events/syscalls/*/format on 6.18, x86_64): format parsing, the read plan of each
pointer argument, the syscall table, and EVENT spec resolution with its error messages.

syscalls.table() is functools.cache'd per root, so every call here passes the fake root explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracer import syscalls
from tracer.layout import const
from tracer.syscalls import Arg, Read, UnknownEvent, parse_format, plan_reads, resolve

RK_STR, RK_OPEN_HOW, RK_SOCKADDR, RK_SOCKADDR_OUT = (
    const("RK_STR"), const("RK_OPEN_HOW"), const("RK_SOCKADDR"), const("RK_SOCKADDR_OUT"))
STR_CAP, HOW_CAP, SOCKADDR_CAP = const("STR_CAP"), const("HOW_CAP"), const("SOCKADDR_CAP")
X86_64 = os.uname().machine == "x86_64"

OPENAT2_FORMAT = """\
name: sys_enter_openat2
ID: 780
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;
\tfield:struct open_how * how;\toffset:32;\tsize:8;\tsigned:0;
\tfield:size_t usize;\toffset:40;\tsize:8;\tsigned:0;

print fmt: "dfd: 0x%08lx, filename: 0x%08lx, how: 0x%08lx, usize: 0x%08lx", ((unsigned long)(REC->dfd)), \
((unsigned long)(REC->filename)), ((unsigned long)(REC->how)), ((unsigned long)(REC->usize))
"""

EXIT_FORMAT = """\
name: sys_exit_{name}
ID: 779
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: "0x%lx", REC->ret
"""

# The argument lines of real sys_enter_* format files (after __syscall_nr).
FIELDS = {
    "openat": ["int dfd", "const char * filename", "int flags", "umode_t mode"],
    "write": ["unsigned int fd", "const char * buf", "size_t count"],
    "read": ["unsigned int fd", "char * buf", "size_t count"],
    "connect": ["int fd", "struct sockaddr * uservaddr", "int addrlen"],
    "bind": ["int fd", "struct sockaddr * umyaddr", "int addrlen"],
    "accept4": ["int fd", "struct sockaddr * upeer_sockaddr", "int * upeer_addrlen", "int flags"],
    "sendto": ["int fd", "void * buff", "size_t len", "unsigned int flags", "struct sockaddr * addr",
               "int addr_len"],
    "recvfrom": ["int fd", "void * ubuf", "size_t size", "unsigned int flags", "struct sockaddr * addr",
                 "int * addr_len"],
    "socket": ["int family", "int type", "int protocol"],
    "execve": ["const char * filename", "const char *const * argv", "const char *const * envp"],
    "exit_group": ["int error_code"],
    "mount": ["char * dev_name", "char * dir_name", "char * type", "unsigned long flags", "void * data"],
    "unlinkat": ["int dfd", "const char * pathname", "int flag"],
    "newstat": ["const char * filename", "struct stat * statbuf"],
    "umount": ["char * name", "int flags"],
    "utime": ["char * filename", "struct utimbuf * times"],
    "move_mount": ["int from_dfd", "const char * from_pathname", "int to_dfd", "const char * to_pathname",
                   "unsigned int flags"],
    "notasyscall": ["int x"],  # a tracepoint libseccomp has no number for
}
NO_EXIT = {"read", "exit_group"}  # enter tracepoint only (read: to check that such syscalls are dropped)


def enter_format(name: str, fields: list[str]) -> str:
    lines = [f"name: sys_enter_{name}", "ID: 700", "format:",
             "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;",
             "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;",
             "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;",
             "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;", "",
             "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;"]
    for i, f in enumerate(fields):
        lines.append(f"\tfield:{f};\toffset:{16 + 8 * i};\tsize:8;\tsigned:0;")
    lines += ["", 'print fmt: "..."', ""]
    return "\n".join(lines)


def args_of(name: str) -> list[Arg]:
    return parse_format(OPENAT2_FORMAT if name == "openat2" else enter_format(name, FIELDS[name]))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracefs")
    base = root / "events" / "syscalls"
    formats = {"openat2": OPENAT2_FORMAT} | {n: enter_format(n, f) for n, f in FIELDS.items()}
    for name, text in formats.items():
        (base / f"sys_enter_{name}").mkdir(parents=True)
        (base / f"sys_enter_{name}" / "format").write_text(text)
        if name not in NO_EXIT:
            (base / f"sys_exit_{name}").mkdir()
            (base / f"sys_exit_{name}" / "format").write_text(EXIT_FORMAT.format(name=name))
    (base / "enable").write_text("0\n")  # tracefs has these files beside the event directories
    (base / "filter").write_text("none\n")
    return root


@pytest.fixture(scope="module")
def table(root: Path) -> dict:
    return syscalls.table(root)


# --- parse_format ---------------------------------------------------------------------------------

def test_parse_format_openat2() -> None:
    assert parse_format(OPENAT2_FORMAT) == [Arg("dfd", "int"), Arg("filename", "const char *"),
                                            Arg("how", "struct open_how *"), Arg("usize", "size_t")]


def test_parse_format_types() -> None:
    assert args_of("execve") == [Arg("filename", "const char *"), Arg("argv", "const char *const *"),
                                 Arg("envp", "const char *const *")]
    assert args_of("write") == [Arg("fd", "unsigned int"), Arg("buf", "const char *"), Arg("count", "size_t")]
    assert args_of("socket") == [Arg("family", "int"), Arg("type", "int"), Arg("protocol", "int")]
    assert args_of("exit_group") == [Arg("error_code", "int")]


def test_parse_format_skips_common_fields() -> None:
    names = [a.name for a in parse_format(OPENAT2_FORMAT)]
    assert not [n for n in names if n.startswith("common_") or n == "__syscall_nr"]
    assert parse_format(EXIT_FORMAT.format(name="openat2")) == [Arg("ret", "long")]


def test_arg_is_pointer() -> None:
    args = {a.name: a for a in args_of("openat2")}
    assert args["filename"].is_pointer and args["how"].is_pointer
    assert not args["dfd"].is_pointer and not args["usize"].is_pointer


# --- plan_reads --------------------------------------------------------------------------------------

def test_plan_openat2() -> None:
    args = args_of("openat2")
    usize = [a.name for a in args].index("usize")
    assert plan_reads("openat2", args) == (Read(1, RK_STR, size=STR_CAP), Read(2, RK_OPEN_HOW, usize, HOW_CAP))
    assert usize == 3


def test_plan_connect_and_bind_read_sockaddr_with_addrlen() -> None:
    assert plan_reads("connect", args_of("connect")) == (Read(1, RK_SOCKADDR, 2, SOCKADDR_CAP),)
    assert plan_reads("bind", args_of("bind")) == (Read(1, RK_SOCKADDR, 2, SOCKADDR_CAP),)
    assert plan_reads("sendto", args_of("sendto")) == (Read(4, RK_SOCKADDR, 5, SOCKADDR_CAP),)


def test_plan_accept4_and_recvfrom_read_sockaddr_at_exit() -> None:
    assert plan_reads("accept4", args_of("accept4")) == (Read(1, RK_SOCKADDR_OUT, 2, SOCKADDR_CAP),)
    assert plan_reads("recvfrom", args_of("recvfrom")) == (Read(4, RK_SOCKADDR_OUT, 5, SOCKADDR_CAP),)


def test_plan_write_buf_is_not_a_string() -> None:
    assert plan_reads("write", args_of("write")) == ()
    assert plan_reads("read", args_of("read")) == ()  # output buffer: nothing to read at entry


def test_plan_other_syscalls() -> None:
    # argv/envp: NULL-terminated string arrays; lenarg says which area of the new mm holds the kernel's copy
    strv, cap = const("RK_STRV"), const("STRV_ELEM_CAP")
    assert plan_reads("execve", args_of("execve")) == (Read(0, RK_STR, size=STR_CAP), Read(1, strv, 0, cap),
                                                       Read(2, strv, 1, cap))
    assert plan_reads("unlinkat", args_of("unlinkat")) == (Read(1, RK_STR, size=STR_CAP),)
    assert plan_reads("socket", args_of("socket")) == ()
    assert plan_reads("exit_group", args_of("exit_group")) == ()
    # mount's `char *` paths are strings; its `type` and `data` are not read.
    assert plan_reads("mount", args_of("mount")) == (Read(0, RK_STR, size=STR_CAP), Read(1, RK_STR, size=STR_CAP))


def test_plan_caps_at_max_reads() -> None:
    args = [Arg(f"s{i}", "const char *") for i in range(6)]
    reads = plan_reads("x", args)
    assert len(reads) == const("MAX_READS")
    assert [r.arg for r in reads] == list(range(const("MAX_READS")))


def test_plan_edge_cases() -> None:
    # open_how without a usize argument, and a trailing sockaddr without a length: nothing to size them by.
    assert plan_reads("x", [Arg("how", "struct open_how *")]) == ()
    assert plan_reads("x", [Arg("fd", "int"), Arg("addr", "struct sockaddr *")]) == ()


# --- table --------------------------------------------------------------------------------------------

def test_table_contents(table: dict) -> None:
    expected = set(FIELDS) - {"read", "notasyscall"} | {"openat2"}
    assert set(table) == expected
    sc = table["openat2"]
    assert sc.args == tuple(args_of("openat2"))
    assert sc.reads == plan_reads("openat2", args_of("openat2"))
    assert sc.enter_tp == "syscalls:sys_enter_openat2" and sc.exit_tp == "syscalls:sys_exit_openat2"
    assert not sc.noreturn and not sc.exec_
    assert table["exit_group"].noreturn  # kept without an exit tracepoint
    assert table["execve"].exec_
    assert "read" not in table  # no sys_exit_read here


def test_table_numbers(table: dict) -> None:
    import seccomp

    native = seccomp.Arch.NATIVE
    assert table["openat2"].nr == seccomp.resolve_syscall(native, "openat2")
    assert table["newstat"].nr == seccomp.resolve_syscall(native, "stat")  # tracepoint name != syscall name
    assert table["umount"].nr == seccomp.resolve_syscall(native, "umount2")
    if X86_64:
        assert (table["openat2"].nr, table["newstat"].nr, table["umount"].nr, table["connect"].nr) == (437, 4, 166, 42)


def test_by_nr(root: Path, table: dict) -> None:
    by = syscalls.by_nr(root)
    assert by[table["openat2"].nr] is table["openat2"]
    assert len(by) == len(table)


def test_takes_path(table: dict) -> None:
    assert table["openat2"].takes_path
    assert table["unlinkat"].takes_path
    assert not table["write"].takes_path
    assert not table["connect"].takes_path


# --- resolve --------------------------------------------------------------------------------------------

def names(specs: list[str], root: Path) -> list[str]:
    return [s.name for s in resolve(specs, root)]


def test_resolve_name_and_tracepoint(root: Path) -> None:
    assert names(["openat2"], root) == ["openat2"]
    assert names(["syscalls:sys_enter_openat2"], root) == ["openat2"]
    assert names(["syscalls:sys_exit_connect"], root) == ["connect"]


def test_resolve_glob(root: Path) -> None:
    assert names(["open*"], root) == ["openat", "openat2"]
    assert names(["openat?"], root) == ["openat2"]
    assert names(["[bc]*"], root) == ["bind", "connect"]


def test_resolve_dedupes_in_first_seen_order(root: Path) -> None:
    assert names(["openat2", "open*", "syscalls:sys_enter_openat2"], root) == ["openat2", "openat"]


def test_resolve_file_group(root: Path) -> None:
    got = set(names(["%file"], root))
    assert {"openat2", "openat", "execve", "unlinkat", "newstat", "mount"} <= got
    assert not got & {"write", "connect", "socket", "accept4", "exit_group"}


def test_resolve_file_group_includes_all_path_arguments(root: Path) -> None:
    """%file is documented as every syscall with a path-like string argument: that includes utime's
    `char * filename`, umount's `char * name` and move_mount's from_pathname/to_pathname."""
    got = set(names(["%file"], root))
    assert {"utime", "umount", "move_mount"} <= got


def test_resolve_net_and_process_groups(root: Path) -> None:
    assert set(names(["%net"], root)) == {"connect", "bind", "accept4", "sendto", "recvfrom", "socket"}
    assert set(names(["%process"], root)) == {"execve", "exit_group"}


@pytest.mark.parametrize(("spec", "message"), [
    ("nosuch", "no syscall tracepoint matches 'nosuch'"),
    ("pen", "no syscall tracepoint matches 'pen' (did you mean: openat, openat2?)"),
    ("zz*", "no syscall tracepoint matches 'zz*'"),
    ("read", "no syscall tracepoint matches 'read'"),  # enter only: not traceable
    ("notasyscall", "no syscall tracepoint matches 'notasyscall'"),
    ("syscalls:sys_enter_nosuch", "no syscall tracepoint matches 'syscalls:sys_enter_nosuch'"),
    ("syscalls:openat2", "no syscall tracepoint matches 'syscalls:openat2'"),
    ("%foo", "unknown group '%foo'; groups: %file, %net, %process"),
])
def test_unknown_event_messages(root: Path, spec: str, message: str) -> None:
    with pytest.raises(UnknownEvent) as info:
        resolve(["openat2", spec], root)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_tracefs_env_points_at_fake_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.kenv import EnvironmentProblem, tracefs_root

    monkeypatch.setenv("TRACER_TRACEFS", str(root))
    assert tracefs_root() == root
    monkeypatch.setenv("TRACER_TRACEFS", str(root / "events" / "syscalls"))
    with pytest.raises(EnvironmentProblem, match="no events/ directory"):
        tracefs_root()
