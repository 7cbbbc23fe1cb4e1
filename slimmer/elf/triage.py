"""Triage before analysis: what an ELF file's headers say, read with `pread` (a few KB per file).

The strip decision needs LIEF's full analysis (`slimmer.elf.analyze`) only for a file that
stripping would change: LIEF reads the whole file, and most large libraries in a CUDA
environment (every nvidia-* wheel library) ship already stripped. The triage reads the ELF
header, the section header table and the section names, nothing else, and answers:

- would `strip --strip-unneeded` drop anything (`.symtab`, `.debug*`, ... not allocated), and how
  many bytes (the same sum `analyze` makes);
- where the ELF ends, so a file much larger than its ELF (data appended, a sparse file) is
  refused without reading it;
- whether the header tables are whole (a truncated file goes to LIEF, which names the damage).

It understands 64-bit little-endian files (`slimmer.elf.elf64`); for anything else it returns
None and LIEF decides, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from slimmer.elf.elf64 import SHT_NOBITS, ElfFile, ElfFormatError

# Non-allocated sections that `strip --strip-unneeded` drops (as in slimmer.elf.analyze).
STRIPPED_PREFIXES = (".debug", ".zdebug", ".stab", ".line")
STRIPPED_NAMES = (".symtab", ".strtab", ".symtab_shndx")
# Trailing bytes past the ELF's own end that a file may carry without being suspect (padding).
TRAILING_SLACK = 64 << 10


@dataclass(frozen=True)
class Triage:
    """What the headers of one ELF file say."""

    size: int  # the file's size
    end: int  # where the ELF ends: the furthest header table, section or segment byte
    sections: int
    strippable: bool  # strip would drop at least one section
    strip_saving: int  # bytes strip would drop (section bytes, headers and names)
    sparse: bool  # the file occupies less than half its apparent size on disk
    whole: bool  # every section and table lies inside the file

    @property
    def data_beyond(self) -> int:
        """Bytes past the ELF's end beyond the allowed slack (0 when the ELF fills the file)."""
        extra = self.size - self.end
        return extra if extra > TRAILING_SLACK else 0

    def beyond_message(self) -> str:
        sparse = " (a sparse file: most of it is a hole)" if self.sparse else ""
        return (
            f"{self.size - self.end} bytes after the ELF's end at {self.end}{sparse}: not analysed, "
            "and not stripped (strip would drop them)"
        )


def strip_drops(name: str, alloc: bool) -> bool:
    """True for a section that `strip --strip-unneeded` removes from a linked file."""
    return not alloc and (name in STRIPPED_NAMES or name.startswith(STRIPPED_PREFIXES))


def triage(path: str | os.PathLike[str]) -> Triage | None:
    """The triage of `path`, or None when its headers are not a 64-bit little-endian ELF this
    reader understands (or cannot be read): then LIEF decides."""
    try:
        with ElfFile(path) as elf:
            h = elf.header
            size = elf.size
            blocks = os.fstat(elf.fd).st_blocks * 512
            sections = elf.sections
            segments = elf.segments
    except (OSError, ElfFormatError):
        return None
    saving = 0
    strippable = False
    for s in sections:
        if strip_drops(s.name, s.alloc):
            saving += s.size + h.shentsize + len(s.name) + 1
            strippable = True
    section_end = max((s.offset + s.size for s in sections if s.type != SHT_NOBITS), default=0)
    tables_end = max(h.phoff + h.phnum * h.phentsize, h.shoff + h.shnum * h.shentsize)
    end = max(tables_end, section_end, max((s.offset + s.filesz for s in segments), default=0))
    return Triage(
        size=size,
        end=end,
        sections=len(sections),
        strippable=strippable,
        strip_saving=saving,
        sparse=blocks < size // 2,
        whole=bool(sections) and end <= size,
    )
