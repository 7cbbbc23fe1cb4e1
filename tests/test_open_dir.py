"""`journal.open_dir`, the one way slimmer opens a folder link by link, on real folders, links and a
real tmpfs; `open_verified_dir` (the state folders) is it plus the ownership checks."""

from __future__ import annotations

import ast
import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from slimmer.errors import UnsafeStateError
from slimmer.journal import open_dir, open_verified_dir

PACKAGE = Path(__file__).resolve().parent.parent / "slimmer"


@pytest.fixture
def parent(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "real").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield tmp_path, fd, os.fstat(fd).st_dev
    finally:
        os.close(fd)


def test_open_dir_opens_a_real_folder_and_creates_one_with_its_mode(parent):
    path, fd, dev = parent
    child = open_dir(fd, "real", dev=dev)
    try:
        assert os.fstat(child).st_ino == os.lstat(path / "real").st_ino
    finally:
        os.close(child)
    old = os.umask(0)
    try:
        os.close(open_dir(fd, "new", dev=dev, create=True, mode=0o750))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(path / "new").st_mode) == 0o750


@pytest.mark.parametrize("name", ["link", "file"])
def test_open_dir_refuses_a_link_or_a_file_with_enotdir(parent, name):
    _, fd, dev = parent
    with pytest.raises(OSError, match="no longer a real folder") as info:
        open_dir(fd, name, dev=dev)
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(FileNotFoundError):
        open_dir(fd, "missing", dev=dev)


def test_open_dir_refuses_another_file_system_with_exdev(parent):
    path, fd, dev = parent
    proc = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path / "real")], capture_output=True, check=False)
    if proc.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(OSError, match="another file system") as info:
            open_dir(fd, "real", dev=dev)
        assert info.value.errno == errno.EXDEV
        with pytest.raises(UnsafeStateError, match="is on another file system than the root"):
            open_verified_dir(fd, "real", where=path / "real", dev=dev)
    finally:
        subprocess.run(["umount", "-l", str(path / "real")], check=False)


def test_open_verified_dir_refuses_links_and_folders_others_may_write(parent):
    path, fd, dev = parent
    with pytest.raises(UnsafeStateError, match="is a link or not a folder"):
        open_verified_dir(fd, "link", where=path / "link", dev=dev)
    os.chmod(path / "real", 0o777)
    with pytest.raises(UnsafeStateError, match="writable by others"):
        open_verified_dir(fd, "real", where=path / "real", dev=dev)
    os.close(open_verified_dir(fd, "state", where=path / "state", dev=dev, create=True))
    assert stat.S_IMODE(os.lstat(path / "state").st_mode) == 0o700


def test_only_open_dir_opens_folders_without_following_links():
    """No second copy of the helper: DIR_FLAGS (O_DIRECTORY | O_NOFOLLOW) is used by open_dir alone."""
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
                attrs = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
                if "DIR_FLAGS" in names or {"O_DIRECTORY", "O_NOFOLLOW"} <= attrs:
                    users.append(f"{path.relative_to(PACKAGE)}:{fn.name}")
    assert users == ["journal.py:open_dir"]
