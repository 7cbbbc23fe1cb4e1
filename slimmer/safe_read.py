"""Reading a file of the tree the safe way: a regular file only, never through a symlink, never
blocking on a FIFO or a device, and never more than a bound. Reads only.

Every read of a file under ROOT goes through here (or through `open_regular` for a reader that
streams): a RECORD linked to /dev/zero, a `.pth` that is a FIFO or a metadata file linked outside
the root reads as absent instead of growing memory, hanging, or leaking what lies outside.
"""

from __future__ import annotations

import os
import stat

# Bounds for the kinds of files slimmer reads whole: a torch RECORD is about 2 MB.
METADATA_LIMIT = 64 << 20
SOURCE_LIMIT = 16 << 20


def open_regular(path: str | os.PathLike[str]) -> int | None:
    """A read-only descriptor on `path` if it is a regular file reached without a final symlink,
    else None. Opening never blocks (O_NONBLOCK: a FIFO with no writer), the caller closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return fd


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes | None:
    """The bytes of `path` if it is a regular file (not a link) of at most `limit` bytes, else None."""
    fd = open_regular(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as fh:
        try:
            if os.fstat(fh.fileno()).st_size > limit:
                return None
            data = fh.read(limit + 1)
        except OSError:
            return None
    return data if len(data) <= limit else None


def read_text(path: str | os.PathLike[str], limit: int = METADATA_LIMIT, *, strict: bool = False) -> str | None:
    """`read_regular` decoded as UTF-8; a byte that is not UTF-8 becomes U+FFFD instead of an error,
    or, with `strict` (text that will be written back), makes the result None."""
    data = read_regular(path, limit)
    if data is None:
        return None
    try:
        return data.decode("utf-8", errors="strict" if strict else "replace")
    except UnicodeDecodeError:
        return None


def read_given(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a file the user named (a rule file, a config file): a link to it is fine, but
    it must be a regular file of at most `limit` bytes, so a FIFO or /dev/zero cannot block or
    fill memory. Raises OSError, or ValueError saying what is wrong with it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            msg = "not a regular file"
            raise ValueError(msg)
        data = fh.read(limit + 1)
    if len(data) > limit:
        msg = f"larger than {limit >> 20} MiB"
        raise ValueError(msg)
    return data
