"""Keep the shared libraries that kept ELF files load (DT_NEEDED), as the dynamic loader finds them.

A name in DT_NEEDED is looked up in the file's DT_RPATH (only when it has no DT_RUNPATH), then
its DT_RUNPATH, with `$ORIGIN` meaning the file's own folder, then in the environment's own
`lib`/`lib64` folders; the first match is the library the loader would map. A kept library
keeps what it needs in turn, and a symlink keeps the file it points to (inside the root).
Absolute search paths name the machine the environment runs on, not this root: they are ignored.

Nothing is read when the plan removes no shared library. Otherwise each kept ELF file's dynamic
section is read as the loader reads it (PT_DYNAMIC, then DT_NEEDED, DT_RPATH and DT_RUNPATH in the
string table DT_STRTAB names): a few KB per file, in this process. A file this reader does not
take (not 64-bit little-endian, odd headers) is analysed with LIEF (`slimmer.elf.analyze`) when
its bytes contain the name of a removed library. Reads only.
"""

from __future__ import annotations

import os
import posixpath
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer.elf.identity import Dynamic, read_dynamic
from slimmer.safe_read import open_regular
from slimmer.walk import Kind

if TYPE_CHECKING:
    from slimmer.elf.pool import WorkerPool
    from slimmer.model.plan import PlanContext
    from slimmer.rules import Rule

_SHARED = re.compile(r"\.so(\.[0-9][\w.]*)?$")
_ORIGIN = re.compile(r"\$(ORIGIN\b|\{ORIGIN\})")
MAX_NAMES_FOR_PREFILTER = 256  # beyond this, parsing every candidate is cheaper than the search


@dataclass(frozen=True)
class LibraryStats:
    removed_libraries: int
    candidates: int  # kept files that could be ELF
    analysed: int
    kept: int
    seconds: float


def is_shared_library(rel: str) -> bool:
    return _SHARED.search(rel.rpartition("/")[2]) is not None


_CHUNK = 1 << 20  # read in pieces: a mapped 500 MB library would count fully in this process's memory


def _first_round(root: str, candidates: list[str], names: set[str]) -> tuple[list[str], dict[str, Dynamic | None]]:
    """The candidates that need one of `names` (or, read by no faster means, may), and what
    `read_dynamic` read of every candidate (None: it does not take the file; LIEF will)."""
    encoded = sorted(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)
    needles = re.compile(b"|".join(re.escape(n) for n in encoded))
    longest = max(len(n) for n in encoded)
    known: dict[str, Dynamic | None] = {}
    todo = []
    for rel in candidates:
        path = os.path.join(root, rel)
        dynamic = known[rel] = read_dynamic(path)
        if dynamic is None:
            if len(names) > MAX_NAMES_FOR_PREFILTER or _mentions(path, needles, longest):
                todo.append(rel)  # LIEF reads it
        elif names.intersection(dynamic.needed):
            todo.append(rel)
    return todo, known


def _mentions(path: str, needles: re.Pattern[bytes], longest: int) -> bool:
    """Whether a file that `read_dynamic` does not take holds one of `needles` (names ending with
    NUL, as DT_NEEDED strings are stored) anywhere in its bytes: one pass whatever the number of
    names, in chunks that overlap by the longest needle. One buffer serves every chunk
    (`readinto`), so the scan allocates nothing per chunk: new 8 MB `bytes` for each read and each
    overlap join grew the heap of this process by some 70 MB, beside the worker that holds the
    largest library."""
    fd = open_regular(path)  # never through a link, never a FIFO or a device
    if fd is None:
        return False
    try:
        with os.fdopen(fd, "rb", buffering=0) as fh:
            if fh.read(4) != b"\x7fELF":
                return False
            buf = bytearray(longest + min(_CHUNK, os.fstat(fh.fileno()).st_size))
            view = memoryview(buf)
            kept = 0  # bytes at the start of buf carried over from the previous chunk
            while n := fh.readinto(view[kept:]):
                end = kept + n
                if needles.search(buf, 0, end) is not None:
                    return True
                kept = min(longest, end)
                buf[:kept] = buf[end - kept : end]
            return False
    except OSError:
        return False


