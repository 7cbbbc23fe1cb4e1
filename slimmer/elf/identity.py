"""What the loader and debuggers find a file by, read from its headers (a few KB), and the check
of a rewritten file against its original with it.

The dynamic section is found as the loader finds it: PT_DYNAMIC, then DT_NEEDED, DT_SONAME,
DT_RPATH and DT_RUNPATH in the string table that DT_STRTAB/DT_STRSZ name, through the PT_LOAD that
maps it. The build-id comes from the PT_NOTE segments, the debuglink from `.gnu_debuglink`, the
device code from the fatbin sections (hashed in pieces, as `slimmer.elf.fatbin` hashes them). Only
64-bit little-endian files are read (`slimmer.elf.elf64`); for anything else, or odd headers, the
readers return None and the caller asks LIEF. Reads only, never through a link.

Which question each reader answers: LIEF (`slimmer.elf.analyze`) is the analysis of record of a
file before it is stripped (what strip saves, patchelf's signs, the device code it holds); these
headers answer whether a strip's output is still the same library to the loader, and which
libraries a kept file loads (the library protector).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from slimmer.elf.elf64 import (
    DT_NEEDED,
    DT_RPATH,
    DT_RUNPATH,
    DT_STRSZ,
    DT_STRTAB,
    MAX_TABLE,
    PT_DYNAMIC,
    PT_LOAD,
    ElfFile,
    ElfFormatError,
)
from slimmer.elf.fatbin import SECTIONS as FATBIN_SECTIONS
from slimmer.model.elf import Segment
from slimmer.safe_read import open_regular

if TYPE_CHECKING:
    from slimmer.model.elf import ElfReport

DT_SONAME = 14
PT_NOTE = 4
NT_GNU_BUILD_ID = 3
NOTE = struct.Struct("<III")
MAX_DYNAMIC = 64 << 10  # bytes of PT_DYNAMIC read: real ones hold a few hundred (704 at most in torch's)
MAX_STRING = 64 << 10  # bytes of one dynamic string (a DT_NEEDED name, a search path)
_PIECE = 8 << 20  # fatbin bytes hashed per read


@dataclass(frozen=True)
class Dynamic:
    """What the loader reads to find a file's libraries (the fields of `ElfReport` of those names)."""

    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    soname: str | None = None


NO_NEEDS = Dynamic()


@dataclass(frozen=True)
class Identity:
    """A file as the loader and debuggers know it, and the layout the loader demands."""

    size: int
    dynamic: Dynamic
    build_id: str | None
    debuglink: str | None
    loads: tuple[Segment, ...]
    fatbin_digest: str | None  # sha256 of the fatbin sections' bytes, in section order

    @property
    def load_aligned(self) -> bool:
        return all(s.aligned for s in self.loads)

    @property
    def needed(self) -> tuple[str, ...]:
        return self.dynamic.needed

    @property
    def soname(self) -> str | None:
        return self.dynamic.soname

    @property
    def rpath(self) -> tuple[str, ...]:
        return self.dynamic.rpath

    @property
    def runpath(self) -> tuple[str, ...]:
        return self.dynamic.runpath


