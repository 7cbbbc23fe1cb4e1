"""Mount points under a folder, from /proc/self/mountinfo: staging never moves one (a rename
carries a mount along and the commit would then delete what it holds)."""

from __future__ import annotations

import os

MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points_under(root: str) -> set[str]:
    """Paths relative to `root` (real path) of every mount point strictly below it; empty when
    mountinfo cannot be read (the walk and apply's device checks still stand)."""
    real = os.path.realpath(root)
    prefix = real.rstrip("/") + "/"
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return set()
    out = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            point = _unescape(fields[4])
            if point.startswith(prefix):
                out.add(point[len(prefix) :])
    return out


def holds_mount(rel: str, mounts: set[str]) -> str | None:
    """The first mount point at `rel` or below it, if any."""
    for point in mounts:
        if point == rel or point.startswith(rel + "/"):
            return point
    return None
