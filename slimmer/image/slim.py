"""`slimmer image slim`: the whole job, as one core function that returns what it did.

save (engine) or open (archive) -> scan the layers' headers into the merged view -> find the
Python environments -> copy each into a work folder -> the real plan and apply on each copy (not
committed) -> checks in a container of the input -> new layers, streamed into `docker load` and/or
an archive -> the same checks in a container of the new image -> tag it, or, when a check broke,
remove it, search the culprit rule lines with the copy mounted over the environment, and fail.

The input image is never changed. The work folder (the saved archive, the environment copies,
one layer being rewritten) is removed at the end, whatever happens; so is an image loaded but not
tagged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from slimmer.errors import CheckFailedError, DiskSpaceError, ImageMissingError, SlimmerError, UsageError
from slimmer.image.archive import CHUNK, SavedImage, archive_stream, config_blob, open_archive, write_archive
from slimmer.image.merged import find_envs, materialise, scan
from slimmer.image.relayer import LayerChange, rewrite_layer
from slimmer.pipeline.engine import split_tag
from slimmer.progress import Progress
from slimmer.report import size
from slimmer.verify.checks import Status

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from slimmer.elf.pool import WorkerPool
    from slimmer.image.merged import EnvCopy, MergedTree, PythonEnv
    from slimmer.model.apply import ApplyResult
    from slimmer.model.plan import GpuPruning, Plan
    from slimmer.verify.checks import CheckResult, VerifyCheck


@dataclass(frozen=True)
class SlimRequest:
    image: str | None = None  # on the engine
    from_archive: Path | None = None
    tag: str | None = None
    to_archive: Path | None = None
    rules: tuple[str, ...] = ("default",)
    keep: tuple[str, ...] = ()
    profile: str = "default"
    gpu: GpuPruning | None = None
    envs: tuple[str, ...] = ()
    checks: tuple[VerifyCheck, ...] = ()
    compile_check: bool = True
    verify: bool = True
    check_timeout: float = 120.0
    pushed_size: bool = True
    work_dir: Path | None = None
    min_gain: int = 16 << 20  # hidden copies alone rewrite a layer only from this many bytes


@dataclass
class EnvOutcome:
    env: PythonEnv
    plan: Plan
    result: ApplyResult
    before: tuple[CheckResult, ...] = ()
    after: tuple[CheckResult, ...] = ()
    culprit: Any = None  # rollback.Culprit

    @property
    def broken(self) -> tuple[CheckResult, ...]:
        passed = {r.check for r in self.before if r.status is Status.PASS}
        return tuple(r for r in self.after if r.status is Status.FAIL and r.check in passed)


@dataclass
class ImageSlimResult:
    source: str
    source_id: str
    tag: str | None
    archive: Path | None
    image_id: str = ""
    layers: list[LayerChange] = field(default_factory=list)
    envs: list[EnvOutcome] = field(default_factory=list)
    verified: str = ""  # how, or why not
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def size_before(self) -> int:
        return sum(layer.size_before for layer in self.layers)

    @property
    def size_after(self) -> int:
        return sum(layer.size_after for layer in self.layers)

    def gzip_total(self, attr: str) -> int | None:
        values = [getattr(layer, attr) for layer in self.layers]
        return None if any(v is None for v in values) else sum(values)


class _Stages:
    def __init__(self, result: ImageSlimResult, say: Callable[[str], None]) -> None:
        self.result = result
        self.say = say

    @contextlib.contextmanager
    def __call__(self, name: str, message: str) -> Iterator[None]:
        self.say(message)
        start = time.monotonic()
        try:
            yield
        finally:
            self.result.stages[name] = self.result.stages.get(name, 0.0) + time.monotonic() - start


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _need_room(work: Path, need: int, what: str) -> None:
    free = _free(work)
    if free < need:
        msg = (
            f"the work folder {work.parent} has {size(free)} free but {what} needs about {size(need)}: "
            "free some space or point --work-dir at a larger disk"
        )
        raise DiskSpaceError(msg)


def _save(client: Any, image: str, work: Path, stage: _Stages) -> tuple[Path, str]:
    from docker.errors import ImageNotFound

    try:
        img = client.images.get(image)
    except ImageNotFound:
        msg = f"image {image!r} is not on the engine: build or pull it first (`docker images` lists what is there)"
        raise ImageMissingError(msg) from None
    _need_room(work, int(img.attrs.get("Size") or 0) * 11 // 10, f"saving {image}")
    path = work / "input.tar"
    with stage("save", f"saving {image} ({size(int(img.attrs.get('Size') or 0))}) from the engine"):
        write_archive(img.save(chunk_size=CHUNK), path)
    return path, str(img.id)


def _gzip_size(fh: IO[bytes]) -> int:
    """Bytes of `fh` as `docker push` sends it (gzip, default level)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    total = 0
    while chunk := fh.read(CHUNK):
        total += len(comp.compress(chunk))
    return total + len(comp.flush())


