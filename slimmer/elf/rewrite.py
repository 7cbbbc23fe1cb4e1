"""What the ELF rewriters (`Stripper`, `Pruner`) share: whether a file may be replaced, running
their jobs in the worker pool, and the RECORD hash of each new file for the RECORD rewriter."""

from __future__ import annotations

import contextlib
import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, TypeVar

from slimmer.dists import record_hash
from slimmer.elf.pool import bounded_map
from slimmer.model.apply import Digest, RewriteOutcome

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Sequence
    from pathlib import Path

    from slimmer.elf.pool import WorkerPool


class Job(Protocol):
    """Rewrite `src` into `tmp` (a journaled path beside it); `size` bounds the memory it takes."""

    @property
    def src(self) -> str: ...
    @property
    def tmp(self) -> str: ...
    @property
    def size(self) -> int: ...


J = TypeVar("J", bound=Job)


def writable(path: str, mode: int) -> bool:
    """Whether a new version of `path` (mode `mode`) can be renamed into its place."""
    if not mode & stat.S_IWUSR:
        return False
    return os.access(os.path.dirname(path) or ".", os.W_OK | os.X_OK)


def keep_owner(tmp: str, st: os.stat_result) -> None:
    """Give the new file the original's owner (apply gives it the original's mode)."""
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(tmp, st.st_uid, st.st_gid, follow_symlinks=False)


def discard(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def hash_fd(fd: int) -> Digest:
    """The RECORD hash, size and inode of an open file; closes it."""
    with os.fdopen(fd, "rb") as fh:
        digest, size = record_hash(fh)
        return Digest(digest, size, os.fstat(fh.fileno()).st_ino)


def run_jobs(
    fn: Callable[[J], str | None],
    work: Sequence[J],
    *,
    root: Path,
    skipped: Sequence[tuple[str, str]] = (),
    jobs: int | None,
    pool: WorkerPool | None = None,
    settle: Callable[[J], str | None] | None = None,
) -> Generator[str, None, RewriteOutcome]:
    """Run `fn` (None, or why the file is left as it is) over `work` in the worker pool, memory
    bounded by file size; yield the relative path of each file rewritten, and return the outcome:
    `skipped` (what the caller left out before) and the files `fn` left, and the new files' digests.

    `settle`: a last check (None, or why not; it discards the new file then) whose memory the file
    size does not bound, such as loading a library with its dependencies. It runs here, after the
    map, one file at a time in the order the map finished them, each file yielded (so put in
    place) before the next is checked: it never runs beside a worker's job.

    The RECORD rewriter needs the sha256 of each new file: a thread here takes it while the workers
    rewrite the next files (the file is in the page cache). It reads through a descriptor opened
    before the rename into place; the inode tells RECORD it is that file."""
    rel_of = {job.src: os.path.relpath(job.src, root) for job in work}
    left = list(skipped)
    digests: dict[str, Digest] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimmer-hash") as hasher:
        hashes: dict[str, Future[Digest]] = {}

        def hash_new(job: J) -> None:
            with contextlib.suppress(OSError):
                fd = os.open(job.tmp, os.O_RDONLY | os.O_NOFOLLOW)
                hashes[rel_of[job.src]] = hasher.submit(hash_fd, fd)

        done: list[J] = []
        for job, why in bounded_map(fn, work, cost=lambda j: j.size, jobs=jobs, pool=pool):
            if why is not None:
                left.append((rel_of[job.src], why))
            elif settle is not None:
                done.append(job)
            else:
                hash_new(job)
                yield rel_of[job.src]
        for job in done:
            why = settle(job) if settle is not None else None
            if why is not None:
                left.append((rel_of[job.src], why))
                continue
            hash_new(job)
            yield rel_of[job.src]
        for rel, future in hashes.items():
            with contextlib.suppress(OSError):
                digests[rel] = future.result()
    return RewriteOutcome(tuple(left), MappingProxyType(digests))
