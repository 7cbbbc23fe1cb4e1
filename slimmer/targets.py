"""Check the root a user names before anything reads or writes under it."""

from __future__ import annotations

import os
from pathlib import Path

from slimmer.errors import UsageError


def check_root(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """The resolved root; refuses an empty path, a missing path, a non-folder, `/` and the home folder."""
    if not os.fspath(path).strip():
        # Path("") is ".": an unset $PREFIX in a script would slim the current folder.
        msg = "ROOT is empty (an unset variable?): name the environment's prefix, e.g. /opt/conda/envs/py"
        raise UsageError(msg)
    given = Path(path).expanduser()
    if not given.exists():
        msg = f"{given}: no such folder: name the environment's prefix, e.g. /opt/conda/envs/py"
        raise UsageError(msg)
    root = given.resolve()
    if not root.is_dir():
        msg = f"{given}: not a folder: name the environment's prefix, not a file in it"
        raise UsageError(msg)
    dangerous = {Path("/").resolve(): "the file system root", Path.home().resolve(): "your home folder"}
    if root in dangerous and not force:
        msg = f"{given} is {dangerous[root]}: name an environment prefix, or pass --force if you mean it"
        raise UsageError(msg)
    return root


def relative_inside(root: Path, path: str) -> str:
    """`path` (absolute, or relative to the root) as a POSIX path relative to the root."""
    candidate = Path(path)
    if candidate.is_absolute():
        parent = Path(os.path.realpath(candidate.parent))
        full = parent / candidate.name
        try:
            rel = full.relative_to(root)
        except ValueError:
            msg = f"{path} is outside {root}"
            raise UsageError(msg) from None
    else:
        rel = Path(os.path.normpath(candidate))
        if rel.parts and rel.parts[0] == "..":
            msg = f"{path} is outside {root}"
            raise UsageError(msg)
    return rel.as_posix().strip("/") if str(rel) != "." else ""


def file_under(root: str | os.PathLike[str], rel: str) -> str | None:
    """The path of `rel` under `root` if it still resolves inside the root (no link planted since
    the plan leads out of it), else None."""
    real_root = os.path.realpath(root)
    path = os.path.join(root, rel)
    return path if os.path.realpath(path).startswith(real_root + os.sep) else None
