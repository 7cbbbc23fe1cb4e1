"""The image row of `make bench`: a one-stage torch image, and three ways to make it smaller.

- one-stage: FROM the debootstrapped base (SLIMMER_DOCKER_BASE), a layer with Debian's python3, its
  headers and g++ (torch.compile compiles C++), then a layer with a venv /opt/venv holding torch 2.13.0
  CPU and torch_scatter: what `RUN apt-get install ...` and `RUN pip install ...` in a one-stage
  Dockerfile make (the wheels are bind-mounted into a container that is committed, so no wheel file
  ships in a layer). Kept on the engine under a tag keyed by its inputs.
- seed RUN: FROM one-stage, the seed recipe as the final `RUN`, as users write it.
- multi-stage apply: one-stage as the build stage, `slimmer apply --rules default /opt/venv` as its
  last RUN (slimmer's wheel from this tree), the venv copied into a stage FROM the same python3 layer:
  what the README's "In a Dockerfile" asks for.
- image slim: `slimmer image slim ONE-STAGE --tag ... --rules default`, its own checks included.

For each: size as docker counts it (the layers uncompressed), as pushed (each layer gzipped at the
default level, as `docker push` sends it), layers shared with one-stage, time (the build of the slimming
step with its cache busted, or the `image slim` command, with the peak memory of its process tree),
and the smoke checks, each in a new container of the image. Variant images are removed at the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.measure import Check, check_result, say, timed_run

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

ENV = "/opt/venv"
IMAGE_VARIANTS = ("one-stage", "seed RUN", "multi-stage apply", "image slim")
REPO = "slimmer-bench"
CHUNK = 1 << 20
CHECK_TIMEOUT = 900
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

APT = """FROM {base}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
    python3 python3-venv python3-dev g++ && rm -rf /var/lib/apt/lists/*
"""
PIP = (
    f"python3 -m venv {ENV} && PIP_CERT=/ca.pem {ENV}/bin/pip install -q --no-cache-dir "
    "--find-links /wheels/torch --find-links /wheels/scatter torch==2.13.0 torch_scatter"
)
LABEL = "slimmer-bench"  # on the images of the variants and their build stage: removed at the end
SEED = """FROM {one_stage}
LABEL {label}=1
COPY seed_recipe.sh /tmp/seed_recipe.sh
RUN : {nonce} && bash /tmp/seed_recipe.sh {env} && rm /tmp/seed_recipe.sh
"""
MULTI = """FROM {one_stage} AS build
LABEL {label}=1
COPY {wheel} ca.pem /tmp/slimmer/
RUN python3 -m venv /tmp/slimmer/venv && PIP_CERT=/tmp/slimmer/ca.pem /tmp/slimmer/venv/bin/pip install -q \\
    --no-cache-dir /tmp/slimmer/{wheel}
RUN : {nonce} && /tmp/slimmer/venv/bin/slimmer apply --rules default {env}

FROM {apt}
LABEL {label}=1
COPY --from=build {env} {env}
"""


@dataclass
class ImageRun:
    wall_s: float
    tree_peak_kb: int = 0
    returncode: int = 0


@dataclass
class ImageResult:
    variant: str
    how: str  # the Dockerfile step or command that makes it
    tag: str = ""
    size: int = 0  # docker's Size: the layers uncompressed
    gzip: int = 0  # the layers gzipped (default level), as pushed
    layers: int = 0
    shared: int = 0  # bytes (gzip) of layers it shares with one-stage: pushed and pulled once for both
    cached: bool = False  # built earlier and kept: its time was not measured in this run
    runs: list[ImageRun] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)
    error: str = ""


@dataclass
class ImageBench:
    base: str
    skipped: str = ""
    checks: list[str] = field(default_factory=list)
    results: list[ImageResult] = field(default_factory=list)


class _Chunks(io.RawIOBase):
    """A readable stream over an iterator of bytes (what `docker save` yields)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


_BLOB = re.compile(r"(?:^|/)blobs/sha256/([0-9a-f]{64})$")


def gzip_sizes(client: Any, tag: str, known: dict[str, int], names: dict[str, str] | None = None) -> None:
    """Add to KNOWN (diff id: gzip bytes) every layer of TAG not in it, streaming `docker save`: a layer
    is never held in memory. A layer already measured is skipped by its name in the archive: an OCI
    blob is named by its digest; a legacy `<id>/layer.tar` by NAMES (archive name: diff id), which
    this call fills in for the next."""
    names = {} if names is None else names
    stream = io.BufferedReader(_Chunks(client.images.get(tag).save(named=False, chunk_size=CHUNK)), CHUNK)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile() or member.size < 1024:
                continue
            blob = _BLOB.search(member.name)
            if (blob and f"sha256:{blob.group(1)}" in known) or names.get(member.name) in known:
                continue
            fh = tar.extractfile(member)
            if fh is None:
                continue
            digest, comp, total = hashlib.sha256(), zlib.compressobj(6, zlib.DEFLATED, 31), 0
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                total += len(comp.compress(chunk))
            diff_id = f"sha256:{digest.hexdigest()}"
            known[diff_id] = total + len(comp.flush())
            names[member.name] = diff_id


def _diff_ids(client: Any, tag: str) -> list[str]:
    return list(client.images.get(tag).attrs["RootFS"]["Layers"])


def _remove(client: Any, tag: str) -> None:
    from slimmer.pipeline.engine import image_id

    if tag and image_id(client, tag):
        client.images.remove(tag, force=True)


def _smoke(client: Any, tag: str, source: str, arg: str) -> tuple[int, str, str]:
    """`fixtures/smoke.py ARG` (its SOURCE) in a new container of TAG with the environment's python:
    (exit code, stdout, stderr); the container is removed. TimeoutError when it outlasts CHECK_TIMEOUT."""
    container = client.containers.run(tag, [f"{ENV}/bin/python", "-c", source, arg], detach=True)
    try:
        try:
            code = int(container.wait(timeout=CHECK_TIMEOUT)["StatusCode"])
        except Exception as exc:  # the engine's read timed out: the check hangs
            raise TimeoutError from exc
        out = container.logs(stdout=True, stderr=False).decode(errors="replace")
        return code, out, container.logs(stdout=False, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)


def _run_check(client: Any, tag: str, source: str, name: str) -> Check:
    try:
        return check_result(name, *_smoke(client, tag, source, name))
    except TimeoutError:
        return Check("FAIL", CHECK_TIMEOUT, f"timed out after {CHECK_TIMEOUT} s")


def _timed_build(client: Any, dockerfile: str, tag: str, context: Path, log_path: Path) -> float:
    from slimmer.pipeline.engine import StepLog, build_image

    _remove(client, tag)  # the previous run's image: its layers go with it
    log = StepLog(log_path, None)
    start = time.monotonic()
    try:
        build_image(client, dockerfile, tag, log, label=f"bench image {tag}", context=context)
    finally:
        log.close()
    return time.monotonic() - start


class _Bench:
    def __init__(self, client: Any, base: str, slimmer: list[str], seed: Path, work: Path, smoke: Path) -> None:
        self.client, self.base, self.slimmer, self.seed, self.work = client, base, slimmer, seed, work
        self.smoke = smoke.read_text()
        self.gzip: dict[str, int] = {}
        self.names: dict[str, str] = {}

    def one_stage(self, wheels: list[Path]) -> tuple[str, str, ImageResult]:
        """(apt image, one-stage image, its result): built unless the engine has them under their keys."""
        from slimmer.pipeline.engine import Container, Mount, StepLog, build_image, image_id

        apt_file = APT.format(base=self.base)
        key = hashlib.sha256((apt_file + PIP + "".join(f"{w.name}:{w.stat().st_size}" for w in wheels)).encode())
        apt, one = f"{REPO}:apt-{key.hexdigest()[:12]}", f"{REPO}:one-stage-{key.hexdigest()[:12]}"
        result = ImageResult(
            "one-stage", "RUN apt-get install python3 python3-dev g++; RUN pip install torch torch_scatter", tag=one
        )
        if image_id(self.client, apt) and image_id(self.client, one):
            result.cached = True
            return apt, one, result
        log = StepLog(self.work / "one-stage.log", None)
        start = time.monotonic()
        try:
            build_image(self.client, apt_file, apt, log, label=f"bench image {apt}")
            mounts = [
                Mount(str(w.parent), f"/wheels/{kind}", read_only=True) for kind, w in zip(("torch", "scatter"), wheels)
            ]
            mounts.append(Mount(str(HOST_CA), "/ca.pem", read_only=True))
            with Container(self.client, apt, log, mounts=mounts) as box:
                box.call(PIP, label="pip install torch torch_scatter")
                box.commit(one, changes=[])
        finally:
            log.close()
        result.runs.append(ImageRun(time.monotonic() - start))
        return apt, one, result

    def seed_run(self, one: str, result: ImageResult, n: int) -> None:
        context = self.work / "seed-context"
        context.mkdir(exist_ok=True)
        shutil.copy(self.seed, context / "seed_recipe.sh")
        dockerfile = SEED.format(label=LABEL, one_stage=one, nonce=f"{time.time_ns()}-{n}", env=ENV)
        result.runs.append(ImageRun(_timed_build(self.client, dockerfile, result.tag, context, self.work / "seed.log")))

    def multi_stage(self, one: str, apt: str, wheel: Path, result: ImageResult, n: int) -> None:
        context = self.work / "multi-context"
        context.mkdir(exist_ok=True)
        shutil.copy(wheel, context / wheel.name)
        shutil.copy(HOST_CA, context / "ca.pem")
        dockerfile = MULTI.format(
            label=LABEL, one_stage=one, apt=apt, wheel=wheel.name, nonce=f"{time.time_ns()}-{n}", env=ENV
        )
        result.runs.append(
            ImageRun(_timed_build(self.client, dockerfile, result.tag, context, self.work / "multi.log"))
        )

    def image_slim(self, one: str, result: ImageResult) -> None:
        _remove(self.client, result.tag)
        cmd = [*self.slimmer, "image", "slim", one, "--tag", result.tag, "--rules", "default"]
        log = self.work / "image-slim.log"
        timed = timed_run(cmd, log=log, cwd=self.work)
        result.runs.append(ImageRun(timed.wall_s, timed.tree_peak_kb, timed.returncode))
        if timed.returncode:
            result.error = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[-400:]

    def measure(self, result: ImageResult, one: str, checks: list[str]) -> None:
        image = self.client.images.get(result.tag)
        result.size = int(image.attrs["Size"])
        gzip_sizes(self.client, result.tag, self.gzip, self.names)
        ids = _diff_ids(self.client, result.tag)
        shared = set(_diff_ids(self.client, one))
        result.layers = len(ids)
        result.gzip = sum(self.gzip.get(d, 0) for d in ids)
        result.shared = sum(self.gzip.get(d, 0) for d in ids if d in shared) if result.tag != one else 0
        for name in checks:
            result.checks[name] = _run_check(self.client, result.tag, self.smoke, name)
        say(
            f"[image] {result.variant}: {result.size / 1e6:.0f} MB, gzip {result.gzip / 1e6:.0f} MB; "
            + ", ".join(f"{k} {c.status}" for k, c in result.checks.items())
        )


def _inputs(cache: Path) -> tuple[list[Path], str]:
    torch = sorted(Path("/opt/wheels").glob("torch-2.13.0*.whl")) or sorted(
        (cache / "wheels" / "torch-2.13.0").glob("torch-2.13.0*.whl")
    )
    scatter = sorted((cache / "wheels" / "torch-2.13.0").glob("torch_scatter-*.whl"))
    if not torch or not scatter:
        return (
            [],
            f"needs the torch 2.13.0 wheel (/opt/wheels) and torch_scatter's in {cache}/wheels/torch-2.13.0 "
            "(make scatter-env)",
        )
    return [torch[-1], scatter[-1]], ""


def bench_images(
    slimmer: list[str], seed: Path, work: Path, cache: Path, smoke: Path, repeat: int, base: str
) -> ImageBench:
    """The image row; `skipped` says why when the engine, the base image or a wheel is missing."""
    from slimmer.errors import SlimmerError
    from slimmer.pipeline.build import build_slimmer_wheel
    from slimmer.pipeline.engine import connect, require_image

    bench = ImageBench(base=base)
    wheels, why = _inputs(cache)
    if why:
        bench.skipped = why
        return bench
    try:
        client = connect(timeout=CHECK_TIMEOUT)
        require_image(client, base, "bench")
    except SlimmerError as exc:
        bench.skipped = f"{exc} (make docker)"
        return bench
    work.mkdir(parents=True, exist_ok=True)
    run = _Bench(client, base, slimmer, seed, work, smoke)
    variants: list[ImageResult] = []
    try:
        wheel = build_slimmer_wheel(work / "dist")
        apt, one, first = run.one_stage(wheels)
        seed_r = ImageResult("seed RUN", "RUN seed_recipe.sh /opt/venv (final RUN)", tag=f"{REPO}:seed-run")
        multi = ImageResult("multi-stage apply", "RUN slimmer apply --rules default; COPY --from", tag=f"{REPO}:multi")
        slim = ImageResult("image slim", "slimmer image slim ONE-STAGE --rules default", tag=f"{REPO}:image-slim")
        variants = [seed_r, multi, slim]
        bench.results = [first, *variants]
        for n in range(repeat):
            run.seed_run(one, seed_r, n)
            run.multi_stage(one, apt, wheel, multi, n)
            run.image_slim(one, slim)
            say(
                f"[image] run {n + 1}/{repeat}: seed RUN {seed_r.runs[-1].wall_s:.0f} s, multi-stage "
                f"{multi.runs[-1].wall_s:.0f} s, image slim {slim.runs[-1].wall_s:.0f} s "
                f"(exit {slim.runs[-1].returncode})"
            )
        info = run_info(client, one, run.smoke)
        bench.checks = info
        for result in bench.results:
            if result.error:
                continue
            run.measure(result, one, info)
    except SlimmerError as exc:
        bench.skipped = str(exc)
    finally:
        for result in variants:
            _remove(client, result.tag)
        client.images.prune(filters={"dangling": True, "label": LABEL})  # the multi-stage build stages
        client.close()
    return bench


def run_info(client: Any, one: str, source: str) -> list[str]:
    """The smoke checks that apply to the one-stage image's environment."""
    return list(json.loads(_smoke(client, one, source, "--info")[1])["checks"])
