"""After apply, make each distribution's RECORD agree with the disk again.

A `Rewriter` that runs after every other one: for each `*.dist-info/RECORD` under a
site-packages folder it drops the rows of files that are gone and gives each file that another
rewriter changed (a stripped library) its new sha256 and size, so that `pip show -f`,
`pip uninstall`, `pip check` and `importlib.metadata` describe what is really installed. The new
RECORD goes through apply's journaled temporary file, so `slimmer undo` restores the old one.
Rows that point outside the root (`../../bin/x` of a venv with the root set to site-packages)
are left as they are. Only writes through `tmp_for`.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from typing import TYPE_CHECKING

from slimmer.dists import METADATA_SUFFIXES, record_hash
from slimmer.model.apply import RewriteOutcome
from slimmer.safe_read import read_text

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator, Mapping
    from pathlib import Path

    from slimmer.model.apply import NewVersion, RewriteInput
    from slimmer.model.plan import Plan


def _records(root: Path, plan: Plan, suffix: str, filename: str) -> Iterator[tuple[str, str]]:
    """(site-packages folder, path of each `*<suffix>/<filename>`), both relative to the root."""
    for site in plan.layout.site_packages:
        folder = os.path.join(root, site) if site else os.fspath(root)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if not name.endswith(suffix):
                continue
            rel = f"{site}/{name}/{filename}" if site else f"{name}/{filename}"
            path = os.path.join(root, rel)
            if os.path.isfile(path) and not os.path.islink(path) and not os.path.islink(os.path.dirname(path)):
                yield site, rel


def write_synced(tmp: Path, text: str) -> None:
    """Write a rewriter's new version of a text file to its temporary path, as is, and fsync it.
    The path must not exist: it is created (O_EXCL), never opened through a link planted there."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "w", newline="", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def known_hash(prior: Mapping[str, NewVersion], root: Path, rel: str) -> tuple[str, int] | None:
    """The hash that the rewriter of `rel` took of its new version (the strip workers hash what they
    just wrote), if that version (same inode and size) is still in place; else None: read it again."""
    new = prior.get(rel)
    known = new.digest if new is not None else None
    if known is None:
        return None
    try:
        st = os.lstat(os.path.join(root, rel))
    except OSError:
        return None
    digest, size, ino = known
    return (digest, size) if (st.st_size, st.st_ino) == (size, ino) else None


class RecordRewriter:
    """Rewrites the RECORD of every distribution that lost files or had files rewritten."""

    name = "record"

    def rewrite(self, given: RewriteInput) -> Generator[str, None, RewriteOutcome]:
        plan, tmp_for, prior = given.plan, given.tmp_for, given.prior
        root = plan.root
        for site, rel in _records(root, plan, METADATA_SUFFIXES[0], "RECORD"):
            text = read_text(os.path.join(root, rel), strict=True)
            if text is None:
                continue
            rows = list(csv.reader(io.StringIO(text)))
            kept: list[list[str]] = []
            changed = False
            for row in rows:
                if not row:
                    continue
                target = posixpath.normpath(posixpath.join(site, row[0]))
                if target.startswith("../") or target == ".." or row[0].startswith("/") or target == rel:
                    kept.append(row)
                    continue
                if not os.path.lexists(os.path.join(root, target)):
                    changed = True
                    continue
                new_row = row
                if target in prior and len(row) >= 3:
                    digest, size = known_hash(prior, root, target) or record_hash(os.path.join(root, target))
                    if [digest, str(size)] != row[1:3]:
                        new_row = [row[0], digest, str(size), *row[3:]]
                        changed = True
                kept.append(new_row)
            if not changed:
                continue
            out = io.StringIO()
            csv.writer(out, lineterminator="\r\n" if "\r\n" in text else "\n").writerows(kept)
            write_synced(tmp_for(rel), out.getvalue())
            yield rel
        yield from self._installed_files(plan, tmp_for)
        return RewriteOutcome()

    def _installed_files(self, plan: Plan, tmp_for: Callable[[str], Path]) -> Iterator[str]:
        """The same for an egg-info's `installed-files.txt` (paths relative to the egg-info folder)."""
        root = plan.root
        for _site, rel in _records(root, plan, METADATA_SUFFIXES[1], "installed-files.txt"):
            folder = rel.rpartition("/")[0]
            text = read_text(os.path.join(root, rel), strict=True)
            if text is None:
                continue
            lines = text.splitlines()
            kept = []
            for line in lines:
                target = posixpath.normpath(posixpath.join(folder, line.strip())) if line.strip() else ""
                inside = target and not target.startswith("../") and not line.strip().startswith("/")
                if inside and not os.path.lexists(os.path.join(root, target)):
                    continue
                kept.append(line)
            if len(kept) == len(lines):
                continue
            write_synced(tmp_for(rel), "".join(f"{line}\n" for line in kept))
            yield rel
