from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


# A test that uses one of these fixtures needs what the markers say (registered in pyproject.toml);
# `make unit` runs only tests with none of them. Tests that call a tool themselves carry the marker.
FIXTURE_MARKS = {
    "built": ("tools",),  # test_elf.py: fixtures/elf/build.sh (gcc, patchelf), readelf
    "small_env": ("tools", "venv"),  # test_verify.py: a venv and a gcc-built extension; test_bench.py: a venv
    "bench_run": ("tools", "venv"),  # test_bench.py: /usr/bin/time, strip
    "libs": ("tools",),  # test_gpu_prune.py: nvcc, cuobjdump
    "overlay_root": ("tools",),  # test_apply_overlay.py: mount -t overlay
    "torch_env": ("torch",),
    "torch_copy": ("torch",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            for name in FIXTURE_MARKS.get(fixture, ()):
                item.add_marker(name)


@pytest.fixture(scope="session")
def torch_env() -> Path:
    """The cached torch environment that `make envs` builds (SLIMMER_TORCH_ENV)."""
    env = os.environ.get("SLIMMER_TORCH_ENV")
    if not env:
        pytest.skip("SLIMMER_TORCH_ENV is not set: run the tests with 'make test'")
    path = Path(env)
    if not (path / "bin" / "python").exists():
        pytest.fail(f"{path} has no bin/python: run 'make envs'")
    return path


@pytest.fixture
def torch_copy(torch_env: Path, tmp_path: Path) -> Path:
    """A private byte copy of the torch environment (copies, not hard links: slimming changes files)."""
    dest = tmp_path / "env"
    shutil.copytree(torch_env, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[object]:
    """A docker client for the engine `make docker` starts, with its base image (SLIMMER_DOCKER_BASE)."""
    base = os.environ.get("SLIMMER_DOCKER_BASE")
    if not base:
        pytest.skip("SLIMMER_DOCKER_BASE is not set: run the tests with 'make test' (or 'make docker' first)")
    from slimmer.errors import SlimmerError
    from slimmer.pipeline.engine import connect, require_image

    try:
        client = connect()
        require_image(client, base, "test")
    except SlimmerError as exc:
        pytest.fail(f"{exc} (run 'make docker')")
    yield client
    client.close()
