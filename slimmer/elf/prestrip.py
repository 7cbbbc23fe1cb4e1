"""Strips made while the plan runs: `slimmer apply` overlaps the slow part of stripping with the plan.

`slimmer apply` plans under the root's lock, and the plan's background analysis reads each ELF file
a strip rule selects while the removing rules and the protectors run. With a `Prestrips`, the
worker that analysed a file that needs stripping strips it at once into a scratch folder of the
root's state folder (`ROOT/.slimmer/prestrip-<pid>-<token>/`, verified like every state folder:
a real folder on the root's file system, ours, writable by no one else) and checks the result
exactly as apply's own strip does (`check_output` against LIEF's report of the original). The
RECORD hash of the new file is taken here, in a thread, while the plan goes on.

`Stripper` then renames a pre-stripped file into the journaled temporary name beside its original
(`tmp_for`), on the same file system, instead of stripping it again; apply swaps it in as usual,
so the journal, undo and the all-or-nothing commit are unchanged. A pre-strip is used only if the
original is still the file that was stripped (same inode, size, mtime and ctime: a rewrite in
place that keeps the size and puts the mtime back, as `cp -p` does, still moves the ctime) and the
plan decided to strip it; anything else is stripped by apply as before. What is left in the
scratch folder when the command ends is deleted, and a scratch folder that a killed run left is
deleted by the next run that holds the lock.

Never writes outside the scratch folder; never follows a link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer.elf.rewrite import hash_fd, keep_owner
from slimmer.errors import UnsafeStateError
from slimmer.journal import open_dir, open_state, open_verified_dir, state_dir

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from slimmer.elf.pool import WorkerPool
    from slimmer.model.apply import Digest

PREFIX = "prestrip-"
_FOLDER = re.compile(r"^" + re.escape(PREFIX) + r"[0-9]+-[0-9a-f]{8}$")
_FILE = re.compile(r"^[0-9a-f]{16}\.stripped$")


def scratch_name() -> str:
    """A fresh name for one stripped file in the scratch folder."""
    return f"{secrets.token_hex(8)}.stripped"


@dataclass(frozen=True)
class Source:
    """The original as it was when it was stripped: a later change means the pre-strip is stale.
    The ctime counts: no one can set it back, and neither reading the file nor stripping a copy
    of it moves it."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Source:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Ready:
    """A checked, stripped copy in the scratch folder (`name`), made by a worker from `source`."""

    name: str
    source: Source


@dataclass(frozen=True)
class Refused:
    """A strip made early that failed apply's check: why, and the original it was made from."""

    why: str
    source: Source


