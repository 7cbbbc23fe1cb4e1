"""Installed distributions (`*.dist-info`, `*.egg-info`) and which files each one owns.

Ownership comes from each distribution's RECORD (or `installed-files.txt`); a file no record
lists (bytecode written later, say) belongs to the owner of its top-level folder. Reads only, and
only regular files, bounded (`slimmer.safe_read`): a record that is a link, a FIFO or a device
counts as missing; a byte that is not UTF-8 does not stop the plan.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer.safe_read import read_text

if TYPE_CHECKING:
    from typing import BinaryIO

    from slimmer.layout import Layout
    from slimmer.walk import Tree

UNOWNED = "(no distribution)"
METADATA_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    metadata_dir: str  # relative to the root
    site: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}".strip()


def _split_name(dirname: str) -> tuple[str, str]:
    stem = dirname.rsplit(".", 1)[0]
    name, _, version = stem.partition("-")
    return name, version.split("-py")[0]


def _record_paths(tree_root: str, meta: str) -> list[str]:
    """Paths a distribution's record lists, relative to its metadata folder's parent."""
    base = posixpath.join(tree_root, meta)
    record = read_text(posixpath.join(base, "RECORD"))
    if record is not None:
        try:
            return [row[0] for row in csv.reader(io.StringIO(record, newline="")) if row]
        except csv.Error:
            return []
    installed = read_text(posixpath.join(base, "installed-files.txt")) or ""
    return [posixpath.join(posixpath.basename(meta), line.strip()) for line in installed.splitlines() if line.strip()]


class Owners:
    """Maps a path under the root to the distribution that installed it."""

    def __init__(self, tree: Tree, layout: Layout) -> None:
        self.layout = layout
        self.dists: list[Distribution] = []
        self._by_path: dict[str, Distribution] = {}
        self._by_top: dict[tuple[str, str], Distribution] = {}
        root = str(tree.root)
        for entry in tree.dirs():
            parent, _, name = entry.rel.rpartition("/")
            if not name.endswith(METADATA_SUFFIXES) or parent not in layout.site_packages:
                continue
            dist_name, version = _split_name(name)
            dist = Distribution(dist_name, version, entry.rel, parent)
            self.dists.append(dist)
            for listed in _record_paths(root, entry.rel):
                rel = posixpath.normpath(posixpath.join(parent, listed)) if parent else posixpath.normpath(listed)
                if rel.startswith("../") or rel == "..":
                    continue
                self._by_path.setdefault(rel, dist)
                inside = rel[len(parent) + 1 :] if parent else rel
                top = inside.split("/", 1)[0]
                if "/" in inside and not top.endswith(METADATA_SUFFIXES) and top != "__pycache__":
                    self._by_top.setdefault((parent, top), dist)
            self._by_path.setdefault(entry.rel, dist)

    def owner(self, rel: str) -> Distribution | None:
        found = self._by_path.get(rel)
        if found is not None:
            return found
        site = self.layout.site_of(rel)
        if site is None:
            return None
        inside = rel[len(site) + 1 :] if site else rel
        top = inside.split("/", 1)[0]
        if top.endswith(METADATA_SUFFIXES):
            return self._by_path.get(f"{site}/{top}" if site else top)
        return self._by_top.get((site, top))

    def label(self, rel: str) -> str:
        dist = self.owner(rel)
        return dist.label if dist else UNOWNED


def record_hash(file: str | BinaryIO) -> tuple[str, int]:
    """The RECORD hash (`sha256=<urlsafe base64, no padding>`) and size of a file (a path, or a
    binary file object read from where it stands to its end)."""
    if isinstance(file, str):
        with open(file, "rb") as fh:
            return record_hash(fh)
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while n := file.readinto(view):  # type: ignore[attr-defined]
        digest.update(view[:n])  # releases the GIL: another thread can hash meanwhile
        size += n
    return "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode(), size
