"""Why a path is removed or kept: the rule lines that match it, the one that decides, and what the
plan does with it (a file inside a removed folder goes with the folder). Reads only."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer.errors import UsageError

if TYPE_CHECKING:
    from slimmer.model.plan import Plan
    from slimmer.rules import Decision, Rule, RuleSet


@dataclass(frozen=True)
class Explanation:
    rel: str
    is_dir: bool
    bases: dict[str, str]  # base name -> the path as that base sees it
    decision: Decision  # the rule lines that match the path itself
    removed_by: Rule | None  # the rule the plan removes it by (its own or its folder's)
    folder: str | None  # the folder whose rule removes it, when that is not the path itself
    kept_because: str | None  # a rule would remove it, but it stays: why
    read_by: str | None  # removed although kept code reads it


def explain(plan: Plan, rules: RuleSet, rel: str) -> Explanation:
    """Explain `rel` (relative to the plan's root) as the plan decided it; a UsageError if it does
    not exist under the root."""
    try:
        st = os.lstat(os.path.join(plan.root, rel)) if rel else os.lstat(plan.root)
    except FileNotFoundError:
        msg = f"{rel or '.'}: no such file or folder under {plan.root}: name a path that exists"
        raise UsageError(msg) from None
    is_dir = stat.S_ISDIR(st.st_mode)
    suffix = "/" if is_dir else ""  # as the plan matches it: 'tests/' matches a folder only
    bases = plan.layout.relative(rel)
    decision = rules.explain({b: f"{r}{suffix}" for b, r in bases.items() if r})
    removal = next((r for r in plan.removals if r.rel == rel), None)
    removed_by = removal.rule if removal else None
    folder = None
    if removed_by is not None and removed_by != decision.rule:
        folder = next((a for a in _ancestors(rel) if _decides(plan, rules, a) == removed_by), None)
    kept_because = None
    if removal is None:
        for kept in plan.kept:
            if kept.rel == rel or rel.startswith(kept.rel + "/"):
                kept_because = kept.reason
                break
        else:
            inside = [k for k in plan.kept if k.rel.startswith(rel + "/")] if is_dir else []
            if inside:
                kept_because = f"{len(inside)} paths inside it stay, e.g. {inside[0].rel}: {inside[0].reason}"
    read_by = next((why for read, why in plan.reads if read == rel), None)
    return Explanation(
        rel=rel,
        is_dir=is_dir,
        bases={b.value: r for b, r in bases.items()},
        decision=decision,
        removed_by=removed_by,
        folder=folder,
        kept_because=kept_because,
        read_by=read_by,
    )


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _decides(plan: Plan, rules: RuleSet, folder: str) -> Rule | None:
    return rules.decide({b: f"{r}/" for b, r in plan.layout.relative(folder).items() if r})


def render(ex: Explanation) -> str:
    seen = ", ".join(f"{b}: {r}" for b, r in ex.bases.items()) or "outside every site-packages and prefix"
    name = f"{ex.rel}/" if ex.is_dir and ex.rel else ex.rel or "."
    lines = [f"{name} (as {seen})"]
    lines += [f"  matches {rule}" for rule in ex.decision.matched]
    own = ex.decision.rule
    if ex.removed_by is not None:
        if ex.folder is not None:
            lines.append(f"  removed with its folder {ex.folder}/, by {ex.removed_by}")
        else:
            lines.append(f"  removed by {ex.removed_by}")
    elif own is None:
        lines.append("  no rule matches: kept")
    elif own.negated:
        lines.append(f"  kept by {own}")
    else:
        lines.append(f"  a rule removes it: {own}")
    if ex.kept_because is not None and ex.removed_by is None:
        lines.append(f"  but kept: {ex.kept_because}")
    if ex.read_by is not None:
        lines.append(f"  removed although kept code reads it ({ex.read_by}): --keep it if that code runs")
    return "\n".join(lines)
