"""The image row's measure of "as pushed" (bench/images.py) on a real engine: every layer of the base
image gzipped while `docker save` streams, checked against the layers of a saved archive gzipped
here with the gzip module."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tarfile
from typing import TYPE_CHECKING

import pytest

from bench.images import gzip_sizes

if TYPE_CHECKING:
    from pathlib import Path

BASE = os.environ.get("SLIMMER_DOCKER_BASE", "slimmer-base:bookworm")

pytestmark = [pytest.mark.docker]


def test_layers_gzipped_while_streaming_match_gzip_of_the_saved_layers(docker_engine: object, tmp_path: Path) -> None:
    known: dict[str, int] = {}
    names: dict[str, str] = {}
    gzip_sizes(docker_engine, BASE, known, names)
    diff_ids = docker_engine.images.get(BASE).attrs["RootFS"]["Layers"]  # type: ignore[attr-defined]
    assert diff_ids and all(d in known for d in diff_ids)

    archive = tmp_path / "base.tar"
    subprocess.run(["docker", "save", "-o", str(archive), BASE], check=True)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        for diff_id, member in zip(diff_ids, manifest[0]["Layers"]):
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            expected = len(gzip.compress(data, compresslevel=6, mtime=0))
            assert abs(known[diff_id] - expected) <= 64, (member, known[diff_id], expected)
            assert known[diff_id] < len(data)

    # measured layers are not read again: a planted figure for a known layer stays as it is
    known[diff_ids[0]] = 1
    gzip_sizes(docker_engine, BASE, known, names)
    assert known[diff_ids[0]] == 1
