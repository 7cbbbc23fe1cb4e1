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

from typing import TYPE_CHECKING

from slimmer.config_file import read_section
from slimmer.errors import UsageError
from slimmer.verify.checks import CheckKind, VerifyCheck
from slimmer.verify.runner import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path


def parse_check(where: str, item: object) -> VerifyCheck:
    """One item of `checks`: a snippet string, { python = "..." } or { command = "..." }, each with an
    optional `timeout` (seconds); WHERE names it in errors. The one parser of checks (the pipeline's too)."""
    if isinstance(item, VerifyCheck):
        return item
    if isinstance(item, str):
        return VerifyCheck(CheckKind.PYTHON, item, "user", DEFAULT_TIMEOUT)
    if isinstance(item, dict):
        timeout = item.get("timeout", DEFAULT_TIMEOUT)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            msg = f"{where}: timeout must be a positive number of seconds"
            raise UsageError(msg)
        kinds = [k for k in ("python", "command") if k in item]
        if len(kinds) == 1 and isinstance(item[kinds[0]], str) and set(item) <= {"python", "command", "timeout"}:
            kind = CheckKind.PYTHON if kinds[0] == "python" else CheckKind.COMMAND
            return VerifyCheck(kind, item[kinds[0]], "user", float(timeout))
    msg = f'{where}: expected a Python snippet string, {{ python = "..." }} or {{ command = "..." }}'
    raise UsageError(msg)


def parse_checks(where: str, items: object) -> tuple[VerifyCheck, ...]:
    """The `checks` value of a config file (one string counts as a list of one)."""
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, (list, tuple)):
        msg = f"{where}: 'checks' must be a list"
        raise UsageError(msg)
    return tuple(parse_check(f"{where}: checks[{i}]", item) for i, item in enumerate(items))


def load_checks(config: Path | None) -> list[VerifyCheck]:
    """The `checks` of a config file (none if `config` is None)."""
    if config is None:
        return []
    if not config.is_file():
        msg = f"--config {config}: no such file"
        raise UsageError(msg)
    return list(parse_checks(str(config), read_section(config).get("checks", [])))


def cli_checks(snippets: Iterable[str], commands: Iterable[str], timeout: float = DEFAULT_TIMEOUT) -> list[VerifyCheck]:
    out = [VerifyCheck(CheckKind.PYTHON, s, "user", timeout) for s in snippets]
    out += [VerifyCheck(CheckKind.COMMAND, c, "user", timeout) for c in commands]
    return out
