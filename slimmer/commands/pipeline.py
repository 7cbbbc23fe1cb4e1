"""`slimmer build-and-slim`, `slimmer dockerfile` and `slimmer image`: thin CLI over slimmer.pipeline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

F = Any


def config_options(func: F) -> F:
    """One option per pipeline config key; an option given on the command line wins over the file."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="slimmer.toml or pyproject.toml with [tool.slimmer] (default: the one in the current folder).",
        ),
        click.option("--devel-image", help="Base image of the devel stage (default slimmer-base:bookworm)."),
        click.option("--runtime-image", help="Base image of the runtime stage (default slimmer-base:bookworm)."),
        click.option("--tag", help="Name of the final image (default slimmer-runtime:latest)."),
        click.option("--env-path", help="The environment's path inside the image (default /opt/venv)."),
        click.option("--python", help="Interpreter that makes the venv (default python3)."),
        click.option(
            "--devel-package", "devel_packages", multiple=True, help="apt package of the devel stage. Repeatable."
        ),
        click.option(
            "--runtime-package", "runtime_packages", multiple=True, help="apt package of the runtime stage. Repeatable."
        ),
        click.option("--torch-version", help="torch==VERSION (default: what the sources offer)."),
        click.option("--torch-index", help="Index URL for torch, e.g. https://download.pytorch.org/whl/cu130."),
        click.option("--cuda", help="CUDA tag for wheel sources such as data.pyg.org (cpu, cu130, ...)."),
        click.option(
            "--extension",
            "extensions",
            multiple=True,
            help="A pip requirement (torch_scatter) or a local source folder. Repeatable.",
        ),
        click.option("--find-links", "find_links", multiple=True, help="A wheel folder or URL. Repeatable."),
        click.option("--index-url", "index_urls", multiple=True, help="An extra index URL for wheels. Repeatable."),
        click.option("--wheelhouse", help="Folder of wheels: tried first, and every source build is saved there."),
        click.option("--torch-cuda-arch-list", help="TORCH_CUDA_ARCH_LIST for source builds."),
        click.option("--max-jobs", type=int, help="Parallel compile jobs (0: from memory, 3 GiB per job)."),
        click.option("--rules", "rules", multiple=True, help="Rule set for slimming. Repeatable (default: default)."),
        click.option("--profile", help="Slimming profile ('runtime' drops run-time compilation)."),
        click.option(
            "--gpu-arch",
            "gpu_archs",
            multiple=True,
            help="Prune CUDA device code to this GPU architecture (sm_90 ...). Repeatable.",
        ),
        click.option(
            "--check", "checks", multiple=True, help="Python code that must run in the final image. Repeatable."
        ),
        click.option(
            "--compile-check/--no-compile-check",
            "compile_check",
            default=None,
            help="Check torch.compile in the devel stage's verify (default: yes).",
        ),
        click.option("--gpus", type=click.Choice(["auto", "all", "none"]), help="Pass GPUs to verify (default auto)."),
        click.option("--pip-timeout", type=float, help="pip --timeout for each source (default 15)."),
        click.option("--pip-cert", help="CA bundle for pip inside the containers (default: the host's)."),
        click.option("--ccache-dir", help="ccache folder kept between builds."),
        click.option("--log-dir", help="Where the full build logs go."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(config_file: Path | None, overrides: dict[str, Any]) -> Any:
    from slimmer.pipeline.config import load_config

    cfg, _ = load_config(config_file, overrides, cwd=Path.cwd())
    return cfg


@click.command("build-and-slim")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def build_and_slim_cmd(config_file: Path | None, as_json: bool, **overrides: Any) -> None:
    """Build the extensions in a devel container (wheel first, source fallback), slim, ship a runtime image, verify it.

    \b
    Needs a Docker engine (DOCKER_HOST is honoured) and the base images on it; no registry is used.
    Progress goes to stderr, the full log to --log-dir.
    """
    from slimmer.pipeline.build import run_pipeline
    from slimmer.pipeline.report import pipeline_to_dict, render_pipeline

    result = run_pipeline(_config(config_file, overrides), stream=sys.stderr)
    if as_json:
        click.echo(json.dumps(pipeline_to_dict(result), indent=2))
    else:
        click.echo(render_pipeline(result))


@click.command("dockerfile")
@config_options
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here (default: stdout).")
@click.option("--no-cache-mounts", is_flag=True, help="No BuildKit cache mounts (for the classic builder).")
@click.option(
    "--slimmer-requirement",
    default="torch-slimmer",
    show_default=True,
    help="What the devel stage pip-installs to get slimmer (a requirement or a wheel path in the context).",
)
def dockerfile_cmd(
    config_file: Path | None, output: Path | None, no_cache_mounts: bool, slimmer_requirement: str, **overrides: Any
) -> None:
    """Write the multi-stage Dockerfile equivalent to build-and-slim, for `docker build` in your own CI."""
    from slimmer.pipeline.dockerfile import render_dockerfile

    text = render_dockerfile(
        _config(config_file, overrides), cache_mounts=not no_cache_mounts, slimmer_requirement=slimmer_requirement
    )
    if output is None:
        click.echo(text, nl=False)
        return
    partial = output.with_name(output.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(output)
    click.echo(f"wrote {output}", err=True)
