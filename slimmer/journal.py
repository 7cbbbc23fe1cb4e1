"""The journal of a run and the staging folder beside it, under `ROOT/.slimmer/runs/<id>/`.

Every change is written to the journal (and fsynced) before it is made, so a run killed at any
point leaves the tree either as it was or restorable with `slimmer undo`. A run is `open` until it
is committed (staged originals deleted) or undone (staged originals put back).

The state folder is never trusted as found: each of `.slimmer`, `runs`, `runs/<id>` and
`staged` is opened with O_NOFOLLOW relative to its verified parent and must be a real folder on
the root's file system, owned by the running user and writable by no one else; the lock and the
journal are opened with O_NOFOLLOW and must be regular files. Anything else is refused with an
`UnsafeStateError` before a byte is written. Each journal record carries a CRC-32 of its text; a
record cut short by a kill (the torn tail) or damaged later is ignored and reported, never taken
for another, and the next append starts on a fresh line. A record naming a path that is not a
plain relative path under the root is treated as damaged.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import stat
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slimmer.errors import LockedError, UnsafeStateError
from slimmer.walk import STATE_DIR

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
JOURNAL = "journal.jsonl"


class RunState(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    UNDONE = "undone"


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


def _refuse(path: Path | str, why: str) -> UnsafeStateError:
    return UnsafeStateError(f"{path} {why}: slimmer will not use it (check what it holds, remove it, and try again)")


def open_dir(parent_fd: int, name: str, *, dev: int, create: bool = False, mode: int = 0o755) -> int:
    """Open folder `name` of `parent_fd` without following a link (creating it with `mode` first if
    `create`); it must be on device `dev`. The one way slimmer opens a folder, link by link: a
    link or a non-folder raises OSError(ENOTDIR), another file system OSError(EXDEV); any other
    error (FileNotFoundError...) as os.open raised it."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=parent_fd)
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(errno.ENOTDIR, f"{name} is no longer a real folder under the root") from None
        raise
    if os.fstat(fd).st_dev != dev:
        os.close(fd)
        raise OSError(errno.EXDEV, f"{name} is on another file system (a mount point): left in place")
    return fd


