"""tracer/layout.py against the C compiler: every struct, field offset and size, and every #define of
bpf/record.h must be what gcc says, so that the Python decoder and the BPF program cannot drift.

The list of structs and fields comes from the compiler too (DWARF of an object that includes
record.h), not from layout.py, so a field the parser skipped or invented is caught.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tracer import layout
from tracer.kenv import BPF_DIR

RECORD_H = BPF_DIR / "record.h"
TYPES = """\
typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef signed short __s16;
typedef unsigned int __u32;
typedef signed int __s32;
typedef unsigned long long __u64;
typedef signed long long __s64;
"""

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to check record.h")


def gcc(*args: str | Path) -> str:
    proc = subprocess.run(["gcc", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def macros(src: Path) -> dict[str, str]:
    out = {}
    for line in gcc("-dM", "-E", f"-I{BPF_DIR}", src).splitlines():
        m = re.match(r"#define (\w+)(?: (.*))?$", line)
        if m:
            out[m.group(1)] = m.group(2) or ""
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What gcc knows about record.h: structs with their members (in order), and its #define names."""
    tmp = tmp_path_factory.mktemp("layout")
    base = tmp / "base.c"
    base.write_text(TYPES)
    tu = tmp / "tu.c"
    tu.write_text(TYPES + "".join(f'#include "{h}"\n' for h in layout.HEADERS))
    defined = {k: v for k, v in macros(tu).items() if k not in macros(base)}

    obj = tmp / "tu.o"
    gcc("-g", "-fno-eliminate-unused-debug-types", "-c", f"-I{BPF_DIR}", tu, "-o", obj)
    structs: dict[str, list[str]] = {}
    with obj.open("rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_structure_type" or "DW_AT_name" not in die.attributes:
                    continue
                name = die.attributes["DW_AT_name"].value.decode()
                structs[name] = [c.attributes["DW_AT_name"].value.decode()
                                 for c in die.iter_children() if c.tag == "DW_TAG_member"]
    assert structs, "no structs found in the DWARF of an object including record.h"
    return {"structs": structs, "macros": defined}


@pytest.fixture(scope="module")
def measured(compiled: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """sizeof/offsetof/_Alignof of everything, and the value of every #define, printed by a C program."""
    lines = [TYPES, *(f'#include "{h}"' for h in layout.HEADERS), "#include <stddef.h>", "#include <stdio.h>",
             "#define M(s, f) (((struct s *)0)->f)",
             "#define ELEM(x) (sizeof(x) / sizeof((x)[0]))", "int main(void) {"]
    for sname, members in compiled["structs"].items():
        lines.append(f'printf("S {sname} %zu %zu\\n", sizeof(struct {sname}), _Alignof(struct {sname}));')
        for f in members:
            lines.append(f'printf("F {sname} {f} %zu %zu\\n", offsetof(struct {sname}, {f}), sizeof(M({sname}, {f})));')
    for name in compiled["macros"]:
        if compiled["macros"][name]:
            lines.append(f'printf("D {name} %lld\\n", (long long)({name}));')
    lines += ["return 0;", "}"]
    tmp = tmp_path_factory.mktemp("measure")
    src = tmp / "measure.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp / "measure"
    gcc("-Wall", "-Werror", f"-I{BPF_DIR}", src, "-o", exe)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    sizes: dict[str, tuple[int, int]] = {}
    fields: dict[tuple[str, str], tuple[int, int]] = {}
    defines: dict[str, int] = {}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "S":
            sizes[rest[0]] = (int(rest[1]), int(rest[2]))
        elif kind == "F":
            fields[(rest[0], rest[1])] = (int(rest[2]), int(rest[3]))
        else:
            defines[rest[0]] = int(rest[1])
    return {"sizes": sizes, "fields": fields, "defines": defines}


@pytest.fixture(scope="module")
def parsed() -> layout.Layout:
    return layout.parse_header("\n".join((BPF_DIR / h).read_text() for h in layout.HEADERS))


def test_same_structs_and_fields(compiled: dict, parsed: layout.Layout) -> None:
    assert set(parsed.structs) == set(compiled["structs"])
    for name, members in compiled["structs"].items():
        assert [f.name for f in parsed.structs[name].fields] == members, name


def test_struct_sizes_and_alignment(measured: dict, parsed: layout.Layout) -> None:
    assert measured["sizes"]
    for name, (size, align) in measured["sizes"].items():
        st = parsed.structs[name]
        assert (st.size, st.align) == (size, align), name
        # The struct module format covers the whole struct too.
        assert struct.calcsize(st.fmt()) == size, name


def test_field_offsets_and_sizes(measured: dict, parsed: layout.Layout) -> None:
    assert len(measured["fields"]) == sum(len(s.fields) for s in parsed.structs.values())
    for (sname, fname), (offset, size) in measured["fields"].items():
        f = parsed.structs[sname].field(fname)
        assert f.offset == offset, f"{sname}.{fname}"
        assert f.size * f.count == size, f"{sname}.{fname}"
        if f.struct:
            assert f.size == parsed.structs[f.struct].size
        else:
            assert struct.calcsize("<" + f.code) == f.size, f"{sname}.{fname}"


def test_field_types(parsed: layout.Layout) -> None:
    """Element codes follow the C types (signedness and width), checked on a few known fields."""
    rec = parsed.structs["sys_record"]
    assert rec.field("ret").code == "q"
    assert rec.field("ts_enter").code == "Q"
    assert (rec.field("args").code, rec.field("args").count) == ("Q", parsed.consts["MAX_ARGS"])
    assert (rec.field("comm").code, rec.field("comm").count) == ("c", parsed.consts["TASK_COMM_LEN"])
    assert (rec.field("reads").struct, rec.field("reads").count) == ("read_slot", parsed.consts["MAX_READS"])
    assert (rec.field("data").code, rec.field("data").count) == ("B", parsed.consts["DATA_CAP"])
    slot = parsed.structs["read_slot"]
    assert slot.field("enter_err").code == "h"
    assert slot.field("enter_off").code == "H"
    assert slot.field("want").code == "I"


def test_defines(compiled: dict, measured: dict, parsed: layout.Layout) -> None:
    valued = {k for k, v in compiled["macros"].items() if v}
    assert set(parsed.consts) == valued
    assert measured["defines"] == parsed.consts
    assert "TRACER_RECORD_H" in compiled["macros"] and "TRACER_RECORD_H" not in parsed.consts
    assert "TRACER_UPROBE_H" in compiled["macros"] and "uprobe_record" in compiled["structs"]


def test_loaded_layout_is_record_h(parsed: layout.Layout) -> None:
    assert layout.layout() == parsed
    assert layout.const("STR_CAP") == parsed.consts["STR_CAP"]


def test_packer_header_ends_at_reads(measured: dict) -> None:
    assert layout.packer("sys_record", "reads").size == measured["fields"][("sys_record", "reads")][0]
    assert layout.packer("read_slot").size == measured["sizes"]["read_slot"][0]
    assert layout.packer("tracer_conf").size == measured["sizes"]["tracer_conf"][0]


def test_packer_round_trip() -> None:
    """The header format puts each value at its C offset (pack, then read back at the offsets)."""
    st = layout.struct_of("sys_record")
    hdr = layout.packer("sys_record", "reads")
    nargs = st.field("args").count
    vals = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -12, *range(100, 100 + nargs), b"comm"]
    raw = hdr.pack(*vals)
    assert struct.unpack_from("<H", raw, st.field("nr").offset)[0] == 3
    assert struct.unpack_from("<B", raw, st.field("flags").offset)[0] == 5
    assert struct.unpack_from("<I", raw, st.field("uid").offset)[0] == 8
    assert struct.unpack_from("<q", raw, st.field("ret").offset)[0] == -12
    assert struct.unpack_from("<Q", raw, st.field("args").offset + 8 * (nargs - 1))[0] == 99 + nargs
    assert raw[st.field("comm").offset:].startswith(b"comm\0")


# --- parse_header refusals, on synthetic headers -----------------------------------------------------

def test_parse_synthetic_header() -> None:
    lay = layout.parse_header("#define N 3\n#define H 0x10 /* c */\n"
                              "struct a { __u32 x; __u16 y[N]; __u16 pad; };\n"
                              "struct b { __u64 q; struct a inner[2]; };\n")
    assert lay.consts == {"N": 3, "H": 16}
    a, b = lay.structs["a"], lay.structs["b"]
    assert (a.size, a.align) == (12, 4)
    assert [(f.name, f.offset, f.count) for f in a.fields] == [("x", 0, 1), ("y", 4, 3), ("pad", 10, 1)]
    assert b.size == 32 and b.field("inner").offset == 8 and b.field("inner").struct == "a"


def test_refuses_implicit_padding() -> None:
    with pytest.raises(ValueError, match="explicit padding"):
        layout.parse_header("struct bad { __u8 a; __u32 b; };")


def test_refuses_implicit_tail_padding() -> None:
    with pytest.raises(ValueError, match="tail padding"):
        layout.parse_header("struct bad { __u64 a; __u8 b; };")


def test_refuses_unknown_field_type() -> None:
    with pytest.raises((ValueError, KeyError), match="float"):
        layout.parse_header("struct bad { float f; };")
    with pytest.raises(ValueError, match="cannot parse"):
        layout.parse_header("struct bad { unsigned int f; };")
    with pytest.raises(ValueError, match="cannot parse"):
        layout.parse_header("struct bad { __u64 *p; };")
