"""Decide which ELF files to strip, and strip them safely (the `Stripper` rewriter).

A file is stripped with binutils (`strip --strip-unneeded --preserve-dates -o TMP FILE`) into a temporary file
beside it, after LIEF's analysis of the original, and the result is checked (`check_output`): same
DT_NEEDED, SONAME, RPATH/RUNPATH, build-id and debuglink, every PT_LOAD still aligned the way the
loader demands, device code byte-for-byte the same as LIEF read it, and the file smaller. Those
are header questions: `slimmer.elf.identity` reads them from both files (a few KB each, plus the
device code's bytes), and LIEF reads the output whole only where that reader does not take it.
Only then does `slimmer.apply` stage the original
(so `slimmer undo` restores it) and rename the new file into place with the original's mode.

Never writes anything but the temporary files it is given (and, when planning, a scratch copy in
the system's temp folder for files that patchelf rewrote).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer import proc
from slimmer.elf.analyze import analyse, is_elf
from slimmer.elf.identity import read_identity, rewrite_problems, strip_problems
from slimmer.elf.pool import bounded_map, release_memory
from slimmer.elf.prestrip import Ready, Refused, Source, scratch_name
from slimmer.elf.rewrite import discard, keep_owner, run_jobs, writable
from slimmer.elf.triage import triage
from slimmer.errors import CommandError
from slimmer.model.elf import ElfReport
from slimmer.model.plan import Skip, StripDecision, Verdict

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    from slimmer.elf.pool import WorkerPool
    from slimmer.elf.prestrip import Prestrips
    from slimmer.model.apply import Digest, RewriteInput, RewriteOutcome
    from slimmer.model.plan import PlanContext
    from slimmer.rules import Rule
    from slimmer.walk import Entry

MIN_SAVING = 1024  # bytes: rewriting a library for less is not worth a new inode
STRIP_TIMEOUT = 600


def strip_tool() -> str | None:
    return shutil.which("strip")


def run_strip(src: str, dest: str) -> str | None:
    """Strip `src` into `dest`; None on success, else strip's message."""
    tool = strip_tool()
    if tool is None:
        return Skip.NO_STRIP_TOOL.value
    try:
        proc.run([tool, "--strip-unneeded", "--preserve-dates", "-o", dest, src], timeout=STRIP_TIMEOUT)
    except CommandError as exc:
        return f"strip failed: {exc.last_line}"
    return None


def check_stripped(before: ElfReport, after: ElfReport | None) -> str | None:
    """Why the stripped file `after` (LIEF's report) may not replace `before`, or None if it may."""
    if after is None or after.error:
        return f"LIEF cannot read it: {after.error if after else 'not ELF'}"
    return strip_problems(
        before, (before, after), after.loads, after.fatbin.digest if after.fatbin else None, after.size
    )


def check_output(src: str, dest: str, before: ElfReport) -> tuple[str | None, int]:
    """Whether strip's output `dest` may replace `src` (LIEF's report `before`): (None, or why not;
    the output's size). Read from the headers of both files (`slimmer.elf.identity`); LIEF reads the
    output only when that reader does not take one of them."""
    original = read_identity(src, fatbin=False)  # its device code: as LIEF read it, in `before`
    after = read_identity(dest) if original is not None else None
    if original is not None and after is not None:
        return rewrite_problems(before, original, after), after.size
    report = analyse(dest)
    return check_stripped(before, report), report.size if report is not None else 0


@dataclass(frozen=True)
class _Job:
    path: str
    size: int
    trial: bool = True  # strip a patchelf-rewritten file into a scratch copy and check it now
    keep_in: str | None = None  # strip a file that needs it into this folder now, and keep it (`Prestrips`)


@dataclass(frozen=True)
class _Outcome:
    report: ElfReport | None
    trial_error: str | None = None
    trial_size: int = 0
    by_headers: bool = False  # settled by the triage of the headers; LIEF did not read the file
    trial_run: bool = False  # a patchelf-rewritten file was stripped into a scratch copy and checked
    early: Ready | Refused | None = None  # the strip made now for apply, kept in `_Job.keep_in`


