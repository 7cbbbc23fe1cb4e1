"""Prune device code inside a linked shared library to the GPUs it will run on.

`layout(path, targets, keep_ptx)` reads the `.nv_fatbin` section's containers and entry headers
(never the payloads), chooses per container the entries that can run on a target
(`slimmer.elf.gpuarch`), and computes the new file exactly:

- kept entries are compacted inside each container (bytes moved, never decoded), containers
  compacted inside the section, and every pointer to a container updated: RELA addends and the
  words in place (`.nvFatBinSegment` wrappers, prelinked arrays), DT_RELR words, `.symtab` values.
  A relocation or symbol that points inside the section anywhere but at a container start (or its
  end) makes the file refused: something we do not understand reads it.
- the freed tail leaves the file without moving the address of anything after it: the PT_LOAD
  holding the section is split in two (the part after the section keeps its addresses; its file
  offset moves down by a multiple of the largest alignment of what moves), and the program header
  table, one entry longer, gets a new home in the freed tail of the section, inside the first part.
  A section at the end of its PT_LOAD needs no split.

`write(path, dest, plan)` writes the new file beside (streaming copies, no whole-file read);
`check(path, dest, plan)` re-reads it and proves the plan held: headers, alignment, every kept
entry byte for byte, every pointer. Nothing here renames or deletes: the caller does.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from slimmer import proc
from slimmer.elf import elf64
from slimmer.elf.elf64 import ElfFile, ElfFormatError, Section, Segment
from slimmer.elf.fatbin import KIND_PTX, KIND_SASS, Container, Entry, FatbinFormatError, read_containers
from slimmer.elf.gpuarch import ptx_runs_on, sass_runs_on
from slimmer.errors import CommandError

if TYPE_CHECKING:
    from slimmer.elf.gpuarch import Target

SECTION = ".nv_fatbin"
PAGE = 4096
CHUNK = 8 << 20
DLOPEN_TIMEOUT = 300
_CUBIN_MAGIC = b"\x7fELF\x02\x01\x01"  # a 64-bit ELF; EM_CUDA (190) is checked after it
_EM_CUDA = 190
_FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)


class PruneRefused(Exception):
    """The file cannot be pruned safely; the message says why."""


@dataclass(frozen=True)
class Choice:
    """What is kept of one container."""

    container: Container
    keep: tuple[Entry, ...]
    whole: str = ""  # why the container is kept whole, or ""

    @property
    def new_size(self) -> int:
        return self.container.header_size + sum(e.size for e in self.keep)


def choose(container: Container, targets: tuple[Target, ...], keep_ptx: bool) -> Choice:
    """Keep, for each target, the SASS of the newest architecture that runs on it (sm_86 for an
    sm_89 target when the container has sm_80 and sm_86; arch- and family-specific builds of that
    architecture too); the newest PTX the newest target can compile (unless not `keep_ptx`); and
    anything that is neither SASS nor PTX. A container that would hold nothing runnable on some
    target is kept whole."""
    if not any(e.kind in (KIND_PTX, KIND_SASS) for e in container.entries):
        return Choice(container, container.entries)
    sass = [e for e in container.entries if e.kind == KIND_SASS]
    wanted: set[Entry] = set()
    for t in targets:
        runs = [e for e in sass if sass_runs_on(e.sm, e.flags, t)]
        if runs:
            best = max(e.sm for e in runs)
            wanted.update(e for e in runs if e.sm == best)
    newest = max(targets)
    ptx = [e for e in container.entries if e.kind == KIND_PTX and ptx_runs_on(e.sm, e.flags, newest)]
    if keep_ptx and ptx:
        best_ptx = max(e.sm for e in ptx)
        wanted.update(e for e in ptx if e.sm == best_ptx)
    keep = tuple(e for e in container.entries if e in wanted or e.kind not in (KIND_PTX, KIND_SASS))
    for t in targets:
        runnable = any(
            (e.kind == KIND_SASS and sass_runs_on(e.sm, e.flags, t))
            or (e.kind == KIND_PTX and ptx_runs_on(e.sm, e.flags, t))
            for e in keep
        )
        if not runnable:
            held = ", ".join(sorted({e.name for e in container.entries})) or "nothing"
            return Choice(container, container.entries, f"nothing runs on {t} (holds {held})")
    return Choice(container, keep)


@dataclass(frozen=True)
class Patch:
    """Write `value` (u64) at `offset` of the original file (mapped to the new file's offset)."""

    offset: int
    value: int


@dataclass(frozen=True)
class Plan:
    """Everything `write` and `check` need; computed without writing."""

    path: str
    size: int
    new_size: int
    section: Section
    choices: tuple[Choice, ...]
    new_offsets: tuple[int, ...]  # of each container, from the section start
    new_section_size: int
    phdr_at: int | None  # offset in the section of the new program header table, if it moved
    cut: int  # original file offset where the dropped region starts (old section end)
    first_moved: int  # original file offset of the first byte that moves
    delta: int  # bytes everything from first_moved moves down
    segments: tuple[Segment, ...]
    sections: tuple[Section, ...]
    header: bytes
    patches: tuple[Patch, ...]
    pointers: dict[int, int] = field(default_factory=dict)  # address of a pointer -> its old target
    starts: dict[int, int] = field(default_factory=dict)  # old container address -> new

    @property
    def saving(self) -> int:
        return self.size - self.new_size

    def dropped_by_arch(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for c in self.choices:
            kept = set(c.keep)
            for e in c.container.entries:
                if e not in kept:
                    out[e.name] += e.size
        return dict(out)

    def kept_by_arch(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for c in self.choices:
            for e in c.keep:
                out[e.name] += e.size
        return dict(out)

    @property
    def kept_whole(self) -> tuple[str, ...]:
        return tuple(c.whole for c in self.choices if c.whole)

    def map_offset(self, old: int) -> int:
        if old < self.section.offset:
            return old
        if old >= self.first_moved:
            return old - self.delta
        msg = f"offset {old:#x} lies in the rewritten section"
        raise ElfFormatError(msg)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def layout(path: str, targets: tuple[Target, ...], keep_ptx: bool = True) -> Plan:
    """The pruning plan of one file, or PruneRefused with the reason."""
    if not targets:
        raise ValueError("no targets")
    try:
        with ElfFile(path) as elf:
            return _layout(elf, targets, keep_ptx)
    except (ElfFormatError, FatbinFormatError) as exc:
        raise PruneRefused(str(exc)) from exc
    except OSError as exc:
        raise PruneRefused(f"cannot read: {exc.strerror or exc}") from exc


def _layout(elf: ElfFile, targets: tuple[Target, ...], keep_ptx: bool) -> Plan:  # noqa: PLR0912, PLR0915 - the layout is one pass over the containers; split, its invariants would span functions
    h = elf.header
    if h.machine != elf64.EM_X86_64 or h.type != elf64.ET_DYN:
        raise PruneRefused("not an x86-64 shared library")
    if any(s.type == elf64.PT_INTERP for s in elf.segments):
        raise PruneRefused("an executable (has PT_INTERP): only shared libraries are pruned")
    sec = elf.section(SECTION)
    if sec is None:
        raise PruneRefused("no .nv_fatbin section")
    if sec.type == elf64.SHT_NOBITS or not sec.alloc or sec.flags & elf64.SHF_WRITE:
        raise PruneRefused(".nv_fatbin is not a read-only loaded section")
    base = sec.offset
    containers = read_containers(lambda off, n: elf.read(base + off, n), sec.size)
    choices = tuple(choose(c, targets, keep_ptx) for c in containers)
    if all(c.new_size == c.container.size for c in choices):
        raise PruneRefused("nothing to drop: every entry can run on a target")
    align = max(8, sec.addralign)
    new_offsets, pos = [], 0
    for c in choices:
        pos = _align(pos, align)
        new_offsets.append(pos)
        pos += c.new_size
    new_section_size = pos
    starts = {sec.addr + c.container.offset: sec.addr + new for c, new in zip(choices, new_offsets)}
    starts[sec.addr + sec.size] = sec.addr + new_section_size  # a pointer to the end stays at the end

    patches, pointers = _pointer_patches(elf, sec, starts)

    # The PT_LOAD holding the section, and what follows the section inside it.
    loads = [s for s in elf.segments if s.type == elf64.PT_LOAD]
    home = [s for s in loads if s.offset <= sec.offset and sec.offset + sec.size <= s.offset + s.filesz]
    if len(home) != 1 or home[0].vaddr - home[0].offset != sec.addr - sec.offset:
        raise PruneRefused(".nv_fatbin is not inside exactly one PT_LOAD")
    seg = home[0]
    sec_end_addr = sec.addr + sec.size
    seg_end_addr = seg.vaddr + seg.memsz
    tail = [s for s in elf.sections if s.alloc and sec_end_addr <= s.addr < seg_end_addr and s.index != sec.index]
    split = seg_end_addr > sec_end_addr
    if split and not tail:
        raise PruneRefused("bytes follow .nv_fatbin in its PT_LOAD that no section describes")
    if not split and seg.memsz != seg.filesz:
        raise PruneRefused(".nv_fatbin ends a PT_LOAD with zero-filled memory")
    phdr_at = None
    phnum = len(elf.segments) + (1 if split else 0)
    section_end = new_section_size
    if split:
        phdr_at = _align(new_section_size, 8)
        section_end = phdr_at + phnum * elf64.PHDR.size
    l1_file_end = sec.offset + section_end
    cut = sec.offset + sec.size

    # What moves: every section, segment and table that starts at or after the cut.
    for s in elf.sections:
        if s.index == sec.index or s.type == elf64.SHT_NOBITS or s.size == 0:
            continue
        if s.offset < cut and s.file_end > sec.offset:
            raise PruneRefused(f"section {s.name} overlaps .nv_fatbin in the file")
    for g in elf.segments:
        if g is seg or g.filesz == 0:
            continue
        if g.offset < cut and g.offset + g.filesz > sec.offset:
            raise PruneRefused(f"a segment (type {g.type:#x}) overlaps .nv_fatbin")
    moving = [s.offset for s in elf.sections if s.offset >= cut and s.index != 0]
    moving += [g.offset for g in elf.segments if g.offset >= cut and g is not seg]
    for table in (h.shoff, h.phoff):
        if sec.offset <= table < cut:
            raise PruneRefused("a header table lies inside .nv_fatbin")
        if table >= cut:
            moving.append(table)
    tail_addr = min((s.addr for s in tail), default=None)
    if tail_addr is not None:
        moving.append(sec.offset + (tail_addr - sec.addr))
    first_moved = min(moving) if moving else elf.size
    moved_align = [s.align for s in elf.segments if s.type == elf64.PT_LOAD and s.offset >= cut and s is not seg]
    granule = max([PAGE, *moved_align, seg.align if split else 1])
    room = first_moved - l1_file_end
    delta = max(0, room // granule * granule)
    if first_moved == elf.size:  # nothing after the section: the file just ends sooner
        delta = elf.size - l1_file_end
    if delta <= 0:
        raise PruneRefused(
            f"frees {cut - l1_file_end} bytes, less than the {granule}-byte alignment the file's layout needs"
        )
    if split and tail_addr is not None and tail_addr // PAGE * PAGE < sec.addr + section_end:
        raise PruneRefused("too little freed to give the code after .nv_fatbin its own pages")

    segments = _new_segments(elf.segments, seg, sec, section_end, tail_addr, cut, delta, phdr_at)
    sections = tuple(
        replace(s, size=new_section_size)
        if s.index == sec.index
        else (replace(s, offset=s.offset - delta) if s.offset >= cut and s.index != 0 else s)
        for s in elf.sections
    )
    shoff = h.shoff - delta if h.shoff >= cut else h.shoff
    phoff = h.phoff - delta if h.phoff >= cut else h.phoff
    if phdr_at is not None:
        phoff = sec.offset + phdr_at
    header = h.pack(phoff=phoff, shoff=shoff, phnum=phnum)
    return Plan(
        path=elf.path,
        size=elf.size,
        new_size=elf.size - delta,
        section=sec,
        choices=choices,
        new_offsets=tuple(new_offsets),
        new_section_size=new_section_size,
        phdr_at=phdr_at,
        cut=cut,
        first_moved=first_moved,
        delta=delta,
        segments=segments,
        sections=sections,
        header=header,
        patches=tuple(patches),
        pointers=pointers,
        starts=starts,
    )


def _pointer_patches(elf: ElfFile, sec: Section, starts: dict[int, int]) -> tuple[list[Patch], dict[int, int]]:  # noqa: PLR0912 - one branch per relocation type that can point into .nv_fatbin
    """Patches that make every pointer to a container point to its new place; refuses pointers
    anywhere else inside the section."""
    lo, hi = sec.addr, sec.addr + sec.size
    patches: list[Patch] = []
    pointers: dict[int, int] = {}
    for r in elf.relocations():
        if lo <= r.where < hi:
            raise PruneRefused(f"a relocation writes inside .nv_fatbin (at {r.where:#x})")
        if r.target is None or not lo <= r.target <= hi:
            continue
        if r.target not in starts:
            raise PruneRefused(f"a relocation at {r.where:#x} points inside .nv_fatbin, not at a container")
        if r.type != elf64.R_X86_64_RELATIVE:
            raise PruneRefused(f"a symbol relocation (type {r.type}) at {r.where:#x} points into .nv_fatbin")
        new = starts[r.target]
        pointers[r.where] = r.target
        if r.entry_offset >= 0:
            patches.append(Patch(r.entry_offset + 16, new))  # r_addend
        place = elf.offset_of(r.where, 8)
        (in_place,) = elf64.U64.unpack(elf.read(place, 8))
        if in_place == r.target:
            patches.append(Patch(place, new))
        elif r.entry_offset < 0:
            raise PruneRefused("a DT_RELR word changed under us")
    for sym in elf.symbols():
        if not lo <= sym.value <= hi:
            continue
        if sym.shndx != sec.index:
            if sym.shndx in (elf64.SHN_UNDEF,) or sym.value == hi:
                continue  # a symbol of the next section that starts right at our end
            raise PruneRefused(f"a symbol of another section has an address inside .nv_fatbin ({sym.value:#x})")
        if sym.value not in starts:
            raise PruneRefused(f"a {sym.table} symbol points inside .nv_fatbin ({sym.value:#x}), not at a container")
        if sym.table == ".dynsym" and starts[sym.value] != sym.value:
            raise PruneRefused("an exported symbol points at a container that would move")
        patches.append(Patch(sym.entry_offset + 8, starts[sym.value]))
    return patches, pointers


def _new_segments(
    segments: list[Segment],
    seg: Segment,
    sec: Section,
    section_end: int,
    tail_addr: int | None,
    cut: int,
    delta: int,
    phdr_at: int | None,
) -> tuple[Segment, ...]:
    out: list[Segment] = []
    first_len = sec.offset + section_end - seg.offset
    for s in segments:
        if s is seg:
            out.append(replace(s, filesz=first_len, memsz=first_len))
            if tail_addr is not None:
                tail_off = sec.offset + (tail_addr - sec.addr)
                out.append(
                    replace(
                        s,
                        offset=tail_off - delta,
                        vaddr=tail_addr,
                        paddr=s.paddr + (tail_addr - s.vaddr),
                        filesz=s.offset + s.filesz - tail_off,
                        memsz=s.vaddr + s.memsz - tail_addr,
                    )
                )
        elif s.type == elf64.PT_PHDR and phdr_at is not None:
            size = (len(segments) + 1) * elf64.PHDR.size
            addr = sec.addr + phdr_at
            out.append(replace(s, offset=sec.offset + phdr_at, vaddr=addr, paddr=addr, filesz=size, memsz=size))
        elif s.offset >= cut and s.filesz + s.memsz > 0:
            out.append(s.moved(delta))
        else:
            out.append(s)
    return tuple(out)


def device_code_outside(path: str) -> int:
    """How many cubins (CUDA ELF images) or fatbin containers sit in loaded sections other than
    .nv_fatbin, e.g. cuBLASLt's kernels in .rodata for cuModuleLoadData: they are reached by code,
    never moved. Reads the file's data sections, so only the plan asks (for its report)."""
    try:
        with ElfFile(path) as elf:
            sec = elf.section(SECTION)
            return _device_code_outside(elf, sec.index if sec else -1)
    except (ElfFormatError, OSError):
        return 0


def _device_code_outside(elf: ElfFile, skip: int) -> int:
    count = 0
    data = [s for s in elf.sections if s.index != skip and s.alloc and s.type != elf64.SHT_NOBITS]
    data = [s for s in data if s.size >= 64 and not s.flags & 4 and s.file_end <= elf.size]  # 4: code
    if not data:
        return 0
    with mmap.mmap(elf.fd, 0, access=mmap.ACCESS_READ) as mm:
        for s in data:
            end = s.offset + s.size
            for magic in (_CUBIN_MAGIC, _FATBIN_MAGIC):
                pos = mm.find(magic, s.offset, end)
                while pos >= 0:
                    if magic is _FATBIN_MAGIC or (pos + 20 <= end and mm[pos + 18] == _EM_CUDA and mm[pos + 19] == 0):
                        count += 1
                    pos = mm.find(magic, pos + 4, end)
    return count


# --- writing ---------------------------------------------------------------------------------


def _copy(src: int, dst: int, offset: int, size: int) -> None:
    """Copy `size` bytes at `offset` of `src` to the current position of `dst`."""
    while size > 0:
        try:
            n = os.copy_file_range(src, dst, min(size, 1 << 30), offset)
        except OSError:
            n = 0
        if n <= 0:
            data = os.pread(src, min(size, CHUNK), offset)
            if not data:
                raise OSError(f"unexpected end of file at {offset:#x}")
            n = os.write(dst, data)
        offset += n
        size -= n


def _zeros(dst: int, size: int) -> None:
    while size > 0:
        n = os.write(dst, b"\0" * min(size, CHUNK))
        size -= n


def write(plan: Plan, dest: str) -> None:
    """Write the pruned file to `dest` (created, must not exist)."""
    src = os.open(plan.path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if os.fstat(src).st_size != plan.size:
            raise OSError("the file changed since the plan")
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            _write(plan, src, dst)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _write(plan: Plan, src: int, dst: int) -> None:
    sec = plan.section
    _copy(src, dst, 0, sec.offset)
    pos = 0
    for choice, new_off in zip(plan.choices, plan.new_offsets):
        _zeros(dst, new_off - pos)
        c = choice.container
        head = bytearray(os.pread(src, c.header_size, sec.offset + c.offset))
        struct.pack_into("<Q", head, 8, sum(e.size for e in choice.keep))
        os.write(dst, head)
        for e in choice.keep:
            _copy(src, dst, sec.offset + c.offset + e.offset, e.size)
        pos = new_off + choice.new_size
    _zeros(dst, plan.new_section_size - pos)
    pos = plan.new_section_size
    if plan.phdr_at is not None:
        _zeros(dst, plan.phdr_at - pos)
        os.write(dst, b"".join(s.pack() for s in plan.segments))
        pos = plan.phdr_at + len(plan.segments) * elf64.PHDR.size
    _zeros(dst, plan.first_moved - plan.delta - (sec.offset + pos))
    _copy(src, dst, plan.first_moved, plan.size - plan.first_moved)
    os.ftruncate(dst, plan.new_size)
    # headers and pointers
    os.pwrite(dst, plan.header, 0)
    if plan.phdr_at is None:
        os.pwrite(dst, b"".join(s.pack() for s in plan.segments), struct.unpack_from("<Q", plan.header, 32)[0])
    shoff = struct.unpack_from("<Q", plan.header, 40)[0]
    if plan.sections:
        os.pwrite(dst, b"".join(s.pack() for s in plan.sections), shoff)
    for p in plan.patches:
        os.pwrite(dst, elf64.U64.pack(p.value), plan.map_offset(p.offset))


# --- checking --------------------------------------------------------------------------------


def _digest(fd: int, offset: int, size: int) -> bytes:
    h = hashlib.sha256()
    while size > 0:
        data = os.pread(fd, min(size, CHUNK), offset)
        if not data:
            break
        h.update(data)
        offset += len(data)
        size -= len(data)
    return h.digest()


def check(plan: Plan, dest: str, *, dlopen: bool = True) -> str | None:
    """Why the pruned file `dest` may not replace the original, or None if it may."""
    try:
        with ElfFile(dest) as new, ElfFile(plan.path) as old:
            why = _check_structure(plan, old, new) or _check_fatbin(plan, old, new) or _check_pointers(plan, new)
    except (ElfFormatError, FatbinFormatError) as exc:
        return f"the pruned file does not parse: {exc}"
    except OSError as exc:
        return f"cannot read the pruned file: {exc.strerror or exc}"
    if why:
        return why
    why = _check_with_lief(plan.path, dest) or _check_readelf(plan.path, dest)
    if why is None and dlopen:
        why = check_dlopen(plan.path, dest)
    return why


def _check_structure(plan: Plan, old: ElfFile, new: ElfFile) -> str | None:  # noqa: PLR0911 - one return per structural check, each naming what differs
    if new.size != plan.new_size or new.size >= old.size:
        return f"size {new.size}, expected {plan.new_size} (original {old.size})"
    if tuple(new.segments) != plan.segments:
        return "program headers differ from the plan"
    if [(s.name, s.type, s.flags, s.addr) for s in new.sections] != [
        (s.name, s.type, s.flags, s.addr) for s in old.sections
    ]:
        return "section headers changed"
    for s in new.segments:
        if s.type == elf64.PT_LOAD and s.align > 1 and (s.vaddr - s.offset) % s.align:
            return f"PT_LOAD at {s.offset:#x} address {s.vaddr:#x} is not aligned to {s.align:#x}"
    loads = sorted((s for s in new.segments if s.type == elf64.PT_LOAD), key=lambda s: s.vaddr)
    old_shared = _shared_pages(old.segments)
    for a, b in zip(loads, loads[1:]):
        if a.vaddr + a.memsz > b.vaddr:
            return f"PT_LOADs overlap at {b.vaddr:#x}"
        shared = (a.vaddr + a.memsz - 1) // PAGE == b.vaddr // PAGE and (a.vaddr - a.offset) != (b.vaddr - b.offset)
        if shared and (b.vaddr // PAGE) not in old_shared:
            return f"PT_LOADs at {a.vaddr:#x} and {b.vaddr:#x} share a page but map different file bytes"
    for s in new.segments:
        if s.filesz and s.offset + s.filesz > new.size:
            return f"a segment runs past the end of the file ({s.offset:#x} + {s.filesz:#x})"
    if old.dynamic() != new.dynamic():
        return "dynamic section changed"
    return _check_unchanged(plan, old, new)


def _check_unchanged(plan: Plan, old: ElfFile, new: ElfFile) -> str | None:
    """Every byte before the section and from `first_moved` on is the original's, except the
    headers and the patched pointers."""
    h = old.header
    changed = [(0, elf64.EHDR.size), (h.phoff, h.phoff + h.phnum * elf64.PHDR.size)]
    changed.append((h.shoff, h.shoff + h.shnum * elf64.SHDR.size))
    changed += [(p.offset, p.offset + 8) for p in plan.patches]
    regions = [(0, plan.section.offset, 0), (plan.first_moved, plan.size, plan.delta)]
    for start, end, delta in regions:
        pos = start
        while pos < end:
            n = min(CHUNK, end - pos)
            a = bytearray(old.read(pos, n))
            b = bytearray(new.read(pos - delta, n))
            if a != b:
                for first, last in changed:
                    lo, hi = max(first, pos), min(last, pos + n)
                    if lo < hi:
                        a[lo - pos : hi - pos] = b[lo - pos : hi - pos]
                if a != b:
                    where = next(i for i in range(n) if a[i] != b[i]) + pos
                    return f"byte {where:#x} of the original changed (not a header or a pointer)"
            pos += n
    return None


def _shared_pages(segments: list[Segment]) -> set[int]:
    loads = sorted((s for s in segments if s.type == elf64.PT_LOAD), key=lambda s: s.vaddr)
    out = set()
    for a, b in zip(loads, loads[1:]):
        if (a.vaddr + a.memsz - 1) // PAGE == b.vaddr // PAGE and (a.vaddr - a.offset) != (b.vaddr - b.offset):
            out.add(b.vaddr // PAGE)
    return out


def _check_fatbin(plan: Plan, old: ElfFile, new: ElfFile) -> str | None:
    sec = new.section(SECTION)
    if sec is None or sec.size != plan.new_section_size:
        return "the new .nv_fatbin section has the wrong size"
    containers = read_containers(lambda off, n: new.read(sec.offset + off, n), sec.size)
    if len(containers) != len(plan.choices):
        return f"{len(containers)} containers, expected {len(plan.choices)}"
    for got, choice, at in zip(containers, plan.choices, plan.new_offsets):
        if got.offset != at or len(got.entries) != len(choice.keep):
            return f"container at {at:#x} holds {len(got.entries)} entries, expected {len(choice.keep)}"
        for g, e in zip(got.entries, choice.keep):
            if (g.kind, g.sm, g.flags, g.header_size, g.payload_size) != (
                e.kind,
                e.sm,
                e.flags,
                e.header_size,
                e.payload_size,
            ):
                return f"entry {e.name} of the container at {at:#x} differs"
            a = _digest(old.fd, plan.section.offset + choice.container.offset + e.offset, e.size)
            b = _digest(new.fd, sec.offset + at + g.offset, g.size)
            if a != b:
                return f"the bytes of entry {e.name} (container at {at:#x}) changed"
    return None


def _check_pointers(plan: Plan, new: ElfFile) -> str | None:
    sec = new.section(SECTION)
    assert sec is not None
    lo, hi = sec.addr, sec.addr + sec.size
    starts = {sec.addr + off for off in plan.new_offsets} | {hi}
    expected = {where: plan.starts[old] for where, old in plan.pointers.items()}
    seen = {}
    for r in new.relocations():
        if r.target is not None and lo <= r.target <= hi:
            if r.target not in starts:
                return f"a relocation at {r.where:#x} points inside .nv_fatbin, not at a container"
            seen[r.where] = r.target
            place = new.offset_of(r.where, 8)
            (in_place,) = elf64.U64.unpack(new.read(place, 8))
            if in_place not in (r.target, 0):
                return f"the word at {r.where:#x} ({in_place:#x}) disagrees with its relocation"
    if seen != expected:
        return f"{len(seen)} pointers to containers, expected {len(expected)}, or some point elsewhere"
    return None


def _check_with_lief(src: str, dest: str) -> str | None:
    from slimmer.elf.analyze import analyse
    from slimmer.elf.identity import identity_changes

    before, after = analyse(src), analyse(dest)
    if after is None or after.error:
        return f"LIEF cannot read it: {after.error if after else 'not ELF'}"
    if before is None:
        return None
    problems = identity_changes(before, after)
    if problems:
        return "; ".join(problems)
    if not after.load_aligned:
        return "LIEF finds a PT_LOAD the loader would refuse"
    return None


def _readelf_warnings(path: str) -> str | None:
    """readelf's complaints about a file ('' if none), or None without readelf."""
    import shutil

    tool = shutil.which("readelf")
    if tool is None:
        return None
    try:
        done = proc.run(
            [tool, "-W", "-l", "-S", "-d", "-r", "-n", "--dyn-syms", path],
            timeout=600,
            check=False,
            capture_stdout=False,
        )
    except CommandError as exc:
        return f"readelf failed: {exc.last_line}"
    return done.stderr.strip() if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def _check_readelf(src: str, dest: str) -> str | None:
    after = _readelf_warnings(dest)
    if not after:
        return None
    before = _readelf_warnings(src)
    if before:
        return None  # it complains about the original as well
    return f"readelf warns: {after.splitlines()[0]}"


_DLOPEN = "import ctypes, os, sys; ctypes.CDLL(sys.argv[1], mode=os.RTLD_LAZY | os.RTLD_LOCAL)"


def _dlopen_error(path: str) -> str | None:
    try:
        done = proc.run([sys.executable, "-I", "-c", _DLOPEN, path], timeout=DLOPEN_TIMEOUT, check=False, cwd="/")
    except CommandError as exc:
        return exc.last_line
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


def check_dlopen(src: str, dest: str) -> str | None:
    """The pruned library must load (constructors run, `__cudaRegisterFatBinary` included) when
    the original does. Loaded by its own path, in a separate process."""
    error = _dlopen_error(dest)
    if error is None:
        return None
    if _dlopen_error(src) is not None:
        return None  # the original does not load here either (missing dependency, Python extension)
    return f"does not load after pruning: {error}"
