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
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from slimmer.errors import NothingToCommitError, NothingToUndoError, StateConflictError
from slimmer.journal import Journal, RunState, root_lock
from slimmer.model.apply import ApplyResult, Rewriter
from slimmer.progress import Progress

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from slimmer.model.plan import Plan

BATCH = 512
TMP_MARK = ".slimmer-tmp"


class _Mover:
    """Renames paths between the root and a staging folder, refusing any path through a symlink."""

    def __init__(self, root: Path, staged: Path) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.staged = staged
        self._checked: dict[str, bool] = {}
        self._made: set[str] = set()

    def _real_folder(self, rel_dir: str) -> bool:
        ok = self._checked.get(rel_dir)
        if ok is None:
            expected = os.path.join(self.real_root, rel_dir) if rel_dir else self.real_root
            path = os.path.join(self.root, rel_dir)
            ok = os.path.realpath(path) == expected and os.path.isdir(path)
            self._checked[rel_dir] = ok
        return ok

    def stage(self, rel: str) -> None:
        parent = rel.rpartition("/")[0]
        if not self._real_folder(parent):
            msg = f"{parent} is no longer a real folder under the root"
            raise OSError(msg)
        if parent and parent not in self._made:
            os.makedirs(self.staged / parent, exist_ok=True)
            self._made.add(parent)
        _move(os.fspath(self.root / rel), os.fspath(self.staged / rel))

    def restore(self, rel: str) -> None:
        parent = rel.rpartition("/")[0]
        if parent:
            os.makedirs(self.root / parent, exist_ok=True)
        if not self._real_folder(parent):
            msg = f"{parent} is not a real folder under the root"
            raise OSError(msg)
        _move(os.fspath(self.staged / rel), os.fspath(self.root / rel))

    def swap(self, rel: str, new: Path) -> tuple[int, int]:
        """Stage the original of `rel` and put `new` in its place: (old size, new size)."""
        path = self.root / rel
        st = os.lstat(path)
        os.chmod(new, stat.S_IMODE(st.st_mode))
        if os.path.lexists(self.staged / rel):
            os.replace(new, path)  # rewritten before in this run: its original is already staged
        else:
            self.stage(rel)
            os.rename(new, path)
        return st.st_size, os.lstat(path).st_size