def _split(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Search paths as LIEF's report gives them: each entry's parts, in order."""
    return tuple(part for value in paths for part in value.split(":") if part)


def _dynamic(elf: ElfFile) -> Dynamic | None:
    """The dynamic section's names; NO_NEEDS when there are none; None when the section or a
    string is odd or larger than a real one (`MAX_DYNAMIC`, `MAX_STRING`): only the strings the
    entries name are read, whatever the headers claim. As for the loader (and LIEF), the last
    DT_SONAME, DT_RPATH and DT_RUNPATH entry counts."""
    seg = next((s for s in elf.segments if s.type == PT_DYNAMIC), None)
    if seg is not None and seg.filesz > MAX_DYNAMIC:
        return None
    dynamic = elf.dynamic()
    wanted = (DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH)
    if not any(tag in wanted for tag, _ in dynamic):
        return NO_NEEDS
    tags = dict(dynamic)
    strtab, strsz = tags.get(DT_STRTAB), tags.get(DT_STRSZ)
    if strtab is None or strsz is None or strsz > MAX_TABLE:
        return None
    base = elf.offset_of(strtab, strsz)

    def string(offset: int) -> str:
        data = elf.read(base + offset, min(strsz - offset, MAX_STRING)) if offset < strsz else b""
        end = data.find(b"\0")
        if end < 0:
            msg = f"dynamic string at {offset:#x} is outside its table or longer than {MAX_STRING} bytes"
            raise ElfFormatError(msg)
        return data[:end].decode("utf-8", "surrogateescape")

    def strings(tag_wanted: int) -> tuple[str, ...]:
        return tuple(string(offset) for tag, offset in dynamic if tag == tag_wanted)

    soname = strings(DT_SONAME)[-1:]
    rpath, runpath = _split(strings(DT_RPATH)[-1:]), _split(strings(DT_RUNPATH)[-1:])
    return Dynamic(strings(DT_NEEDED), rpath, runpath, soname[0] if soname else None)


def read_dynamic(path: str) -> Dynamic | None:
    """DT_NEEDED, DT_RPATH, DT_RUNPATH and DT_SONAME of an ELF file. `NO_NEEDS` for a file that
    cannot be opened as a regular file or has no dynamic names; None when this reader does not take
    the file (not ELF, not 64-bit little-endian, odd headers): the caller falls back to LIEF."""
    fd = open_regular(path)  # never through a link, never a FIFO or a device
    if fd is None:
        return NO_NEEDS
    try:
        with ElfFile(path, fd=fd) as elf:
            return _dynamic(elf)
    except (ElfFormatError, OSError):
        return None


def _build_id(elf: ElfFile) -> str | None:
    for seg in elf.segments:
        if seg.type != PT_NOTE or seg.filesz > MAX_TABLE:
            continue
        data = elf.read(seg.offset, seg.filesz)
        align = 8 if seg.align == 8 else 4
        pos = 0
        while pos + NOTE.size <= len(data):
            namesz, descsz, kind = NOTE.unpack_from(data, pos)
            name_at = pos + NOTE.size
            desc_at = name_at + -(-namesz // align) * align
            end = desc_at + -(-descsz // align) * align
            if desc_at + descsz > len(data):
                break
            if kind == NT_GNU_BUILD_ID and data[name_at : name_at + namesz].rstrip(b"\0") == b"GNU":
                return data[desc_at : desc_at + descsz].hex()
            pos = end
    return None


def _fatbin_digest(elf: ElfFile) -> str | None:
    found = [s for s in elf.sections if s.name in FATBIN_SECTIONS]
    if not found:
        return None
    digest = hashlib.sha256()
    for section in found:
        done = 0
        while done < section.size:
            n = min(_PIECE, section.size - done)
            digest.update(elf.read(section.offset + done, n))
            done += n
    return digest.hexdigest()


def read_identity(path: str, *, fatbin: bool = True) -> Identity | None:
    """The identity of an ELF file from its headers; None when this reader does not take it.
    `fatbin=False`: leave the device code unread (`fatbin_digest` None)."""
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        with ElfFile(path, fd=fd) as elf:
            dynamic = _dynamic(elf)
            if dynamic is None:
                return None
            link = elf.section(".gnu_debuglink")
            debuglink = None
            if link is not None and link.size:
                raw = elf.read(link.offset, min(link.size, 4096))
                debuglink = raw.split(b"\0", 1)[0].decode("utf-8", "replace") or None
            loads = tuple(Segment(s.offset, s.vaddr, s.filesz, s.align) for s in elf.segments if s.type == PT_LOAD)
            digest = _fatbin_digest(elf) if fatbin else None
            return Identity(elf.size, dynamic, _build_id(elf), debuglink, loads, digest)
    except (ElfFormatError, OSError):
        return None


class Names(Protocol):
    """What the loader and debuggers find a file by (an `ElfReport` or an `Identity`)."""

    @property
    def needed(self) -> tuple[str, ...]: ...
    @property
    def soname(self) -> str | None: ...
    @property
    def rpath(self) -> tuple[str, ...]: ...
    @property
    def runpath(self) -> tuple[str, ...]: ...
    @property
    def build_id(self) -> str | None: ...
    @property
    def debuglink(self) -> str | None: ...


def identity_changes(before: Names, after: Names) -> list[str]:
    """How `after` differs from `before` in what the loader and debuggers look up a file by:
    DT_NEEDED, SONAME, RPATH/RUNPATH, build-id, debuglink. A rewrite (strip, prune) keeps them all."""
    problems = []
    if after.needed != before.needed:
        problems.append(f"DT_NEEDED changed {list(before.needed)} -> {list(after.needed)}")
    if after.soname != before.soname:
        problems.append(f"SONAME changed {before.soname} -> {after.soname}")
    if (after.rpath, after.runpath) != (before.rpath, before.runpath):
        problems.append("RPATH/RUNPATH changed")
    if after.build_id != before.build_id:
        problems.append("build-id changed")
    if after.debuglink != before.debuglink:
        problems.append(".gnu_debuglink changed")
    return problems


def strip_problems(
    before: ElfReport, names: tuple[Names, Names], loads: tuple[Segment, ...], fatbin_digest: str | None, size: int
) -> str | None:
    """Why a stripped file may not replace its original (LIEF's report `before`), or None if it may:
    the loader must find it by the same names and debuggers by the same build-id and debuglink
    (`names`: the original's and the output's, read the same way); every PT_LOAD of the output
    (`loads`) aligned as the loader demands when the original's were; the device code byte for
    byte what LIEF read of the original; and the output (`size` bytes) smaller."""
    problems = identity_changes(*names)
    if before.load_aligned and not all(s.aligned for s in loads):
        bad = next(s for s in loads if not s.aligned)
        problems.append(
            f"PT_LOAD at offset {bad.offset:#x} address {bad.vaddr:#x} is not aligned to {bad.align:#x}: "
            "the loader would refuse it"
        )
    if (before.fatbin.digest if before.fatbin else None) != fatbin_digest:
        problems.append("device code (fatbin) bytes changed")
    if size >= before.size:
        problems.append(f"not smaller ({before.size} -> {size} bytes)")
    return "; ".join(problems) or None


def rewrite_problems(before: ElfReport, original: Identity, after: Identity) -> str | None:
    """`strip_problems` for an output read by this module (`after`) against its original, read
    the same way (`original`)."""
    return strip_problems(before, (original, after), after.loads, after.fatbin_digest, after.size)
