"""The journal of a run and the staging folder beside it, under `ROOT/.slimmer/runs/<id>/`.

Every change is written to the journal (and fsynced) before it is made, so a run killed at any
point leaves the tree either as it was or restorable with `slimmer undo`. A run is `open` until it
is committed (staged originals deleted) or undone (staged originals put back).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slimmer.errors import LockedError
from slimmer.walk import STATE_DIR

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class RunState(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    UNDONE = "undone"


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


@contextlib.contextmanager
def root_lock(root: Path, *, wait: float = 0.0) -> Iterator[None]:
    """Hold the lock of `root` for one run; wait up to `wait` seconds for another run to end."""
    folder = state_dir(root)
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    msg = f"{root} is being slimmed by another run (pid {holder}): wait for it, or pass --wait SECONDS"
                    raise LockedError(msg) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Journal:
    """An append-only JSON-lines file; each line is one step of the run."""

    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / "journal.jsonl"

    @property
    def staged(self) -> Path:
        return self.folder / "staged"

    @property
    def run_id(self) -> str:
        return self.folder.name

    @classmethod
    def create(cls, root: Path, **header: Any) -> Journal:
        runs = state_dir(root) / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        base = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        run_id, n = base, 0
        while (runs / run_id).exists():  # several runs of one process in a second: apply --verify's trials
            n += 1
            run_id = f"{base}-{n:03d}"
        folder = runs / run_id
        folder.mkdir()
        (folder / "staged").mkdir()
        journal = cls(folder)
        journal.append([{"op": "begin", "root": str(root), "time": time.time(), **header}])
        _fsync_dir(runs)
        return journal

    @classmethod
    def latest(cls, root: Path) -> Journal | None:
        runs = state_dir(root) / "runs"
        if not runs.is_dir():
            return None
        journals = [cls(p) for p in runs.iterdir() if (p / "journal.jsonl").is_file()]
        return max(journals, key=lambda j: (j.began(), j.run_id), default=None)

    def append(self, records: list[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def began(self) -> float:
        """When the run began, from its first record (names alone do not order runs of several processes)."""
        with self.path.open(encoding="utf-8") as fh:
            try:
                return float(json.loads(fh.readline()).get("time", 0.0))
            except (json.JSONDecodeError, AttributeError):
                return 0.0

    def records(self) -> list[dict[str, Any]]:
        out = []
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: nothing after it was done
        return out

    def state(self) -> RunState:
        state = RunState.OPEN
        for record in self.records():
            if record["op"] == "state":
                state = RunState(record["state"])
        return state

    def set_state(self, state: RunState) -> None:
        self.append([{"op": "state", "state": state.value, "time": time.time()}])
