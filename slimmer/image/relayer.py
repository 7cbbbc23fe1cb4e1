"""New layer tars for a slimmed image, streamed member by member.

For each member of each layer: a copy that a later layer hides (overwritten, whited out, its
folder emptied) is dropped; under a slimmed environment, what the plan removed is dropped and what
a rewriter changed (a stripped library, a rewritten RECORD) is written from the work copy, with
the original header (owner, mode, times, xattrs) and the new size. Everything else is copied byte
for byte, header blocks included. A layer with nothing to drop or change is not rewritten at all:
its tar is copied as it is, so its digest (and a base image shared with other images) stay the same.
A hard link whose target is dropped becomes the file itself.
"""

from __future__ import annotations

import copy
import hashlib
import os
import posixpath
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from slimmer.image.merged import OPAQUE, WHITEOUT, kind_of, norm

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from slimmer.image.merged import EnvCopy, MergedTree

CHUNK = 1 << 20
BLOCK = 512


@dataclass
class LayerChange:
    """What rewriting one layer did; bytes are of regular files' contents."""

    index: int
    created_by: str
    size_before: int  # bytes of the layer tar
    size_after: int = 0
    diff_id: str = ""
    rewritten: bool = False
    hidden: list[int] = field(default_factory=lambda: [0, 0])  # [members, bytes] dropped: a later layer hides them
    removed: list[int] = field(default_factory=lambda: [0, 0])  # dropped: the plan removed them
    changed: list[int] = field(default_factory=lambda: [0, 0])  # [files, bytes saved] rewritten (strip, prune, RECORD)
    kept_hidden: int = 0  # bytes of hidden copies left in a layer kept as it is (below the minimum gain)
    gzip_before: int | None = None
    gzip_after: int | None = None


def _decide(  # noqa: PLR0911 - one return per kind of member decision
    member: tarfile.TarInfo, layer: int, tree: MergedTree, copies: Sequence[EnvCopy]
) -> tuple[str, EnvCopy | None, str]:
    """("keep" | "hidden" | "removed" | "changed", the environment copy, the path in it)."""
    path = norm(member.name)
    base = path.rpartition("/")[2]
    marker = base == OPAQUE or base.startswith(WHITEOUT)
    for env in copies:
        rel = env.rel(path)
        if rel is None:
            continue
        if marker:  # a deletion marker in a folder the plan removed goes with the folder
            folder = rel.rpartition("/")[0]
            return ("removed" if env.state(folder) == "removed" else "keep"), env, folder
        if not tree.visible(path, kind_of(member), layer):
            return "hidden", env, rel
        state = env.state(rel)
        if state == "removed":
            return "removed", env, rel
        if state == "changed" and (member.isreg() or member.islnk()):
            return "changed", env, rel
        return "keep", env, rel
    if marker or tree.visible(path, kind_of(member), layer):
        return "keep", None, ""
    return "hidden", None, ""


class _HashingWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.sha.update(data)
        self.size += len(data)


def _copy(src: IO[bytes], nbytes: int, out: _HashingWriter, what: str) -> None:
    left = nbytes
    while left > 0:
        chunk = src.read(min(CHUNK, left))
        if not chunk:
            raise OSError(f"{what} ends {left} bytes early")
        out.write(chunk)
        left -= len(chunk)


def _copy_range(src: IO[bytes], start: int, end: int, out: _HashingWriter) -> None:
    src.seek(start)
    _copy(src, end - start, out, "the layer tar")


def _write_member(info: tarfile.TarInfo, data: IO[bytes] | None, out: _HashingWriter) -> None:
    out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    if data is None or not info.size:
        return
    _copy(data, info.size, out, info.name)
    pad = -info.size % BLOCK
    if pad:
        out.write(b"\0" * pad)


