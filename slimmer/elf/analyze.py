"""Read ELF files with LIEF and return plain data: what stripping would save and whether it is safe.

`analyse(path)` parses only what the decisions need (headers, sections, segments, dynamic entries
and notes; no symbols, relocations or versions), so a 500 MB library costs about its size in
memory for a fraction of a second. Results are frozen dataclasses of plain values, so they cross
process boundaries (LIEF's `Binary` does not pickle). Reads only; never writes.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from slimmer.elf import fatbin as fatbin_mod
from slimmer.elf.triage import strip_drops, triage
from slimmer.model.elf import ElfReport, Segment

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from slimmer.elf.pool import WorkerPool


ELF_MAGIC = b"\x7fELF"


def is_elf(path: str | os.PathLike[str]) -> bool:
    """True if `path` is a regular file (not a symlink) that starts with the ELF magic."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.read(fd, 4) == ELF_MAGIC
    finally:
        os.close(fd)


def _quiet_lief() -> Any:
    import lief

    lief.logging.disable()
    return lief


def _config(lief: Any) -> Any:
    config = lief.ELF.ParserConfig()
    config.parse_dyn_symbols = False
    config.parse_symtab_symbols = False
    config.parse_relocations = False
    config.parse_symbol_versions = False
    config.parse_overlay = False
    config.parse_notes = True
    return config


def _names(entry: Any, attr: str) -> tuple[str, ...]:
    value = getattr(entry, attr, None)
    if isinstance(value, str):
        return tuple(p for p in value.split(":") if p)
    return tuple(value or ())


def _debuglink(section: Any) -> str | None:
    raw = bytes(section.content)
    name = raw.split(b"\0", 1)[0]
    return name.decode("utf-8", "replace") or None


def _patchelf_signs(binary: Any, lief: Any, loads: list[Segment]) -> list[str]:
    """Layout that `ld` never produces but patchelf (and so auditwheel) does."""
    signs: list[str] = []
    header = binary.header
    if header.program_header_offset != header.header_size:
        signs.append("program headers moved away from the ELF header")
    vaddrs = [s.vaddr for s in loads]
    if vaddrs != sorted(vaddrs):
        signs.append("PT_LOAD segments out of address order")
    alloc = lief.ELF.Section.FLAGS.ALLOC
    nobits = lief.ELF.Section.TYPE.NOBITS
    first_unalloc = None
    last_alloc = None
    for section in binary.sections:
        if not section.name or section.type == nobits or section.size == 0:
            continue
        if section.has(alloc):
            last_alloc = max(last_alloc or 0, section.offset)
        elif section.name != ".shstrtab":
            first_unalloc = min(first_unalloc if first_unalloc is not None else section.offset, section.offset)
    if first_unalloc is not None and last_alloc is not None and last_alloc > first_unalloc:
        signs.append("allocated sections after the non-allocated ones")
    dynstr = binary.get_section(".dynstr")
    if dynstr is not None:
        segment = binary.segment_from_offset(dynstr.offset)
        if segment is not None and segment.has(lief.ELF.Segment.FLAGS.W):
            signs.append(".dynstr in a writable segment")
    return signs


def _kind(binary: Any, lief: Any) -> str:
    file_type = binary.header.file_type
    if file_type == lief.ELF.Header.FILE_TYPE.EXEC:
        return "executable"
    if file_type == lief.ELF.Header.FILE_TYPE.DYN:
        return "executable (PIE)" if binary.has_interpreter else "shared object"
    if file_type == lief.ELF.Header.FILE_TYPE.REL:
        return "relocatable object"
    return str(file_type).rsplit(".", 1)[-1].lower()


def analyse(path: str | os.PathLike[str]) -> ElfReport | None:
    """Analyse one file; None if it is not ELF. A damaged ELF gives a report with `error` set."""
    path = os.fspath(path)
    try:
        size = os.lstat(path).st_size
        if not is_elf(path):
            return None
    except OSError as exc:
        return ElfReport(path=path, size=0, error=exc.strerror or str(exc))
    beyond = _data_beyond_elf(path, size)
    if beyond:
        return ElfReport(path=path, size=size, error=beyond)
    lief = _quiet_lief()
    try:
        binary = lief.ELF.parse(path, _config(lief))
    except (MemoryError, RuntimeError, OSError) as exc:
        return ElfReport(path=path, size=size, error=f"LIEF cannot parse it: {exc}")
    if binary is None:
        return ElfReport(path=path, size=size, error="LIEF cannot parse it")
    return _report(path, size, binary, lief)


def _data_beyond_elf(path: str, size: int) -> str | None:
    """Why `path` is not analysed when its file is much larger than the ELF in it (data appended,
    or a sparse file whose apparent size is mostly a hole): LIEF would read the whole apparent
    size into memory (a 36 KB ELF at the start of a 5 GiB sparse file: 5 GiB of memory), and
    `strip` would drop the bytes after the ELF's end. None when the ELF fills the file, or when
    its headers are not ones the triage reads (a 32-bit or damaged ELF: LIEF decides)."""
    found = triage(path)
    if found is None or found.size != size or not found.data_beyond:
        return None
    return found.beyond_message()


