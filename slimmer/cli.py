"""The `slimmer` command: turns arguments into typed values, calls the core, prints the result.

Errors meant for the user (`SlimmerError`) print as one line with their own exit code; an
`OSError` (full disk, read-only file system, ...) prints as one line with the path and what to do,
exit 6; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from slimmer import __version__
from slimmer.commands.options import gpu_options, gpu_pruning, profile_option, rule_options
from slimmer.commands.verify import apply_verify_options
from slimmer.errors import CheckFailedError, SlimmerError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from slimmer.model.plan import Plan

F = Any


def _emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def root_argument(func: F) -> F:
    @functools.wraps(func)
    def named(*args: Any, root: str, **kwargs: Any) -> Any:
        try:
            return func(*args, root=root, **kwargs)
        except OSError as exc:  # a write that failed names no path (ENOSPC in a write): name ROOT
            if not isinstance(exc, BrokenPipeError):
                if exc.filename is None:
                    exc.filename = root
                elif isinstance(exc.filename, str) and not os.path.isabs(exc.filename):
                    # opened relative to a folder descriptor under ROOT: name ROOT, and the name as given
                    exc.filename = f"{root} ({exc.filename})"
            raise

    named = click.option("--force", is_flag=True, help="Allow / or your home folder as ROOT.")(named)
    return click.argument("root", type=click.Path(path_type=str))(named)


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


def _workers(ruleset: Any, gpu: Any = None) -> contextlib.AbstractContextManager[object]:
    """One warm worker pool for the whole command when its rules strip ELF files or it prunes device code."""
    from slimmer.elf.pool import shared_pool
    from slimmer.rules import Action

    strips = any(r.action is Action.STRIP for r in ruleset.rules)
    return shared_pool() if strips or gpu is not None else contextlib.nullcontext()


def _make_plan(root: Path, ruleset: Any, gpu: Any = None, *, trial_strips: bool = True) -> Plan:
    """The plan; `trial_strips=False` when it is applied at once (the real strip is then the check)."""
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
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="slimmer")
def cli() -> None:
    """Slim a Python/PyTorch environment by rules, safely: every change is planned, journaled and undoable.

    \b
    Typical use, as the last RUN of a Dockerfile's build stage:
        slimmer apply --rules default /opt/conda/envs/py
    Look first:    slimmer plan /opt/conda/envs/py
    Ask why:       slimmer explain /opt/conda/envs/py lib/python3.11/site-packages/torch/test
    Change mind:   slimmer apply --no-commit ROOT, then slimmer undo ROOT
    """


@cli.command("plan")
@root_argument
@rule_options
@profile_option
@gpu_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--top", default=10, show_default=True, help="Rows per table.")
@click.option("-v", "--verbose", is_flag=True, help="List every rule line and every kept path.")
def plan_cmd(
    root: str,
    rules: tuple[str, ...],
    keep: tuple[str, ...],
    force: bool,
    as_json: bool,
    top: int,
    verbose: bool,
    profile: str = "default",
    gpu_arch: Any = None,
    no_ptx: bool = False,
) -> None:
    """Show what would be removed from ROOT, per rule file and per distribution. Changes nothing."""
    from slimmer.report import plan_to_dict, render_plan

    gpu = gpu_pruning(gpu_arch, no_ptx)
    root_path, ruleset = _load(root, rules, keep, force, profile)
    with _workers(ruleset, gpu):
        plan = _make_plan(root_path, ruleset, gpu)
    if as_json:
        _emit_json(plan_to_dict(plan, top=top))
    else:
        click.echo(render_plan(plan, top=top, verbose=verbose))


@cli.command("apply")
@root_argument
@rule_options
@profile_option
@gpu_options
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
    root: str,
    rules: tuple[str, ...],
    keep: tuple[str, ...],
    force: bool,
    dry_run: bool,
    no_commit: bool,
    wait: float,
    as_json: bool,
    top: int,
    verify: Any = None,
    profile: str = "default",
    gpu_arch: Any = None,
    no_ptx: bool = False,
) -> None:
    """Remove what the rules select from ROOT: staged first, journaled, then committed."""
    from slimmer.apply import apply_plan
    from slimmer.progress import Progress
    from slimmer.report import apply_to_dict, plan_to_dict, render_apply, render_plan

    gpu = gpu_pruning(gpu_arch, no_ptx)
    root_path, ruleset = _load(root, rules, keep, force, profile)
    with _workers(ruleset, gpu):  # started now: they import LIEF while the plan walks the tree
        if dry_run:
            plan = _make_plan(root_path, ruleset, gpu)
            _emit_json(plan_to_dict(plan, top=top)) if as_json else click.echo(render_plan(plan, top=top))
            return
        from slimmer.journal import root_lock
        from slimmer.rewriters import default_rewriters

        run = apply_plan if verify is None else verify.apply  # --verify: checks before/after, undo on a regression
        with root_lock(root_path, wait=wait, reentrant=True):  # planned under the lock: never a stale plan
            plan = _make_plan(root_path, ruleset, gpu, trial_strips=False)
            result = run(
                plan,
                commit=not no_commit,
                wait=wait,
                rewriters=default_rewriters(gpu),
                progress=Progress.for_terminal("removing"),
            )
    if as_json:
        _emit_json(apply_to_dict(plan, result))
    else:
        click.echo(render_plan(plan, top=top))
        click.echo(render_apply(plan, result))


@cli.command("explain")
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


@cli.command("undo")
@root_argument
@click.option("--wait", type=float, default=0.0, metavar="SECONDS", help="Wait this long for another run on ROOT.")
def undo_cmd(root: str, force: bool, wait: float) -> None:
    """Restore what the last run on ROOT removed, if it has not been committed."""
    from slimmer.apply import undo
    from slimmer.targets import check_root

    notes: list[str] = []
    run_id, restored, problems = undo(check_root(root, force=force), wait=wait, notes=notes)
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    for rel, why in problems:
        click.echo(f"could not restore {rel}: {why}", err=True)
    click.echo(f"Restored {restored} items of run {run_id}.")
    if problems:
        raise SlimmerError(f"{len(problems)} items could not be restored; they are still in the staging folder")


@cli.command("commit")
@root_argument
def commit_cmd(root: str, force: bool) -> None:
    """Make the last run on ROOT final: delete the originals kept for undo."""
    from slimmer.apply import commit
    from slimmer.targets import check_root

    notes: list[str] = []
    run_id = commit(check_root(root, force=force), notes=notes)
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    click.echo(f"Committed run {run_id}.")


@cli.command("rules")
@click.argument("name", required=False)
def rules_cmd(name: str | None) -> None:
    """List the built-in rule sets, or print one (NAME)."""
    from slimmer.rules import builtin_names, resolve_rule_file

    if name:
        click.echo(resolve_rule_file(name).read_text(encoding="utf-8"), nl=False)
        return
    for builtin in builtin_names():
        first = resolve_rule_file(builtin).read_text(encoding="utf-8").splitlines()
        desc = next((ln.split("@description", 1)[1].strip() for ln in first if "@description" in ln), "")
        click.echo(f"{builtin:<16} {desc}")


def main(argv: Sequence[str] | None = None, *, command: click.Command = cli) -> int:  # noqa: PLR0911 - one return per error family: the exit-code table in one place
    """Run the CLI; return the exit code instead of exiting.

    Every error is one line on stderr (`slimmer: error: ...`); with `--json` it is also a JSON
    object on stdout (`{"error": ..., "exit_code": ...}`), so a script that parses stdout gets one."""
    args = list(argv) if argv is not None else sys.argv[1:]
    as_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args

    def fail(message: str, code: int) -> int:
        click.echo(f"slimmer: error: {message}", err=True)
        if as_json:
            click.echo(json.dumps({"error": message, "exit_code": code}))
        return code

    try:
        command.main(args=args, prog_name="slimmer", standalone_mode=False)
    except CheckFailedError as exc:  # the command's own JSON report already says what failed
        click.echo(f"slimmer: error: {exc}", err=True)
        return exc.exit_code
    except SlimmerError as exc:
        return fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        click.echo("slimmer: interrupted", err=True)
        return 130
    except click.exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "slimmer"
        message = " ".join(exc.format_message().split())
        return fail(f"{message} (see '{where} --help')", exc.exit_code)
    except click.exceptions.ClickException as exc:
        return fail(" ".join(exc.format_message().split()), exc.exit_code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("slimmer: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a full disk, a read-only file system, a file where a folder should be
        from slimmer import oserrors

        return fail(oserrors.describe(exc), oserrors.EXIT_CODE)
    return 0


def entrypoint() -> None:
    sys.exit(main(sys.argv[1:]))


# Commands that live in modules of their own (slimmer/commands/); they import lief and docker lazily.
from slimmer.commands.elf import elf_cmd  # noqa: E402
from slimmer.commands.image import image_cmd  # noqa: E402
from slimmer.commands.pipeline import build_and_slim_cmd, dockerfile_cmd  # noqa: E402
from slimmer.commands.verify import doctor_cmd, verify_cmd  # noqa: E402

for _command in (verify_cmd, doctor_cmd, elf_cmd, build_and_slim_cmd, dockerfile_cmd, image_cmd):
    cli.add_command(_command)