def _plan_and_apply(copy: EnvCopy, req: SlimRequest, pool: WorkerPool | None) -> tuple[Plan, ApplyResult]:
    from slimmer.apply import apply_plan
    from slimmer.plan import make_plan
    from slimmer.profiles import with_profile
    from slimmer.protect import default_protectors
    from slimmer.rewriters import default_rewriters
    from slimmer.rules import RuleSet

    ruleset = with_profile(RuleSet.load(list(req.rules) or ["default"]), req.profile)
    if req.keep:
        ruleset = ruleset.with_keep(req.keep)
    plan = make_plan(
        copy.local,
        ruleset,
        protectors=default_protectors(),
        progress=Progress.for_terminal("scanning"),
        gpu=req.gpu,
        trial_strips=False,  # applied at once: the real strip is the check
        pool=pool,
    )
    result = apply_plan(
        plan, commit=False, rewriters=default_rewriters(req.gpu, pool), progress=Progress.for_terminal("removing")
    )
    return plan, result


def _layers(
    saved: SavedImage,
    tree: MergedTree,
    copies: Sequence[EnvCopy],
    changes: list[LayerChange],
    scratch: Path,
    req: SlimRequest,
    say: Callable[[str], None],
) -> Iterator[tuple[str, IO[bytes], int]]:
    """(diff id, stream, size) of each new layer, rewritten one at a time into the scratch folder."""
    for index in range(len(saved.layers)):
        change = changes[index]
        with saved.layer(index, scratch) as fh, tempfile.TemporaryFile(dir=scratch, prefix="slimmer-new-") as out:
            if rewrite_layer(fh, change, tree, copies, out, scratch, req.min_gain):
                if req.pushed_size:
                    out.seek(0)
                    change.gzip_after = _gzip_size(out)
                say(
                    f"layer {index}: {size(change.size_before)} -> {size(change.size_after)} "
                    f"({change.hidden[0]} hidden copies, {change.removed[0]} removed, {change.changed[0]} rewritten)"
                )
                out.seek(0)
                yield change.diff_id, out, change.size_after
                continue
        change.size_after, change.diff_id = change.size_before, saved.diff_ids[index]
        outer, raw, stored = saved.layer_raw(index)
        with outer:
            yield change.diff_id, raw, stored


def _new_config(saved: SavedImage, changes: Sequence[LayerChange], note: str) -> dict[str, Any]:
    config = dict(saved.config)
    config["rootfs"] = {**config.get("rootfs", {}), "diff_ids": [c.diff_id for c in changes]}
    history = list(config.get("history") or [])
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    history.append({"created": created, "created_by": note, "comment": "slimmer image slim", "empty_layer": True})
    config["history"] = history
    return config


