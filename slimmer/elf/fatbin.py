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
from typing import TYPE_CHECKING

from slimmer.model.elf import FatbinInfo

if TYPE_CHECKING:
    from collections.abc import Callable

MAGIC = 0xBA55ED50
SECTIONS = (".nv_fatbin", "__nv_relfatbin")
KIND_PTX = 1
KIND_SASS = 2
_CONTAINER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQ")
_SM_OFFSET = 0x1C
_FLAGS_OFFSET = 0x28
_MIN_ENTRY = 0x20


@dataclass(frozen=True)
class _Parsed:
    sass: frozenset[int]
    ptx: frozenset[int]
    containers: int
    entries: int
    error: str | None
    by_arch: dict[str, int]


def parse(data: bytes | memoryview) -> _Parsed:
    """Walk the containers and entry headers of one fatbin section's bytes."""
    from slimmer.elf.gpuarch import entry_name

    sass: set[int] = set()
    ptx: set[int] = set()
    by_arch: dict[str, int] = {}
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
            if kind in (KIND_PTX, KIND_SASS) and entry + _FLAGS_OFFSET + 8 <= stop:
                (flags,) = struct.unpack_from("<Q", data, entry + _FLAGS_OFFSET)
                name = entry_name(kind == KIND_PTX, sm, flags)
                by_arch[name] = by_arch.get(name, 0) + entry_header + payload
            entries += 1
            entry += entry_header + payload
        pos = stop
        while pos < end and pos % 8:  # containers are 8-byte aligned
            pos += 1
    return _Parsed(frozenset(sass), frozenset(ptx), containers, entries, error, by_arch)


def from_sections(found: list[tuple[str, memoryview]]) -> FatbinInfo | None:
    """FatbinInfo for the fatbin sections of one file, [(name, content)], or None if there are none."""
    if not found:
        return None
    sass: set[int] = set()
    ptx: set[int] = set()
    containers = entries = size = 0
    errors = []
    by_arch: dict[str, int] = {}
    digest = hashlib.sha256()
    for name, content in found:
        parsed = parse(content)
        for arch, n in parsed.by_arch.items():
            by_arch[arch] = by_arch.get(arch, 0) + n
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
        by_arch=tuple(sorted(by_arch.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


# The structure of a section, for pruning: where each container and entry lies.

KIND_NAMES = {KIND_PTX: "PTX", KIND_SASS: "SASS"}
_ENTRY_HEAD = 0x30  # kind, flags ... arch (0x1C) and flags (0x28): what the selection reads


class FatbinFormatError(ValueError):
    """A fatbin section that does not parse as containers of entries."""


@dataclass(frozen=True)
class Entry:
    offset: int  # from the section start
    header_size: int
    payload_size: int
    kind: int
    sm: int
    flags: int

    @property
    def size(self) -> int:
        return self.header_size + self.payload_size

    @property
    def name(self) -> str:
        from slimmer.elf.gpuarch import entry_name

        if self.kind not in KIND_NAMES:
            return f"kind {self.kind:#x}"
        return entry_name(self.kind == KIND_PTX, self.sm, self.flags)


@dataclass(frozen=True)
class Container:
    offset: int  # from the section start
    header_size: int
    body_size: int
    entries: tuple[Entry, ...]

    @property
    def size(self) -> int:
        return self.header_size + self.body_size


def read_containers(read: Callable[[int, int], bytes], size: int) -> tuple[Container, ...]:
    """The containers of a fatbin section of `size` bytes; `read(offset, n)` reads the section.

    Between and after containers only zero padding (to 8 bytes, or the section end) is allowed;
    entries must exactly fill their container. Anything else raises FatbinFormatError.
    """
    containers = []
    pos = 0
    while pos + _CONTAINER.size <= size:
        head = read(pos, _CONTAINER.size)
        magic, _version, header_size, body_size = _CONTAINER.unpack(head)
        if magic != MAGIC:
            rest = read(pos, size - pos)
            if rest.strip(b"\0"):
                msg = f"no container magic at offset {pos:#x} and the rest is not zero padding"
                raise FatbinFormatError(msg)
            break
        if header_size < _CONTAINER.size or pos + header_size + body_size > size:
            msg = f"container at {pos:#x} has a bad header or runs past the section end"
            raise FatbinFormatError(msg)
        entries = []
        entry, stop = pos + header_size, pos + header_size + body_size
        while entry < stop:
            if entry + _ENTRY_HEAD > stop:
                msg = f"entry at {entry:#x} is cut off by its container's end"
                raise FatbinFormatError(msg)
            raw = read(entry, _ENTRY_HEAD)
            kind, _ver, entry_header, payload = _ENTRY.unpack_from(raw, 0)
            (sm,) = struct.unpack_from("<I", raw, _SM_OFFSET)
            (flags,) = struct.unpack_from("<Q", raw, _FLAGS_OFFSET)
            if entry_header < _ENTRY_HEAD or entry_header % 8 or entry + entry_header + payload > stop:
                msg = f"entry at {entry:#x}: header size {entry_header}, payload {payload} do not fit"
                raise FatbinFormatError(msg)
            entries.append(Entry(entry - pos, entry_header, payload, kind, sm, flags))
            entry += entry_header + payload
        containers.append(Container(pos, header_size, body_size, tuple(entries)))
        pos = stop
        pad = (-pos) % 8
        if pad and pos + pad <= size:
            if read(pos, pad).strip(b"\0"):
                msg = f"non-zero bytes after the container ending at {pos:#x}"
                raise FatbinFormatError(msg)
            pos += pad
    if pos < size and read(pos, size - pos).strip(b"\0"):
        msg = f"{size - pos} trailing bytes that are not a container"
        raise FatbinFormatError(msg)
    return tuple(containers)
