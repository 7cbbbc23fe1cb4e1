"""The merged file system of an image's layers, the Python environments in it, and their copies.

`scan` reads only the layer tars' headers and builds the merged view the way the engine applies
layers: a later entry replaces an earlier one, `.wh.NAME` deletes NAME from the layers below and
`.wh..wh..opq` empties its folder of what the layers below put there. For each visible path it keeps
which layer holds the copy the image shows (for a folder: since which layer it has been there), so
that every other copy can be told apart as hidden.

`find_envs` names the Python environments in that view; `materialise` copies each one's visible
files into a work folder (never following a link, never writing outside it), recording what it
wrote so that the changes a plan makes there can be found again.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from slimmer.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from slimmer.image.archive import SavedImage
    from slimmer.progress import Progress

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20


def norm(name: str) -> str:
    """A member name as a path relative to the image root: "./a/b/", "/a/b" and "a/b" are "a/b"."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


def kind_of(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "d"
    if member.isreg():
        return "f"
    if member.issym():
        return "l"
    if member.islnk():
        return "h"
    return "o"


class Node:
    __slots__ = ("children", "kind", "layer", "size")

    def __init__(self, kind: str = "d", layer: int = -1, size: int = 0) -> None:
        self.children: dict[str, Node] | None = {} if kind == "d" else None
        self.kind = kind
        self.layer = layer  # the layer whose copy shows (a folder: since when it has been a folder)
        self.size = size


class MergedTree:
    """Which layer's copy of each path the image shows."""

    def __init__(self) -> None:
        self.root = Node("d", -1)

    def get(self, path: str) -> Node | None:
        node: Node | None = self.root
        for part in path.split("/") if path else ():
            if node is None or node.children is None:
                return None
            node = node.children.get(part)
        return node

    def _parent(self, path: str, layer: int) -> Node:
        """The folder holding `path`, made (as a folder since `layer`) where missing or not a folder."""
        node = self.root
        for part in path.split("/")[:-1]:
            assert node.children is not None
            child = node.children.get(part)
            if child is None or child.kind != "d":
                child = node.children[part] = Node("d", layer)
            node = child
        return node

    def put(self, path: str, kind: str, layer: int, size: int) -> None:
        if not path:
            return
        parent = self._parent(path, layer)
        assert parent.children is not None
        name = path.rpartition("/")[2]
        old = parent.children.get(name)
        if kind == "d" and old is not None and old.kind == "d":
            return  # folders merge: the older one (and what is in it) stays visible
        parent.children[name] = Node(kind, layer, size)

    def delete(self, path: str) -> None:
        node = self.get(path.rpartition("/")[0])
        if node is not None and node.children is not None:
            node.children.pop(path.rpartition("/")[2], None)

    def empty(self, path: str) -> None:
        node = self.get(path)
        if node is not None and node.kind == "d":
            node.children = {}  # nothing from the layers below shows in it any more

    def visible(self, path: str, kind: str, layer: int) -> bool:
        """Whether the copy of `path` (of `kind`) in `layer` is the one the image shows."""
        node = self.get(path)
        if node is None:
            return False
        if kind == "d":
            return node.kind == "d" and node.layer <= layer
        return node.kind == kind and node.layer == layer

    def walk(self, path: str = "") -> Iterator[tuple[str, Node]]:
        start = self.get(path)
        if start is None:
            return
        stack = [(path, start)]
        while stack:
            here, node = stack.pop()
            yield here, node
            for name, child in (node.children or {}).items():
                stack.append((f"{here}/{name}" if here else name, child))

    def size_under(self, path: str) -> int:
        return sum(node.size for _, node in self.walk(path) if node.kind == "f")


def apply_member(tree: MergedTree, member: tarfile.TarInfo, layer: int) -> None:
    path = norm(member.name)
    base = path.rpartition("/")[2]
    if base == OPAQUE:
        tree.empty(path.rpartition("/")[0])
    elif base.startswith(WHITEOUT):
        tree.delete(posixpath.join(path.rpartition("/")[0], base[len(WHITEOUT) :]))
    else:
        tree.put(path, kind_of(member), layer, member.size if member.isreg() else 0)


def scan(image: SavedImage, scratch: Path, progress: Progress | None = None) -> MergedTree:
    """The merged view of all layers, from their headers only."""
    tree = MergedTree()
    for index in range(len(image.layers)):
        with image.layer(index, scratch) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for member in tar:
                apply_member(tree, member, index)
                tar.members.clear()  # type: ignore[attr-defined]  # headers only; keep memory flat on huge layers
        if progress is not None:
            progress.advance()
    return tree


@dataclass(frozen=True)
class PythonEnv:
    """An environment in the image: its path there (no leading '/') and what it holds."""

    path: str
    kind: str  # "venv", "conda", "prefix"
    size: int
    nested: tuple[str, ...] = ()  # environments inside this one, slimmed on their own


def _has_python(tree: MergedTree, root: str) -> bool:
    node = tree.get(f"{root}/bin" if root else "bin")
    return bool(node and node.children and any(n.startswith("python") for n in node.children))


def _site_packages(tree: MergedTree, root: str) -> bool:
    lib = tree.get(f"{root}/lib" if root else "lib")
    for name, node in (lib.children or {}).items() if lib else ():
        if name.startswith("python3") and node.children:
            for sub in ("site-packages", "dist-packages"):
                found = node.children.get(sub)
                if found is not None and found.children:
                    return True
    return False


def find_envs(tree: MergedTree, named: Iterable[str] = ()) -> tuple[PythonEnv, ...]:
    """The environments to slim: those `named` (image paths), else every venv, conda prefix and
    /usr/local with site-packages found in the merged view."""
    found: dict[str, str] = {}
    for given in named:
        path = norm(given)
        node = tree.get(path)
        if not path or node is None or node.kind != "d":
            msg = f"--env {given}: no such folder in the image"
            raise UsageError(msg)
        found[path] = (
            "venv" if tree.get(f"{path}/pyvenv.cfg") else "conda" if tree.get(f"{path}/conda-meta") else "prefix"
        )
    if not found:
        for path, node in tree.walk():
            if node.kind != "d" or not node.children or path.split("/")[0] in ("proc", "sys", "dev"):
                continue
            if "pyvenv.cfg" in node.children and _has_python(tree, path):
                found[path] = "venv"
            elif "conda-meta" in node.children and _site_packages(tree, path):
                found[path] = "conda"
        if "usr/local" not in found and _site_packages(tree, "usr/local"):
            found["usr/local"] = "prefix"
    envs = []
    for path, kind in sorted(found.items()):
        nested = tuple(p for p in found if p != path and p.startswith(path + "/"))
        size = tree.size_under(path) - sum(tree.size_under(p) for p in nested)
        envs.append(PythonEnv(path, kind, size, nested))
    return tuple(envs)


@dataclass
class EnvCopy:
    """An environment materialised under `local`; `files` holds (inode, size, mtime_ns) of each
    regular file written; `passthrough` the visible paths not copied (devices, FIFOs, hard links
    to files elsewhere), which are left as they are."""

    env: PythonEnv
    local: Path
    files: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    passthrough: set[str] = field(default_factory=set)

    def rel(self, path: str) -> str | None:
        """`path` (an image path) relative to this environment, or None when outside it or in a
        nested environment."""
        root = self.env.path
        if path != root and not path.startswith(root + "/"):
            return None
        if any(path == n or path.startswith(n + "/") for n in self.env.nested):
            return None
        return path[len(root) + 1 :]

    def _forget(self, rel: str) -> None:
        self.files.pop(rel, None)
        self.links.discard(rel)
        self.passthrough.discard(rel)
        if rel in self.dirs:  # a folder: everything under it too
            prefix = rel + "/"
            self.files = {k: v for k, v in self.files.items() if not k.startswith(prefix)}
            for bag in (self.dirs, self.links, self.passthrough):
                bag.difference_update([k for k in bag if k.startswith(prefix)])
            self.dirs.discard(rel)

    def reset(self) -> None:
        """A later layer deleted or replaced the environment's folder (or one above it): start empty."""
        shutil.rmtree(self.local)
        self.local.mkdir(mode=0o755)
        self.files, self.dirs, self.links, self.passthrough = {}, set(), set(), set()

    def hit_above(self, path: str, member: tarfile.TarInfo) -> bool:
        """Whether `member` (at image path `path`) deletes or replaces the environment's folder or one above it."""
        root = self.env.path
        base = path.rpartition("/")[2]
        if base == OPAQUE:
            folder = path.rpartition("/")[0]
            return root.startswith(folder + "/") if folder else True
        if base.startswith(WHITEOUT):
            gone = posixpath.join(path.rpartition("/")[0], base[len(WHITEOUT) :])
            return root == gone or root.startswith(gone + "/")
        return not member.isdir() and (root == path or root.startswith(path + "/"))

    def _remove(self, rel: str) -> None:
        path = self.local / rel
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        self._forget(rel)

    def _parent_ok(self, rel: str) -> bool:
        """Every folder above `rel` is a real folder this copy made (so nothing leads out)."""
        parent = rel.rpartition("/")[0]
        if not parent:
            return True
        if parent in self.dirs:
            return True
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in self.dirs:
                continue
            if sub in self.files or sub in self.links or sub in self.passthrough:
                return False
            os.mkdir(self.local / sub, 0o755)
            self.dirs.add(sub)
        return True

    def apply(self, member: tarfile.TarInfo, rel: str, data: IO[bytes] | None) -> None:
        base = rel.rpartition("/")[2]
        if base == OPAQUE:
            folder = rel.rpartition("/")[0]
            for child in [
                k for k in self.dirs | self.links | self.passthrough | set(self.files) if k.rpartition("/")[0] == folder
            ]:
                self._remove(child)
            return
        if base.startswith(WHITEOUT):
            self._remove(posixpath.join(rel.rpartition("/")[0], base[len(WHITEOUT) :]))
            return
        if not rel:
            return  # the environment's own folder entry
        if member.isdir() and rel in self.dirs:
            os.chmod(self.local / rel, (member.mode & 0o7777) | 0o700)
            return
        if not self._parent_ok(rel):
            self.passthrough.add(rel)
            return
        self._remove(rel)
        path = self.local / rel
        if member.isdir():
            os.mkdir(path, 0o700)
            os.chmod(path, (member.mode & 0o7777) | 0o700)
            self.dirs.add(rel)
        elif member.isreg() and data is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(data, out, CHUNK)
            os.chmod(path, member.mode & 0o7777)
            os.utime(path, ns=(int(member.mtime * 1e9),) * 2, follow_symlinks=False)
            st = os.lstat(path)
            self.files[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
        elif member.issym():
            os.symlink(member.linkname, path)
            self.links.add(rel)
        elif member.islnk() and (target := self.rel(norm(member.linkname))) is not None and target in self.files:
            os.link(self.local / target, path, follow_symlinks=False)
            st = os.lstat(path)
            self.files[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
        else:
            self.passthrough.add(rel)

    def state(self, rel: str) -> str:
        """What the work copy now says of a visible path: "same", "changed", "removed" or "untouched"."""
        if rel in self.passthrough:
            return "untouched"
        try:
            st = os.lstat(self.local / rel) if rel else os.lstat(self.local)
        except FileNotFoundError:
            return "removed"
        recorded = self.files.get(rel)
        if recorded is not None and (st.st_ino, st.st_size, st.st_mtime_ns) != recorded:
            return "changed"
        return "same"


def materialise(
    image: SavedImage,
    tree: MergedTree,
    envs: Iterable[PythonEnv],
    work: Path,
    scratch: Path,
    progress: Progress | None = None,
) -> list[EnvCopy]:
    """Copy each environment's files, layer by layer, into `work/env-N`; only what the image shows survives."""
    copies = []
    for n, env in enumerate(envs):
        local = work / f"env-{n}"
        local.mkdir(mode=0o755)
        copies.append(EnvCopy(env, local))
    for index in range(len(image.layers)):
        with image.layer(index, scratch) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for member in tar:
                tar.members.clear()  # type: ignore[attr-defined]
                path = norm(member.name)
                for copy in copies:
                    rel = copy.rel(path)
                    if rel is None:
                        if copy.hit_above(path, member):
                            copy.reset()
                        continue
                    data = tar.extractfile(member) if member.isreg() else None
                    copy.apply(member, rel, data)
                    if progress is not None and member.isreg():
                        progress.advance(member.size)
    for copy in copies:  # a root that was whited out and not made again: nothing to slim
        if not tree.get(copy.env.path):
            shutil.rmtree(copy.local)
    return copies
