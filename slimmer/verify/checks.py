"""What a check is and what running it gave: plain data, shared by the runner, the CLI and apply.

Never runs anything; `slimmer.verify.runner` does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CheckKind(enum.Enum):
    IMPORT = "import"
    EXTENSION = "extension"
    OP = "op"
    COMPILE = "compile"
    PYTHON = "python"  # a user's snippet
    COMMAND = "command"  # a user's command line


class Status(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class VerifyCheck:
    """One check: `target` is a module, `module=path` of an extension, a library, a snippet or a command.

    Checks with the same `kind` and `group` (a distribution, say) share one subprocess.
    """

    kind: CheckKind
    target: str
    group: str = ""
    timeout: float = 120.0
    skip_reason: str = ""

    @property
    def name(self) -> str:
        if self.kind is CheckKind.EXTENSION:
            return f"{self.kind.value} {self.target.partition('=')[0]}"
        return f"{self.kind.value} {self.target}"


@dataclass(frozen=True)
class CheckResult:
    check: VerifyCheck
    status: Status
    seconds: float
    error: str = ""  # first line, for the table
    detail: str = ""  # the device that ran it, a traceback, how an extension was loaded

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAIL

    @property
    def device(self) -> str:
        first = self.detail.partition("\n")[0]
        return first.removeprefix("device ") if first.startswith("device ") else ""


@dataclass(frozen=True)
class VerifyReport:
    python: str
    python_version: str
    results: tuple[CheckResult, ...]
    seconds: float

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status is Status.FAIL)

    @property
    def ok(self) -> bool:
        return not self.failed
