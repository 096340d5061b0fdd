"""ELF section and PT_LOAD tables, and the arithmetic from a mapped address back to the link-time image.

Only the tables are kept, never an open file, so caching them is cheap and no mapped file stays busy.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

PAGE = os.sysconf("SC_PAGE_SIZE")


def page_down(x: int) -> int:
    return x & ~(PAGE - 1)


def page_up(x: int) -> int:
    return page_down(x + PAGE - 1)


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    nobits: bool
    flags: int
    addr: int
    offset: int
    size: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SH_FLAGS.SHF_ALLOC)

    @property
    def tls(self) -> bool:
        # .tbss has an sh_addr that overlaps real sections but occupies no memory of the image.
        return bool(self.flags & SH_FLAGS.SHF_TLS)


@dataclass(frozen=True, slots=True)
class Load:
    vaddr: int
    offset: int
    filesz: int
    memsz: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an address sits in the link-time image: always a PT_LOAD, a section when one covers it."""

    elf_vaddr: int
    section: Section | None
    section_offset: int | None


@dataclass(frozen=True, slots=True)
class ElfTables:
    sections: tuple[Section, ...]
    loads: tuple[Load, ...]  # sorted by vaddr, never empty

    @property
    def first_map_offset(self) -> int:
        """File offset the loader (kernel or ld.so) maps the lowest segment from."""
        return page_down(self.loads[0].offset)

    @property
    def span(self) -> tuple[int, int]:
        """Page-rounded link-time range the loaded image reserves."""
        return page_down(self.loads[0].vaddr), page_up(max(ld.vaddr + ld.memsz for ld in self.loads))

    def load_bias(self, file_vmas: list[tuple[int, int]], addr: int) -> int | None:
        """Load bias of the image holding addr, from (start, file offset) of the file's mappings.

        The lowest segment is mapped first, at bias + page_down(vaddr); we take the lowest such mapping
        whose image span covers addr, so a second copy of the same file gets its own bias.
        """
        lo, hi = self.span
        for start, offset in sorted(file_vmas):
            if offset == self.first_map_offset:
                bias = start - lo
                if bias + lo <= addr < bias + hi:
                    return bias
        return None

    def place(self, bias: int, addr: int, file_offset: int | None) -> Placement | None:
        """Placement of addr under bias; None when no PT_LOAD holds it (page padding, holes).

        file_offset is where the mapping says the byte comes from (None for anonymous memory); it must
        agree with the segment, which rejects a wrong bias instead of reporting a made-up section.
        """
        vaddr = addr - bias
        load = next((ld for ld in self.loads if ld.vaddr <= vaddr < ld.vaddr + ld.memsz), None)
        if load is None:
            return None
        rel = vaddr - load.vaddr
        if rel < load.filesz:
            if file_offset != load.offset + rel:
                return None
            sec = self._section_at_offset(file_offset)
            return Placement(vaddr, sec, None if sec is None else file_offset - sec.offset)
        # Zero-filled tail of the segment: only SHT_NOBITS sections live here, found by address.
        bss = (s for s in self.sections if s.nobits and s.alloc and not s.tls)
        sec = next((s for s in bss if s.addr <= vaddr < s.addr + s.size), None)
        return Placement(vaddr, sec, None if sec is None else vaddr - sec.addr)

    def _section_at_offset(self, offset: int) -> Section | None:
        hits = [s for s in self.sections if not s.nobits and s.offset <= offset < s.offset + s.size]
        # Mapped bytes belong to SHF_ALLOC sections; smallest first in case a section nests inside another.
        hits.sort(key=lambda s: (not s.alloc, s.size))
        return hits[0] if hits else None


def read_tables(path: str) -> ElfTables | None:
    """Section and PT_LOAD tables of the ELF file at path; None if it is not a regular, loadable ELF file."""
    try:
        # Device and FIFO mappings must not be opened: that can block or have side effects.
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            elf = ELFFile(f)
            sections = tuple(
                Section(
                    name=s.name,
                    nobits=s["sh_type"] == "SHT_NOBITS",
                    flags=s["sh_flags"],
                    addr=s["sh_addr"],
                    offset=s["sh_offset"],
                    size=s["sh_size"],
                )
                for s in elf.iter_sections()
            )
            loads = tuple(
                sorted(
                    (
                        Load(p["p_vaddr"], p["p_offset"], p["p_filesz"], p["p_memsz"])
                        for p in elf.iter_segments()
                        if p["p_type"] == "PT_LOAD"
                    ),
                    key=lambda ld: ld.vaddr,
                )
            )
    except (ELFError, OSError, ValueError):
        return None
    return ElfTables(sections, loads) if loads else None
