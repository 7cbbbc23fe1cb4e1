"""Find and read slimmer's configuration table: `slimmer.toml`, or `[tool.slimmer]` of `pyproject.toml`.

Shared by the pipeline (its build keys) and verify (its `checks`). Reads files; never writes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from slimmer.errors import UsageError
from slimmer.safe_read import read_given

if TYPE_CHECKING:
    from pathlib import Path

CONFIG_NAMES = ("slimmer.toml", "pyproject.toml")
_MAX_CONFIG = 16 << 20


def load_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a one-line UsageError if it cannot be read or parsed."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - depends on the interpreter
        try:
            import tomli as tomllib
        except ImportError:
            msg = f"{path}: reading TOML needs Python 3.11 or the 'tomli' package"
            raise UsageError(msg) from None
    try:
        return tomllib.loads(read_given(path, _MAX_CONFIG).decode("utf-8"))
    except OSError as exc:
        msg = f"{path}: cannot read: {exc.strerror or exc}"
        raise UsageError(msg) from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:  # not regular, too big, not UTF-8, not TOML
        msg = f"{path}: cannot read: {exc}"
        raise UsageError(msg) from None


def find_config(start: Path) -> Path | None:
    """slimmer.toml, else a pyproject.toml with a [tool.slimmer] table, in `start`."""
    for name in CONFIG_NAMES:
        path = start / name
        if path.is_file() and (name == "slimmer.toml" or "slimmer" in load_toml(path).get("tool", {})):
            return path
    return None


def read_section(path: Path) -> dict[str, Any]:
    """The [tool.slimmer] table of `path`; a slimmer.toml without one is the table itself."""
    data = load_toml(path)
    tool = data.get("tool", {})
    if path.name == "pyproject.toml" or (isinstance(tool, dict) and "slimmer" in tool):
        data = tool.get("slimmer", {}) if isinstance(tool, dict) else {}
    if not isinstance(data, dict):
        msg = f"{path}: [tool.slimmer] must be a table"
        raise UsageError(msg)
    return data