def _validate(req: SlimRequest) -> Path:
    """The work folder's parent; UsageError for a request that cannot run."""
    if not req.tag and not req.to_archive:
        raise UsageError("say where the slimmed image goes: --tag NEW (the engine) and/or --to-archive FILE")
    if bool(req.image) == bool(req.from_archive):
        raise UsageError("give either IMAGE (on the engine) or --from-archive FILE, not both")
    if req.to_archive is not None and not req.to_archive.parent.is_dir():
        raise UsageError(f"--to-archive {req.to_archive}: its folder does not exist")
    parent = (req.work_dir or Path(tempfile.gettempdir())).expanduser()
    if not parent.is_dir():
        raise UsageError(f"--work-dir {parent}: no such folder")
    return parent


def slim_image(req: SlimRequest, say: Callable[[str], None] = lambda _: None) -> ImageSlimResult:
    """Slim the image `req` names; see the module's docstring."""
    parent = _validate(req)
    work = Path(tempfile.mkdtemp(prefix="slimmer-image-", dir=parent))
    job = _Job(req, work, say)
    try:
        job.run()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            msg = (
                f"the disk under {parent} filled up ({exc.strerror}): free some space or point --work-dir "
                "at a larger disk; nothing was left behind"
            )
            raise DiskSpaceError(msg) from None
        raise
    finally:
        job.cleanup()
    return job.result


