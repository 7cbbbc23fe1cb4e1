"""A small reader of 64-bit little-endian ELF files: headers, sections, dynamic entries,
relocations and symbols, read with `pread` from an open file (never the whole file).

It answers what rewriting a linked library needs to know exactly (every pointer into a section),
which LIEF does not expose cheaply. Anything it does not understand raises `ElfFormatError`.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
DYN = struct.Struct("<qQ")
RELA = struct.Struct("<QQq")
SYM = struct.Struct("<IBBHQQ")
U64 = struct.Struct("<Q")

ET_DYN = 3
EM_X86_64 = 62
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_PHDR = 1, 2, 3, 6
PF_W = 2
SHT_SYMTAB, SHT_RELA, SHT_NOBITS, SHT_REL, SHT_DYNSYM, SHT_RELR = 2, 4, 8, 9, 11, 19
SHF_WRITE, SHF_ALLOC = 1, 2
SHN_UNDEF, SHN_LORESERVE = 0, 0xFF00
DT_NULL, DT_RELA, DT_RELASZ, DT_REL, DT_JMPREL, DT_PLTRELSZ, DT_PLTREL = 0, 7, 8, 17, 23, 2, 20
DT_RELRSZ, DT_RELR = 35, 36
DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 1, 5, 10, 15, 29
R_X86_64_64, R_X86_64_RELATIVE = 1, 8
MAX_TABLE = 1 << 30  # refuse tables larger than this: a hostile header must not make us read 16 EB


class ElfFormatError(ValueError):
    """The file is not an ELF file this reader understands."""


@dataclass(frozen=True)
class Header:
    type: int
    machine: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int
    raw: bytes

    def pack(self, *, phoff: int, shoff: int, phnum: int) -> bytes:
        fields = list(EHDR.unpack(self.raw))
        fields[5], fields[6], fields[10] = phoff, shoff, phnum
        return EHDR.pack(*fields)


@dataclass(frozen=True)
class Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    def pack(self) -> bytes:
        return PHDR.pack(
            self.type, self.flags, self.offset, self.vaddr, self.paddr, self.filesz, self.memsz, self.align
        )

    def moved(self, delta: int) -> Segment:
        return replace(self, offset=self.offset - delta)


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    name_off: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def file_end(self) -> int:
        return self.offset + (0 if self.type == SHT_NOBITS else self.size)

    def pack(self) -> bytes:
        return SHDR.pack(
            self.name_off,
            self.type,
            self.flags,
            self.addr,
            self.offset,
            self.size,
            self.link,
            self.info,
            self.addralign,
            self.entsize,
        )


@dataclass(frozen=True)
class Reloc:
    """One relocation: where it is in the file (`entry_offset`, -1 for RELR), the address it
    patches, its type and symbol, and the address it makes the place point to (`target`, None when
    that depends on a symbol defined elsewhere)."""

    entry_offset: int
    where: int
    type: int
    sym: int
    addend: int
    target: int | None


@dataclass(frozen=True)
class Symbol:
    entry_offset: int  # file offset of the symbol table entry
    table: str
    value: int
    size: int
    shndx: int


class ElfFile:
    """The headers of one ELF file, opened read-only; a context manager."""

    def __init__(self, path: str | os.PathLike[str], fd: int | None = None) -> None:
        """`fd`: a descriptor of `path` opened by the caller (this object owns and closes it)."""
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC) if fd is None else fd
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise ElfFormatError("not a regular file")
            self.size = st.st_size
            self.header = self._read_header()
            self.segments = self._read_segments()
            self.sections = self._read_sections()
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            msg = f"read of {size} bytes at {offset:#x} runs past the end of the file ({self.size:#x})"
            raise ElfFormatError(msg)
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            msg = f"short read at {offset:#x}"
            raise ElfFormatError(msg)
        return data

    def _read_header(self) -> Header:
        raw = self.read(0, EHDR.size)
        ident = raw[:16]
        if ident[:4] != b"\x7fELF":
            raise ElfFormatError("not an ELF file")
        if ident[4] != 2 or ident[5] != 1:
            raise ElfFormatError("not a 64-bit little-endian ELF file")
        f = EHDR.unpack(raw)
        header = Header(f[1], f[2], f[5], f[6], f[9], f[10], f[11], f[12], f[13], raw)
        if header.phentsize != PHDR.size or (header.shnum and header.shentsize != SHDR.size):
            raise ElfFormatError("unexpected program or section header entry size")
        if header.shnum == 0 and header.shoff != 0:
            raise ElfFormatError("extended section numbering is not supported")
        if header.shstrndx >= SHN_LORESERVE:
            raise ElfFormatError("extended section name table index is not supported")
        return header

    def _read_segments(self) -> list[Segment]:
        h = self.header
        data = self.read(h.phoff, h.phnum * PHDR.size)
        return [Segment(*PHDR.unpack_from(data, i * PHDR.size)) for i in range(h.phnum)]

    def _read_sections(self) -> list[Section]:
        h = self.header
        if h.shnum == 0:
            return []
        data = self.read(h.shoff, h.shnum * SHDR.size)
        raw = [SHDR.unpack_from(data, i * SHDR.size) for i in range(h.shnum)]
        if h.shstrndx >= len(raw):
            raise ElfFormatError("section name table index out of range")
        names_off, names_size = raw[h.shstrndx][4], raw[h.shstrndx][5]
        names = self.read(names_off, min(names_size, MAX_TABLE))
        out = []
        for i, f in enumerate(raw):
            end = names.find(b"\0", f[0])
            name = names[f[0] : end if end >= 0 else len(names)].decode("latin-1")
            out.append(Section(i, name, *f))
        return out

    def section(self, name: str) -> Section | None:
        found = [s for s in self.sections if s.name == name]
        if len(found) > 1:
            msg = f"{len(found)} sections named {name}"
            raise ElfFormatError(msg)
        return found[0] if found else None

    def offset_of(self, vaddr: int, size: int = 1) -> int:
        """The file offset of `size` bytes at address `vaddr`, which must lie in one PT_LOAD's file part."""
        for seg in self.segments:
            if seg.type == PT_LOAD and seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return seg.offset + (vaddr - seg.vaddr)
        msg = f"address {vaddr:#x} is not in the file part of any PT_LOAD"
        raise ElfFormatError(msg)

    def dynamic(self) -> list[tuple[int, int]]:
        seg = next((s for s in self.segments if s.type == PT_DYNAMIC), None)
        if seg is None:
            return []
        data = self.read(seg.offset, min(seg.filesz, MAX_TABLE))
        out = []
        for i in range(len(data) // DYN.size):
            tag, val = DYN.unpack_from(data, i * DYN.size)
            if tag == DT_NULL:
                break
            out.append((tag, val))
        return out

    def _dynsym_values(self) -> dict[int, tuple[int, int]]:
        """{index: (value, shndx)} of the dynamic symbol table, for R_X86_64_64 targets."""
        dynsym = next((s for s in self.sections if s.type == SHT_DYNSYM), None)
        if dynsym is None:
            return {}
        data = self.read(dynsym.offset, min(dynsym.size, MAX_TABLE))
        out = {}
        for i in range(len(data) // SYM.size):
            _name, _info, _other, shndx, value, _size = SYM.unpack_from(data, i * SYM.size)
            out[i] = (value, shndx)
        return out

    def relocations(self) -> Iterator[Reloc]:  # noqa: PLR0912 - one branch per relocation section layout (REL/RELA, 32/64)
        """Every dynamic relocation (RELA tables named by the dynamic section and by section
        headers, and DT_RELR); REL tables are refused (x86-64 uses RELA)."""
        dyn = dict(self.dynamic())
        if DT_REL in dyn:
            raise ElfFormatError("REL relocations (not RELA) are not supported")
        tables: set[tuple[int, int]] = set()
        if DT_RELA in dyn:
            tables.add((self.offset_of(dyn[DT_RELA], max(1, dyn.get(DT_RELASZ, 0))), dyn.get(DT_RELASZ, 0)))
        if DT_JMPREL in dyn and dyn.get(DT_PLTRELSZ):
            if dyn.get(DT_PLTREL, DT_RELA) != DT_RELA:
                raise ElfFormatError("PLT relocations are not RELA")
            tables.add((self.offset_of(dyn[DT_JMPREL], dyn[DT_PLTRELSZ]), dyn[DT_PLTRELSZ]))
        for s in self.sections:
            if s.type == SHT_REL:
                raise ElfFormatError(f"REL section {s.name} is not supported")
            if s.type == SHT_RELA and s.size:
                tables.add((s.offset, s.size))
        symbols: dict[int, tuple[int, int]] | None = None
        for offset, size in sorted(tables):
            data = self.read(offset, min(size, MAX_TABLE))
            for i in range(len(data) // RELA.size):
                where, info, addend = RELA.unpack_from(data, i * RELA.size)
                rtype, sym = info & 0xFFFFFFFF, info >> 32
                target: int | None = None
                if rtype == R_X86_64_RELATIVE:
                    target = addend
                elif sym:
                    if symbols is None:
                        symbols = self._dynsym_values()
                    value, shndx = symbols.get(sym, (0, SHN_UNDEF))
                    if shndx != SHN_UNDEF:
                        target = value + addend
                yield Reloc(offset + i * RELA.size, where, rtype, sym, addend, target)
        relr = self._relr_table(dyn)
        if relr is not None:
            yield from self._relr(*relr)

    def _relr_table(self, dyn: dict[int, int]) -> tuple[int, int] | None:
        if DT_RELR in dyn:
            return self.offset_of(dyn[DT_RELR], max(1, dyn.get(DT_RELRSZ, 0))), dyn.get(DT_RELRSZ, 0)
        sec = next((s for s in self.sections if s.type == SHT_RELR), None)
        return (sec.offset, sec.size) if sec else None

    def _relr(self, offset: int, size: int) -> Iterator[Reloc]:
        """DT_RELR: relative relocations whose addend is the word in place."""
        data = self.read(offset, min(size, MAX_TABLE))
        base = 0
        for i in range(len(data) // 8):
            (word,) = U64.unpack_from(data, i * 8)
            if word & 1 == 0:
                places = [word]
                base = word + 8
            else:
                places = [base + 8 * bit for bit in range(63) if (word >> (bit + 1)) & 1]
                base += 8 * 63
            for where in places:
                (value,) = U64.unpack(self.read(self.offset_of(where, 8), 8))
                yield Reloc(-1, where, R_X86_64_RELATIVE, 0, 0, value)

    def symbols(self) -> Iterator[Symbol]:
        for s in self.sections:
            if s.type not in (SHT_SYMTAB, SHT_DYNSYM):
                continue
            data = self.read(s.offset, min(s.size, MAX_TABLE))
            for i in range(len(data) // SYM.size):
                _name, _info, _other, shndx, value, size = SYM.unpack_from(data, i * SYM.size)
                yield Symbol(s.offset + i * SYM.size, s.name, value, size, shndx)
