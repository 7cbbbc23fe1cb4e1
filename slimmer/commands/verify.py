"""`slimmer verify ROOT` and `slimmer doctor ROOT`: thin wrappers over `slimmer.verify`."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from slimmer.errors import CheckFailedError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from slimmer.model.apply import ApplyResult, Rewriter
    from slimmer.model.plan import Plan
    from slimmer.progress import Progress
    from slimmer.verify.checks import VerifyCheck

F = TypeVar("F", bound="Callable[..., Any]")


def check_options(func: F) -> F:
    """Options shared by `verify` and `apply --verify`: interpreter, then the user_check_options."""
    func = click.option(
        "--python", "python", metavar="PATH", help="The environment's interpreter (default: ROOT/bin/python3)."
    )(func)
    return user_check_options(func)


def user_check_options(func: F) -> F:
    """Options shared by `verify`, `apply --verify` and `image slim`: user checks, timeout, compile."""
    func = click.option(
        "--check", "snippets", multiple=True, metavar="CODE", help="A Python snippet to run as a check. Repeatable."
    )(func)
    func = click.option(
        "--check-cmd",
        "commands",
        multiple=True,
        metavar="COMMAND",
        help="A shell command to run as a check. Repeatable.",
    )(func)
    func = click.option(
        "--config",
        "config",
        type=click.Path(path_type=Path),
        help="slimmer.toml or pyproject.toml with [tool.slimmer] checks (default: found in the current folder).",
    )(func)
    func = click.option(
        "--check-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=120.0,
        show_default=True,
        metavar="SECONDS",
        help="Per check.",
    )(func)
    return click.option(
        "--no-compile-check", is_flag=True, help="Skip the torch.compile check (implied by --profile runtime)."
    )(func)


def is_runtime(profile: str | None) -> bool:
    """Whether the profile drops run-time compilation (so there is no torch.compile to check)."""
    return (profile or "").lower() == "runtime"


def user_checks(
    snippets: Iterable[str], commands: Iterable[str], config: Path | None, timeout: float
) -> list[VerifyCheck]:
    from slimmer.config_file import find_config
    from slimmer.verify.config import cli_checks, load_checks

    path = config if config is not None else find_config(Path.cwd())
    return load_checks(path) + cli_checks(snippets, commands, timeout)


@click.command("verify")
@click.argument("root", type=click.Path(path_type=str))
@check_options
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--jobs", type=int, default=0, help="Checks run at once (default: up to 4).")
@click.option(
    "--profile",
    metavar="NAME",
    help="The slimming profile the environment was made with: 'runtime' drops run-time compilation, "
    "so the torch.compile check is skipped.",
)
def verify_cmd(
    root: str,
    python: str | None,
    snippets: tuple[str, ...],
    commands: tuple[str, ...],
    config: Path | None,
    check_timeout: float,
    no_compile_check: bool,
    as_json: bool,
    jobs: int,
    profile: str | None,
) -> None:
    """Check that the environment at ROOT still works, with its own interpreter.

    \b
    Imports every top-level module of every installed distribution, loads every Python extension
    module, runs torch / torch_scatter / torch_sparse / torch_cluster / torch_spline_conv / pyg_lib
    ops against plain torch (on CUDA when a GPU is visible), torch.compile, and your own checks.
    Exits 5 if any check fails. Writes nothing into ROOT.
    """
    from slimmer.targets import check_root
    from slimmer.verify.render import render_report, report_to_dict
    from slimmer.verify.runner import verify

    root_path = check_root(root)
    extra = user_checks(snippets, commands, config, check_timeout)
    report = verify(
        root_path,
        python=python,
        compile_check=not (no_compile_check or is_runtime(profile)),
        extra=extra,
        timeout=check_timeout,
        jobs=jobs,
    )
    if as_json:
        click.echo(json.dumps(report_to_dict(report), indent=2))
    else:
        click.echo(render_report(report))
    if not report.ok:
        names = ", ".join(r.check.name for r in report.failed[:5])
        more = f" and {len(report.failed) - 5} more" if len(report.failed) > 5 else ""
        msg = f"{len(report.failed)} check(s) failed: {names}{more}"
        raise CheckFailedError(msg)


@click.command("doctor")
@click.argument("root", type=click.Path(path_type=str), required=False)
@click.option("--python", "python", metavar="PATH", help="The environment's interpreter (default: ROOT/bin/python3).")
@click.option("--cuda", is_flag=True, help="Also check nvcc, for building CUDA extensions.")
@click.option(
    "--log", "log", type=click.Path(path_type=Path), help="A log with an InductorError / CppCompileError to explain."
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor_cmd(root: str | None, python: str | None, cuda: bool, log: Path | None, as_json: bool) -> None:
    """Check what run-time compilation (torch.compile, cpp_extension) needs in ROOT, and how to fix it.

    With --log FILE, name the missing header or compiler in a failed build's log and the fix.
    Exits 5 if something is missing.
    """
    from dataclasses import asdict

    from slimmer.targets import check_root
    from slimmer.verify.doctor import detect_distro, diagnose, diagnose_log
    from slimmer.verify.runner import find_python

    if log is not None:
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            msg = f"--log {log}: cannot read: {exc.strerror or exc}"
            raise UsageError(msg) from None
        root_path = check_root(root) if root is not None else None
        conda = str(root_path) if root_path and (root_path / "conda-meta").is_dir() else None
        found = diagnose_log(text, distro=detect_distro(root_path), conda_prefix=conda)
        if found is None:
            msg = f"{log}: no missing header or compiler found in this log"
            raise UsageError(msg)
        if as_json:
            click.echo(json.dumps(asdict(found), indent=2))
        else:
            click.echo(f"{found.error}: missing {found.missing}")
            if found.looked_in:
                click.echo(f"  looked in: {', '.join(found.looked_in)}")
            click.echo(f"  breaks:    {found.breaks}")
            click.echo(f"  fix:       {found.fix}")
        raise CheckFailedError(f"missing {found.missing}: {found.fix}")
    if root is None:
        msg = "name the environment (ROOT) or a log (--log FILE)"
        raise UsageError(msg)
    root_path = check_root(root)
    findings = diagnose(root_path, find_python(root_path, python), cuda=cuda)
    if as_json:
        click.echo(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        width = max(len(f.need) for f in findings)
        for f in findings:
            click.echo(f"{'ok' if f.ok else 'MISSING':<8} {f.need:<{width}}  {f.where}")
            if not f.ok:
                click.echo(f"{'':<8} {'':<{width}}  breaks: {f.breaks}")
                click.echo(f"{'':<8} {'':<{width}}  fix:    {f.fix}")
    missing = [f for f in findings if not f.ok]
    if missing:
        msg = "; ".join(f"missing {f.need}: {f.fix}" for f in missing)
        raise CheckFailedError(msg)


@dataclass(frozen=True)
class VerifyOptions:
    """What `apply --verify` was asked for: the interpreter, user checks and bounds."""

    python: str | None
    snippets: tuple[str, ...]
    commands: tuple[str, ...]
    config: Path | None
    check_timeout: float
    compile_check: bool
    bisect_seconds: float

    def apply(
        self,
        plan: Plan,
        *,
        commit: bool,
        wait: float,
        rewriters: Sequence[Rewriter] = (),
        progress: Progress | None = None,
    ) -> ApplyResult:
        """Apply `plan` with checks before and after; on a regression, print the culprit and raise."""
        from slimmer.verify.render import render_results
        from slimmer.verify.rollback import apply_verified
        from slimmer.verify.runner import discover, find_python, inventory

        python = find_python(plan.root, self.python)
        extra = user_checks(self.snippets, self.commands, self.config, self.check_timeout)
        checks = discover(
            inventory(python, timeout=self.check_timeout),
            compile_check=self.compile_check,
            extra=extra,
            timeout=self.check_timeout,
        )
        done = apply_verified(
            plan,
            python,
            checks,
            commit=commit,
            wait=wait,
            rewriters=rewriters,
            progress=progress,
            bisect_seconds=self.bisect_seconds,
            on_stage=lambda line: click.echo(f"verify: {line}", err=True),
        )
        if done.already_failing:
            click.echo("Checks that failed before slimming (not blamed on it):", err=True)
            click.echo(render_results(done.already_failing), err=True)
        if not done.broken:
            passed = sum(1 for r in done.after if r.ok)
            click.echo(f"verify: {passed} of {len(done.after)} checks pass after slimming", err=True)
            return done.result
        click.echo("Checks that slimming broke (the run was undone, nothing changed):", err=True)
        click.echo(render_results(done.broken), err=True)
        culprit = done.culprit
        if culprit is None or not culprit.failures:
            msg = "slimming broke the checks above and was undone; the culprit could not be narrowed down"
            raise CheckFailedError(msg)
        how = "this rule line breaks" if len(culprit.lines) == 1 else "these rule lines together break"
        if not culprit.exact and len(culprit.lines) > 1:
            how = "the search narrowed it to these rule lines, which break"
        click.echo(
            f"\nCulprit ({culprit.trials} trials, {culprit.seconds:.0f} s): {how} the checks on their own:", err=True
        )
        for line in culprit.lines:
            click.echo(f"  {line}", err=True)
        click.echo(render_results(culprit.failures), err=True)
        first = culprit.failures[0]
        msg = (
            f"{culprit.lines[0] if len(culprit.lines) == 1 else f'{len(culprit.lines)} rule lines'} "
            f"broke '{first.check.name}' ({first.error}); the run was undone"
        )
        raise CheckFailedError(msg)


def apply_verify_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--verify` and its options to `apply`; the command receives `verify: VerifyOptions | None`."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        verify: bool,
        python: str | None,
        snippets: tuple[str, ...],
        commands: tuple[str, ...],
        config: Path | None,
        check_timeout: float,
        no_compile_check: bool,
        bisect_seconds: float,
        **kwargs: Any,
    ) -> Any:
        # `apply --profile runtime` keeps no run-time compilation.
        compile_check = not (no_compile_check or is_runtime(kwargs.get("profile")))
        options = VerifyOptions(python, snippets, commands, config, check_timeout, compile_check, bisect_seconds)
        return func(*args, verify=options if verify else None, **kwargs)

    wrapper = click.option(
        "--bisect-seconds",
        type=float,
        default=600.0,
        show_default=True,
        metavar="SECONDS",
        help="With --verify: time bound for finding the rule lines that broke a check.",
    )(wrapper)
    wrapper = check_options(wrapper)
    return click.option(
        "--verify",
        is_flag=True,
        help="Run the checks of 'slimmer verify' before and after; if slimming breaks one, undo the run, "
        "name the rule lines that caused it and exit 5.",
    )(wrapper)
