"""Option callbacks shared by commands."""

from __future__ import annotations

from typing import Any

import click


def parse_gpu_arch(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> Any:
    """`--gpu-arch` values as sorted targets (None when not given); a bad value is a usage error."""
    from slimmer.elf.gpuarch import GpuArchError, parse_targets

    try:
        return parse_targets(values) or None
    except GpuArchError as exc:
        raise click.BadParameter(str(exc)) from exc
