from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


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
