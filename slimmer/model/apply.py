"""What an apply run did (`ApplyResult`) and the contract of the rewriters it calls (`Rewriter`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from slimmer.model.plan import Plan


class Rewriter(Protocol):
    """Makes new versions of files under the root (a stripped library, an updated RECORD).

    `rewrite` writes each new version to `tmp_for(rel)` (a journaled path beside the original),
    checks it, and yields `rel`; apply then stages the original and renames the new file into
    place, keeping the original's mode. A file it cannot or should not rewrite it skips.
    """

    name: str

    def rewrite(self, plan: Plan, result: ApplyResult, tmp_for: Callable[[str], Path]) -> Iterable[str]: ...


@dataclass
class ApplyResult:
    run_id: str
    staged: int = 0
    freed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    rewritten: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    skipped: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # rewriter -> [(rel, why)]
    # rel -> (RECORD hash, size, inode) of the new version a rewriter put in place, for the RECORD rewriter
    digests: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    committed: bool = False
    undone: bool = False
    seconds: float = 0.0
