"""`apply --verify`: check before and after the staged changes, undo what broke a check, name the rules.

A check that already fails before slimming is reported, never blamed on it. When a check that
passed fails after the removals are staged, the run is undone, then the culprit is searched
by applying subsets of the plan (grouped by rule file, then by rule line) without committing,
re-running only the checks that broke, and undoing each trial. The search has a time bound;
when it runs out, the narrowest set found so far is reported as such.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from slimmer.apply import apply_plan
from slimmer.verify.checks import CheckResult, Status
from slimmer.verify.runner import run_checks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

    from slimmer.model.apply import ApplyResult, Rewriter
    from slimmer.model.plan import Plan
    from slimmer.progress import Progress
    from slimmer.verify.checks import VerifyCheck

BISECT_SECONDS = 600.0

T = TypeVar("T")


@dataclass(frozen=True)
class Culprit:
    """The rule lines that break the checks, and the failures they cause on their own."""

    lines: tuple[str, ...]  # "file:line 'pattern'", in rule order
    failures: tuple[CheckResult, ...]
    exact: bool  # False: the time bound stopped the search, or only lines together break it
    trials: int
    seconds: float


@dataclass(frozen=True)
class VerifiedApply:
    result: ApplyResult
    before: tuple[CheckResult, ...]
    after: tuple[CheckResult, ...]
    broken: tuple[CheckResult, ...]  # passed before, fail after
    culprit: Culprit | None

    @property
    def already_failing(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.before if r.status is Status.FAIL)


def _candidates(plan: Plan) -> dict[str, str]:
    """{file:line: description} of every rule line that changes something in the plan, in rule order."""
    found: dict[str, tuple[str, int, str]] = {}
    for removal in plan.removals:
        rule = removal.rule
        found[rule.where] = (rule.source, rule.line, f"{rule.where} '{rule.pattern}'")
    for strip in plan.strips:
        if strip.rule is not None and strip.saving:
            rule = strip.rule
            found.setdefault(rule.where, (rule.source, rule.line, f"{rule.where} (strip)"))
    return {k: v[2] for k, v in sorted(found.items(), key=lambda kv: kv[1][:2])}


def _subplan(plan: Plan, chosen: frozenset[str]) -> Plan:
    """The part of `plan` that the `chosen` rule lines decide: a folder goes whole only if every
    path in it is chosen too, else only its chosen paths go."""
    from slimmer.model.plan import Unit
    from slimmer.walk import Kind

    removals = tuple(r for r in plan.removals if r.rule.where in chosen)
    selected = {r.rel for r in removals}
    children: dict[str, list[str]] = defaultdict(list)
    for r in plan.removals:
        children[r.rel.rpartition("/")[0]].append(r.rel)
    whole: set[str] = set()
    for r in reversed(plan.removals):  # children before their folder
        if r.rel in selected and (r.kind is not Kind.DIR or all(c in whole for c in children[r.rel])):
            whole.add(r.rel)
    units = tuple(
        Unit(r.rel, r.kind, r.size, r.freed, r.rule)
        for r in removals
        if r.rel in whole and r.rel.rpartition("/")[0] not in whole
    )
    strips = tuple(d for d in plan.strips if d.rule is not None and d.rule.where in chosen)
    return dataclasses.replace(plan, units=units, removals=removals, strips=strips)


def _narrow(items: list[T], fails: Callable[[list[T]], bool], deadline: float) -> tuple[list[T], bool]:
    """Halve `items` (which fail together) while one half fails on its own: (narrowed, exact)."""
    while len(items) > 1:
        if time.monotonic() > deadline:
            return items, False
        half = len(items) // 2
        first, second = items[:half], items[half:]
        if fails(first):
            items = first
        elif fails(second):
            items = second
        else:
            return items, False  # only lines from both halves together break it
    return items, True


def find_culprit(
    plan: Plan,
    python: Path,
    broken: Sequence[VerifyCheck],
    *,
    wait: float = 0.0,
    rewriters: Sequence[Rewriter] = (),
    seconds: float = BISECT_SECONDS,
    run: Callable[[Sequence[VerifyCheck]], list[CheckResult]] | None = None,
) -> Culprit:
    """The rule lines of `plan` whose changes alone make the `broken` checks fail.

    Each trial applies a subset of the plan without committing, runs only `broken` (with `run`,
    by default in a subprocess of `python`), and undoes.
    """
    run_broken = run or (lambda checks: run_checks(plan.root, python, checks))
    start = time.monotonic()
    deadline = start + seconds
    trials = 0
    failures: dict[frozenset[str], tuple[CheckResult, ...]] = {}
    described = _candidates(plan)

    def fails(lines: Iterable[str]) -> bool:
        nonlocal trials
        chosen = frozenset(lines)
        if chosen in failures:
            return bool(failures[chosen])
        seen: list[CheckResult] = []

        def judge(_: ApplyResult) -> bool:
            seen.extend(r for r in run_broken(broken) if r.status is Status.FAIL)
            return False  # always undo a trial

        trials += 1
        apply_plan(_subplan(plan, chosen), commit=False, wait=wait, before_commit=judge, rewriters=rewriters)
        failures[chosen] = tuple(seen)
        return bool(seen)

    by_file: dict[str, list[str]] = defaultdict(list)
    for where in described:
        by_file[where.rpartition(":")[0]].append(where)
    files, exact = _narrow(list(by_file), lambda names: fails(w for n in names for w in by_file[n]), deadline)
    lines = [w for n in files for w in by_file[n]]
    if exact:
        lines, exact = _narrow(lines, fails, deadline)
    fails(lines)
    return Culprit(
        tuple(described[w] for w in lines), failures[frozenset(lines)], exact, trials, time.monotonic() - start
    )


def apply_verified(
    plan: Plan,
    python: Path,
    checks: Sequence[VerifyCheck],
    *,
    commit: bool = True,
    wait: float = 0.0,
    rewriters: Iterable[Rewriter] = (),
    progress: Progress | None = None,
    bisect_seconds: float = BISECT_SECONDS,
    on_stage: Callable[[str], None] | None = None,
) -> VerifiedApply:
    """Apply `plan` with checks before and after; undo and find the culprit if a passing check broke."""
    say = on_stage or (lambda _: None)
    say(f"checking the environment before slimming ({len(checks)} checks)")
    before = tuple(run_checks(plan.root, python, checks))
    passed = {r.check for r in before if r.status is Status.PASS}
    after: list[CheckResult] = []

    def judge(_: ApplyResult) -> bool:
        say("checking the environment with the removals staged")
        after.extend(run_checks(plan.root, python, checks))
        return not any(r.status is Status.FAIL and r.check in passed for r in after)

    rewriters = tuple(rewriters)
    result = apply_plan(plan, commit=commit, wait=wait, before_commit=judge, rewriters=rewriters, progress=progress)
    broken = tuple(r for r in after if r.status is Status.FAIL and r.check in passed)
    culprit = None
    if broken:
        say(f"{len(broken)} check(s) broke: restored; searching the rule lines that caused it")
        culprit = find_culprit(
            plan, python, [r.check for r in broken], wait=wait, rewriters=rewriters, seconds=bisect_seconds
        )
    return VerifiedApply(result, before, tuple(after), broken, culprit)
