"""One pass over a root with `os.scandir`: every entry, never following a symlink.

Symlinks are recorded as links (their targets are never read or entered), other file systems are
not entered (like `find -xdev`) and slimmer's own state folder is skipped. Reads only.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from slimmer.progress import Progress

if TYPE_CHECKING:
    from pathlib import Path

STATE_DIR = ".slimmer"


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    LINK = "link"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Entry:
    """A path under the root (POSIX, relative, no leading './') and what lstat said of it."""

    rel: str
    kind: Kind
    size: int
    mode: int
    ino: int
    dev: int
    nlink: int


@dataclass
class Tree:
    """Everything under a root, in walk order (a directory comes before its contents)."""

    root: Path
    entries: list[Entry] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.kind is not Kind.DIR]

    def dirs(self) -> list[Entry]:
        return [e for e in self.entries if e.kind is Kind.DIR]

    @property
    def total_bytes(self) -> int:
        """Bytes on disk, each inode counted once."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for e in self.entries:
            if e.kind is Kind.DIR:
                continue
            if e.nlink > 1:
                key = (e.dev, e.ino)
                if key in seen:
                    continue
                seen.add(key)
            total += e.size
        return total

    def links_inside(self) -> dict[tuple[int, int], int]:
        """For inodes with several hard links: how many of those links lie under the root."""
        counts: dict[tuple[int, int], int] = {}
        for e in self.entries:
            if e.kind is Kind.FILE and e.nlink > 1:
                key = (e.dev, e.ino)
                counts[key] = counts.get(key, 0) + 1
        return counts


def _kind(mode: int) -> Kind:
    if stat.S_ISLNK(mode):
        return Kind.LINK
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISREG(mode):
        return Kind.FILE
    return Kind.OTHER


def walk(root: Path, *, progress: Progress | None = None) -> Tree:
    """Walk `root` once, depth first, without following symlinks or crossing file systems."""
    tree = Tree(root=root)
    root_dev = os.lstat(root).st_dev
    stack: list[str] = [""]
    progress = progress or Progress.quiet()
    while stack:
        rel_dir = stack.pop()
        path = os.path.join(root, rel_dir) if rel_dir else os.fspath(root)
        try:
            with os.scandir(path) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as exc:
            tree.unreadable.append((rel_dir, exc.strerror or str(exc)))
            continue
        subdirs: list[str] = []
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            if not rel_dir and child.name == STATE_DIR:
                continue
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                tree.unreadable.append((rel, exc.strerror or str(exc)))
                continue
            kind = _kind(st.st_mode)
            if kind is Kind.DIR and st.st_dev != root_dev:
                tree.mounts.append(rel)
                continue
            size = 0 if kind is Kind.DIR else st.st_size
            tree.entries.append(Entry(rel, kind, size, st.st_mode, st.st_ino, st.st_dev, st.st_nlink))
            if kind is Kind.DIR:
                subdirs.append(rel)
        progress.advance(len(children))
        stack.extend(reversed(subdirs))
    progress.done()
    return tree