def _as_file(member: tarfile.TarInfo, size: int) -> tarfile.TarInfo:
    info = copy.copy(member)
    info.pax_headers = {
        k: v for k, v in member.pax_headers.items() if k not in ("size", "linkpath") and not k.startswith("GNU.sparse")
    }
    info.type = tarfile.REGTYPE
    info.linkname = ""
    info.size = size
    return info


def rewrite_layer(  # noqa: PLR0915 - one streaming pass over the layer's members; state is shared by design
    layer_fh: IO[bytes],
    change: LayerChange,
    tree: MergedTree,
    copies: Sequence[EnvCopy],
    out: IO[bytes],
    scratch: Path,
    min_gain: int = 0,
) -> bool:
    """Write the slimmed layer to `out`; False (and nothing written) when nothing in it changes, or
    when the plan changes nothing in it and its hidden copies come to less than `min_gain` bytes
    (not worth a new digest for a layer that other images may share)."""
    with tarfile.open(fileobj=layer_fh, mode="r:") as tar:
        members = tar.getmembers()
        end = tar.offset
    decisions = [_decide(m, change.index, tree, copies) for m in members]
    if all(d[0] == "keep" for d in decisions):
        return False
    if all(d[0] in ("keep", "hidden") for d in decisions):
        hidden = sum(m.size for m, d in zip(members, decisions) if d[0] == "hidden" and m.isreg())
        if hidden < min_gain:
            change.kept_hidden = hidden
            return False
    kept_names = {norm(m.name) for m, d in zip(members, decisions) if d[0] != "hidden" and d[0] != "removed"}
    # hard links kept whose target goes: the first such link becomes the file
    orphan_targets = {
        norm(m.linkname)
        for m, d in zip(members, decisions)
        if m.islnk() and d[0] == "keep" and norm(m.linkname) not in kept_names
    }
    spooled: dict[str, tuple[IO[bytes], tarfile.TarInfo]] = {}
    renamed: dict[str, str] = {}
    writer = _HashingWriter(out)
    try:
        for i, (member, (what, env, rel)) in enumerate(zip(members, decisions)):
            path = norm(member.name)
            start, stop = member.offset, members[i + 1].offset if i + 1 < len(members) else end
            if what in ("hidden", "removed"):
                counter = change.hidden if what == "hidden" else change.removed
                counter[0] += 1
                counter[1] += member.size if member.isreg() else 0
                if member.isreg() and path in orphan_targets and path not in spooled:
                    tmp = tempfile.TemporaryFile(dir=scratch, prefix="slimmer-link-")  # noqa: SIM115 - closed below
                    _copy_range(layer_fh, member.offset_data, member.offset_data + member.size, _HashingWriter(tmp))
                    spooled[path] = (tmp, member)
                continue
            if what == "changed" and env is not None:
                new = env.local / rel
                size = os.lstat(new).st_size
                change.changed[0] += 1
                change.changed[1] += (member.size if member.isreg() else 0) - size
                with open(new, "rb") as fh:
                    _write_member(_as_file(member, size), fh, writer)
                continue
            if member.islnk():
                target = norm(member.linkname)
                if target in renamed:
                    info = copy.copy(member)
                    info.pax_headers = {k: v for k, v in member.pax_headers.items() if k != "linkpath"}
                    info.linkname = renamed[target]
                    _write_member(info, None, writer)
                    continue
                if target in spooled:  # the file itself, under the link's name (they share one inode)
                    spool, original = spooled.pop(target)
                    spool.seek(0)
                    info = _as_file(original, original.size)
                    info.name = member.name
                    info.pax_headers = {k: v for k, v in info.pax_headers.items() if k != "path"}
                    _write_member(info, spool, writer)
                    spool.close()
                    renamed[target] = posixpath.normpath(member.name)
                    continue
            _copy_range(layer_fh, start, stop, writer)
        writer.write(b"\0" * (2 * BLOCK))
    finally:
        for spool, _ in spooled.values():
            spool.close()
    change.rewritten = True
    change.size_after = writer.size
    change.diff_id = f"sha256:{writer.sha.hexdigest()}"
    return True