class LibraryProtector:
    """Keeps every shared library that a kept ELF file needs, directly or through kept libraries."""

    name = "library analysis"

    def __init__(self) -> None:
        self.stats: LibraryStats | None = None

    def protect(self, ctx: PlanContext, removing: dict[str, Rule]) -> dict[str, str]:
        start = time.monotonic()
        removed_libs = [
            rel for rel in removing if ctx.by_rel[rel].kind in (Kind.FILE, Kind.LINK) and is_shared_library(rel)
        ]
        if not removed_libs:
            self.stats = LibraryStats(0, 0, 0, 0, time.monotonic() - start)
            return {}
        root = os.fspath(ctx.tree.root)
        lib_dirs = [f"{p}/{d}" if p else d for p in ctx.layout.prefixes for d in ("lib", "lib64")]
        candidates = [
            e.rel
            for e in ctx.tree.entries
            if e.kind is Kind.FILE and e.rel not in removing and e.size >= 64 and _maybe_elf(e.rel, e.mode)
        ]
        names = {rel.rpartition("/")[2] for rel in removed_libs}
        removed_set = set(removed_libs)
        for e in ctx.tree.entries:  # a kept link (libfoo.so.1) to a removed file is asked for by its name
            if (
                e.kind is Kind.LINK
                and e.rel not in removing
                and is_shared_library(e.rel)
                and any(t in removed_set for t in _link_chain(ctx, root, e.rel)[1:])
            ):
                names.add(e.rel.rpartition("/")[2])
        todo, known = _first_round(root, candidates, names)
        keep: dict[str, str] = {}
        analysed = 0
        seen: set[str] = set()
        while todo:
            batch = [rel for rel in dict.fromkeys(todo) if rel not in seen]
            todo = []
            seen.update(batch)
            reports = _dynamics(root, batch, known, ctx.pool)
            analysed += len(reports)
            for rel, report in reports.items():
                for needed in report.needed:
                    found = _resolve(ctx, rel, needed, report, lib_dirs)
                    if found is None:
                        continue
                    for target in _link_chain(ctx, root, found):
                        if target in removing and target not in keep:
                            keep[target] = f"needed by {_display(ctx, rel)} (DT_NEEDED {needed})"
                            if ctx.by_rel[target].kind is Kind.FILE:
                                todo.append(target)
        self.stats = LibraryStats(len(removed_libs), len(candidates), analysed, len(keep), time.monotonic() - start)
        return keep


def _maybe_elf(rel: str, mode: int) -> bool:
    return is_shared_library(rel) or bool(mode & 0o111)


def _dynamics(
    root: str, rels: list[str], known: dict[str, Dynamic | None], pool: WorkerPool | None
) -> dict[str, Dynamic]:
    """What the loader reads of each of `rels`: from `read_dynamic`, or from LIEF for a file that
    reader does not take, read in the command's warm workers (`pool`) when it has them: a map of
    its own would start more workers, each importing LIEF (one map at a time keeps the memory
    budget, so these wait for the strip analysis to end)."""
    from slimmer.elf.analyze import analyse_many

    out: dict[str, Dynamic] = {}
    lief = []
    for rel in rels:
        dynamic = known[rel] if rel in known else read_dynamic(os.path.join(root, rel))
        if dynamic is not None:
            out[rel] = dynamic
        else:
            lief.append(rel)
    if lief:
        reports = analyse_many([os.path.join(root, rel) for rel in lief], pool=pool)
        by_path = {r.path: r for r in reports if r.error is None}
        for rel in lief:
            report = by_path.get(os.path.join(root, rel))
            if report is not None:
                out[rel] = Dynamic(tuple(report.needed), tuple(report.rpath), tuple(report.runpath))
    return out


def _display(ctx: PlanContext, rel: str) -> str:
    site = ctx.layout.site_of(rel)
    return rel[len(site) + 1 :] if site else rel


def _inside(rel: str) -> str | None:
    """A normalised root-relative path, or None if it leaves the root."""
    norm = posixpath.normpath(rel)
    if norm.startswith(("../", "/")) or norm == "..":
        return None
    return "" if norm == "." else norm


def _resolve(ctx: PlanContext, rel: str, needed: str, report: Dynamic, lib_dirs: list[str]) -> str | None:
    """The root-relative path the loader would map for `needed`, if it lies in the root."""
    origin = rel.rpartition("/")[0]
    if "/" in needed:
        return _inside(posixpath.join(origin, needed)) if not needed.startswith("/") else None
    search = list(report.runpath) if report.runpath else list(report.rpath)
    folders: list[str] = []
    for entry in search:
        for part in entry.split(":"):
            if not part or part.startswith("/"):
                continue  # an absolute path names the target machine, not this root
            replaced = _ORIGIN.sub(origin.replace("\\", "\\\\"), part) if "$" in part else None
            if replaced is None or "$" in replaced:
                continue  # relative to the working directory, or $LIB/$PLATFORM: unknowable here
            folder = _inside(replaced.lstrip("/") if not origin else replaced)
            if folder is not None:
                folders.append(folder)
    folders.extend(lib_dirs)
    for folder in folders:
        candidate = f"{folder}/{needed}" if folder else needed
        if candidate in ctx.by_rel:
            return candidate
    return None


def _link_chain(ctx: PlanContext, root: str, rel: str) -> list[str]:
    """`rel` and, while it is a symlink that stays inside the root, what it points to."""
    chain = [rel]
    while ctx.by_rel.get(rel) is not None and ctx.by_rel[rel].kind is Kind.LINK and len(chain) < 40:
        try:
            target = os.readlink(os.path.join(root, rel))
        except OSError:
            break
        if target.startswith("/"):
            break
        nxt = _inside(posixpath.join(rel.rpartition("/")[0], target))
        if nxt is None or nxt in chain:
            break
        chain.append(nxt)
        rel = nxt
    return chain