class _Job:
    """The steps of one `image slim`, and what must be cleaned up after it."""

    def __init__(self, req: SlimRequest, work: Path, say: Callable[[str], None]) -> None:
        self.req = req
        self.work = work
        self.scratch = work / "scratch"
        self.say = say
        self.result = ImageSlimResult(req.image or str(req.from_archive), "", req.tag, req.to_archive)
        self.stage = _Stages(self.result, say)
        self.client: Any = None
        self.loaded = ""  # an image loaded and not yet tagged: removed on failure
        self.partial: Path | None = None  # the archive, until verified
        self.copies: list[EnvCopy] = []
        self.runners: dict[str, Callable[[str, Path | None], list[CheckResult]]] = {}

    def run(self) -> None:
        req = self.req
        self.scratch.mkdir()
        if req.image or req.tag:
            from slimmer.pipeline.engine import connect

            self.client = connect()
        saved = self._open()
        with self.stage("scan", f"reading the headers of {len(saved.layers)} layers"):
            progress = Progress.for_terminal("layers", len(saved.layers))
            tree = scan(saved, self.scratch, progress)
            progress.done()
        envs = find_envs(tree, req.envs)
        if not envs:
            msg = (
                "found no Python environment in the image (venv, conda prefix, /usr/local site-packages): "
                "name one with --env PATH"
            )
            raise UsageError(msg)
        _need_room(self.work, sum(e.size for e in envs) + 2 * max(saved.sizes), "copying the environments")
        with self.stage("extract", "copying " + ", ".join(f"/{e.path} ({size(e.size)})" for e in envs)):
            progress = Progress.for_terminal("bytes copied", sum(e.size for e in envs))
            self.copies = materialise(saved, tree, envs, self.work, self.scratch, progress)
            progress.done()
        self._plan_and_apply()
        verifying = req.verify and self.client is not None and req.image is not None
        if verifying:
            self.runners = _check_runners(req, tree, envs, self.client)
            with self.stage("verify", "checks in a container of the input image"):
                for outcome in self.result.envs:
                    outcome.before = tuple(self.runners[outcome.env.path](self.result.source_id, None))
        changes = [LayerChange(i, _created_by(saved, i), saved.sizes[i]) for i in range(len(saved.layers))]
        self.result.layers = changes
        self._write(saved, tree, changes, tags=() if verifying or not req.tag else (req.tag,))
        if verifying:
            self._verify_new()
        elif not req.verify:
            self.result.verified = "not verified (--no-verify)"
        else:
            self.result.verified = "not verified: the input is an archive (checks run for an IMAGE on an engine)"
        self._publish()
        if req.pushed_size:
            with self.stage("gzip", "measuring each layer as pushed (gzip)"):
                self._gzip_sizes(saved)

    def _open(self) -> SavedImage:
        if self.req.image:
            path, self.result.source_id = _save(self.client, self.req.image, self.work, self.stage)
            return open_archive(path)
        assert self.req.from_archive is not None
        saved = open_archive(self.req.from_archive)
        self.result.source_id = "sha256:" + saved.config_name.rpartition("/")[2].removesuffix(".json")
        return saved

    def _plan_and_apply(self) -> None:
        from slimmer.elf.pool import shared_pool

        with shared_pool() as pool:
            for copy in self.copies:
                with self.stage("plan", f"planning and applying the rules to /{copy.env.path}"):
                    plan, applied = _plan_and_apply(copy, self.req, pool)
                self.result.envs.append(EnvOutcome(copy.env, plan, applied))

    def _write(self, saved: SavedImage, tree: MergedTree, changes: list[LayerChange], tags: tuple[str, ...]) -> None:
        note = f"slimmer image slim --rules {','.join(self.req.rules)} --profile {self.req.profile}"

        def config() -> dict[str, Any]:
            made = _new_config(saved, changes, note)
            self.result.image_id = config_blob(made)[1]
            return made

        def stream() -> Iterator[bytes]:
            layers = _layers(saved, tree, self.copies, changes, self.scratch, self.req, self.say)
            yield from archive_stream(layers, config, tags)

        with self.stage("rewrite", "writing the new layers"):
            target = self.req.to_archive
            if target is not None:
                self.partial = target.with_name(f".{target.name}.unverified")
                write_archive(stream(), self.partial)
            if self.client is not None and self.req.tag:
                chunks = _file_chunks(self.partial) if self.partial is not None else stream()
                self.loaded = _load(self.client, chunks)

    def _verify_new(self) -> None:
        with self.stage("verify", "checks in a container of the new image"):
            for outcome in self.result.envs:
                outcome.after = tuple(self.runners[outcome.env.path](self.loaded, None))
        broken = [o for o in self.result.envs if o.broken]
        total = sum(len(o.after) for o in self.result.envs)
        if not broken:
            self.result.verified = f"{total} checks passed in a container of the new image as in the input"
            return
        for outcome in broken:
            self._blame(outcome)
        names = "; ".join(_broken_line(o) for o in broken)
        self.result.verified = f"FAILED: {names}"
        raise ImageCheckFailed(self.result, f"the slimmed image was not kept: {names}")

    def _blame(self, outcome: EnvOutcome) -> None:
        """Undo the copy, then search the rule lines that break its checks: subsets of the plan
        are tried with the copy mounted over the environment in a container of the input."""
        from slimmer.apply import undo
        from slimmer.rewriters import default_rewriters
        from slimmer.verify.rollback import find_culprit

        copy = next(c for c in self.copies if c.env.path == outcome.env.path)
        run = self.runners[copy.env.path]

        def run_broken(checks: Sequence[VerifyCheck]) -> list[CheckResult]:
            wanted = set(checks)
            return [r for r in run(self.result.source_id, copy.local) if r.check in wanted]

        with self.stage("blame", f"searching the rule lines that break /{copy.env.path}"):
            undo(copy.local)
            outcome.culprit = find_culprit(
                outcome.plan,
                copy.local,
                [r.check for r in outcome.broken],
                rewriters=default_rewriters(self.req.gpu),
                run=run_broken,
            )

    def _publish(self) -> None:
        if self.partial is not None and self.req.to_archive is not None:
            os.replace(self.partial, self.req.to_archive)
            self.partial = None
        if self.loaded and self.req.tag:
            self.client.images.get(self.loaded).tag(*split_tag(self.req.tag))
            self.result.image_id = self.loaded
            self.loaded = ""

    def _gzip_sizes(self, saved: SavedImage) -> None:
        """Each input layer gzipped (a rewritten layer's new size was measured as it was written), on
        one thread per core, largest first: zlib and the reads release the GIL, each thread opens the
        archive on its own, and memory stays at one chunk per thread."""

        def measure(change: LayerChange) -> None:
            outer, raw, _ = saved.layer_raw(change.index)
            with outer:
                change.gzip_before = _gzip_size(raw)
            if not change.rewritten:
                change.gzip_after = change.gzip_before

        todo = sorted(self.result.layers, key=lambda c: c.size_before, reverse=True)
        with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as threads:
            list(threads.map(measure, todo))  # re-raises a thread's error here

    def cleanup(self) -> None:
        if self.partial is not None:
            with contextlib.suppress(OSError):
                self.partial.unlink()
        if self.client is not None:
            if self.loaded:
                with contextlib.suppress(Exception):
                    self.client.images.remove(self.loaded, force=True)
            self.client.close()
        shutil.rmtree(self.work, ignore_errors=True)


