"""`slimmer image IMAGE` (where the bytes of an image's layers go) and `slimmer image slim IMAGE`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from slimmer.commands.options import gpu_options, gpu_pruning, profile_option, rule_options
from slimmer.commands.verify import user_check_options, user_checks


class _ImageGroup(click.Group):
    """`slimmer image IMAGE` still analyses IMAGE: a first argument that is no subcommand means `layers`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["layers", *args]
        return super().parse_args(ctx, args)


@click.group("image", cls=_ImageGroup)
def image_cmd() -> None:
    """Images that are already built: where their bytes go, and slimming them layer by layer.

    \b
    slimmer image IMAGE                      per-layer sizes and the bytes later layers hide
    slimmer image slim IMAGE --tag NEW       slim IMAGE's Python environments into NEW
    slimmer image slim --from-archive in.tar --to-archive out.tar   the same without an engine
    """


@image_cmd.command("layers")
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@click.option("--top", default=5, show_default=True, help="Wasted files listed per layer.")
def layers_cmd(image: str, as_json: bool, top: int) -> None:
    """Per-layer sizes of IMAGE and the bytes wasted by files a later layer deletes or overwrites."""
    from slimmer.pipeline.engine import connect
    from slimmer.pipeline.layers import analyse_image
    from slimmer.pipeline.report import layers_to_dict, render_layers

    client = connect()
    try:
        report = analyse_image(client, image)
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps(layers_to_dict(report), indent=2))
    else:
        click.echo(render_layers(report, top=top))


@image_cmd.command("slim")
@click.argument("image", required=False)
@click.option("--tag", metavar="NEW", help="Load the slimmed image into the engine under this name.")
@click.option(
    "--from-archive",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the image from a `docker save` archive instead of the engine (no engine needed).",
)
@click.option(
    "--to-archive",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the slimmed image as a `docker save` archive (for `docker load`).",
)
@click.option(
    "--env",
    "envs",
    multiple=True,
    metavar="PATH",
    help="An environment in the image to slim (repeatable). Default: every venv, conda prefix and "
    "/usr/local with site-packages found in the image.",
)
@rule_options
@profile_option
@gpu_options
@user_check_options
@click.option("--no-verify", is_flag=True, help="Do not run the checks in containers of the input and the new image.")
@click.option("--no-pushed-size", is_flag=True, help="Skip measuring each layer gzipped (as `docker push` sends it).")
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the work folder goes (default: the temp folder). Needs room for the saved image, "
    "the environments and one layer.",
)
@click.option(
    "--min-gain",
    default="16MiB",
    show_default=True,
    metavar="SIZE",
    help="A layer the rules change nothing in is rewritten only when the copies a later layer hides in it "
    "come to this much: below, it keeps its digest (a base image shared with other images stays shared).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def slim_cmd(
    image: str | None,
    tag: str | None,
    from_archive: Path | None,
    to_archive: Path | None,
    envs: tuple[str, ...],
    rules: tuple[str, ...],
    keep: tuple[str, ...],
    profile: str,
    gpu_arch: Any,
    no_ptx: bool,
    snippets: tuple[str, ...],
    commands: tuple[str, ...],
    config: Path | None,
    check_timeout: float,
    no_compile_check: bool,
    no_verify: bool,
    no_pushed_size: bool,
    work_dir: Path | None,
    min_gain: str,
    as_json: bool,
) -> None:
    """Slim an image that is already built, into a new one; IMAGE itself is never changed.

    \b
    Every Python environment in IMAGE is planned and slimmed with the same rules and protections
    as `slimmer apply`; then new layers are written in which every removed path is dropped from
    every layer that carries it, stripped files replace the visible copy, and copies that a later
    layer hides (a final `RUN rm -rf`, a reinstall, a chmod) are dropped too. Layers that lose
    nothing keep their digest. Before NEW is tagged, slimmer's checks (imports, extensions, ops,
    your --check) run in a container of IMAGE and of NEW; one that broke means NEW is removed,
    the culprit rule is named and the exit code is 5.
    """
    from slimmer.image.slim import SlimRequest, slim_image

    if image is None and from_archive is None:
        raise click.UsageError("name an IMAGE on the engine, or --from-archive FILE")
    gpu = gpu_pruning(gpu_arch, no_ptx)
    request = SlimRequest(
        image=image,
        from_archive=from_archive,
        tag=tag,
        to_archive=to_archive,
        rules=rules or ("default",),
        keep=keep,
        profile=profile,
        gpu=gpu,
        envs=envs,
        checks=tuple(user_checks(snippets, commands, config, check_timeout)),
        compile_check=not no_compile_check,
        verify=not no_verify,
        check_timeout=check_timeout,
        pushed_size=not no_pushed_size,
        work_dir=work_dir,
        min_gain=_size(min_gain),
    )
    from slimmer.image.report import image_slim_to_dict, render_image_slim
    from slimmer.image.slim import ImageCheckFailed

    def say(message: str) -> None:
        click.echo(f"slimmer: {message}", err=True)
        sys.stderr.flush()

    try:
        result = slim_image(request, say)
    except ImageCheckFailed as exc:
        click.echo(json.dumps(image_slim_to_dict(exc.result), indent=2) if as_json else render_image_slim(exc.result))
        raise
    click.echo(json.dumps(image_slim_to_dict(result), indent=2) if as_json else render_image_slim(result))


def _size(text: str) -> int:
    """ "16MiB", "200M", "0", "1.5GiB" as bytes; click.BadParameter otherwise."""
    units = {
        "": 1,
        "b": 1,
        "k": 1 << 10,
        "kb": 1000,
        "kib": 1 << 10,
        "m": 1 << 20,
        "mb": 10**6,
        "mib": 1 << 20,
        "g": 1 << 30,
        "gb": 10**9,
        "gib": 1 << 30,
    }
    number = text.strip().lower().rstrip("bikgm ")
    unit = text.strip().lower()[len(number) :].strip()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if value < 0 or unit not in units:
        raise click.BadParameter(f"{text!r} is not a size such as 16MiB, 200M or 0", param_hint="--min-gain")
    return int(value * units[unit])
