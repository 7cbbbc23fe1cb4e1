"""`slimmer elf PATH...`: what slimmer reads from each ELF file (and what stripping would save)."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import click

from slimmer.commands.options import parse_gpu_arch

if TYPE_CHECKING:
    from slimmer.model.elf import ElfReport


def _lines(report: ElfReport) -> list[str]:
    from slimmer.report import size

    if report.error:
        return [f"{report.path}  {size(report.size)}  unreadable: {report.error}"]
    state = "stripped" if report.stripped else f"not stripped, strip saves about {size(report.strip_saving)}"
    lines = [f"{report.path}  {report.kind}  {size(report.size)}  {state}"]
    if report.soname:
        lines.append(f"  soname:   {report.soname}")
    if report.needed:
        lines.append(f"  needed:   {', '.join(report.needed)}")
    if report.rpath:
        lines.append(f"  rpath:    {':'.join(report.rpath)}")
    if report.runpath:
        lines.append(f"  runpath:  {':'.join(report.runpath)}")
    if report.build_id:
        lines.append(f"  build-id: {report.build_id}")
    if report.debuglink:
        lines.append(f"  debuglink: {report.debuglink}")
    if report.patchelf_signs:
        lines.append(f"  patchelf: {'; '.join(report.patchelf_signs)}")
    if not report.load_aligned:
        lines.append("  PT_LOAD:  NOT aligned: the loader refuses this file")
    fb = report.fatbin
    if fb is not None:
        sass = " ".join(f"sm_{n}" for n in fb.sass) or "none"
        ptx = " ".join(f"compute_{n}" for n in fb.ptx) or "none"
        lines.append(f"  device code: SASS {sass}; PTX {ptx} ({fb.entries} entries, {size(fb.size)})")
        if fb.by_arch:
            lines.append("  by architecture: " + ", ".join(f"{name} {size(n)}" for name, n in fb.by_arch))
        if fb.error:
            lines.append(f"  device code warning: {fb.error}")
    return lines


def _prune_saving(path: str, targets: Any, keep_ptx: bool) -> tuple[int, str]:
    from slimmer.elf import prune

    try:
        return prune.layout(path, targets, keep_ptx).saving, ""
    except prune.PruneRefused as exc:
        return 0, str(exc)


@click.command("elf")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Worker processes (default: one per core).")
@click.option(
    "--gpu-arch",
    "gpu_arch",
    multiple=True,
    metavar="ARCH",
    callback=parse_gpu_arch,
    help="Also say what 'apply --gpu-arch ARCH' would save in each file with device code (repeatable).",
)
@click.option("--no-ptx", is_flag=True, help="With --gpu-arch: as 'apply --no-ptx'.")
def elf_cmd(paths: tuple[str, ...], as_json: bool, jobs: int | None, gpu_arch: Any, no_ptx: bool) -> None:
    """Analyse the ELF files in PATHS (files or folders): symbols, dependencies, device code. Reads only."""
    from slimmer.elf.analyze import analyse_many, describe, find_elf, is_elf
    from slimmer.report import size

    targets = gpu_arch or ()
    start = time.monotonic()
    named = []
    for given in paths:  # a link named on the command line is the user's choice: follow it, say so
        path = os.path.realpath(given) if os.path.islink(given) else given
        if path != given:
            click.echo(f"{given}: a symbolic link to {path}: analysing {path}", err=True)
        if os.path.isfile(path) and not is_elf(path):
            click.echo(f"{path}: not an ELF file (or not a regular file): skipped", err=True)
        named.append(path)
    reports = analyse_many(find_elf(named), jobs=jobs)
    prunes = {r.path: _prune_saving(r.path, targets, not no_ptx) for r in reports if targets and r.fatbin}
    seconds = time.monotonic() - start
    if as_json:
        files = [describe(r) | ({"gpu_arch_saving": prunes[r.path]} if r.path in prunes else {}) for r in reports]
        click.echo(json.dumps({"files": files, "seconds": round(seconds, 3)}, indent=2))
        return
    for report in reports:
        click.echo("\n".join(_lines(report)))
        if report.path in prunes:
            saving, why = prunes[report.path]
            label = ",".join(str(t) for t in targets)
            click.echo(f"  --gpu-arch {label} saves {size(saving)}" if saving else f"  --gpu-arch {label}: {why}")
    if prunes:
        total = sum(saving for saving, _ in prunes.values())
        click.echo(f"--gpu-arch would save {size(total)} in {sum(1 for s, _ in prunes.values() if s)} files.")
    saving = sum(r.strip_saving for r in reports)
    stripped = sum(1 for r in reports if r.stripped and not r.error)
    cuda = sum(1 for r in reports if r.fatbin)
    click.echo(
        f"{len(reports)} ELF files, {size(sum(r.size for r in reports))}; {stripped} already stripped; "
        f"{cuda} with device code; stripping would save about {size(saving)}. Took {seconds:.2f} s."
    )
