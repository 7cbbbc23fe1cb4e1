"""Carry a plan out: stage every removal by renaming it into the run's staging folder, then commit.

Staging is a rename on the same file system, so it costs nothing and `undo` can put everything
back. Between staging and commit a caller may check the result (`before_commit`) and undo.
Nothing outside the root is touched: each rename's source folder is checked to be a real folder
under the root, so a symlink planted after the walk is not followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from slimmer.errors import NothingToCommitError, NothingToUndoError, StateConflictError
from slimmer.journal import Journal, RunState, open_dir, root_lock, safe_rel
from slimmer.model.apply import ApplyResult, NewVersion, RewriteInput, RewriteOutcome, Rewritten
from slimmer.mounts import holds_mount, mount_points_under
from slimmer.progress import Progress

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from slimmer.model.apply import Rewriter
    from slimmer.model.plan import Plan

BATCH = 512
TMP_MARK = ".slimmer-tmp"


ROOT, STAGED = 0, 1
_TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}" + re.escape(TMP_MARK) + "$")


class _Mover:
    """Renames paths between the root and a staging folder, each relative to a descriptor of its
    parent folder opened link by link from the root (or the verified staging folder): a symlink or
    a mount point planted anywhere on the way is refused, never followed, and nothing is created
    outside either folder. Nothing on another file system is staged."""

    def __init__(self, root: Path, journal: Journal) -> None:
        self.root = root
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dev = os.fstat(self.root_fd).st_dev
        self.staged_fd = journal.open_staged()
        self.mounts: set[str] = set()
        self.refresh_mounts()
        self._cache: dict[int, tuple[str, int]] = {}

    def close(self) -> None:
        for _, fd in self._cache.values():
            if fd not in (self.root_fd, self.staged_fd):
                os.close(fd)
        self._cache.clear()
        os.close(self.root_fd)
        if self.staged_fd is not None:
            os.close(self.staged_fd)

    def refresh_mounts(self) -> None:
        self.mounts = mount_points_under(os.fspath(self.root))

    def _base(self, side: int) -> int:
        if side == ROOT:
            return self.root_fd
        if self.staged_fd is None:
            raise OSError(errno.ENOENT, "the staging folder is gone")
        return self.staged_fd

    def _dir(self, side: int, rel_dir: str, *, create: bool = False) -> int:
        """A descriptor of folder `rel_dir` on one side (cached: the last one per side)."""
        cached = self._cache.get(side)
        if cached is not None and cached[0] == rel_dir:
            return cached[1]
        base = self._base(side)
        fd = base
        try:
            for part in rel_dir.split("/") if rel_dir else ():
                child = open_dir(fd, part, dev=self.dev, create=create)
                if fd != base:
                    os.close(fd)
                fd = child
        except OSError as exc:
            if fd != base:
                os.close(fd)
            if exc.errno in (errno.ENOTDIR, errno.EXDEV):
                raise OSError(exc.errno, f"{rel_dir}: {exc.strerror}") from None
            raise
        self._forget(side)
        self._cache[side] = (rel_dir, fd)
        return fd

    def _forget(self, side: int, under: str | None = None) -> None:
        cached = self._cache.get(side)
        if cached is None or (under is not None and cached[0] != under and not cached[0].startswith(under + "/")):
            return
        del self._cache[side]
        if cached[1] not in (self.root_fd, self.staged_fd):
            os.close(cached[1])

    def stage(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        src = self._dir(ROOT, parent)
        st = os.lstat(name, dir_fd=src)
        if stat.S_ISDIR(st.st_mode) and st.st_dev != self.dev:
            raise OSError(errno.EXDEV, "another file system (a mount point): left in place")
        mount = holds_mount(rel, self.mounts)
        if mount is not None:
            raise OSError(errno.EBUSY, f"holds a mount point ({mount}): left in place")
        dst = self._dir(STAGED, parent, create=True)
        _move_at(src, name, dst, name, self.dev)
        if stat.S_ISDIR(st.st_mode):
            self._forget(ROOT, rel)

    def staged_exists(self, rel: str) -> bool:
        parent, _, name = rel.rpartition("/")
        try:
            os.lstat(name, dir_fd=self._dir(STAGED, parent))
        except OSError:
            return False
        return True

    def try_restore(self, rel: str, problems: list[tuple[str, str]]) -> int:
        """Put staged `rel` back: 1 if it went back, else 0 and why in `problems`."""
        try:
            self.restore(rel)
        except OSError as exc:
            problems.append((rel, exc.strerror or str(exc)))
            return 0
        return 1

    def restore(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        src = self._dir(STAGED, parent)
        is_dir = stat.S_ISDIR(os.lstat(name, dir_fd=src).st_mode)
        dst = self._dir(ROOT, parent, create=True)
        _move_at(src, name, dst, name, self.dev)
        if is_dir:
            self._forget(STAGED, rel)

    def new_tmp(self, rel: str) -> str:
        """A fresh, unguessable name beside `rel` for its new version (`rel`'s folder checked)."""
        parent, _, name = rel.rpartition("/")
        self._dir(ROOT, parent)
        tmp = f".{name[:200]}.{secrets.token_hex(6)}{TMP_MARK}"
        return f"{parent}/{tmp}" if parent else tmp

    def unlink_tmp(self, tmp_rel: str) -> None:
        """Delete a new version that was never swapped in: only a regular file with a name this
        code made (a user's `.x.slimmer-tmp` or an old journal's name is left alone)."""
        parent, _, name = tmp_rel.rpartition("/")
        if not _TMP_NAME.match(name):
            return
        with contextlib.suppress(OSError):
            fd = self._dir(ROOT, parent)
            if stat.S_ISREG(os.lstat(name, dir_fd=fd).st_mode):
                os.unlink(name, dir_fd=fd)

    def swap(self, rel: str, tmp_rel: str) -> tuple[int, int]:
        """Stage the original of `rel` and put its new version `tmp_rel` (a regular file beside it,
        never a link) in its place, with the original's mode: (old size, new size)."""
        parent, _, name = rel.rpartition("/")
        tmp = tmp_rel.rpartition("/")[2]
        folder = self._dir(ROOT, parent)
        st = os.lstat(name, dir_fd=folder)
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "its new version is a link: not used") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "its new version is not a regular file: not used")
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd)
        if not self.staged_exists(rel):  # else rewritten before in this run: its original is already staged
            self.stage(rel)
            folder = self._dir(ROOT, parent)
        os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        return st.st_size, os.lstat(name, dir_fd=folder).st_size

    def sweep(self) -> tuple[int, list[tuple[str, str]]]:
        """Put back whatever the staging folder still holds (originals whose journal records were
        damaged) where ROOT has nothing in their place; remove the folders left empty. Returns
        (items restored, what stays staged and why)."""
        if self.staged_fd is None:
            return 0, []
        return self._sweep("", self.staged_fd)

    def _sweep(self, rel_dir: str, sfd: int) -> tuple[int, list[tuple[str, str]]]:
        restored, problems = 0, []
        for name in sorted(os.listdir(sfd)):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            st = os.lstat(name, dir_fd=sfd)
            try:
                there: os.stat_result | None = os.lstat(name, dir_fd=self._dir(ROOT, rel_dir))
            except FileNotFoundError:
                there = None
            except OSError as exc:
                problems.append((rel, exc.strerror or str(exc)))
                continue
            if there is None:
                restored += self.try_restore(rel, problems)
            elif stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(there.st_mode):
                child = open_dir(sfd, name, dev=self.dev, create=False)
                try:
                    n, more = self._sweep(rel, child)
                finally:
                    os.close(child)
                restored += n
                problems += more
                if not more:
                    self._forget(STAGED, rel)
                    with contextlib.suppress(OSError):
                        os.rmdir(name, dir_fd=sfd)
            else:
                problems.append((rel, "something else is now at its place in ROOT; the original stays staged"))
        return restored, problems