def _broken_line(outcome: EnvOutcome) -> str:
    checks = ", ".join(r.check.name for r in outcome.broken[:3])
    culprit = outcome.culprit
    if culprit is not None and culprit.lines:
        return f"{checks} broke in /{outcome.env.path}; culprit: {', '.join(culprit.lines)}"
    return f"{checks} broke in /{outcome.env.path}"


class ImageCheckFailed(CheckFailedError):
    """A check that passed in the input image fails in the slimmed one; `result` says which and why."""

    def __init__(self, result: ImageSlimResult, message: str) -> None:
        super().__init__(message)
        self.result = result


def _check_runners(
    req: SlimRequest, tree: MergedTree, envs: Sequence[PythonEnv], client: Any
) -> dict[str, Callable[[str, Path | None], list[CheckResult]]]:
    """Per environment: run(image, mount) -> the results of its checks (listed once, from the
    inventory its interpreter reports in the first container)."""
    from slimmer.image.incontainer import CheckBox, python_of
    from slimmer.pipeline.engine import has_gpus
    from slimmer.verify.runner import discover

    gpus = has_gpus(client)
    compiler = any(tree.get(p) for p in ("usr/bin/c++", "usr/bin/g++", "usr/bin/cc", "usr/bin/gcc"))
    largest = max(envs, key=lambda e: e.size).path
    listed: dict[str, list[VerifyCheck]] = {}
    runners: dict[str, Callable[[str, Path | None], list[CheckResult]]] = {}
    for env in envs:
        python = python_of(lambda p: tree.get(p) is not None, env.path)

        def run(image: str, mount: Path | None, env: PythonEnv = env, python: str = python) -> list[CheckResult]:
            with CheckBox(client, image, env.path, python, mount=mount, gpus=gpus) as box:
                if env.path not in listed:
                    listed[env.path] = discover(
                        box.inventory(),
                        compile_check=req.compile_check and compiler and req.profile != "runtime",
                        extra=req.checks if env.path == largest else (),
                        timeout=req.check_timeout,
                    )
                return box.run(listed[env.path])

        runners[env.path] = run
    return runners


def _created_by(saved: SavedImage, index: int) -> str:
    history = [h for h in saved.config.get("history") or [] if not h.get("empty_layer")]
    return str(history[index].get("created_by", "")) if index < len(history) else ""


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _load(client: Any, chunks: Iterator[bytes]) -> str:
    from docker.errors import DockerException

    try:
        images = client.images.load(chunks)
    except DockerException as exc:
        raise SlimmerError(f"docker load of the slimmed image failed: {' '.join(str(exc).split())[:300]}") from None
    if not images:
        raise SlimmerError("docker load of the slimmed image reported no image")
    return str(images[0].id)


__all__ = ["DiskSpaceError", "ImageCheckFailed", "ImageSlimResult", "SlimRequest", "slim_image"]
