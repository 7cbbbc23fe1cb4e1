"""After apply, make a conda prefix's package records (`conda-meta/*.json`) agree with the disk again.

What `rewriters.records.RecordRewriter` does for pip's RECORD, for conda: in each record of a package that
lost files or had files rewritten (a stripped library), `files` drops the paths that are gone and
`paths_data.paths` drops their entries and gives each rewritten file its new `sha256` (hex) and
`size_in_bytes` (and `sha256_in_prefix` where conda wrote it). Only paths this run removed are
dropped. conda-pack, `conda list --verify`-style checks and `conda remove` then describe what
is really installed: conda-pack refuses a prefix whose records list deleted files ("Files managed by
conda were found to have been deleted"). A record of a package slimmer did not change is never
written. Records are read as regular files only (never through a link, at most 64 MiB), and a
record that is not the JSON object conda writes is left as it is. The new record goes through
apply's journaled temporary file, so `slimmer undo` restores the old one.

Note: conda-pack takes a package's file list and bytes from the package cache (`pkgs/`) when the
cache still holds the package, so pack a slimmed prefix after `conda clean --packages` (as images do).
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
from typing import TYPE_CHECKING, Any

from slimmer.dists import record_hash
from slimmer.model.apply import RewriteOutcome
from slimmer.rewriters.records import known_hash, write_synced
from slimmer.safe_read import read_regular

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator
    from pathlib import Path

    from slimmer.model.apply import RewriteInput
    from slimmer.model.plan import Plan

_MAX_RECORD = 64 << 20


def _read_record(path: str) -> tuple[str, Any] | None:
    """(text, parsed JSON) of a regular file, never through a link; None if unreadable or not JSON."""
    data = read_regular(path, _MAX_RECORD)
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
        return text, json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return None


def _records(root: Path, plan: Plan) -> Iterator[tuple[str, str]]:
    """(prefix, record path) for each `conda-meta/*.json` of each prefix, relative to the root."""
    for prefix in plan.layout.prefixes:
        meta = posixpath.join(prefix, "conda-meta") if prefix else "conda-meta"
        folder = os.path.join(root, meta)
        if os.path.islink(folder) or not os.path.isdir(folder):
            continue
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if name.endswith(".json"):
                yield prefix, f"{meta}/{name}"


def _inside(prefix: str, path: object) -> str | None:
    """A record's path as a path relative to the root, or None if it is not a relative path inside."""
    if not isinstance(path, str) or not path or path.startswith("/"):
        return None
    rel = posixpath.normpath(posixpath.join(prefix, path)) if prefix else posixpath.normpath(path)
    return None if rel == ".." or rel.startswith("../") else rel


def _hex(record_digest: str) -> str:
    """`sha256=<urlsafe base64>` (RECORD's form) as conda's hex digest."""
    b64 = record_digest.partition("=")[2]
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()


class CondaMetaRewriter:
    """Rewrites the `conda-meta/*.json` record of every conda package that lost or changed files."""

    name = "conda-meta"

    def rewrite(self, given: RewriteInput) -> Generator[str, None, RewriteOutcome]:
        plan, prior = given.plan, given.prior
        root = plan.root
        removed = {r.rel for r in plan.removals}

        def exists(rel: str) -> bool:
            """False only for a path this run removed: what was missing before is not slimmer's to fix."""
            return rel not in removed or os.path.lexists(os.path.join(root, rel))

        def new_hash(rel: str) -> tuple[str, int]:
            digest, size = known_hash(prior, root, rel) or record_hash(os.path.join(root, rel))
            return _hex(digest), size

        for prefix, rel in _records(root, plan):
            got = _read_record(os.path.join(root, rel))
            if got is None or not isinstance(got[1], dict):
                continue
            text, record = got
            changed = False
            files = record.get("files")
            if isinstance(files, list):
                kept = [f for f in files if (inside := _inside(prefix, f)) is None or exists(inside)]
                changed |= len(kept) != len(files)
                record["files"] = kept
            paths_data = record.get("paths_data")
            paths = paths_data.get("paths") if isinstance(paths_data, dict) else None
            if isinstance(paths, list):
                new_paths = []
                for entry in paths:
                    inside = _inside(prefix, entry.get("_path")) if isinstance(entry, dict) else None
                    if inside is None:
                        new_paths.append(entry)
                        continue
                    if not exists(inside):
                        changed = True
                        continue
                    new_entry = entry
                    if inside in prior and ("sha256" in entry or "size_in_bytes" in entry):
                        digest, size = new_hash(inside)
                        if (entry.get("sha256"), entry.get("size_in_bytes")) != (digest, size):
                            new_entry = {**entry, "sha256": digest, "size_in_bytes": size}
                            if "sha256_in_prefix" in entry:  # what `conda doctor` compares with the disk
                                new_entry["sha256_in_prefix"] = digest
                            changed = True
                    new_paths.append(new_entry)
                paths_data["paths"] = new_paths
            if not changed:
                continue
            indent = 2 if text.lstrip().startswith("{\n") else None
            out = json.dumps(record, indent=indent) + ("\n" if text.endswith("\n") else "")  # ASCII, as conda writes
            write_synced(given.tmp_for(rel), out)
            yield rel
        return RewriteOutcome()