class Prestrips:
    """The scratch folder of one `slimmer apply` and the strips made into it (keyed by path under
    the root). Open it with `opened(root)` while holding the root's lock."""

    def __init__(self, root: Path, state_fd: int, name: str, fd: int) -> None:
        self.root = root
        self.folder = os.fspath(state_dir(root) / name)  # what the workers write into
        self._state_fd = state_fd
        self._name = name
        self._fd = fd
        self._ready: dict[str, Ready] = {}
        self._refused: dict[str, Refused] = {}
        self._hashes: dict[str, Future[Digest]] = {}
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimmer-prestrip-hash")

    @classmethod
    @contextlib.contextmanager
    def opened(cls, root: Path) -> Iterator[Prestrips]:
        """A fresh scratch folder under `ROOT/.slimmer`, deleted with what it still holds at the end.
        Scratch folders of killed runs are deleted first (the caller holds the root's lock, so no
        other run is using one)."""
        state = open_state(root, create=True)
        assert state is not None
        try:
            dev = os.fstat(state).st_dev
            _sweep(state, dev)
            name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            fd = open_verified_dir(state, name, where=state_dir(root) / name, dev=dev, create=True)
        except BaseException:
            os.close(state)
            raise
        prestrips = cls(root, state, name, fd)
        try:
            yield prestrips
        finally:
            prestrips.close()

    def close(self) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=True)
        _empty(self._fd)
        os.close(self._fd)
        with contextlib.suppress(OSError):
            os.rmdir(self._name, dir_fd=self._state_fd)
        os.close(self._state_fd)

    def arrived(self, rel: str, made: Ready | Refused) -> None:
        """Record what a worker made for `rel`; start hashing a ready file at once."""
        if isinstance(made, Refused):
            self._refused[rel] = made
            return
        if rel in self._ready or not _FILE.match(made.name):
            return
        self._ready[rel] = made
        self._hashes[rel] = self._hasher.submit(self._digest, made.name)

    def _digest(self, name: str) -> Digest:
        return hash_fd(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd))

    def refused(self, rel: str, src: str) -> str | None:
        """Why the early strip of `rel` failed the check, if the original has not changed since."""
        made = self._refused.get(rel)
        if made is None or _source(src) != made.source:
            return None
        return made.why

    def place(self, rel: str, src: str, tmp: str) -> Digest | None:
        """Move the ready strip of `rel` to `tmp` (a fresh journaled name beside `src`, on the
        root's file system) with the original's owner; returns its RECORD digest (None when it
        could not be taken). Raises LookupError when there is no usable strip: none was made, or
        `src` is no longer the file it was made from; OSError when the move failed. The folder it
        goes to is opened from the root one name at a time, never through a link."""
        made = self._ready.pop(rel, None)
        st = _lstat(src)
        if made is None or st is None or not stat.S_ISREG(st.st_mode) or Source.of(st) != made.source:
            raise LookupError(rel)
        keep_owner(os.path.join(self.folder, made.name), st)
        folder = self._folder_of(rel)
        try:
            tmp_name = os.path.basename(tmp)
            if _lstat_at(tmp_name, folder) is not None:
                raise OSError(errno.EEXIST, f"{tmp} exists")
            os.rename(made.name, tmp_name, src_dir_fd=self._fd, dst_dir_fd=folder)
        finally:
            os.close(folder)
        future = self._hashes.pop(rel, None)
        try:
            return future.result() if future is not None else None
        except OSError:
            return None

    def _folder_of(self, rel: str) -> int:
        """A descriptor of the folder that holds `rel`, opened link by link from the root."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        dev = os.fstat(fd).st_dev
        try:
            for part in rel.split("/")[:-1]:
                child = open_dir(fd, part, dev=dev)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd


def _lstat_at(name: str, folder: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=folder)
    except FileNotFoundError:
        return None


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _source(path: str) -> Source | None:
    st = _lstat(path)
    return Source.of(st) if st is not None and stat.S_ISREG(st.st_mode) else None


def _empty(fd: int) -> None:
    """Delete the stripped files a scratch folder holds (only names this module makes)."""
    for name in os.listdir(fd):
        if _FILE.match(name):
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(name, dir_fd=fd).st_mode):
                    os.unlink(name, dir_fd=fd)


def sweep(root: Path) -> None:
    """Delete the scratch folders that killed runs left under `ROOT/.slimmer` (the caller holds
    the root's lock); nothing to do where the state folder does not exist."""
    state = open_state(root, create=False)
    if state is None:
        return
    try:
        _sweep(state, os.fstat(state).st_dev)
    finally:
        os.close(state)


def _sweep(state: int, dev: int) -> None:
    """Delete the scratch folders that killed runs left in the state folder; one that is a link,
    not ours or writable by others is left alone (and never entered)."""
    for name in os.listdir(state):
        if not _FOLDER.match(name):
            continue
        try:
            fd = open_verified_dir(state, name, where=name, dev=dev)
        except (UnsafeStateError, OSError):  # not ours to delete
            continue
        try:
            _empty(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=state)


@contextlib.contextmanager
def early_strips(root: Path, pool: WorkerPool | None) -> Iterator[Prestrips | None]:
    """`Prestrips` for an apply whose plan has warm workers (the caller holds the root's lock);
    None without them: the plan would strip in the calling process, before the protectors, and
    gain nothing. The scratch folders of killed runs are deleted either way."""
    if pool is None:
        sweep(root)
        yield None
        return
    with Prestrips.opened(root) as prestrips:
        yield prestrips
