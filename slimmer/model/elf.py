"""What slimmer knows about one ELF file and its CUDA device code: frozen dataclasses of plain
values, made by `slimmer.elf.analyze` and `slimmer.elf.fatbin`, read by the plan, the strip and
prune rewriters and the reports."""

from __future__ import annotations

from dataclasses import dataclass


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
    by_arch: tuple[tuple[str, int], ...] = ()  # (sm_90, compute_120f ...) -> bytes, largest first

    @property
    def archs(self) -> tuple[str, ...]:
        return tuple(f"sm_{n}" for n in self.sass) + tuple(f"compute_{n}" for n in self.ptx)


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD program header: what the loader maps."""

    offset: int
    vaddr: int
    filesz: int
    align: int

    @property
    def aligned(self) -> bool:
        """glibc refuses a PT_LOAD whose offset and address disagree modulo its alignment."""
        return self.align <= 1 or (self.vaddr - self.offset) % self.align == 0


@dataclass(frozen=True)
class ElfReport:
    """What slimmer knows about one ELF file. `error` is set when it could not be read fully."""

    path: str
    size: int
    stripped: bool = False
    strip_saving: int = 0
    needed: tuple[str, ...] = ()
    soname: str | None = None
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    build_id: str | None = None
    debuglink: str | None = None
    patchelf_signs: tuple[str, ...] = ()
    load_aligned: bool = True
    fatbin: FatbinInfo | None = None
    kind: str = ""  # "shared object", "executable", "relocatable", ...
    sections: int = 0
    loads: tuple[Segment, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
