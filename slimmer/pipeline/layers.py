"""Per-layer sizes of an image and the bytes wasted by files that a later layer deletes or overwrites.

Reads the archive of `docker save` (manifest.json, the image config's history, one tar per layer,
whiteouts `.wh.NAME` and `.wh..wh..opq`); never changes the image. `analyse_archive` works on any
such archive, `analyse_image` gets it from the engine.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any

from slimmer.errors import ImageMissingError, UsageError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class LayerInfo:
    index: int
    created_by: str
    size: int  # bytes of regular files in this layer's tar
    wasted: int  # bytes of this layer that a later layer hides (deletes or overwrites)
    whiteouts: int  # deletions this layer makes in the layers below
    top_waste: tuple[tuple[str, int, int], ...]  # (path, bytes, the layer that hides it), largest first


@dataclass(frozen=True)
class ImageLayers:
    image: str
    layers: tuple[LayerInfo, ...]
    advice: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def wasted(self) -> int:
        return sum(layer.wasted for layer in self.layers)


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    layer: int = -1  # the layer whose file is visible here (-1: a folder only)
    size: int = 0


class _Tree:
    """The merged file system so far: which layer's bytes each visible path holds."""

    def __init__(self) -> None:
        self.root = _Node()

    def _walk(self, path: str, create: bool) -> _Node | None:
        node = self.root
        for part in [p for p in path.split("/") if p]:
            nxt = node.children.get(part)
            if nxt is None:
                if not create:
                    return None
                nxt = node.children[part] = _Node()
            node = nxt
        return node

    def put(self, path: str, layer: int, size: int) -> tuple[int, int] | None:
        """Record a file; return (layer, size) of the one it overwrites."""
        node = self._walk(path, create=True)
        assert node is not None
        old = (node.layer, node.size) if node.layer >= 0 and node.size else None
        node.layer, node.size = layer, size
        return old

    def remove(self, path: str, *, below: int, only_children: bool = False) -> list[tuple[str, int, int]]:
        """Hide PATH (or only what is under it) from layers below BELOW; return (path, layer, size) hidden."""
        parent, _, name = path.rstrip("/").rpartition("/")
        holder = self._walk(parent, create=False)
        if holder is None:
            return []
        node = holder.children.get(name) if name else holder
        if node is None:
            return []
        hidden: list[tuple[str, int, int]] = []
        stack = [(path, node)]
        while stack:
            p, n = stack.pop()
            if n.layer >= 0 and n.layer < below and n.size:
                hidden.append((p, n.layer, n.size))
            stack.extend((f"{p}/{k}", c) for k, c in n.children.items())
        if only_children:
            node.children.clear()
        else:
            holder.children.pop(name, None)
        return hidden


def analyse_archive(fileobj: IO[bytes], image: str = "") -> ImageLayers:
    """Analyse a `docker save` archive (a seekable file object); UsageError if it is not one."""
    try:
        return _analyse(fileobj, image)
    except (tarfile.TarError, json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        msg = f"{image or 'the image'}: not a readable `docker save` archive ({what})"
        raise UsageError(msg) from None


def _analyse(fileobj: IO[bytes], image: str) -> ImageLayers:
    with tarfile.open(fileobj=fileobj, mode="r:") as outer:
        manifest = json.load(_member(outer, "manifest.json"))[0]
        config = json.load(_member(outer, manifest["Config"]))
        history = [h for h in config.get("history", []) if not h.get("empty_layer")]
        tree = _Tree()
        sizes: list[int] = []
        waste: list[list[tuple[str, int, int]]] = []  # per layer: (path, bytes, hiding layer)
        whiteouts: list[int] = []
        for index, layer_path in enumerate(manifest["Layers"]):
            waste.append([])
            size = deletions = 0
            with tarfile.open(fileobj=_member(outer, layer_path), mode="r|") as layer:
                for member in layer:
                    path = posixpath.normpath("/" + member.name)  # "./a", "a" and "/a" are the same file
                    base = posixpath.basename(path)
                    if base == OPAQUE:
                        hidden = tree.remove(posixpath.dirname(path), below=index, only_children=True)
                    elif base.startswith(WHITEOUT):
                        deletions += 1
                        hidden = tree.remove(
                            posixpath.join(posixpath.dirname(path), base[len(WHITEOUT) :]), below=index
                        )
                    else:
                        nbytes = member.size if member.isreg() else 0
                        size += nbytes
                        old = tree.put(path, index, nbytes)
                        hidden = [(path, old[0], old[1])] if old and old[0] < index else []
                    for hpath, hlayer, hsize in hidden:
                        waste[hlayer].append((hpath, hsize, index))
            sizes.append(size)
            whiteouts.append(deletions)
    layers = []
    for index, size in enumerate(sizes):
        created = history[index].get("created_by", "") if index < len(history) else ""
        items = sorted(waste[index], key=lambda t: -t[1])
        layers.append(LayerInfo(index, created, size, sum(t[1] for t in items), whiteouts[index], tuple(items[:50])))
    return ImageLayers(image=image, layers=tuple(layers), advice=tuple(_advice(layers)))


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    fh = tar.extractfile(name)
    if fh is None:
        raise tarfile.TarError(f"{name} is not a file in the image archive")
    return fh


def _advice(layers: list[LayerInfo]) -> list[str]:
    advice = []
    hiders: dict[int, int] = {}
    for layer in layers:
        for _, size, later in layer.top_waste:
            hiders[later] = hiders.get(later, 0) + size
    for later, _total in sorted(hiders.items(), key=lambda kv: -kv[1]):
        what = " ".join(layers[later].created_by.split())[:70] or f"layer {later}"
        if layers[later].whiteouts:
            advice.append(
                f"layer {later} ({what}) hides files of earlier layers, which still ship: delete in the same RUN "
                "that creates them, or slim in a build stage and COPY --from it into a fresh stage "
                "(`slimmer dockerfile` writes that)"
            )
        else:
            advice.append(
                f"layer {later} ({what}) rewrites files of earlier layers (chmod/chown or a reinstall ships "
                "both copies): set ownership and modes with COPY --chown/--chmod or in the RUN that creates them"
            )
    if not advice:
        advice.append("no layer hides bytes of an earlier one: nothing to gain by squashing")
    return advice


def analyse_image(client: Any, image: str) -> ImageLayers:
    """`docker save` IMAGE from the engine into a temporary file and analyse it."""
    from docker.errors import ImageNotFound

    try:
        img = client.images.get(image)
    except ImageNotFound as exc:
        raise ImageMissingError(f"image {image!r} is not on the engine") from exc
    with tempfile.TemporaryFile(prefix="slimmer-image-") as tmp:
        for chunk in img.save(chunk_size=1 << 20):
            tmp.write(chunk)
        tmp.seek(0)
        return analyse_archive(tmp, image)
