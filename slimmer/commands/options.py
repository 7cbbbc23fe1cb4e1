"""Options and option callbacks shared by commands: ROOT, rules, profile, GPU targets; JSON output."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import click

F = Any


def parse_gpu_arch(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> Any:
    """`--gpu-arch` values as sorted targets (None when not given); a bad value is a usage error."""
    from slimmer.elf.gpuarch import GpuArchError, parse_targets

    try:
        return parse_targets(values) or None
    except GpuArchError as exc:
        raise click.BadParameter(str(exc)) from exc


def rule_options(func: F) -> F:
    func = click.option(
        "--keep",
        "keep",
        multiple=True,
        metavar="PATTERN",
        help="Protect paths matching this gitignore pattern (relative to site-packages or the prefix). Repeatable.",
    )(func)
    return click.option(
        "--rules",
        "rules",
        multiple=True,
        metavar="NAME|PATH",
        help="Rule set: a built-in name (see 'slimmer rules') or a path to a .rules file. "
        "Repeatable; default: 'default'.",
    )(func)


def profile_option(func: F) -> F:
    return click.option(
        "--profile",
        default="default",
        show_default=True,
        metavar="NAME",
        help="What the image does at run time: 'default' keeps what run-time compilation needs "
        "(torch.compile, cpp_extension.load, Python.h); 'runtime' (never compiles) removes that too "
        "and the plan says what stops working.",
    )(func)


def gpu_options(func: F) -> F:
    func = click.option(
        "--no-ptx",
        is_flag=True,
        help="With --gpu-arch: keep no PTX either (no JIT fallback for a GPU newer than the targets).",
    )(func)
    return click.option(
        "--gpu-arch",
        "gpu_arch",
        multiple=True,
        metavar="ARCH",
        callback=parse_gpu_arch,
        help="Prune CUDA device code to the GPUs the image runs on: sm_80, sm_86, sm_90, sm_100, sm_120 ... "
        "Repeatable or comma-separated. Keeps SASS that runs on a target and the newest PTX the newest "
        "target can compile; a library whose code cannot be rewritten safely is left as it is.",
    )(func)


def gpu_pruning(gpu_arch: Any, no_ptx: bool) -> Any:
    """The GpuPruning that --gpu-arch / --no-ptx ask for (None without --gpu-arch)."""
    from slimmer.model.plan import GpuPruning

    if gpu_arch is None:
        if no_ptx:
            raise click.UsageError("--no-ptx needs --gpu-arch")
        return None
    return GpuPruning(tuple(gpu_arch), keep_ptx=not no_ptx)


def emit_json(data: object) -> None:
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
