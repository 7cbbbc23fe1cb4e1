"""`--gpu-arch`: which libraries' device code the plan prunes (`plan_prunes`), and the `Pruner`
rewriter that does it in `apply` (after stripping, before RECORD and conda-meta).

Every kept ELF file with a `.nv_fatbin` section is looked at. The plan computes each file's new
layout exactly (`slimmer.elf.prune.layout`, headers only), so its saving is a prediction of the
bytes, and a file that cannot be pruned safely is listed with the reason. Apply lays the file out
again (stripping may have changed it), writes it beside, checks it and hands it to apply, which
stages the original for `undo`.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer.elf import prune
from slimmer.elf.elf64 import ElfFile, ElfFormatError
from slimmer.elf.pool import bounded_map
from slimmer.elf.rewrite import discard, keep_owner, run_jobs, writable
from slimmer.model.plan import GpuPruning, PruneDecision

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    from slimmer.elf.pool import WorkerPool
    from slimmer.model.apply import RewriteInput, RewriteOutcome
    from slimmer.model.plan import PlanContext
    from slimmer.walk import Entry

LAYOUT_COST = 32 << 20  # memory a layout job holds (headers, entry lists), whatever the file size


@dataclass(frozen=True)
class _Job:
    rel: str
    path: str
    size: int
    dist: str
    fatbin: int  # bytes of its .nv_fatbin section


def _has_fatbin(path: str) -> int:
    """Size of the .nv_fatbin section of the ELF file at `path`, 0 if none or not ELF."""
    try:
        with ElfFile(path) as elf:
            sec = elf.section(prune.SECTION)
            return sec.size if sec is not None else 0
    except (ElfFormatError, OSError):
        return 0


def _layout_job(args: tuple[_Job, GpuPruning]) -> PruneDecision:
    job, gpu = args
    try:
        plan = prune.layout(job.path, gpu.targets, gpu.keep_ptx)
    except prune.PruneRefused as exc:
        return PruneDecision(job.rel, job.dist, job.size, 0, str(exc), job.fatbin)
    return PruneDecision(
        job.rel,
        job.dist,
        job.size,
        plan.saving,
        "",
        job.fatbin,
        plan.dropped_by_arch(),
        plan.kept_by_arch(),
        len(plan.choices),
        plan.kept_whole,
        prune.device_code_outside(job.path),
    )


def _eligible(entry: Entry, root: str) -> str:
    """'' if the walked entry may be pruned, else why not."""
    if entry.nlink > 1:
        return f"{entry.nlink} hard links: a new copy would not free the old one"
    if not writable(os.path.join(root, entry.rel), entry.mode):
        return f"not writable (mode {stat.filemode(entry.mode)})"
    return ""


def plan_prunes(ctx: PlanContext, kept_files: Iterable[str], gpu: GpuPruning) -> tuple[PruneDecision, ...]:
    """Decisions for every kept ELF file with a .nv_fatbin section; reads only."""
    from slimmer.elf.analyze import is_elf

    root = os.fspath(ctx.tree.root)
    jobs, decisions = [], []
    for rel in kept_files:
        entry = ctx.by_rel[rel]
        path = os.path.join(root, rel)
        if not is_elf(path):
            continue
        fatbin = _has_fatbin(path)
        if not fatbin:
            continue
        dist = ctx.owners.label(rel)
        why = _eligible(entry, root)
        if why:
            decisions.append(PruneDecision(rel, dist, entry.size, 0, why, fatbin))
            continue
        jobs.append(_Job(rel, path, entry.size, dist, fatbin))
    work = [(j, gpu) for j in jobs]
    for _args, decision in bounded_map(_layout_job, work, cost=lambda _a: LAYOUT_COST, pool=ctx.pool):
        decisions.append(decision)
    return tuple(sorted(decisions, key=lambda d: d.rel))


def dropped_by_arch(decisions: Iterable[PruneDecision]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for d in decisions:
        if d.saving:
            out.update(d.dropped)
    return dict(out.most_common())


@dataclass(frozen=True)
class _PruneJob:
    src: str
    tmp: str
    size: int
    gpu: GpuPruning


def _prune_job(job: _PruneJob) -> str | None:
    """Prune `src` into `tmp` and check it: None, or why not (and `tmp` is deleted)."""
    try:
        st = os.lstat(job.src)
        if not stat.S_ISREG(st.st_mode):
            return "no longer a regular file"
        plan = prune.layout(job.src, job.gpu.targets, job.gpu.keep_ptx)
        prune.write(plan, job.tmp)
        why = prune.check(plan, job.tmp, dlopen=False)  # the load check runs in `_settle_prune`
        if why is None:
            keep_owner(job.tmp, st)
            return None
    except prune.PruneRefused as exc:
        why = str(exc)
    except OSError as exc:
        why = f"cannot write the pruned copy: {exc.strerror or exc}"
    discard(job.tmp)
    return why


def _settle_prune(job: _PruneJob) -> str | None:
    """The pruned copy must load as the original does (`prune.check_dlopen`). It runs in the caller,
    one library at a time after every other check: loading maps the library's dependencies and
    runs their constructors, some 400 MB for torch's small `libtorch_cuda_linalg.so` (it loads
    libtorch_cuda and libtorch_cpu), which its file size, the pool's measure, does not bound."""
    why = prune.check_dlopen(job.src, job.tmp)
    if why is not None:
        discard(job.tmp)
    return why


class Pruner:
    """The `Rewriter` that prunes device code of the libraries the plan says to prune."""

    name = "prune"

    def __init__(self, gpu: GpuPruning, *, jobs: int | None = None, pool: WorkerPool | None = None) -> None:
        self.gpu = gpu
        self.jobs = jobs
        self.pool = pool

    def rewrite(self, given: RewriteInput) -> Generator[str, None, RewriteOutcome]:
        from slimmer.targets import file_under

        plan = given.plan
        skipped: list[tuple[str, str]] = []
        work = []
        for d in plan.prunes:
            if not d.saving:
                continue
            src = file_under(plan.root, d.rel)
            if src is None:
                skipped.append((d.rel, "no longer a file under the root"))
                continue
            work.append(_PruneJob(src, os.fspath(given.tmp_for(d.rel)), d.size, self.gpu))
        return (
            yield from run_jobs(
                _prune_job, work, root=plan.root, skipped=skipped, jobs=self.jobs, pool=self.pool, settle=_settle_prune
            )
        )