def _settled_by_headers(path: str) -> _Outcome | None:
    """The outcome when the file's headers alone settle the decision (`slimmer.elf.triage`): it is
    already stripped, strip would save too little to matter, or its file holds data past the ELF.
    The report then carries only what the headers say; nothing reads it further, because only a
    file that is stripped needs LIEF's analysis of record (the check after the strip compares
    with it). None when LIEF must read the file."""
    found = triage(path)
    if found is None or not found.whole:
        return None
    if found.data_beyond:
        return _Outcome(ElfReport(path=path, size=found.size, error=found.beyond_message()), by_headers=True)
    if not found.strippable or found.strip_saving < MIN_SAVING:
        report = ElfReport(
            path=path,
            size=found.size,
            stripped=not found.strippable,
            strip_saving=found.strip_saving,
            sections=found.sections,
        )
        return _Outcome(report, by_headers=True)
    return None


def _analyse_job(job: _Job) -> _Outcome:
    """Analyse one file: its headers first, and LIEF when they do not settle it. One that patchelf
    rewrote is also stripped into a scratch file outside the root and checked like the real strip,
    so the plan knows whether stripping it is safe. With `keep_in` (apply's `Prestrips`), a file
    that needs stripping is stripped now into that folder, checked, and kept for apply."""
    settled = _settled_by_headers(job.path)
    if settled is not None:
        return settled
    report = analyse(job.path)
    if report is None or report.error or report.stripped or report.strip_saving < MIN_SAVING:
        return _Outcome(report)
    if job.keep_in is not None:
        return _Outcome(report, early=_strip_early(job.path, job.keep_in, report))
    if not report.patchelf_signs or not job.trial:
        return _Outcome(report)
    release_memory()  # the parsed original is gone; strip needs about the file size again
    scratch = tempfile.mkdtemp(prefix="slimmer-strip-")
    try:
        dest = os.path.join(scratch, "stripped")
        failure = run_strip(job.path, dest)
        if failure:
            return _Outcome(report, failure)
        why, new_size = check_output(job.path, dest, report)
        return _Outcome(report, why, new_size, trial_run=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _strip_early(path: str, folder: str, before: ElfReport) -> Ready | Refused | None:
    """Strip `path` into `folder` and check it as apply's strip does; None if it cannot be read."""
    try:
        source = Source.of(os.lstat(path))
    except OSError:
        return None
    release_memory()  # the parsed original is gone; strip needs about the file size again
    dest = os.path.join(folder, scratch_name())
    why = run_strip(path, dest)
    if why is None:
        why, _ = check_output(path, dest, before)
    if why is not None:
        discard(dest)
        return Refused(why, source)
    return Ready(os.path.basename(dest), source)


def decide(  # noqa: PLR0911 - one return per Skip reason, in the order they are checked
    entry: Entry,
    outcome: _Outcome,
    *,
    links_inside: int,
    dist: str,
    rule: Rule | None,
) -> StripDecision:
    """The verdict for one file from its walk entry and analysis."""
    report = outcome.report

    def skip(why: Skip, detail: str = "") -> StripDecision:
        return StripDecision(entry.rel, dist, entry.size, Verdict.SKIP, 0, why, detail, rule, report)

    if report is None:
        return skip(Skip.NOT_ELF)
    if report.error:
        return skip(Skip.DAMAGED, report.error)
    if report.stripped:
        return skip(Skip.ALREADY_STRIPPED)
    if report.strip_saving < MIN_SAVING:
        return skip(Skip.SAVES_NOTHING, f"{report.strip_saving} bytes of symbols")
    if entry.nlink > 1 and links_inside < entry.nlink:
        return skip(Skip.LINKS_OUTSIDE, f"{entry.nlink - links_inside} of {entry.nlink} links")
    if entry.nlink > 1:
        # A strip makes a new inode: the other links would keep the old bytes and the disk would
        # hold both versions.
        return skip(Skip.LINKS_INSIDE, f"{entry.nlink} links: stripping one would store a second copy")
    if not writable(report.path, entry.mode):
        return skip(Skip.NOT_WRITABLE, f"mode {stat.filemode(entry.mode)}")
    if report.patchelf_signs and outcome.trial_error:
        return skip(Skip.PATCHELF_CHECK_FAILED, outcome.trial_error)
    if outcome.trial_error:
        return skip(Skip.CHECK_FAILED, outcome.trial_error)
    saving = entry.size - outcome.trial_size if outcome.trial_size else report.strip_saving
    detail = ""
    if report.patchelf_signs:
        checked = "trial strip checked" if outcome.trial_run else "checked after the strip"
        detail = f"patchelf-rewritten, {checked}"
    return StripDecision(entry.rel, dist, entry.size, Verdict.STRIP, saving, None, detail, rule, report)


class Analysis:
    """The analysis of ELF files under `root`, running in the shared worker pool while the caller
    goes on (the plan starts it before its protectors run, on the files a strip rule selects then:
    protectors only keep more, so those stay selected). `outcomes` waits for it to end. With
    `prestrips`, the files in `early` are also stripped as soon as they are analysed (`Prestrips`)."""

    def __init__(
        self,
        root: str,
        sizes: dict[str, int],
        pool: WorkerPool,
        *,
        trial: bool = True,
        prestrips: Prestrips | None = None,
        early: frozenset[str] = frozenset(),
    ) -> None:
        self.pool = pool
        self.prestrips = prestrips
        self.paths = {rel: os.path.join(root, rel) for rel in sizes}
        self._rels = {path: rel for rel, path in self.paths.items()}
        keep_in = prestrips.folder if prestrips is not None else None
        self._jobs = [
            _Job(path, sizes[rel], trial, keep_in if rel in early else None)
            for rel, path in self.paths.items()
            if is_elf(path)
        ]
        self._outcomes: dict[str, _Outcome] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="slimmer-elf-analysis", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for job, outcome in bounded_map(_analyse_job, self._jobs, cost=lambda j: j.size, pool=self.pool):
                self._outcomes[job.path] = outcome
                if self.prestrips is not None and outcome.early is not None:
                    self.prestrips.arrived(self._rels[job.path], outcome.early)
        except BaseException as exc:  # handed to the caller in `outcomes`
            self._error = exc

    def outcomes(self) -> dict[str, _Outcome]:
        """{path: outcome}; raises what the analysis raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._outcomes


def _worth_stripping_early(ctx: PlanContext, rel: str) -> bool:
    """Whether the decision could be to strip `rel`, as far as its walk entry tells (one link, a
    mode that lets apply replace it): only those are stripped early."""
    entry = ctx.by_rel[rel]
    return entry.nlink == 1 and writable(os.path.join(ctx.tree.root, rel), entry.mode)


def start_analysis(
    ctx: PlanContext, rels: Iterable[str], *, trial: bool = True, prestrips: Prestrips | None = None
) -> Analysis | None:
    """Analyse `rels` in the background when a shared worker pool runs (else None: `plan_strips`
    analyses everything itself, as a background thread would only compete with the caller)."""
    if ctx.pool is None:
        return None
    sizes = {rel: ctx.by_rel[rel].size for rel in rels}
    early = frozenset(rel for rel in sizes if prestrips is not None and _worth_stripping_early(ctx, rel))
    return Analysis(os.fspath(ctx.tree.root), sizes, ctx.pool, trial=trial, prestrips=prestrips, early=early)


def plan_strips(
    ctx: PlanContext,
    selected: dict[str, Rule],
    early: Analysis | None = None,
    *,
    trial: bool = True,
    prestrips: Prestrips | None = None,
) -> list[StripDecision]:
    """Decisions for the files `selected` ({rel: the strip rule that selects it}); reads only. `early`
    is an analysis started before (of some of them): only the others are analysed now. `trial`: strip
    each patchelf-rewritten file into a scratch copy and check it now (`slimmer plan`, which must
    predict); without it the check runs on the real strip (`slimmer apply`, which would strip the
    file twice otherwise), and a file that fails it is left as it is then. `prestrips`: strip the
    files analysed here at once too, into its folder (`Prestrips`)."""
    root = os.fspath(ctx.tree.root)
    links = ctx.tree.links_inside()
    outcomes_by_path = early.outcomes() if early is not None else {}
    done = early.paths if early is not None else {}
    jobs = []
    for rel in selected:
        if rel in done:
            continue
        entry = ctx.by_rel[rel]
        path = os.path.join(root, rel)
        if not is_elf(path):
            continue
        keep_in = prestrips.folder if prestrips is not None and _worth_stripping_early(ctx, rel) else None
        jobs.append(_Job(path, entry.size, trial, keep_in))
    for job, outcome in bounded_map(_analyse_job, jobs, cost=lambda j: j.size, pool=ctx.pool):
        outcomes_by_path[job.path] = outcome
        if prestrips is not None and outcome.early is not None:
            prestrips.arrived(os.path.relpath(job.path, root), outcome.early)
    decisions = []
    for rel, rule in selected.items():
        entry = ctx.by_rel[rel]
        outcome = outcomes_by_path.get(os.path.join(root, rel), _Outcome(None))
        key = (entry.dev, entry.ino)
        decisions.append(decide(entry, outcome, links_inside=links.get(key, 1), dist=ctx.owners.label(rel), rule=rule))
    return sorted(decisions, key=lambda d: d.rel)


@dataclass(frozen=True)
class _StripJob:
    src: str
    tmp: str
    size: int
    before: ElfReport


def _strip_job(job: _StripJob) -> str | None:
    """Strip `src` into `tmp` and check it: None, or why not (and `tmp` is deleted)."""
    try:
        st = os.lstat(job.src)
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode) or st.st_size != job.size:
        return "changed since the plan"
    why = run_strip(job.src, job.tmp)
    if why is None:
        why, _ = check_output(job.src, job.tmp, job.before)
        if why is None:
            keep_owner(job.tmp, st)
            return None
    discard(job.tmp)
    return why


class Stripper:
    """The `Rewriter` that strips the files the plan says to strip, in parallel, memory-bounded.
    `prestrips`: the strips made while the plan ran; each one still valid is moved into place
    instead of stripping the file again."""

    name = "strip"

    def __init__(
        self, *, jobs: int | None = None, pool: WorkerPool | None = None, prestrips: Prestrips | None = None
    ) -> None:
        self.jobs = jobs
        self.pool = pool
        self.prestrips = prestrips

    def rewrite(self, given: RewriteInput) -> Generator[str, None, RewriteOutcome]:
        from types import MappingProxyType

        from slimmer.model.apply import RewriteOutcome
        from slimmer.targets import file_under

        plan = given.plan
        skipped: list[tuple[str, str]] = []
        work = []
        digests: dict[str, Digest] = {}
        for d in plan.strips:
            if d.verdict is not Verdict.STRIP or d.report is None:
                continue
            src = file_under(plan.root, d.rel)
            if src is None:
                skipped.append((d.rel, "no longer a file under the root"))
                continue
            refused = self.prestrips.refused(d.rel, src) if self.prestrips is not None else None
            if refused is not None:
                skipped.append((d.rel, refused))
                continue
            tmp = os.fspath(given.tmp_for(d.rel))
            if self.prestrips is not None:
                try:
                    digest = self.prestrips.place(d.rel, src, tmp)
                except (LookupError, OSError):
                    pass  # none made, or stale: stripped now like the others
                else:
                    if digest is not None:
                        digests[d.rel] = digest
                    yield d.rel
                    continue
            work.append(_StripJob(src, tmp, d.size, d.report))
        outcome = yield from run_jobs(_strip_job, work, root=plan.root, skipped=skipped, jobs=self.jobs, pool=self.pool)
        return RewriteOutcome(outcome.skipped, MappingProxyType({**digests, **outcome.digests}))