def open_verified_dir(parent_fd: int, name: str, *, where: Path | str, dev: int, create: bool = False) -> int:
    """`open_dir` for slimmer's own state folders (created mode 0700): also owned by this user and
    writable by no one else, or refused with an `UnsafeStateError`."""
    try:
        fd = open_dir(parent_fd, name, dev=dev, create=create, mode=0o700)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise _refuse(where, "is a link or not a folder") from None
        if exc.errno == errno.EXDEV:
            raise _refuse(where, "is on another file system than the root") from None
        raise
    st = os.fstat(fd)
    why = ""
    if st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by the user running slimmer (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        why = f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    if why:
        os.close(fd)
        raise _refuse(where, why)
    return fd


def _open_root(root: Path) -> tuple[int, int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return fd, os.fstat(fd).st_dev


def open_state(root: Path, *, create: bool) -> int | None:
    """A verified descriptor of `ROOT/.slimmer` (None if it does not exist and not `create`)."""
    root_fd, dev = _open_root(root)
    try:
        return open_verified_dir(root_fd, STATE_DIR, where=state_dir(root), dev=dev, create=create)
    except FileNotFoundError:
        return None
    finally:
        os.close(root_fd)


def _open_file(parent_fd: int, name: str, flags: int, *, where: Path) -> int:
    """Open a regular file of slimmer's own (lock, journal) without following a link."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise _refuse(where, "is a link or not a regular file") from None
        raise
    st = os.fstat(fd)
    why = ""
    if not stat.S_ISREG(st.st_mode):
        why = "is not a regular file"
    elif st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by the user running slimmer (uid {os.geteuid()})"
    if why:
        os.close(fd)
        raise _refuse(where, why)
    return fd


_held = threading.local()


@contextlib.contextmanager
def root_lock(root: Path, *, wait: float = 0.0, reentrant: bool = False) -> Iterator[None]:
    """Hold the lock of `root` for one run; wait up to `wait` seconds for another run to end.

    A lock taken with `reentrant=True` (the CLI's, so that the plan is made under it) lets the same
    thread take it again without waiting: apply's own call then joins the lock already held."""
    root_fd, _ = _open_root(root)
    key = (os.fstat(root_fd).st_dev, os.fstat(root_fd).st_ino)
    os.close(root_fd)
    held: dict[tuple[int, int], int] = getattr(_held, "roots", None) or {}
    _held.roots = held
    if held.get(key):
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    folder = open_state(root, create=True)
    assert folder is not None
    try:
        fd = _open_file(folder, "lock", os.O_RDWR | os.O_CREAT, where=state_dir(root) / "lock")
    finally:
        os.close(folder)
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
        if reentrant:
            held[key] = 1
        try:
            yield
        finally:
            held.pop(key, None)
    finally:
        os.close(fd)  # closing releases the flock


def safe_rel(rel: object) -> bool:
    """Whether `rel` is a plain relative POSIX path under the root (no '..', '.', empty part or NUL)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\0" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _encode(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes, *, legacy: bool) -> dict[str, Any] | None:
    """The record of one line, or None if it is damaged (bad checksum, not JSON, unsafe path)."""
    if legacy:
        body = line
    else:
        crc, _, body = line.partition(b" ")
        try:
            if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
                return None
        except ValueError:
            return None
    try:
        record = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("op"), str):
        return None
    if "rel" in record and not safe_rel(record["rel"]):
        return None
    return record


@dataclass
class Journal:
    """An append-only file of checksummed JSON records; each is one step of the run."""

    folder: Path
    damaged: list[str] = field(default_factory=list, compare=False)  # what the last read ignored, and why

    @property
    def path(self) -> Path:
        return self.folder / JOURNAL

    @property
    def staged(self) -> Path:
        return self.folder / "staged"

    @property
    def run_id(self) -> str:
        return self.folder.name

    @property
    def root(self) -> Path:
        return self.folder.parent.parent.parent

    @classmethod
    def create(cls, root: Path, **header: Any) -> Journal:
        state = open_state(root, create=True)
        assert state is not None
        dev = os.fstat(state).st_dev
        try:
            runs = open_verified_dir(state, "runs", where=state_dir(root) / "runs", dev=dev, create=True)
        finally:
            os.close(state)
        try:
            base = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
            run_id, n = base, 0
            while True:  # several runs of one process in a second: apply --verify's trials
                try:
                    os.mkdir(run_id, 0o700, dir_fd=runs)
                    break
                except FileExistsError:
                    n += 1
                    run_id = f"{base}-{n:03d}"
            folder = state_dir(root) / "runs" / run_id
            run = open_verified_dir(runs, run_id, where=folder, dev=dev)
            try:
                os.close(open_verified_dir(run, "staged", where=folder / "staged", dev=dev, create=True))
                os.close(_open_file(run, JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL, where=folder / JOURNAL))
                os.fsync(run)
            finally:
                os.close(run)
            journal = cls(folder)
            journal.append([{"op": "begin", "root": str(root), "time": time.time(), **header}])
            os.fsync(runs)
        finally:
            os.close(runs)
        return journal

    @classmethod
    def latest(cls, root: Path) -> Journal | None:
        """The run that began last; refuses a state folder or run folder that cannot be trusted."""
        state = open_state(root, create=False)
        if state is None:
            return None
        dev = os.fstat(state).st_dev
        try:
            runs = open_verified_dir(state, "runs", where=state_dir(root) / "runs", dev=dev)
        except FileNotFoundError:
            return None
        finally:
            os.close(state)
        journals = []
        try:
            for name in sorted(os.listdir(runs)):
                folder = state_dir(root) / "runs" / name
                run = open_verified_dir(runs, name, where=folder, dev=dev)
                try:
                    os.close(_open_file(run, JOURNAL, os.O_RDONLY, where=folder / JOURNAL))
                except FileNotFoundError:
                    continue  # a run folder whose journal was never made: nothing was done
                finally:
                    os.close(run)
                journals.append(cls(folder))
        finally:
            os.close(runs)
        return max(journals, key=lambda j: (j.began(), j.run_id), default=None)

    def open_folder(self) -> int:
        """A verified descriptor of this run's folder (the whole chain from the root checked)."""
        state = open_state(self.root, create=False)
        if state is None:
            raise _refuse(state_dir(self.root), "is gone")
        dev = os.fstat(state).st_dev
        try:
            runs = open_verified_dir(state, "runs", where=self.folder.parent, dev=dev)
        finally:
            os.close(state)
        try:
            return open_verified_dir(runs, self.run_id, where=self.folder, dev=dev)
        finally:
            os.close(runs)

    def open_staged(self) -> int | None:
        """A verified descriptor of the staging folder, or None if it is gone."""
        run = self.open_folder()
        try:
            return open_verified_dir(run, "staged", where=self.staged, dev=os.fstat(run).st_dev)
        except FileNotFoundError:
            return None
        finally:
            os.close(run)

    def _read(self) -> bytes:
        run = self.open_folder()
        try:
            fd = _open_file(run, JOURNAL, os.O_RDONLY, where=self.path)
        finally:
            os.close(run)
        with os.fdopen(fd, "rb") as fh:
            return fh.read()

    def append(self, records: list[dict[str, Any]]) -> None:
        run = self.open_folder()
        try:
            fd = _open_file(run, JOURNAL, os.O_RDWR | os.O_APPEND, where=self.path)
        finally:
            os.close(run)
        try:
            size = os.fstat(fd).st_size
            data = b"".join(_encode(r) for r in records)
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # seal a torn tail: it stays one damaged line, never merged with this
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def began(self) -> float:
        """When the run began, from its first record (names alone do not order runs of several processes)."""
        records = self.records()
        if not records or records[0]["op"] != "begin":
            return 0.0
        try:
            return float(records[0].get("time", 0.0))
        except (TypeError, ValueError):
            return 0.0

    def records(self) -> list[dict[str, Any]]:
        """The intact records in order; `damaged` then says which lines were ignored and why."""
        data = self._read()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        legacy = data.startswith(b"{")  # a journal of slimmer before checksums
        out: list[dict[str, Any]] = []
        self.damaged = []
        for n, line in enumerate(lines, 1):
            record = _decode(line, legacy=legacy)
            if record is None:
                self.damaged.append(f"{self.path}: line {n} is damaged and was ignored")
            else:
                out.append(record)
        if torn:
            self.damaged.append(
                f"{self.path}: the last record was cut short (a run killed while writing it) and was ignored"
            )
        return out

    def state(self) -> RunState:
        state = RunState.OPEN
        for record in self.records():
            if record["op"] == "state":
                with contextlib.suppress(ValueError):
                    state = RunState(record.get("state"))
        return state

    def set_state(self, state: RunState) -> None:
        self.append([{"op": "state", "state": state.value, "time": time.time()}])
