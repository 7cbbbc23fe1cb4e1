"""User checks: Python snippets or commands from `slimmer.toml`, `pyproject.toml` or the command line.

    [tool.slimmer]                      # in pyproject.toml; slimmer.toml may also put `checks` at the top
    checks = [
        "import torch_geometric",                          # a Python snippet
        { python = "import my_model; my_model.smoke()", timeout = 300 },
        { command = "my-server --self-test" },             # runs with the environment's bin/ first on PATH
    ]

Reads files only.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from slimmer.errors import UsageError
from slimmer.verify.checks import CheckKind, VerifyCheck
from slimmer.verify.runner import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

CONFIG_NAMES = ("slimmer.toml", "pyproject.toml")


def _toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - depends on the interpreter
        try:
            import tomli as tomllib
        except ImportError:
            msg = f"{path}: reading TOML needs Python 3.11 or the 'tomli' package"
            raise UsageError(msg) from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"{path}: cannot read: {exc}"
        raise UsageError(msg) from None


def _section(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    section = data.get("tool", {}).get("slimmer")
    if section is None and path.name == "slimmer.toml":
        section = data
    return section if isinstance(section, dict) else {}


def _check(path: Path, index: int, item: object) -> VerifyCheck:
    where = f"{path}: checks[{index}]"
    if isinstance(item, str):
        return VerifyCheck(CheckKind.PYTHON, item, "user", DEFAULT_TIMEOUT)
    if isinstance(item, dict):
        timeout = item.get("timeout", DEFAULT_TIMEOUT)
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            msg = f"{where}: timeout must be a positive number of seconds"
            raise UsageError(msg)
        kinds = [k for k in ("python", "command") if k in item]
        if len(kinds) == 1 and isinstance(item[kinds[0]], str) and set(item) <= {"python", "command", "timeout"}:
            kind = CheckKind.PYTHON if kinds[0] == "python" else CheckKind.COMMAND
            return VerifyCheck(kind, item[kinds[0]], "user", float(timeout))
    msg = f'{where}: expected a Python snippet string, {{ python = "..." }} or {{ command = "..." }}'
    raise UsageError(msg)


def find_config(start: Path) -> Path | None:
    """The first slimmer.toml or pyproject.toml (with a [tool.slimmer] table) in `start`."""
    for name in CONFIG_NAMES:
        path = start / name
        if path.is_file() and (name == "slimmer.toml" or _section(path, _toml(path))):
            return path
    return None


def load_checks(config: Path | None) -> list[VerifyCheck]:
    """The `checks` of a config file (none if `config` is None)."""
    if config is None:
        return []
    if not config.is_file():
        msg = f"--config {config}: no such file"
        raise UsageError(msg)
    items = _section(config, _toml(config)).get("checks", [])
    if not isinstance(items, list):
        msg = f"{config}: 'checks' must be a list"
        raise UsageError(msg)
    return [_check(config, i, item) for i, item in enumerate(items)]


def cli_checks(snippets: Iterable[str], commands: Iterable[str], timeout: float = DEFAULT_TIMEOUT) -> list[VerifyCheck]:
    out = [VerifyCheck(CheckKind.PYTHON, s, "user", timeout) for s in snippets]
    out += [VerifyCheck(CheckKind.COMMAND, c, "user", timeout) for c in commands]
    return out
