"""`slimmer plan`, `slimmer apply` and `slimmer explain`: load the rules for ROOT, make the plan,
and show it, carry it out, or say why one path goes or stays."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from slimmer.commands.options import (
    F,
    emit_json,
    gpu_options,
    gpu_pruning,
    profile_option,
    root_argument,
    rule_options,
)
from slimmer.commands.verify import apply_verify_options

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from slimmer.model.plan import GpuPruning, Plan
    from slimmer.rules import RuleSet


def _load(
    root_arg: str, rules: Sequence[str], keep: Sequence[str], force: bool, profile: str = "default"
) -> tuple[Path, Any]:
    from slimmer.profiles import with_profile
    from slimmer.rules import RuleSet
    from slimmer.targets import check_root

    root = check_root(root_arg, force=force)
    ruleset = with_profile(RuleSet.load(list(rules) or ["default"]), profile)
    if keep:
        ruleset = ruleset.with_keep(keep)
    return root, ruleset


@dataclass(frozen=True)
class Target:
    """What `plan` and `apply` slim: ROOT (checked), its rules (profile and --keep applied) and the
    GPU targets device code is pruned to (None: no pruning)."""

    root: Path
    ruleset: RuleSet
    gpu: GpuPruning | None


def target_options(func: F) -> F:
    """ROOT, --force, --rules, --keep, --profile, --gpu-arch and --no-ptx, given to the command as
    one typed `target`."""

    @functools.wraps(func)
    def typed(
        *args: Any,
        root: str,
        rules: tuple[str, ...],
        keep: tuple[str, ...],
        force: bool,
        profile: str = "default",
        gpu_arch: Any = None,
        no_ptx: bool = False,
        **kwargs: Any,
    ) -> Any:
        gpu = gpu_pruning(gpu_arch, no_ptx)
        root_path, ruleset = _load(root, rules, keep, force, profile)
        return func(*args, target=Target(root_path, ruleset, gpu), **kwargs)

    return root_argument(rule_options(profile_option(gpu_options(typed))))


def _make_plan(
    root: Path, ruleset: Any, gpu: Any = None, *, trial_strips: bool = False, pool: Any = None, prestrips: Any = None
) -> Plan:
    """The plan. A patchelf-rewritten library is checked when it is stripped for real; with
    `trial_strips` (plan --check-strips) a scratch copy is stripped and checked now instead.
    `prestrips` (apply): the files to strip are stripped while the plan runs."""
    from slimmer.plan import make_plan
    from slimmer.progress import Progress
    from slimmer.protect import default_protectors

    return make_plan(
        root,
        ruleset,
        protectors=default_protectors(),
        progress=Progress.for_terminal("scanning"),
        gpu=gpu,
        trial_strips=trial_strips,
        pool=pool,
        prestrips=prestrips,
    )


@click.command("plan")
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--top", default=10, show_default=True, help="Rows per table.")
@click.option("-v", "--verbose", is_flag=True, help="List every rule line and every kept path.")
@click.option(
    "--check-strips",
    is_flag=True,
    help="Strip a scratch copy of each library that patchelf rewrote and check it now (slower: a full "
    "strip per library), so the plan says whether apply will strip it. Without it apply checks them "
    "on the real strip and leaves those that fail as they are.",
)
def plan_cmd(target: Target, as_json: bool, top: int, verbose: bool, check_strips: bool) -> None:
    """Show what would be removed from ROOT, per rule file and per distribution. Changes nothing."""
    from slimmer.plan import workers_for
    from slimmer.report import plan_to_dict, render_plan

    with workers_for(target.ruleset, target.gpu) as pool:
        plan = _make_plan(target.root, target.ruleset, target.gpu, trial_strips=check_strips, pool=pool)
    if as_json:
        emit_json(plan_to_dict(plan, top=top))
    else:
        click.echo(render_plan(plan, top=top, verbose=verbose))


@click.command("apply")
@target_options
@click.option("--dry-run", is_flag=True, help="Only print the plan (same as 'slimmer plan').")
@click.option(
    "--no-commit", is_flag=True, help="Stage the removals but keep the originals, so 'slimmer undo' can restore them."
)
@click.option(
    "--wait", type=float, default=0.0, metavar="SECONDS", help="Wait this long for another run on ROOT to finish."
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan and the result as JSON.")
@click.option("--top", default=10, show_default=True, help="Rows per table.")
@apply_verify_options
def apply_cmd(
    target: Target, dry_run: bool, no_commit: bool, wait: float, as_json: bool, top: int, verify: Any = None
) -> None:
    """Remove what the rules select from ROOT: staged first, journaled, then committed."""
    from slimmer.apply import apply_plan
    from slimmer.plan import workers_for
    from slimmer.progress import Progress
    from slimmer.report import apply_to_dict, plan_to_dict, render_apply, render_plan

    root_path, ruleset, gpu = target.root, target.ruleset, target.gpu
    with workers_for(ruleset, gpu) as pool:  # started now: they import LIEF while the plan walks the tree
        if dry_run:
            plan = _make_plan(root_path, ruleset, gpu, pool=pool)
            emit_json(plan_to_dict(plan, top=top)) if as_json else click.echo(render_plan(plan, top=top))
            return
        from slimmer.elf.prestrip import early_strips
        from slimmer.journal import root_lock
        from slimmer.rewriters import default_rewriters

        run = apply_plan if verify is None else verify.apply  # --verify: checks before/after, undo on a regression
        # Planned under the lock: never a stale plan. The files to strip are stripped while it runs.
        with root_lock(root_path, wait=wait, reentrant=True), early_strips(root_path, pool) as prestrips:
            plan = _make_plan(root_path, ruleset, gpu, pool=pool, prestrips=prestrips)
            result = run(
                plan,
                commit=not no_commit,
                wait=wait,
                rewriters=default_rewriters(gpu, pool, prestrips),
                progress=Progress.for_terminal("removing"),
            )
    if as_json:
        emit_json(apply_to_dict(plan, result))
    else:
        click.echo(render_plan(plan, top=top))
        click.echo(render_apply(plan, result))


@click.command("explain")
@root_argument
@click.argument("path")
@rule_options
@profile_option
def explain_cmd(
    root: str, path: str, rules: tuple[str, ...], keep: tuple[str, ...], force: bool, profile: str = "default"
) -> None:
    """Name the rule file and line that decide PATH (absolute, or relative to ROOT)."""
    from slimmer.explain import explain, render
    from slimmer.targets import relative_inside

    root_path, ruleset = _load(root, rules, keep, force, profile)
    rel = relative_inside(root_path, path)
    plan = _make_plan(root_path, ruleset)
    click.echo(render(explain(plan, ruleset, rel)))