def _move_at(src_fd: int, src: str, dst_fd: int, dst: str, dev: int) -> None:
    """os.rename, both ways between the root and the staging folder. A folder that cannot move in
    one rename is moved entry by entry, merged into a `dst` folder that already exists: overlayfs
    refuses to rename a folder of a lower image layer (EXDEV, as in a Dockerfile RUN), and a run
    killed half-way through such a folder leaves part of it on each side. Never enters a link or
    another file system."""
    try:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOTEMPTY, errno.EEXIST):
            raise
        st = os.lstat(src, dir_fd=src_fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_dev != dev:
            raise
        try:
            if not stat.S_ISDIR(os.lstat(dst, dir_fd=dst_fd).st_mode):
                raise
        except FileNotFoundError:
            os.mkdir(dst, 0o700, dir_fd=dst_fd)
        sfd = open_dir(src_fd, src, dev=dev, create=False)
        try:
            dfd = open_dir(dst_fd, dst, dev=dev, create=False)
            try:
                for name in os.listdir(sfd):
                    _move_at(sfd, name, dfd, name, dev)
                os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        os.rmdir(src, dir_fd=src_fd)


def _move(src: str, dst: str) -> None:
    """`_move_at` between two paths (their parent folders opened as given)."""
    sfd = os.open(os.path.dirname(src) or ".", os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(os.path.dirname(dst) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        _move_at(sfd, os.path.basename(src), dfd, os.path.basename(dst), os.fstat(sfd).st_dev)
    finally:
        os.close(sfd)
        os.close(dfd)


def apply_plan(
    plan: Plan,
    *,
    commit: bool = True,
    wait: float = 0.0,
    before_commit: Callable[[ApplyResult], bool] | None = None,
    rewriters: Iterable[Rewriter] = (),
    progress: Progress | None = None,
) -> ApplyResult:
    """Stage the plan's removals, let `before_commit` judge, then commit (or undo if it says no)."""
    start = time.monotonic()
    root = plan.root
    with root_lock(root, wait=wait):
        previous = Journal.latest(root)
        if previous is not None and previous.state() is RunState.COMMITTING:
            msg = f"{root} has a run that was being committed ({previous.run_id}): run 'slimmer commit' to finish it"
            raise StateConflictError(msg)
        if previous is not None and previous.state() is RunState.OPEN:
            msg = (
                f"{root} has an unfinished run ({previous.run_id}): "
                "run 'slimmer undo' to restore it or 'slimmer commit' to keep it, then try again"
            )
            raise StateConflictError(msg)
        journal = Journal.create(root, rules=list(plan.rule_names), units=len(plan.units))
        result = ApplyResult(run_id=journal.run_id)
        mover = _Mover(root, journal)
        try:
            _stage_all(plan, result, journal, mover, progress or Progress.quiet())
            prior: dict[str, NewVersion] = {}  # what the rewriters so far put in place
            for rewriter in rewriters:
                _run_rewriter(rewriter, plan, prior, result, journal, mover)
        finally:
            mover.close()
        journal.append([{"op": "staged", "count": result.staged}])
        if before_commit is not None and not before_commit(result):
            _undo(root, journal)
            result.undone = True
        elif commit:
            _commit(journal)
            result.committed = True
    result.seconds = time.monotonic() - start
    return result


def _stage_all(plan: Plan, result: ApplyResult, journal: Journal, mover: _Mover, bar: Progress) -> None:
    bar.total = len(plan.units)
    units = list(plan.units)
    for i in range(0, len(units), BATCH):
        batch = units[i : i + BATCH]
        journal.append([{"op": "move", "rel": u.rel} for u in batch])
        mover.refresh_mounts()  # a mount made since the plan is never moved
        failed = []
        for unit in batch:
            try:
                mover.stage(unit.rel)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                result.failures.append((unit.rel, reason))
                failed.append({"op": "failed", "rel": unit.rel, "error": reason})
            else:
                result.staged += 1
                result.freed += unit.freed
            bar.advance()
        if failed:
            journal.append(failed)
    bar.done()


def _run_rewriter(
    rewriter: Rewriter, plan: Plan, prior: dict[str, NewVersion], result: ApplyResult, journal: Journal, mover: _Mover
) -> None:
    """Put each new version `rewriter` yields in place, then fold its outcome into `result` and the
    files it replaced into `prior` (what the next rewriters are given)."""
    done = result.rewritten.setdefault(rewriter.name, [])
    tmps: dict[str, str] = {}

    def tmp_for(rel: str) -> Path:
        """A fresh path beside `rel` that does not exist yet: the rewriter creates it (O_EXCL)."""
        tmp = mover.new_tmp(rel)
        journal.append([{"op": "tmp", "rel": tmp}])
        tmps[rel] = tmp
        return plan.root / tmp

    run = rewriter.rewrite(RewriteInput(plan, MappingProxyType(dict(prior)), tmp_for))
    while True:
        try:
            rel = next(run)
        except StopIteration as stop:
            outcome: RewriteOutcome = stop.value
            break
        tmp = tmps.pop(rel)
        journal.append([{"op": "move", "rel": rel, "replaced": True}])
        try:
            old_size, new_size = mover.swap(rel, tmp)
        except OSError as exc:
            result.failures.append((rel, f"{rewriter.name}: {exc.strerror or exc}"))
            mover.unlink_tmp(tmp)
            continue
        done.append(Rewritten(rel, old_size, new_size))
        result.freed += max(0, old_size - new_size)
    result.skipped.setdefault(rewriter.name, []).extend(outcome.skipped)
    for rel, _, _ in done:
        prior[rel] = NewVersion(rewriter.name, outcome.digests.get(rel))


def _commit(journal: Journal, notes: list[str] | None = None) -> None:
    staged = journal.open_staged()  # refuses a staging folder that is a link, or not ours
    if staged is not None:
        os.close(staged)
    journal.set_state(RunState.COMMITTING)
    run = journal.open_folder()
    try:
        left = _delete_tree(run, "staged")
    finally:
        os.close(run)
    if left and notes is not None:
        notes.append(f"{left} entries on another file system were left in {journal.staged}")
    journal.set_state(RunState.COMMITTED)


def _remove_at(parent_fd: int, name: str, dev: int) -> int:
    """Delete `name` and everything under it, never following a link nor entering another file
    system; the number of entries left."""
    try:
        st = os.lstat(name, dir_fd=parent_fd)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent_fd)
            return 0
        if st.st_dev != dev:
            return 1
        fd = open_dir(parent_fd, name, dev=dev, create=False)
    except FileNotFoundError:
        return 0
    except OSError:
        return 1
    try:
        left = sum(_remove_at(fd, child, dev) for child in os.listdir(fd))
    finally:
        os.close(fd)
    if not left:
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError:
            return 1
    return left


def _delete_tree(parent_fd: int, name: str, threads: int = 4) -> int:
    """`_remove_at`, with the subtrees a few levels down deleted by several threads at once:
    unlink and rmdir release the GIL, so a tree of thousands of files goes about a third faster.
    Returns the number of entries left (on another file system, or undeletable)."""
    dev = os.fstat(parent_fd).st_dev
    try:
        top = open_dir(parent_fd, name, dev=dev, create=False)
    except FileNotFoundError:
        return 0
    opened = [top]
    try:
        frontier = [(top, child) for child in os.listdir(top)]
        i = 0
        while i < len(frontier) and len(frontier) < 8 * threads:
            fd, child = frontier[i]
            try:
                sub = open_dir(fd, child, dev=dev, create=False)
            except OSError:
                i += 1  # a file, a link or another file system: deleted (or left) as it is
                continue
            opened.append(sub)
            frontier[i : i + 1] = [(sub, c) for c in os.listdir(sub)]
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="slimmer-commit") as pool:
            list(pool.map(lambda job: _remove_at(job[0], job[1], dev), frontier))
    finally:
        for fd in opened:
            os.close(fd)
    return _remove_at(parent_fd, name, dev)


def _undo(root: Path, journal: Journal, notes: list[str] | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Put back what the run staged. Never deletes an original: what cannot go back stays staged."""
    records = journal.records()
    if notes is not None:
        notes.extend(journal.damaged)
    mover = _Mover(root, journal)
    try:
        restored, problems = _put_back(mover, records)
    finally:
        mover.close()
    if not problems:
        problems = _remove_staging(journal)
    if problems:
        journal.append([{"op": "undo-failed", "rel": r, "error": e} for r, e in problems if safe_rel(r)])
    else:
        journal.set_state(RunState.UNDONE)
    return restored, problems


def _put_back(mover: _Mover, records: list[dict[str, Any]]) -> tuple[int, list[tuple[str, str]]]:
    """Undo the journal's records: delete each new version that was never swapped in, then move each
    staged original back, newest first (one never staged, because it failed or the run was killed
    before it, is passed over); then, if all went back, whatever the staging folder still holds
    (originals whose records were damaged). Returns (items restored, what stays staged and why)."""
    for tmp in (r["rel"] for r in records if r["op"] == "tmp"):
        mover.unlink_tmp(tmp)
    problems: list[tuple[str, str]] = []
    restored = 0
    for rel in reversed([r["rel"] for r in records if r["op"] == "move"]):
        if mover.staged_exists(rel):
            restored += mover.try_restore(rel, problems)
    if problems:
        return restored, problems
    swept, problems = mover.sweep()
    return restored + swept, problems


def _remove_staging(journal: Journal) -> list[tuple[str, str]]:
    """Remove the run's staging folder, emptied by the undo: [] or why it stays."""
    run = journal.open_folder()
    try:
        os.rmdir("staged", dir_fd=run)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return [("(staging folder)", exc.strerror or str(exc))]
    finally:
        os.close(run)
    return []


def undo(root: Path, *, wait: float = 0.0, notes: list[str] | None = None) -> tuple[str, int, list[tuple[str, str]]]:
    """Restore the last run if it is not committed: (run id, paths restored, problems). Damaged
    journal records that were ignored are added to `notes`."""
    with root_lock(root, wait=wait):
        journal = Journal.latest(root)
        if journal is None:
            msg = f"nothing to undo: slimmer has not changed {root}"
            raise NothingToUndoError(msg)
        state = journal.state()
        if state is RunState.COMMITTED:
            msg = f"nothing to undo: the last run ({journal.run_id}) is committed; its originals are gone"
            raise NothingToUndoError(msg)
        if state is RunState.UNDONE:
            msg = f"nothing to undo: the last run ({journal.run_id}) was already undone"
            raise NothingToUndoError(msg)
        if state is RunState.COMMITTING:
            msg = (
                f"the last run ({journal.run_id}) was being committed and cannot be restored: "
                "run 'slimmer commit' to finish it"
            )
            raise StateConflictError(msg)
        restored, problems = _undo(root, journal, notes)
        return journal.run_id, restored, problems


def commit(root: Path, *, wait: float = 0.0, notes: list[str] | None = None) -> str:
    """Delete the staged originals of the last run: it can no longer be undone."""
    with root_lock(root, wait=wait):
        journal = Journal.latest(root)
        if journal is None or journal.state() not in (RunState.OPEN, RunState.COMMITTING):
            msg = f"nothing to commit: {root} has no unfinished run"
            raise NothingToCommitError(msg)
        if notes is not None:
            notes.extend(journal.damaged)
        _commit(journal, notes)
        return journal.run_id
