"""Read and write image archives in the `docker save` format, streaming, never a layer in memory.

Reading takes both what `docker save` writes: the classic layout (`<id>/layer.tar`) and the OCI one
(`blobs/sha256/...`), each with its `manifest.json`. A compressed layer (gzip) is decompressed into
a temporary file beside the work, one at a time. Writing gives the classic layout, which
`docker load` reads on every engine: each layer as `<diff id>/layer.tar`, the config as
`<digest>.json`, then `manifest.json`, as a stream of bytes that goes to a file (written beside its
final name and renamed) or straight into `docker load`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from slimmer.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

CHUNK = 1 << 20
BLOCK = 512


class ArchiveError(UsageError):
    """The file is not an image archive slimmer can read (the message says what is wrong)."""


@dataclass(frozen=True)
class SavedImage:
    """An image archive on disk: its config and the member name of each layer, bottom first."""

    path: Path
    config: dict[str, Any]
    config_name: str
    layers: tuple[str, ...]
    sizes: tuple[int, ...]  # bytes of each layer as stored
    repo_tags: tuple[str, ...]

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(self.config.get("rootfs", {}).get("diff_ids", ()))

    @contextlib.contextmanager
    def layer(self, index: int, scratch: Path) -> Iterator[IO[bytes]]:
        """Layer `index` as a seekable, uncompressed tar stream."""
        with tarfile.open(self.path, mode="r:") as outer:
            fh = _member(outer, self.layers[index], self.path)
            magic = fh.read(4)
            fh.seek(0)
            if magic[:2] == b"\x1f\x8b":
                with tempfile.TemporaryFile(dir=scratch, prefix="slimmer-layer-") as tmp:
                    with gzip.GzipFile(fileobj=fh) as gz:
                        shutil.copyfileobj(gz, tmp, CHUNK)
                    tmp.seek(0)
                    yield tmp
                return
            if magic == b"\x28\xb5\x2f\xfd":
                msg = f"{self.path}: layer {index} is zstd-compressed, which slimmer cannot read: use `docker save`"
                raise ArchiveError(msg)
            yield fh

    def layer_raw(self, index: int) -> tuple[tarfile.TarFile, IO[bytes], int]:
        """The layer's bytes as stored (maybe compressed): (outer tar to close, stream, size)."""
        outer = tarfile.open(self.path, mode="r:")  # noqa: SIM115 - the caller closes it
        return outer, _member(outer, self.layers[index], self.path), self.sizes[index]


def _member(tar: tarfile.TarFile, name: str, where: Path) -> IO[bytes]:
    try:
        fh = tar.extractfile(name)
    except KeyError:
        fh = None
    if fh is None:
        msg = f"{where}: '{name}' is missing from the archive: not a complete `docker save` archive"
        raise ArchiveError(msg)
    return fh


def open_archive(path: Path) -> SavedImage:
    """Read the manifest and config of a `docker save` archive; ArchiveError if it is not one."""
    if not path.is_file():
        msg = f"{path}: no such file: give an archive written by `docker save IMAGE -o FILE`"
        raise ArchiveError(msg)
    try:
        with tarfile.open(path, mode="r:") as outer:
            manifests = json.load(_member(outer, "manifest.json", path))
            if not isinstance(manifests, list) or not manifests or not isinstance(manifests[0], dict):
                msg = f"{path}: manifest.json lists no image"
                raise ArchiveError(msg)
            if len(manifests) > 1:
                msg = f"{path}: holds {len(manifests)} images; slimmer slims one: `docker save` one image"
                raise ArchiveError(msg)
            manifest = manifests[0]
            config_name = str(manifest.get("Config", ""))
            config = json.load(_member(outer, config_name, path))
            layers = tuple(str(x) for x in manifest.get("Layers", ()))
            for name in layers:
                _member(outer, name, path)
            sizes = tuple(outer.getmember(name).size for name in layers)
    except (tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{path}: not a `docker save` archive ({exc})"
        raise ArchiveError(msg) from None
    if not isinstance(config, dict) or len(config.get("rootfs", {}).get("diff_ids", ())) != len(layers):
        msg = f"{path}: the image config's rootfs.diff_ids do not match the {len(layers)} layers of the manifest"
        raise ArchiveError(msg)
    return SavedImage(path, config, config_name, layers, sizes, tuple(manifest.get("RepoTags") or ()))


def config_blob(config: dict[str, Any]) -> tuple[bytes, str]:
    """The config as the archive holds it, and its digest (the image id)."""
    blob = json.dumps(config, separators=(",", ":")).encode()
    return blob, f"sha256:{hashlib.sha256(blob).hexdigest()}"


def archive_stream(
    layers: Iterable[tuple[str, IO[bytes], int]], config: Callable[[], dict[str, Any]], repo_tags: Sequence[str]
) -> Iterator[bytes]:
    """The bytes of a classic `docker save` archive: each (diff id, stream, size) of `layers` as
    `<hex>/layer.tar`, then the config (asked for once every layer is written) and manifest.json."""
    names = []
    for diff_id, fh, size in layers:
        name = f"{diff_id.partition(':')[2] or diff_id}/layer.tar"
        names.append(name)
        yield from _member_bytes(name, fh, size)
    blob, digest = config_blob(config())
    config_name = f"{digest.partition(':')[2]}.json"
    yield from _member_bytes(config_name, io.BytesIO(blob), len(blob))
    manifest = json.dumps([{"Config": config_name, "RepoTags": list(repo_tags), "Layers": names}]).encode()
    yield from _member_bytes("manifest.json", io.BytesIO(manifest), len(manifest))
    yield b"\0" * (2 * BLOCK)


def _member_bytes(name: str, fh: IO[bytes], size: int) -> Iterator[bytes]:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    left = size
    while left > 0:
        chunk = fh.read(min(CHUNK, left))
        if not chunk:
            raise OSError(f"{name}: ends {left} bytes early")
        left -= len(chunk)
        yield chunk
    if size % BLOCK:
        yield b"\0" * (BLOCK - size % BLOCK)


def write_archive(chunks: Iterable[bytes], path: Path) -> int:
    """Write `chunks` beside `path` and rename into place; return the bytes written."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    total = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                total += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return total
