"""What an apply run did (`ApplyResult`), the contract of the rewriters it calls (`Rewriter`), and
the typed values that pass between them: what a rewriter is given (`RewriteInput`, with what the
earlier rewriters of the run put in place) and what it returns (`RewriteOutcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Mapping
    from pathlib import Path

    from slimmer.model.plan import Plan


class Digest(NamedTuple):
    """The RECORD hash (`sha256=<urlsafe base64>`), size and inode of a new version, taken by the
    rewriter that wrote it; the inode and size tell a later reader it is still that file."""

    hash: str
    size: int
    inode: int


class Rewritten(NamedTuple):
    """A file whose new version apply put in place: its size before and after."""

    rel: str
    before: int
    after: int


@dataclass(frozen=True)
class NewVersion:
    """A file an earlier rewriter of this run replaced, and its new version's digest when that
    rewriter took it (None: read the file again)."""

    rewriter: str
    digest: Digest | None = None


@dataclass(frozen=True)
class RewriteInput:
    """What a rewriter is given: the plan, what the rewriters before it put in place ({rel: new
    version}, the last one for a file rewritten twice), and `tmp_for(rel)`, a fresh journaled path
    beside `rel` for its new version (it must not exist: the rewriter creates it, O_EXCL)."""

    plan: Plan
    prior: Mapping[str, NewVersion]
    tmp_for: Callable[[str], Path]


@dataclass(frozen=True)
class RewriteOutcome:
    """What a rewriter returns once it has yielded every new version: the files it left as they
    are and why, and the digests of the new versions it wrote (those it took)."""

    skipped: tuple[tuple[str, str], ...] = ()
    digests: Mapping[str, Digest] = field(default_factory=dict)


class Rewriter(Protocol):
    """Makes new versions of files under the root (a stripped library, an updated RECORD).

    `rewrite` writes each new version to `given.tmp_for(rel)`, checks it, and yields `rel`; apply
    then stages the original and renames the new file into place, keeping the original's mode.
    When done it returns a `RewriteOutcome` (the generator's return value). It never writes
    anything else, and reads what came before it only from `given.prior`.
    """

    name: str

    def rewrite(self, given: RewriteInput) -> Generator[str, None, RewriteOutcome]: ...


@dataclass
class ApplyResult:
    """The run's summary, built by apply as it stages and folds each rewriter's outcome."""

    run_id: str
    staged: int = 0
    freed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    rewritten: dict[str, list[Rewritten]] = field(default_factory=dict)  # rewriter -> files put in place
    skipped: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # rewriter -> [(rel, why)]
    committed: bool = False
    undone: bool = False
    seconds: float = 0.0