def _report(path: str, size: int, binary: Any, lief: Any) -> ElfReport:  # noqa: PLR0912 - one branch per ELF fact read from LIEF
    sections = list(binary.sections)
    if not sections:
        return ElfReport(path=path, size=size, error="no section headers (truncated or damaged)")
    end = max((s.offset + s.size for s in sections if s.type != lief.ELF.Section.TYPE.NOBITS), default=0)
    header = binary.header
    end = max(end, header.section_header_offset + header.numberof_sections * header.section_header_size)
    if end > size:
        return ElfReport(path=path, size=size, error=f"truncated: sections end at {end} but the file has {size} bytes")

    saving = 0
    has_symtab = False
    debuglink = None
    found_fatbin: list[tuple[str, memoryview]] = []
    for s in sections:
        name = s.name
        if strip_drops(name, s.has(lief.ELF.Section.FLAGS.ALLOC)):
            # Its bytes, its section header and its name in .shstrtab go.
            saving += s.size + header.section_header_size + len(name) + 1
            has_symtab = True
        elif name == ".gnu_debuglink":
            debuglink = _debuglink(s)
        elif name in fatbin_mod.SECTIONS:
            found_fatbin.append((name, memoryview(s.content)))

    needed: list[str] = []
    soname = None
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    tag = lief.ELF.DynamicEntry.TAG
    for entry in binary.dynamic_entries:
        if entry.tag == tag.NEEDED:
            needed.append(entry.name)
        elif entry.tag == tag.SONAME:
            soname = entry.name
        elif entry.tag == tag.RPATH:
            rpath = _names(entry, "paths")
        elif entry.tag == tag.RUNPATH:
            runpath = _names(entry, "paths")

    build_id = None
    for note in binary.notes:
        if note.type == lief.ELF.Note.TYPE.GNU_BUILD_ID:
            build_id = bytes(note.description).hex()

    loads = [
        Segment(s.file_offset, s.virtual_address, s.physical_size, s.alignment)
        for s in binary.segments
        if s.type == lief.ELF.Segment.TYPE.LOAD
    ]
    kind = _kind(binary, lief)
    return ElfReport(
        path=path,
        size=size,
        stripped=not has_symtab,
        strip_saving=saving,
        needed=tuple(needed),
        soname=soname,
        rpath=rpath,
        runpath=runpath,
        build_id=build_id,
        debuglink=debuglink,
        patchelf_signs=tuple(_patchelf_signs(binary, lief, loads)),
        load_aligned=all(s.aligned for s in loads),
        fatbin=fatbin_mod.from_sections(found_fatbin),
        kind=kind,
        sections=len(sections),
        loads=tuple(loads),
    )


def describe(report: ElfReport) -> dict[str, Any]:
    """A JSON-ready dictionary of a report."""
    fb = report.fatbin
    return {
        "path": report.path,
        "size": report.size,
        "kind": report.kind,
        "stripped": report.stripped,
        "strip_saving": report.strip_saving,
        "needed": list(report.needed),
        "soname": report.soname,
        "rpath": list(report.rpath),
        "runpath": list(report.runpath),
        "build_id": report.build_id,
        "debuglink": report.debuglink,
        "patchelf_signs": list(report.patchelf_signs),
        "load_aligned": report.load_aligned,
        "fatbin": None
        if fb is None
        else {
            "sections": list(fb.sections),
            "sass": [f"sm_{n}" for n in fb.sass],
            "ptx": [f"compute_{n}" for n in fb.ptx],
            "containers": fb.containers,
            "entries": fb.entries,
            "bytes": fb.size,
            "sha256": fb.digest,
            "bytes_by_arch": dict(fb.by_arch),
            "error": fb.error,
        },
        "error": report.error,
    }


def find_elf(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """ELF files among `paths`: files as given, folders walked (never through a symlink)."""
    from pathlib import Path

    from slimmer.walk import Kind, walk

    found: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir() and not path.is_symlink():
            tree = walk(path)
            found += [os.path.join(path, e.rel) for e in tree.entries if e.kind is Kind.FILE]
        else:
            found.append(os.fspath(path))
    return [p for p in found if is_elf(p)]


def analyse_many(paths: Sequence[str], *, jobs: int | None = None, pool: WorkerPool | None = None) -> list[ElfReport]:
    """Analyse `paths` in parallel with memory bounded by file size; reports in the order given.
    `pool`: the command's warm workers (`slimmer.elf.pool.shared_pool`), else a pool of its own."""
    from slimmer.elf.pool import bounded_map

    sizes = {p: os.lstat(p).st_size for p in paths}
    by_path = {p: r for p, r in bounded_map(analyse, list(paths), cost=sizes.__getitem__, jobs=jobs, pool=pool)}
    return [r for p in paths if (r := by_path[p]) is not None]
