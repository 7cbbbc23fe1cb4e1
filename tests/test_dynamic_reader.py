"""The library protector's own reader of DT_NEEDED/DT_RPATH/DT_RUNPATH (`read_dynamic`) on hostile
headers: it never raises, reads a few KB whatever the headers claim, and hands what it does not
take to LIEF (None), as documented."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from slimmer.elf import identity
from slimmer.elf.analyze import analyse
from slimmer.elf.elf64 import DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_STRSZ, DT_STRTAB, ElfFile
from slimmer.elf.identity import Dynamic, read_dynamic

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
DYN = struct.Struct("<qQ")
DT_FILLER = 0x6FFFFEFF  # a tag the reader ignores (DT_ADDRRNGHI)
IDENT = b"\x7fELF\x02\x01\x01"  # 64-bit, little-endian, version 1
STRINGS = b"\0libfoo.so.1\0$ORIGIN/../lib\0libbar.so.2\0"


def _elf(
    entries: list[tuple[int, int]],
    strings: bytes = STRINGS,
    *,
    filler: int = 0,
    strsz: int | None = None,
    strtab: int | None = None,
    ident: bytes = IDENT,
    dynamic_at: int | None = None,
) -> bytes:
    """A shared library of headers only: one PT_LOAD that maps the whole file, PT_DYNAMIC with
    `filler` ignored entries then `entries` (DT_STRTAB and DT_STRSZ added unless given), the
    string table last."""
    phoff = EHDR.size
    dyn_off = phoff + 2 * PHDR.size
    tags = {tag for tag, _ in entries}
    count = filler + len(entries) + (DT_STRTAB not in tags) + (DT_STRSZ not in tags) + 1
    str_off = dyn_off + count * DYN.size
    total = str_off + len(strings)
    body = [(DT_FILLER, 0)] * filler + list(entries)
    if DT_STRTAB not in tags:
        body.append((DT_STRTAB, str_off if strtab is None else strtab))
    if DT_STRSZ not in tags:
        body.append((DT_STRSZ, len(strings) if strsz is None else strsz))
    dyn = b"".join(DYN.pack(tag, value) for tag, value in [*body, (0, 0)])
    header = EHDR.pack(ident.ljust(16, b"\0"), 3, 62, 1, 0, phoff, 0, 0, EHDR.size, PHDR.size, 2, 64, 0, 0)
    load = PHDR.pack(1, 5, 0, 0, 0, total, total, 0x1000)
    at = dyn_off if dynamic_at is None else dynamic_at
    dynamic = PHDR.pack(2, 6, at, at, at, len(dyn), len(dyn), 8)
    return header + load + dynamic + dyn + strings


NEEDS = [(DT_NEEDED, 1), (DT_RUNPATH, 13), (DT_NEEDED, 28)]


def _write(tmp_path: Path, data: bytes, name: str = "libx.so") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_a_crafted_file_reads_as_the_loader_reads_it(tmp_path):
    assert read_dynamic(_write(tmp_path, _elf(NEEDS))) == Dynamic(
        needed=("libfoo.so.1", "libbar.so.2"), runpath=("$ORIGIN/../lib",)
    )
    # No DT_NEEDED: nothing to load, but the search path is still read (the strip check compares it).
    assert read_dynamic(_write(tmp_path, _elf([(DT_RUNPATH, 13)]))) == Dynamic(runpath=("$ORIGIN/../lib",))
    assert read_dynamic(_write(tmp_path, _elf([]))) == identity.NO_NEEDS


HOSTILE = {
    "DT_NEEDED past the table": _elf([(DT_NEEDED, len(STRINGS) + 5)]),
    "DT_NEEDED far past the table": _elf([(DT_NEEDED, 1 << 62)]),
    "unterminated string": _elf([(DT_NEEDED, 1)], b"\0libfoo.so.1"),
    "DT_STRSZ of 8 EB": _elf(NEEDS, strsz=1 << 63),
    "DT_STRSZ past the file": _elf(NEEDS, strsz=1 << 20),
    "DT_STRTAB in no PT_LOAD": _elf(NEEDS, strtab=1 << 40),
    "PT_DYNAMIC past the end": _elf(NEEDS, dynamic_at=1 << 40),
    "32-bit": _elf(NEEDS, ident=b"\x7fELF\x01\x01\x01"),
    "big-endian": _elf(NEEDS, ident=b"\x7fELF\x02\x02\x01"),
    "headers cut": _elf(NEEDS)[:100],
    "ident only": IDENT,
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_headers_go_to_lief_and_never_raise(tmp_path, data):
    assert read_dynamic(_write(tmp_path, data)) is None


@pytest.fixture
def reads(monkeypatch):
    """The bytes the reader asks `pread` for."""
    asked = []
    real = os.pread

    def counting(fd: int, size: int, offset: int) -> bytes:
        asked.append(size)
        return real(fd, size, offset)

    monkeypatch.setattr(os, "pread", counting)
    return asked


def test_a_dynamic_section_of_megabytes_is_not_read(tmp_path, reads):
    # The loader reads a real PT_DYNAMIC of a few hundred bytes (704 at most in the torch and
    # manylinux environments). One of 4 MB is handed to LIEF, not read into this process (where
    # 1 GB of entries became some 3.5 GB of Python tuples).
    path = _write(tmp_path, _elf(NEEDS, filler=250_000))
    assert os.path.getsize(path) > 4_000_000
    assert read_dynamic(path) is None
    assert sum(reads) < 64 * 1024


def test_only_the_strings_named_are_read_from_a_large_string_table(tmp_path, reads):
    # libtorch_cpu.so's table is 5 MB; a hostile DT_STRSZ may claim up to 1 GB of the file.
    table = STRINGS + b"x" * (8 << 20) + b"\0"
    path = _write(tmp_path, _elf(NEEDS, table))
    assert read_dynamic(path) == Dynamic(needed=("libfoo.so.1", "libbar.so.2"), runpath=("$ORIGIN/../lib",))
    assert sum(reads) < 256 * 1024
    # A string that runs on for more than the reader takes is LIEF's to read.
    long_name = _elf([(DT_NEEDED, 1)], b"\0" + b"l" * (1 << 20) + b"\0")
    assert read_dynamic(_write(tmp_path, long_name, "liblong.so")) is None


def test_the_last_search_path_entry_counts_as_for_the_loader_and_lief(tmp_path):
    # ld.so keeps the last DT_RUNPATH (and DT_RPATH) entry of the dynamic section (l_info[tag] is
    # overwritten), and so does LIEF's report. bin/main of the fixtures with its DT_DEBUG turned
    # into a second DT_RUNPATH: the reader must not search both.
    fixtures = os.environ.get("SLIMMER_ELF_FIXTURES")
    if not fixtures:
        pytest.skip("SLIMMER_ELF_FIXTURES is not set: run the tests with 'make test'")
    data = bytearray((Path(fixtures) / "bin/main").read_bytes())
    with ElfFile(Path(fixtures) / "bin/main") as elf:
        dynamic = elf.dynamic()
        seg = next(s for s in elf.segments if s.type == 2)
    needed_at = next(value for tag, value in dynamic if tag == DT_NEEDED)
    debug = next(i for i, (tag, _) in enumerate(dynamic) if tag == 21)  # DT_DEBUG, after DT_RUNPATH
    assert any(tag == DT_RUNPATH for tag, _ in dynamic[:debug])
    for tag in (DT_RUNPATH, DT_RPATH):
        patched = bytearray(data)
        if tag == DT_RPATH:  # both entries DT_RPATH: the first one's tag too
            first = next(i for i, (t, _) in enumerate(dynamic) if t == DT_RUNPATH)
            DYN.pack_into(patched, seg.offset + first * DYN.size, DT_RPATH, dynamic[first][1])
        DYN.pack_into(patched, seg.offset + debug * DYN.size, tag, needed_at)
        path = _write(tmp_path, bytes(patched), f"main-{tag}")
        report = analyse(path)
        assert report is not None and report.error is None
        mine = read_dynamic(path)
        assert mine is not None
        assert (mine.rpath, mine.runpath) == (tuple(report.rpath), tuple(report.runpath))
