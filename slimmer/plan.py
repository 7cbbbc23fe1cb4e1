"""The plan: which paths under a root go, which rule decided each, and what stays and why.

`make_plan` is pure: it walks the root once, matches rules, asks the protectors what must stay,
and returns data. It never changes the file system; `slimmer.apply` carries a plan out.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from slimmer.dists import Owners
from slimmer.layout import Layout
from slimmer.model.plan import Kept, Plan, PlanContext, Protector, Removal, Unit
from slimmer.mounts import mount_points_under
from slimmer.progress import Progress
from slimmer.walk import Kind, Tree, walk

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from pathlib import Path

    from slimmer.elf.pool import WorkerPool
    from slimmer.elf.prestrip import Prestrips
    from slimmer.elf.strip import Analysis
    from slimmer.model.plan import GpuPruning, PruneDecision, StripDecision
    from slimmer.rules import Rule, RuleSet


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _decide_all(tree: Tree, layout: Layout, rules: RuleSet) -> tuple[dict[str, Rule], dict[str, Rule]]:
    """Entries a removing rule decides, and entries a `!` line decides, keyed by path."""
    removing: dict[str, Rule] = {}
    negated: dict[str, Rule] = {}
    for e in tree.entries:
        suffix = "/" if e.kind is Kind.DIR else ""
        rel_by_base = {b: f"{r}{suffix}" for b, r in layout.relative(e.rel).items() if r}
        if not rel_by_base:
            continue
        rule = rules.decide(rel_by_base)
        if rule is not None:
            (negated if rule.negated else removing)[e.rel] = rule
    return removing, negated


def _kept_by_negation(ctx: PlanContext, removing: dict[str, Rule], negated: dict[str, Rule]) -> list[Kept]:
    """Paths a `!` line keeps although a removing line matched them or a folder above them."""
    removers = ctx.rules.removers()
    kept: list[Kept] = []
    for rel, rule in negated.items():
        entry = ctx.by_rel[rel]
        if entry.kind is Kind.DIR:
            continue
        inside_removed = any(a in removing for a in _ancestors(_parent(rel)))
        rel_by_base = {b: r for b, r in ctx.layout.relative(rel).items() if r}
        if inside_removed or removers.decide(rel_by_base) is not None:
            reason = f"kept by {rule.where} '{rule.pattern}'"
            if rule.breaks:  # a `!` line that says what its paths are for
                reason += f" (without it: {rule.breaks})"
            kept.append(Kept(rel, entry.size, rule, reason))
    return kept


def _ancestors(rel: str) -> list[str]:
    out = []
    while rel:
        out.append(rel)
        rel = _parent(rel)
    return out


def _strip_rules(ctx: PlanContext) -> dict[str, Rule]:
    """{rel: strip rule} of the files that a strip rule selects."""
    from slimmer.rules import Action

    if not any(r.action is Action.STRIP for r in ctx.rules.rules):
        return {}
    strippers = ctx.rules.for_action(Action.STRIP)
    selected: dict[str, Rule] = {}
    for e in ctx.tree.entries:
        if e.kind is not Kind.FILE:
            continue
        rel_by_base = {b: r for b, r in ctx.layout.relative(e.rel).items() if r}
        rule = strippers.decide(rel_by_base) if rel_by_base else None
        if rule is not None and not rule.negated:
            selected[e.rel] = rule
    return selected


def _not_removed(selected: dict[str, Rule], removing: dict[str, Rule]) -> dict[str, Rule]:
    """The files of `selected` that no removal takes (neither them nor a folder above them)."""
    return {rel: where for rel, where in selected.items() if not any(a in removing for a in _ancestors(rel))}


def _start_strip_analysis(
    ctx: PlanContext, selected: dict[str, Rule], *, trial: bool, prestrips: Prestrips | None
) -> Analysis | None:
    """Start reading the ELF files in `selected` in the background (and stripping them into
    `prestrips`); the protectors that run meanwhile only keep more, so the final selection holds
    all of them."""
    if not selected:
        return None
    from slimmer.elf.strip import start_analysis

    return start_analysis(ctx, selected, trial=trial, prestrips=prestrips)


def _plan_strips(
    ctx: PlanContext, selected: dict[str, Rule], early: Analysis | None, *, trial: bool, prestrips: Prestrips | None
) -> tuple[StripDecision, ...]:
    """Decisions for the files that a strip rule selects and no removal takes (reads them with LIEF)."""
    if not selected:
        return ()
    from slimmer.elf.strip import plan_strips

    return tuple(plan_strips(ctx, selected, early, trial=trial, prestrips=prestrips))


def _protect(
    ctx: PlanContext, removing: dict[str, Rule], protectors: tuple[Protector, ...], kept: list[Kept]
) -> dict[str, str]:
    """Step 2: each protector takes what must stay out of `removing` (appended to `kept`); returns
    what the protectors saw read at run time but left to the rule (path -> who reads it)."""
    reads: dict[str, str] = {}
    for protector in protectors:
        for rel, reason in protector.protect(ctx, removing).items():
            rule = removing.pop(rel, None)
            if rule is not None and ctx.by_rel[rel].kind is not Kind.DIR:
                by = getattr(protector, "name", type(protector).__name__)
                kept.append(Kept(rel, ctx.by_rel[rel].size, rule, reason, by))
        reads.update(getattr(protector, "reads", {}))
    return reads


def _keep_ancestors(root: Path, tree: Tree, removing: dict[str, Rule], kept: list[Kept]) -> None:
    """Step 3: a kept path keeps every folder above it. A mount point stays, and so does every folder
    above it: staging would rename a folder with the mounts inside it, and the commit would then
    delete what they hold."""
    for k in list(kept):
        for ancestor in _ancestors(_parent(k.rel)):
            removing.pop(ancestor, None)
    for mount in sorted(set(tree.mounts) | mount_points_under(os.fspath(root))):
        above = [removing[a] for a in _ancestors(mount) if a in removing]
        for ancestor in _ancestors(mount):
            removing.pop(ancestor, None)
        if above:
            kept.append(Kept(mount, 0, above[-1], "another file system (a mount point): never removed", "mount"))


def _whole_folders_only(tree: Tree, removing: dict[str, Rule]) -> None:
    """Step 4: a folder goes whole only if a rule names it and everything inside it goes too."""
    total_children: Counter[str] = Counter(_parent(e.rel) for e in tree.entries)
    gone_children: Counter[str] = Counter()
    for e in reversed(tree.entries):
        if e.rel not in removing:
            continue
        if e.kind is Kind.DIR and gone_children[e.rel] != total_children[e.rel]:
            del removing[e.rel]
            continue
        gone_children[_parent(e.rel)] += 1


def _removals(
    tree: Tree, owners: Owners, removing: dict[str, Rule]
) -> tuple[list[Removal], tuple[Unit, ...], list[str]]:
    """Step 5: what each removal frees (a hard link frees its inode only when every link goes) and
    the units apply renames (a whole folder or a single path); plus the files with links outside."""
    links_inside = tree.links_inside()
    counted: set[tuple[int, int]] = set()
    outside_links: list[str] = []
    removals: list[Removal] = []
    folder_size: defaultdict[str, int] = defaultdict(int)
    folder_freed: defaultdict[str, int] = defaultdict(int)
    removed_links: Counter[tuple[int, int]] = Counter()
    for e in tree.entries:
        if e.rel in removing and e.kind is Kind.FILE and e.nlink > 1:
            removed_links[(e.dev, e.ino)] += 1
    for e in tree.entries:
        rule = removing.get(e.rel)
        if rule is None:
            continue
        freed = e.size
        if e.kind is Kind.FILE and e.nlink > 1:
            key = (e.dev, e.ino)
            all_links_go = links_inside[key] == e.nlink and removed_links[key] == e.nlink
            if links_inside[key] < e.nlink:
                outside_links.append(e.rel)
            freed = e.size if all_links_go and key not in counted else 0
            counted.add(key)
        elif e.kind is Kind.DIR:
            freed = 0
        removals.append(Removal(e.rel, e.kind, e.size, freed, rule, owners.label(e.rel)))
        for ancestor in _ancestors(_parent(e.rel)):
            if ancestor in removing:
                folder_size[ancestor] += e.size
                folder_freed[ancestor] += freed
    units = tuple(
        Unit(
            r.rel,
            r.kind,
            folder_size[r.rel] if r.kind is Kind.DIR else r.size,
            folder_freed[r.rel] if r.kind is Kind.DIR else r.freed,
            r.rule,
        )
        for r in removals
        if _parent(r.rel) not in removing
    )
    return removals, units, outside_links


def _warnings(tree: Tree, layout: Layout, outside_links: list[str]) -> list[str]:
    warnings: list[str] = []
    if not layout.site_packages:
        warnings.append("no site-packages folder found: rules relative to site-packages match nothing")
    for mount in tree.mounts:
        warnings.append(f"{mount}: another file system, not entered")
    for rel, why in tree.unreadable:
        warnings.append(f"{rel or '.'}: cannot read ({why})")
    if outside_links:
        warnings.append(
            f"{len(outside_links)} file(s) have hard links outside the root "
            f"(first: {outside_links[0]}): removing them frees no space"
        )
    return warnings


def _plan_prunes(ctx: PlanContext, removing: dict[str, Rule], gpu: GpuPruning | None) -> tuple[PruneDecision, ...]:
    """Step 7: with --gpu-arch, what pruning device code does to each kept library."""
    if gpu is None:
        return ()
    from slimmer.elf.pruner import plan_prunes

    kept_files = (e.rel for e in ctx.tree.entries if e.kind is Kind.FILE and e.rel not in removing)
    return plan_prunes(ctx, kept_files, gpu)


def workers_for(rules: RuleSet, gpu: GpuPruning | None = None) -> AbstractContextManager[WorkerPool | None]:
    """Warm workers for a whole command (pass them to `make_plan` and the rewriters), when its
    rules strip ELF files or it prunes device code; else no pool (None): nothing reads ELF files."""
    from slimmer.elf.pool import shared_pool
    from slimmer.rules import Action

    if gpu is not None or any(r.action is Action.STRIP for r in rules.rules):
        return shared_pool()
    return contextlib.nullcontext()


def make_plan(
    root: Path,
    rules: RuleSet,
    *,
    protectors: tuple[Protector, ...] = (),
    progress: Progress | None = None,
    gpu: GpuPruning | None = None,
    trial_strips: bool = True,
    pool: WorkerPool | None = None,
    prestrips: Prestrips | None = None,
) -> Plan:
    """Walk `root`, match `rules`, let `protectors` keep what must stay; change nothing.

    `trial_strips=False` (for a plan that is applied at once) leaves the check of a
    patchelf-rewritten file to its real strip instead of stripping a scratch copy first. `pool`:
    warm workers (`workers_for`) that read the ELF files while the protectors run. `prestrips`
    (for a plan that is applied at once, under the root's lock): the workers also strip each file
    that needs it into this scratch folder as soon as they have read it, for apply to use.

    Steps: 1. walk, start analysing the ELF files a strip rule selects (in the background), and
    decide every path by its rules; 2. protectors keep what must stay; 3. kept paths and mount
    points keep the folders above them; 4. folders go only whole; 5. removals, freed bytes and
    units; 6. strip decisions; 7. prune decisions."""
    start = time.monotonic()
    tree = walk(root, progress=progress or Progress.quiet())
    layout = Layout.detect(tree)
    owners = Owners(tree, layout)
    ctx = PlanContext(tree=tree, layout=layout, owners=owners, rules=rules, pool=pool)

    strip_rules = _strip_rules(ctx)
    # Read the ELF files now, while the removing rules and the protectors run: the few that a
    # removal takes later are read in vain, and their outcomes are not used.
    early = _start_strip_analysis(ctx, strip_rules, trial=trial_strips, prestrips=prestrips)
    removing, negated = _decide_all(tree, layout, rules)
    kept = _kept_by_negation(ctx, removing, negated)
    reads = _protect(ctx, removing, protectors, kept)
    _keep_ancestors(root, tree, removing, kept)
    _whole_folders_only(tree, removing)
    removals, units, outside_links = _removals(tree, owners, removing)
    strips = _plan_strips(ctx, _not_removed(strip_rules, removing), early, trial=trial_strips, prestrips=prestrips)
    prunes = _plan_prunes(ctx, removing, gpu)
    return Plan(
        root=root,
        rule_names=rules.names,
        layout=layout,
        removals=tuple(removals),
        units=units,
        kept=tuple(sorted(kept, key=lambda k: k.rel)),
        files_before=sum(1 for e in tree.entries if e.kind is not Kind.DIR),
        bytes_before=tree.total_bytes,
        warnings=tuple(_warnings(tree, layout, outside_links)),
        seconds=time.monotonic() - start,
        strips=strips,
        reads=tuple(sorted((rel, why) for rel, why in reads.items() if rel in removing)),
        gpu=gpu,
        prunes=prunes,
    )
