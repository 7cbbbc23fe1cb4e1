"""The plan's data: which paths go and which rule decided each, what stays and why, and what is
stripped or pruned; plus what protectors are given (`PlanContext`) and their contract (`Protector`).
Made by `slimmer.plan.make_plan`, carried out by `slimmer.apply.apply_plan`."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from slimmer.walk import Entry, Kind, Tree

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from slimmer.dists import Owners
    from slimmer.elf.gpuarch import Target
    from slimmer.elf.pool import WorkerPool
    from slimmer.layout import Layout
    from slimmer.model.elf import ElfReport
    from slimmer.rules import Rule, RuleSet


class Verdict(enum.Enum):
    STRIP = "strip"
    SKIP = "skip"


class Skip(enum.Enum):
    """Why a file that a strip rule selects is left as it is."""

    NOT_ELF = "not an ELF file"
    DAMAGED = "damaged ELF"
    ALREADY_STRIPPED = "already stripped"
    SAVES_NOTHING = "stripping saves nothing"
    PATCHELF_CHECK_FAILED = "rewritten by patchelf and the stripped copy fails the check"
    CHECK_FAILED = "the stripped copy fails the check"
    NOT_WRITABLE = "not writable"
    LINKS_OUTSIDE = "hard links outside the root"
    LINKS_INSIDE = "hard links inside the root"
    NO_STRIP_TOOL = "strip (binutils) is not installed"


@dataclass(frozen=True)
class StripDecision:
    """What the plan does with one ELF file that a strip rule selects."""

    rel: str
    dist: str
    size: int
    verdict: Verdict
    saving: int  # predicted bytes saved; 0 when skipped
    skip: Skip | None = None
    detail: str = ""
    rule: Rule | None = None  # the strip rule that selects it (shown as its file:line)
    report: ElfReport | None = None

    @property
    def reason(self) -> str:
        if self.skip is None:
            return f"strip ({self.detail})" if self.detail else "strip"
        return f"{self.skip.value}: {self.detail}" if self.detail else self.skip.value


@dataclass(frozen=True)
class GpuPruning:
    """What `--gpu-arch` asks for."""

    targets: tuple[Target, ...]
    keep_ptx: bool = True

    @property
    def label(self) -> str:
        names = ", ".join(str(t) for t in self.targets)
        return names + ("" if self.keep_ptx else " (no PTX)")


@dataclass(frozen=True)
class PruneDecision:
    """What the plan does with one library's device code."""

    rel: str
    dist: str
    size: int
    saving: int  # predicted bytes saved; 0 when skipped
    skip: str = ""  # why it is left as it is
    fatbin: int = 0  # bytes of .nv_fatbin
    dropped: dict[str, int] = field(default_factory=dict)  # entry name (sm_80, compute_90) -> bytes
    kept: dict[str, int] = field(default_factory=dict)
    containers: int = 0
    kept_whole: tuple[str, ...] = ()  # why each container kept whole is kept
    outside: int = 0  # device code images outside .nv_fatbin, left as is

    @property
    def reason(self) -> str:
        if self.skip:
            return self.skip
        return f"prune: drops {sum(self.dropped.values())} bytes of device code"


@dataclass(frozen=True)
class Removal:
    """A file, link or empty folder that the plan removes."""

    rel: str
    kind: Kind
    size: int
    freed: int  # bytes the disk gets back: 0 for a hard link whose inode stays referenced
    rule: Rule
    dist: str


class Keeper(enum.Enum):
    """What keeps a path that a rule would remove (`Kept.by`): the value is the name shown."""

    RULE = "rule"  # a `!` line
    METADATA = "package metadata"  # the protectors, by their `name`
    IMPORTS = "import analysis"
    DATA_FILES = "data-file analysis"
    LIBRARIES = "library analysis"
    MOUNT = "mount"  # a mount point (and the folders above it) never goes
    OTHER = "other"  # a protector not named here: `Kept.label` names it

    @classmethod
    def named(cls, label: str) -> Keeper:
        try:
            return cls(label)
        except ValueError:
            return cls.OTHER


@dataclass(frozen=True)
class Kept:
    """A path that a rule would remove but that stays, why, and what kept it (`by`)."""

    rel: str
    size: int
    rule: Rule | None
    reason: str
    label: str = "rule"  # what kept it, as shown: "rule", "mount" or the protector's name
    by: Keeper = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by", Keeper.named(self.label))


@dataclass(frozen=True)
class Unit:
    """What `apply` moves in one rename: a whole folder or a single path."""

    rel: str
    kind: Kind
    size: int
    freed: int
    rule: Rule


