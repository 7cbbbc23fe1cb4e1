"""Reading a file of the tree the safe way: a regular file only, never through a symlink, never
blocking on a FIFO or a device, and never more than a bound. Reads only."""

from __future__ import annotations

import os
import stat


def read_regular(path: str, limit: int) -> bytes | None:
    """The bytes of `path` if it is a regular file (not a link) of at most `limit` bytes, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        try:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            data = fh.read(limit + 1)
        except OSError:
            return None
    return data if len(data) <= limit else None
