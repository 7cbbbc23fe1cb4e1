"""Slimming on overlayfs, as in a Dockerfile RUN: folders from a lower layer cannot be renamed (EXDEV).

`slimmer apply` then stages such a folder entry by entry; `undo` puts it back.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from typing import TYPE_CHECKING

import pytest

from slimmer.apply import _move, apply_plan, undo
from slimmer.plan import make_plan
from slimmer.rules import RuleSet
from tests.helpers import make_tree, snapshot

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SP = "lib/python3.11/site-packages"
FILES = {
    f"{SP}/pkg/__init__.py": "x = 1\n",
    f"{SP}/pkg/__pycache__/__init__.cpython-311.pyc": b"\0" * 4096,
    f"{SP}/pkg/tests/test_a.py": "def test(): pass\n",
    f"{SP}/pkg/tests/data/big.bin": b"\1" * 65536,
    f"{SP}/pkg-1.0.dist-info/METADATA": "Name: pkg\nVersion: 1.0\n",
    f"{SP}/pkg-1.0.dist-info/RECORD": "",
}


@pytest.fixture
def overlay_root(tmp_path: Path) -> Iterator[Path]:
    """A real overlayfs mount whose files all come from the lower layer (like an image's earlier RUN)."""
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    make_tree(lower / "env", FILES)
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        pytest.skip(f"cannot mount overlayfs here (needs root): {proc.stderr.strip()}")
    try:
        yield merged / "env"
    finally:
        subprocess.run(["umount", str(merged)], check=False)


def test_apply_on_overlayfs_stages_lower_layer_folders_and_undo_restores_them(overlay_root: Path) -> None:
    with pytest.raises(OSError) as info:  # the kernel behaviour this works around
        os.rename(overlay_root / SP / "pkg" / "tests", overlay_root / "moved")
    assert info.value.errno == errno.EXDEV
    before = snapshot(overlay_root)
    plan = make_plan(overlay_root, RuleSet.load(["tests", "bytecode"]))
    result = apply_plan(plan, commit=False)
    assert result.failures == []
    assert not (overlay_root / SP / "pkg" / "tests").exists()
    assert not (overlay_root / SP / "pkg" / "__pycache__").exists()
    assert (overlay_root / SP / "pkg" / "__init__.py").read_text() == "x = 1\n"
    undo(overlay_root)
    assert snapshot(overlay_root) == before


def test_rename_falls_back_to_entry_by_entry_when_the_folder_cannot_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_tree(tmp_path / "src", {"a/b/c.txt": "c", "a/d.txt": "d", "a/e/": ""})
    os.symlink("d.txt", src / "a" / "link")
    os.chmod(src / "a" / "b", 0o750)
    real_rename = os.rename

    def no_folder_renames(a: str, b: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        st = os.lstat(a, dir_fd=src_dir_fd)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(a, b, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "rename", no_folder_renames)
    _move(str(src / "a"), str(tmp_path / "staged"))
    monkeypatch.undo()
    assert not (src / "a").exists()
    staged = tmp_path / "staged"
    assert (staged / "b" / "c.txt").read_text() == "c" and (staged / "e").is_dir()
    assert os.readlink(staged / "link") == "d.txt"
    assert (staged / "b").stat().st_mode & 0o777 == 0o750
    shutil.rmtree(staged)