def _move(src: str, dst: str) -> None:
    """os.rename, both ways between the root and the staging folder. A folder that cannot move in
    one rename is moved entry by entry, merged into a `dst` folder that already exists: overlayfs
    refuses to rename a folder of a lower image layer (EXDEV, as in a Dockerfile RUN), and a run
    killed half-way through such a folder leaves part of it on each side."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOTEMPTY, errno.EEXIST) or os.path.islink(src):
            raise
        if not os.path.isdir(src) or os.path.islink(dst) or (os.path.lexists(dst) and not os.path.isdir(dst)):
            raise
        mode = stat.S_IMODE(os.lstat(src).st_mode)
        with contextlib.suppress(FileExistsError):
            os.mkdir(dst, 0o700)
        with os.scandir(src) as entries:
            for entry in list(entries):
                _move(entry.path, os.path.join(dst, entry.name))
        os.rmdir(src)
        os.chmod(dst, mode)


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
        if previous is not None and previous.state() in (RunState.OPEN, RunState.COMMITTING):
            msg = (
                f"{root} has an unfinished run ({previous.run_id}): "
                "run 'slimmer undo' to restore it or 'slimmer commit' to keep it, then try again"
            )
            raise StateConflictError(msg)
        journal = Journal.create(root, rules=list(plan.rule_names), units=len(plan.units))
        result = ApplyResult(run_id=journal.run_id)
        mover = _Mover(root, journal.staged)
        bar = progress or Progress.quiet()
        bar.total = len(plan.units)
        units = list(plan.units)
        for i in range(0, len(units), BATCH):
            batch = units[i : i + BATCH]
            journal.append([{"op": "move", "rel": u.rel} for u in batch])
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
        for rewriter in rewriters:
            _run_rewriter(rewriter, plan, result, journal, mover)
        journal.append([{"op": "staged", "count": result.staged}])
        if before_commit is not None and not before_commit(result):
            _undo(root, journal)
            result.undone = True
        elif commit:
            _commit(journal)
            result.committed = True
    result.seconds = time.monotonic() - start
    return result


def _tmp_rel(rel: str) -> str:
    folder, _, name = rel.rpartition("/")
    return f"{folder}/.{name}{TMP_MARK}" if folder else f".{name}{TMP_MARK}"


def _run_rewriter(rewriter: Rewriter, plan: Plan, result: ApplyResult, journal: Journal, mover: _Mover) -> None:
    done = result.rewritten.setdefault(rewriter.name, [])

    def tmp_for(rel: str) -> Path:
        journal.append([{"op": "tmp", "rel": _tmp_rel(rel)}])
        return plan.root / _tmp_rel(rel)

    for rel in rewriter.rewrite(plan, result, tmp_for):
        tmp = plan.root / _tmp_rel(rel)
        journal.append([{"op": "move", "rel": rel, "replaced": True}])
        try:
            old_size, new_size = mover.swap(rel, tmp)
        except OSError as exc:
            result.failures.append((rel, f"{rewriter.name}: {exc.strerror or exc}"))
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            continue
        done.append((rel, old_size, new_size))
        result.freed += max(0, old_size - new_size)


def _commit(journal: Journal) -> None:
    journal.set_state(RunState.COMMITTING)
    _delete_tree(journal.staged)
    journal.set_state(RunState.COMMITTED)


def _delete_tree(path: Path, threads: int = 4) -> None:
    """shutil.rmtree, with the subtrees a few levels down deleted by several threads at once:
    unlink and rmdir release the GIL, so a tree of thousands of files goes about a third faster.
    Never follows a symlink (rmtree does not, and the split looks at real folders only)."""
    folders: list[str] = []
    queue = [os.fspath(path)]
    while queue and len(folders) + len(queue) < 8 * threads:
        top = queue.pop(0)
        folders.append(top)
        with contextlib.suppress(OSError), os.scandir(top) as entries:
            queue.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
    if queue:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="slimmer-commit") as pool:
            list(pool.map(lambda p: shutil.rmtree(p, ignore_errors=True), queue))
    shutil.rmtree(path, ignore_errors=True)


def _undo(root: Path, journal: Journal) -> tuple[int, list[tuple[str, str]]]:
    mover = _Mover(root, journal.staged)
    problems: list[tuple[str, str]] = []
    restored = 0
    records = journal.records()
    for tmp in (r["rel"] for r in records if r["op"] == "tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / tmp)  # a new version that was never swapped in
    moved = [r["rel"] for r in records if r["op"] == "move"]
    for rel in reversed(moved):
        if not os.path.lexists(journal.staged / rel):
            continue  # never staged (failed, or the run was killed before it)
        try:
            mover.restore(rel)
        except OSError as exc:
            problems.append((rel, exc.strerror or str(exc)))
        else:
            restored += 1
    if problems:
        journal.append([{"op": "undo-failed", "rel": r, "error": e} for r, e in problems])
        return restored, problems
    shutil.rmtree(journal.staged, ignore_errors=True)
    journal.set_state(RunState.UNDONE)
    return restored, problems


def undo(root: Path, *, wait: float = 0.0) -> tuple[str, int, list[tuple[str, str]]]:
    """Restore the last run if it is not committed: (run id, paths restored, problems)."""
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
        restored, problems = _undo(root, journal)
        return journal.run_id, restored, problems


def commit(root: Path, *, wait: float = 0.0) -> str:
    """Delete the staged originals of the last run: it can no longer be undone."""
    with root_lock(root, wait=wait):
        journal = Journal.latest(root)
        if journal is None or journal.state() not in (RunState.OPEN, RunState.COMMITTING):
            msg = f"nothing to commit: {root} has no unfinished run"
            raise NothingToCommitError(msg)
        _commit(journal)
        return journal.run_id
