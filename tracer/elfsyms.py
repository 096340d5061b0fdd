"""Function symbol -> file offset, for uprobes (the kernel places a uprobe at an offset into the file).

Looks in .symtab and .dynsym (pyelftools), so stripped binaries still resolve their exported functions;
handles executables (ET_EXEC), PIE executables and shared libraries (ET_DYN) alike, since the offset is
computed from the PT_LOAD segment that holds the symbol, not from a load address. Versioned names
(`openat@@GLIBC_2.4`, `memcpy@GLIBC_2.2.5`) select among the versions a library exports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerSymSection
from elftools.elf.sections import Symbol, SymbolTableSection

_IFUNC = ("STT_GNU_IFUNC", "STT_LOOS")  # pyelftools names type 10 STT_LOOS
_FUNC_TYPES = ("STT_FUNC", *_IFUNC)
_VER_HIDDEN = 0x8000


class SymbolError(ValueError):
    """The symbol cannot be probed; the message says why and what to do."""


@dataclass(frozen=True)
class Resolved:
    path: str       # the real path of the file probed
    symbol: str     # as found (with @VERSION when the file versions it)
    vaddr: int      # st_value: link-time address
    offset: int     # file offset: what the kernel wants
    size: int
    table: str      # ".symtab" or ".dynsym"


def split_version(name: str) -> tuple[str, str | None, bool]:
    """'openat@@GLIBC_2.4' -> ('openat', 'GLIBC_2.4', True); '@' -> default False; no '@' -> None."""
    base, sep, ver = name.partition("@")
    if not sep:
        return name, None, False
    if ver.startswith("@"):
        return base, ver[1:], True
    return base, ver, False


def vaddr_to_offset(elf: ELFFile, vaddr: int, path: str) -> int:
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
            return vaddr - seg["p_vaddr"] + seg["p_offset"]
    raise SymbolError(f"{path}: address {vaddr:#x} is in no PT_LOAD segment")


def _versions(elf: ELFFile) -> tuple[list[tuple[str | None, bool]] | None, int]:
    """Per .dynsym index: (version name or None, hidden) from .gnu.version/.gnu.version_d."""
    versym = elf.get_section_by_name(".gnu.version")
    verdef = elf.get_section_by_name(".gnu.version_d")
    if not isinstance(versym, GNUVerSymSection) or not isinstance(verdef, GNUVerDefSection):
        return None, 0
    names: dict[int, str] = {}
    for vd, aux in verdef.iter_versions():
        first = next(iter(aux), None)
        if first is not None:
            names[vd["vd_ndx"]] = first.name
    out = []
    for i in range(versym.num_symbols()):
        ndx = versym.get_symbol(i)["ndx"]
        ndx = ndx if isinstance(ndx, int) else 1  # "VER_NDX_LOCAL"/"VER_NDX_GLOBAL"
        out.append((names.get(ndx & ~_VER_HIDDEN) if ndx & ~_VER_HIDDEN > 1 else None, bool(ndx & _VER_HIDDEN)))
    return out, len(out)


def _candidates(elf: ELFFile, base: str) -> list[tuple[str, Symbol, str | None, bool]]:
    found = []
    for table in (".symtab", ".dynsym"):
        sec = elf.get_section_by_name(table)
        if not isinstance(sec, SymbolTableSection):
            continue
        vers = _versions(elf)[0] if table == ".dynsym" else None
        for i, sym in enumerate(sec.iter_symbols()):
            if sym.name != base or sym["st_shndx"] == "SHN_UNDEF":
                continue
            ver, hidden = vers[i] if vers and i < len(vers) else (None, False)
            found.append((table, sym, ver, hidden))
    return found


def resolve(path: str, name: str) -> Resolved:
    """File offset of function `name` in the ELF file at `path`; SymbolError with the reason otherwise."""
    real = os.path.realpath(path)
    base, want_ver, default_only = split_version(name)
    try:
        f = open(real, "rb")
    except OSError as e:
        raise SymbolError(f"{path}: {e.strerror}") from None
    with f:
        try:
            elf = ELFFile(f)
        except ELFError:
            raise SymbolError(f"{path} is not an ELF file") from None
        if elf.header.e_type not in ("ET_EXEC", "ET_DYN"):
            raise SymbolError(f"{path} is an ELF {elf.header.e_type}, not an executable or shared library")
        cands = _candidates(elf, base)
        if want_ver is not None:
            cands = [c for c in cands if c[2] == want_ver and not (default_only and c[3])]
        if not cands:
            raise SymbolError(_missing(elf, path, name))
        funcs = [c for c in cands if c[1]["st_info"]["type"] in _FUNC_TYPES]
        if not funcs:
            kind = cands[0][1]["st_info"]["type"]
            raise SymbolError(f"{name} in {path} is {kind}, not a function")
        by_addr = {c[1]["st_value"]: c for c in funcs}
        if len(by_addr) > 1:
            # Several versions at different addresses: the default one (not hidden) is what callers link to.
            default = [c for c in by_addr.values() if c[2] is not None and not c[3]]
            if want_ver is None and len(default) == 1:
                by_addr = {default[0][1]["st_value"]: default[0]}
            else:
                names = sorted(f"{base}@{'' if c[3] else '@'}{c[2]}" for c in by_addr.values() if c[2])
                raise SymbolError(f"{name} is ambiguous in {path}: name a version, one of {', '.join(names)}")
        table, sym, ver, hidden = next(iter(by_addr.values()))
        if sym["st_info"]["type"] in _IFUNC:
            raise SymbolError(f"{name} in {path} is an IFUNC (its resolver would be probed, not the function "
                              "called): probe the implementation it selects instead")
        vaddr = sym["st_value"]
        shown = base if ver is None else f"{base}@{'' if hidden else '@'}{ver}"
        return Resolved(real, shown, vaddr, vaddr_to_offset(elf, vaddr, path), sym["st_size"], table)


def _missing(elf: ELFFile, path: str, name: str) -> str:
    tables = [t for t in (".symtab", ".dynsym") if elf.get_section_by_name(t) is not None]
    if not tables:
        return f"no symbol {name} in {path}: the file is stripped (no .symtab nor .dynsym)"
    stripped = "" if ".symtab" in tables else " (stripped: only exported symbols in .dynsym are visible)"
    return f"no function {name} in {path}{stripped}; list its symbols with `nm -D --defined-only {path}`"
