"""Helpers shared by the tests: build trees, list and snapshot them, run the smoke checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def make_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Create `files` ({relative path: content}) under root; a path ending in '/' is an empty folder."""
    for rel, content in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def listing(root: Path) -> set[str]:
    """Every file, link and folder under root, relative, skipping slimmer's own state folder."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir.parts[:1] == (".slimmer",):
            continue
        for name in dirnames + filenames:
            rel = (rel_dir / name).as_posix()
            if rel != ".slimmer":
                out.add(rel)
    return out


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Content and mode of everything under root (links by target), for exact before/after checks."""
    snap = {}
    for rel in listing(root):
        path = root / rel
        st = path.lstat()
        if path.is_symlink():
            snap[rel] = ("link", st.st_mode, os.readlink(path))
        elif path.is_dir():
            snap[rel] = ("dir", st.st_mode, b"")
        else:
            snap[rel] = ("file", st.st_mode, path.read_bytes())
    return snap


def run_smoke(env: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env / "bin" / "python"), str(REPO / "fixtures" / "smoke.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def run_pip(env: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`pip ARGS` with the environment's own interpreter."""
    return subprocess.run(
        [str(env / "bin/python"), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def cached_env(variable: str, target: str) -> Path:
    """The cached environment a Makefile target builds and names in `variable`: skips when the
    variable is unset (not run through make), fails when it names an environment not built."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set: run the tests with 'make test' (or 'make {target}' first)")
    path = Path(value)
    if not (path / ".complete").is_file():
        pytest.fail(f"{path} is not built: run 'make {target}'")
    return path
