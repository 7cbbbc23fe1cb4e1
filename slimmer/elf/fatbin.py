"""CUDA fatbinaries: which GPU architectures (SASS) and PTX versions a `.nv_fatbin` section holds.

A section holds one or more containers: u32 magic 0xBA55ED50, u16 version, u16 header size, u64
size of the entries that follow. Each entry: u16 kind (1 PTX, 2 SASS) at 0x00, u32 header size
at 0x04, u64 padded payload size at 0x08, u32 SM number at 0x1C; the next entry starts after its
header and payload. Only headers are read; payloads (often compressed) are never decoded.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

MAGIC = 0xBA55ED50
SECTIONS = (".nv_fatbin", "__nv_relfatbin")
KIND_PTX = 1
KIND_SASS = 2
_CONTAINER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQ")
_SM_OFFSET = 0x1C
_MIN_ENTRY = 0x20


@dataclass(frozen=True)
class FatbinInfo:
    """Device code of one ELF file: SASS architectures and PTX versions, as SM numbers (80 = sm_80)."""

    sections: tuple[str, ...]
    sass: tuple[int, ...]
    ptx: tuple[int, ...]
    containers: int
    entries: int
    size: int
    digest: str  # sha256 of the device-code sections' bytes: stripping must not change them
    error: str | None = None

    @property
    def archs(self) -> tuple[str, ...]:
        return tuple(f"sm_{n}" for n in self.sass) + tuple(f"compute_{n}" for n in self.ptx)


@dataclass(frozen=True)
class _Parsed:
    sass: frozenset[int]
    ptx: frozenset[int]
    containers: int
    entries: int
    error: str | None


def parse(data: bytes | memoryview) -> _Parsed:
    """Walk the containers and entry headers of one fatbin section's bytes."""
    sass: set[int] = set()
    ptx: set[int] = set()
    containers = entries = 0
    error = None
    pos, end = 0, len(data)
    while pos + _CONTAINER.size <= end:
        magic, _version, header_size, body_size = _CONTAINER.unpack_from(data, pos)
        if magic != MAGIC:
            if any(data[pos : min(end, pos + 64)]):
                error = f"no fatbin magic at offset {pos:#x}"
            break  # zero padding at the end of the section
        containers += 1
        entry = pos + header_size
        stop = min(end, entry + body_size)
        if entry + body_size > end:
            error = f"container at {pos:#x} runs past the section end"
        while entry + _MIN_ENTRY <= stop:
            kind, _flags, entry_header, payload = _ENTRY.unpack_from(data, entry)
            if entry_header < _MIN_ENTRY:
                error = f"bad entry header size {entry_header} at {entry:#x}"
                break
            (sm,) = struct.unpack_from("<I", data, entry + _SM_OFFSET)
            if kind == KIND_PTX:
                ptx.add(sm)
            elif kind == KIND_SASS:
                sass.add(sm)
            entries += 1
            entry += entry_header + payload
        pos = stop
        while pos < end and pos % 8:  # containers are 8-byte aligned
            pos += 1
    return _Parsed(frozenset(sass), frozenset(ptx), containers, entries, error)


def from_sections(found: list[tuple[str, memoryview]]) -> FatbinInfo | None:
    """FatbinInfo for the fatbin sections of one file, [(name, content)], or None if there are none."""
    if not found:
        return None
    sass: set[int] = set()
    ptx: set[int] = set()
    containers = entries = size = 0
    errors = []
    digest = hashlib.sha256()
    for name, content in found:
        parsed = parse(content)
        sass |= parsed.sass
        ptx |= parsed.ptx
        containers += parsed.containers
        entries += parsed.entries
        size += len(content)
        digest.update(content)
        if parsed.error:
            errors.append(f"{name}: {parsed.error}")
    return FatbinInfo(
        sections=tuple(name for name, _ in found),
        sass=tuple(sorted(sass)),
        ptx=tuple(sorted(ptx)),
        containers=containers,
        entries=entries,
        size=size,
        digest=digest.hexdigest(),
        error="; ".join(errors) or None,
    )