class Protector(Protocol):
    """Decides which of the paths a rule removes must stay; returns {rel: reason}."""

    def protect(self, ctx: PlanContext, removing: dict[str, Rule]) -> dict[str, str]: ...


@dataclass
class PlanContext:
    """What protectors may read: the walked tree, its layout and the owners of each path."""

    tree: Tree
    layout: Layout
    owners: Owners
    rules: RuleSet
    by_rel: dict[str, Entry] = field(default_factory=dict)
    pool: WorkerPool | None = None  # warm workers for the ELF analyses, passed in by the caller

    def __post_init__(self) -> None:
        self.by_rel = {e.rel: e for e in self.tree.entries}


def _savings_by_distribution(decisions: Iterable[StripDecision | PruneDecision]) -> dict[str, tuple[int, int]]:
    files: Counter[str] = Counter()
    saved: Counter[str] = Counter()
    for d in decisions:
        if d.saving:
            files[d.dist] += 1
            saved[d.dist] += d.saving
    return {k: (files[k], saved[k]) for k in sorted(saved, key=lambda k: (-saved[k], k))}


@dataclass(frozen=True)
class Plan:
    root: Path
    rule_names: tuple[str, ...]
    layout: Layout
    removals: tuple[Removal, ...]
    units: tuple[Unit, ...]
    kept: tuple[Kept, ...]
    files_before: int
    bytes_before: int
    warnings: tuple[str, ...]
    seconds: float
    strips: tuple[StripDecision, ...] = ()  # ELF files a strip rule selects: stripped or skipped, and why
    # Files the plan removes because a rule names their place, although kept code reads them: (rel, who reads it)
    reads: tuple[tuple[str, str], ...] = ()
    gpu: GpuPruning | None = None  # --gpu-arch: the targets device code is pruned to
    prunes: tuple[PruneDecision, ...] = ()  # libraries with device code: pruned or skipped, and why

    @property
    def prune_saving(self) -> int:
        """Bytes that pruning device code is predicted to save."""
        return sum(d.saving for d in self.prunes)

    @property
    def bytes_saved_predicted(self) -> int:
        """Removed + predicted strip and prune savings."""
        return self.bytes_removed + self.strip_saving + self.prune_saving

    @property
    def bytes_removed(self) -> int:
        return sum(r.freed for r in self.removals)

    @property
    def strip_saving(self) -> int:
        """Bytes that stripping is predicted to save."""
        return sum(d.saving for d in self.strips)

    def strips_by_distribution(self) -> dict[str, tuple[int, int]]:
        """{distribution: (files to strip, predicted bytes saved)}, largest first."""
        return _savings_by_distribution(self.strips)

    def prunes_by_distribution(self) -> dict[str, tuple[int, int]]:
        """{distribution: (libraries to prune, predicted bytes saved)}, largest first."""
        return _savings_by_distribution(self.prunes)

    def strip_skips(self) -> dict[str, int]:
        """{reason: files} for the selected ELF files that are not stripped."""
        return dict(Counter(d.skip.value for d in self.strips if d.skip is not None).most_common())

    @property
    def files_removed(self) -> int:
        return sum(1 for r in self.removals if r.kind is not Kind.DIR)

    def by_rule_file(self) -> dict[str, tuple[int, int]]:
        """{rule file: (files, bytes)}, largest first."""
        return _tally((r.rule.source, r) for r in self.removals)

    def by_rule(self) -> dict[str, tuple[int, int]]:
        return _tally((f"{r.rule.where} {r.rule.pattern}", r) for r in self.removals)

    def by_distribution(self) -> dict[str, tuple[int, int]]:
        return _tally((r.dist, r) for r in self.removals)

    def breakages(self) -> dict[str, tuple[int, int]]:
        """{what stops working (the deciding rules' @breaks): (files, bytes)}, largest first."""
        return _tally((r.rule.breaks, r) for r in self.removals if r.rule.breaks and r.kind is not Kind.DIR)

    def largest(self, n: int = 10) -> list[Unit]:
        return sorted(self.units, key=lambda u: u.freed, reverse=True)[:n]


def _tally(pairs: object) -> dict[str, tuple[int, int]]:
    files: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for key, removal in pairs:  # type: ignore[attr-defined]
        if removal.kind is not Kind.DIR:
            files[key] += 1
        sizes[key] += removal.freed
    return {k: (files[k], sizes[k]) for k in sorted(sizes, key=lambda k: (-sizes[k], k))}
