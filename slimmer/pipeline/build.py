"""`build-and-slim`: devel container -> extensions (wheel first, source fallback) -> slim -> runtime image -> verify.

Drives the engine through `slimmer.pipeline.engine`; returns a `PipelineResult` and prints nothing
itself (the CLI renders it). Base images are never pulled; the devel and runtime bases with Python
are built once and cached by the hash of their inputs.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimmer import proc
from slimmer.errors import BuildError, CommandError, ExtensionUnavailableError
from slimmer.pipeline.engine import (
    Container,
    Mount,
    StepLog,
    build_image,
    connect,
    engine_resources,
    has_gpus,
    image_id,
    image_size,
    max_jobs_for,
    require_image,
    run_once,
    split_tag,
)
from slimmer.pipeline.recipe import TOOL_ENV, apt_install, make_venv, path_with, slim_argv, verify_argv

if TYPE_CHECKING:
    from slimmer.pipeline.config import Extension, PipelineConfig

WHEELHOUSE = "/wheelhouse"
DEVEL_FORMAT = 2  # in the devel image's key: 2 = committed without the VOLUME entries its mounts used to leave
WHEEL_TIMEOUT = 600  # seconds for `pip wheel` of slimmer's own source tree
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


class Method(enum.Enum):
    WHEELHOUSE = "wheelhouse hit"
    WHEEL = "wheel"
    SOURCE = "source build"


@dataclass(frozen=True)
class ExtensionResult:
    name: str
    method: Method
    seconds: float
    wheel: str  # the wheel file installed (or built)
    tried: tuple[str, ...]  # the sources tried before it


@dataclass(frozen=True)
class VerifyResult:
    command: str  # what ran inside the final image
    ok: bool
    output: str


@dataclass(frozen=True)
class PipelineResult:
    tag: str
    extensions: tuple[ExtensionResult, ...]
    sizes: dict[str, int]  # devel, runtime_unslimmed, runtime
    slim_command: str
    slim_output: tuple[str, ...]  # the last lines `slimmer apply` printed in the devel container
    verify: VerifyResult
    seconds: float
    log: Path
    max_jobs: int
    cached: dict[str, bool] = field(default_factory=dict)  # devel/runtime bases reused from an earlier run


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


def _pip_flags(cfg: PipelineConfig) -> str:
    return f"--disable-pip-version-check --timeout {cfg.pip_timeout:g} --retries 0"


def _local_dirs(values: tuple[str, ...]) -> list[str]:
    return [v for v in values if "://" not in v and Path(v).expanduser().is_dir()]


def _find_links_args(cfg: PipelineConfig, sources: tuple[str, ...], local: dict[str, str]) -> str:
    args = []
    for src in sources:
        target = local.get(src, src)
        args.append(
            f"--extra-index-url {shlex.quote(target)}"
            if src in cfg.index_urls
            else f"--find-links {shlex.quote(target)}"
        )
    return " ".join(args)


def _torch_wheels(cfg: PipelineConfig) -> list[str]:
    names = []
    for d in [cfg.wheelhouse, *(Path(p) for p in _local_dirs(cfg.find_links))]:
        if d.is_dir():
            names += sorted(f"{p.name}:{p.stat().st_size}" for p in d.glob("torch-*.whl"))
    return names


def build_slimmer_wheel(dest: Path) -> Path:
    """`pip wheel --no-deps` of this source tree: how slimmer gets into the devel container."""
    tree = Path(__file__).resolve().parents[2]
    if not (tree / "pyproject.toml").is_file():
        raise BuildError(f"slimmer is not installed from a source tree ({tree}); cannot build its wheel")
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(tree)]
    try:
        proc.run(argv, timeout=WHEEL_TIMEOUT)
    except CommandError as exc:
        raise BuildError(f"building slimmer's wheel failed: {' | '.join(exc.tail[-3:]) or exc}") from None
    wheels = sorted(dest.glob("torch_slimmer-*.whl"))
    if not wheels:
        raise BuildError(f"building slimmer's wheel left no torch_slimmer-*.whl in {dest}")
    return wheels[-1]


def run_pipeline(cfg: PipelineConfig, *, stream: Any = None, log_path: Path | None = None) -> PipelineResult:
    client = connect()
    try:
        return _run(client, cfg, stream=stream, log_path=log_path)
    finally:
        client.close()


def _run(client: Any, cfg: PipelineConfig, *, stream: Any, log_path: Path | None) -> PipelineResult:
    start = time.monotonic()
    devel_base = require_image(client, cfg.devel_image, "devel")
    runtime_base = require_image(client, cfg.runtime_image, "runtime")
    cpus, mem = engine_resources(client)
    jobs = cfg.max_jobs or max_jobs_for(cpus, mem)
    gpus = cfg.gpus == "all" or (cfg.gpus == "auto" and has_gpus(client))
    log_path = log_path or cfg.log_dir / f"build-and-slim-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log = StepLog(log_path, stream)
    for d in (cfg.wheelhouse, cfg.ccache_dir, cfg.ccache_dir.parent / "pip-cache"):
        d.mkdir(parents=True, exist_ok=True)

    cert = cfg.pip_cert or os.environ.get("PIP_CERT") or (str(HOST_CA) if HOST_CA.is_file() else "")
    mounts = [
        Mount(str(cfg.wheelhouse), WHEELHOUSE),
        Mount(str(cfg.ccache_dir), "/ccache"),
        Mount(str(cfg.ccache_dir.parent / "pip-cache"), "/root/.cache/pip"),
    ]
    env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "DEBIAN_FRONTEND": "noninteractive"}
    if cert:
        mounts.append(Mount(cert, "/etc/slimmer-ca.pem", read_only=True))
        env["PIP_CERT"] = env["SSL_CERT_FILE"] = "/etc/slimmer-ca.pem"
    local_links: dict[str, str] = {}
    for i, link in enumerate(_local_dirs(cfg.find_links)):
        local_links[link] = f"/find-links/{i}"
        mounts.append(Mount(str(Path(link).expanduser().resolve()), f"/find-links/{i}", read_only=True))
    for ext in cfg.extensions:
        if ext.local:
            mounts.append(Mount(ext.source, f"/src-ro/{ext.name}", read_only=True))
    cached: dict[str, bool] = {}
    try:
        devel = _devel_image(client, cfg, devel_base, log, mounts, env, local_links, cached)
        runtime_base_tag = _runtime_base(client, cfg, runtime_base, log, env, cached)
        with tempfile.TemporaryDirectory(prefix="slimmer-wheel-") as tmp:
            log.step("building slimmer's wheel (pip wheel --no-deps)")
            wheel = build_slimmer_wheel(Path(tmp))
            tool_mounts = [*mounts, Mount(str(wheel.parent), "/slimmer-dist", read_only=True)]
            with Container(client, devel, log, mounts=tool_mounts, environment=env) as box:
                results = tuple(_provide(box, cfg, ext, jobs, local_links) for ext in cfg.extensions)
                box.call(
                    f"{make_venv(cfg.python, TOOL_ENV)} && {TOOL_ENV}/bin/pip install -q "
                    f"{_pip_flags(cfg)} /slimmer-dist/{shlex.quote(wheel.name)}",
                    label="installing slimmer into the devel container",
                )
                repo = split_tag(cfg.tag)[0]
                built = f"{repo}:build-unslimmed"
                box.commit(built)
                slim_cmd = slim_command(cfg)
                box.call(slim_cmd, label=f"slimming {cfg.env_path}: {slim_cmd}")
                slim_output = tuple(line for line in log.tail if line.strip())
                slimmed = f"{repo}:build-slimmed"
                box.commit(slimmed)
        unslimmed_tag = f"{repo}:unslimmed"
        build_image(
            client,
            _runtime_dockerfile(cfg, runtime_base_tag, built),
            unslimmed_tag,
            log,
            label=f"runtime image before slimming ({unslimmed_tag})",
        )
        build_image(
            client,
            _runtime_dockerfile(cfg, runtime_base_tag, slimmed),
            cfg.tag,
            log,
            label=f"runtime image ({cfg.tag})",
        )
        verify = _verify(client, cfg, slimmed, log, gpus=gpus)
    finally:
        log.close()
    sizes = {
        "devel": image_size(client, built),
        "runtime_unslimmed": image_size(client, unslimmed_tag),
        "runtime": image_size(client, cfg.tag),
    }
    if not verify.ok:
        last = (verify.output.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"verify failed inside {cfg.tag}: {last} (full log: {log_path})")
    return PipelineResult(
        tag=cfg.tag,
        extensions=results,
        sizes=sizes,
        slim_command=slim_cmd,
        slim_output=slim_output,
        verify=verify,
        seconds=time.monotonic() - start,
        log=log_path,
        max_jobs=jobs,
        cached=cached,
    )


def _devel_image(
    client: Any,
    cfg: PipelineConfig,
    base_id: str,
    log: StepLog,
    mounts: list[Mount],
    env: dict[str, str],
    local_links: dict[str, str],
    cached: dict[str, bool],
) -> str:
    """Devel base + Python, a venv at env_path and torch; cached as slimmer-devel:<hash of its inputs>."""
    key = _key(
        DEVEL_FORMAT,
        base_id,
        cfg.devel_packages,
        cfg.python,
        cfg.env_path,
        cfg.torch_requirement,
        cfg.torch_index,
        cfg.find_links,
        _torch_wheels(cfg),
    )
    tag = f"slimmer-devel:{key}"
    cached["devel"] = image_id(client, tag) is not None
    if cached["devel"]:
        log.step(f"devel image {tag} (cached)")
        return tag
    sources = f"--find-links {WHEELHOUSE} " + _find_links_args(
        cfg, tuple(local_links) + tuple(s for s in cfg.find_links if s not in local_links), local_links
    )
    if cfg.torch_index:
        sources += f" --index-url {shlex.quote(cfg.torch_index)} --extra-index-url https://pypi.org/simple"
    with Container(client, cfg.devel_image, log, mounts=mounts, environment=env) as box:
        box.call(
            apt_install(cfg.devel_packages), label=f"devel image: apt-get install {shlex.join(cfg.devel_packages)}"
        )
        box.call(
            f"{make_venv(cfg.python, cfg.env_path)} && {shlex.quote(cfg.env_path + '/bin/pip')} install "
            f"{_pip_flags(cfg)} {sources} {shlex.quote(cfg.torch_requirement)} setuptools wheel",
            label=f"devel image: {cfg.torch_requirement} into {cfg.env_path}",
        )
        box.commit(tag, changes=[f"ENV PATH={_env_value(path_with(cfg.env_path))}"])
    return tag


def _runtime_base(
    client: Any, cfg: PipelineConfig, base_id: str, log: StepLog, env: dict[str, str], cached: dict[str, bool]
) -> str:
    """Runtime base + the interpreter only (no compilers); cached as slimmer-runtime-base:<hash>."""
    tag = f"slimmer-runtime-base:{_key(base_id, cfg.runtime_packages)}"
    cached["runtime_base"] = image_id(client, tag) is not None
    if cached["runtime_base"]:
        return tag
    with Container(client, cfg.runtime_image, log, environment=env) as box:
        box.call(
            apt_install(cfg.runtime_packages, clean=True),
            label=f"runtime base: apt-get install {shlex.join(cfg.runtime_packages)}",
        )
        box.commit(tag)
    return tag


def _provide(
    box: Container, cfg: PipelineConfig, ext: Extension, jobs: int, local_links: dict[str, str]
) -> ExtensionResult:
    """Wheelhouse, then a prebuilt wheel from the configured sources, then a source build saved as a wheel."""
    start = time.monotonic()
    pip = shlex.quote(f"{cfg.env_path}/bin/pip")
    flags = _pip_flags(cfg)
    name = shlex.quote(ext.name)
    tried = [f"the wheelhouse {cfg.wheelhouse}"]
    pattern = "^" + "".join(c if c.isalnum() else "[-_.]" for c in ext.name) + "-"
    wheel_of = f"ls {WHEELHOUSE} | grep -i {shlex.quote(pattern)} | sort | tail -n 1"
    # 1. The wheelhouse: earlier source builds and wheels put there by hand.
    code = box.call(
        f"{pip} install -q {flags} --no-index --no-deps --only-binary :all: --find-links {WHEELHOUSE} {name}",
        label=f"{ext.name}: looking in the wheelhouse",
        check=False,
    )
    if code == 0:
        box.call(f"{pip} install -q {flags} --find-links {WHEELHOUSE} {name}", label=f"{ext.name}: dependencies")
        return ExtensionResult(ext.name, Method.WHEELHOUSE, time.monotonic() - start, _first_line(box, wheel_of), ())
    # 2. A prebuilt wheel from the find-links / index URLs (and PyPI), per library.
    if not ext.local:
        sources = cfg.wheel_sources(ext)
        tried.append(", ".join(sources) if sources else "the default index")
        code = box.call(
            f"{pip} install -q {flags} --only-binary {name} --find-links {WHEELHOUSE} "
            f"{_find_links_args(cfg, sources, local_links)} {shlex.quote(ext.source)}",
            label=f"{ext.name}: looking for a prebuilt wheel",
            check=False,
        )
        if code == 0:
            return ExtensionResult(ext.name, Method.WHEEL, time.monotonic() - start, ext.name, tuple(tried))
    # 3. A source build: ninja, no build isolation (torch is already there), ccache, MAX_JOBS by memory.
    source = shlex.quote(f"/tmp/src/{ext.name}") if ext.local else shlex.quote(ext.source)
    copy = (
        f"rm -rf {source} && mkdir -p /tmp/src && cp -a {shlex.quote(f'/src-ro/{ext.name}')} /tmp/src/ && "
        if ext.local
        else ""
    )
    tried.append(f"source ({ext.source})")
    build_env = {
        "MAX_JOBS": str(jobs),
        "CCACHE_DIR": "/ccache",
        "CMAKE_GENERATOR": "Ninja",
        "PATH": f"/usr/lib/ccache:{path_with(cfg.env_path)}",
    }
    if cfg.torch_cuda_arch_list:
        build_env["TORCH_CUDA_ARCH_LIST"] = cfg.torch_cuda_arch_list
    remote = "" if ext.local else f"--no-binary {name} {_find_links_args(cfg, cfg.wheel_sources(ext), local_links)}"
    code = box.call(
        f"{copy}rm -rf /tmp/built && {pip} wheel {flags} --no-deps --no-build-isolation {remote} -w /tmp/built {source}"
        # Write beside, then rename: a killed run never leaves half a wheel in the wheelhouse.
        f' && for w in /tmp/built/*.whl; do cp "$w" {WHEELHOUSE}/.partial-$$ && '
        f'mv {WHEELHOUSE}/.partial-$$ {WHEELHOUSE}/$(basename "$w"); done'
        f" && {pip} install -q {flags} --find-links {WHEELHOUSE} {name}",
        label=f"{ext.name}: source build (MAX_JOBS={jobs}, ninja, ccache)",
        env=build_env,
        check=False,
    )
    if code:
        last = " | ".join(line.strip() for line in list(box.log.tail)[-3:] if line.strip())
        raise ExtensionUnavailableError(
            f"{ext.name}: no wheel and no source build; tried {'; '.join(tried)}: {last}. "
            f"{_how_to_provide(cfg, ext)} (full log: {box.log.path})"
        )
    return ExtensionResult(ext.name, Method.SOURCE, time.monotonic() - start, _first_line(box, wheel_of), tuple(tried))


# Libraries that publish no sdist on PyPI: a source build from the index cannot work.
NO_SDIST = {"pyg_lib": "https://data.pyg.org/whl/"}


def _how_to_provide(cfg: PipelineConfig, ext: Extension) -> str:
    """What the user can do when no source had EXT: one sentence."""
    torch = f"torch {cfg.torch_version}" if cfg.torch_version else "this torch"
    where = (
        f" ({ext.name} publishes no sdist on PyPI; its wheels are listed at {NO_SDIST[ext.name]})"
        if ext.name in NO_SDIST
        else ""
    )
    return (
        f"To provide it: put a {ext.name} wheel built for {torch} and Python in the wheelhouse {cfg.wheelhouse}, "
        f"or pass --find-links DIR_OR_URL or --index-url URL where one is published{where}, "
        f"or a local source folder as --extension PATH"
    )


def _first_line(box: Container, script: str) -> str:
    exec_id = box.client.api.exec_create(box.container.id, ["bash", "-c", script])["Id"]
    out = box.client.api.exec_start(exec_id).decode("utf-8", errors="replace").strip()
    return out.splitlines()[-1] if out else ""


def slim_command(cfg: PipelineConfig) -> str:
    """The shell line that slims the environment in the devel container (`recipe.slim_argv`)."""
    return shlex.join(slim_argv(cfg))


def _env_value(value: str) -> str:
    """VALUE as one word of a Dockerfile `ENV` line (double-quoted, with backslash escapes)."""
    return json.dumps(value)


def _runtime_dockerfile(cfg: PipelineConfig, base: str, source_image: str) -> str:
    env = json.dumps(cfg.env_path)
    return f"FROM {base}\nCOPY --from={source_image} [{env}, {env}]\nENV PATH={_env_value(path_with(cfg.env_path))}\n"


def _verify(client: Any, cfg: PipelineConfig, slimmed: str, log: StepLog, *, gpus: bool) -> VerifyResult:
    """`slimmer verify` in a container of the final image."""
    repo, tag = split_tag(cfg.tag)
    probe = f"{repo}:{tag}-verify"
    # The final image carries only the environment: slimmer rides along in a throwaway layer on top.
    build_image(
        client,
        f"FROM {cfg.tag}\nCOPY --from={slimmed} {TOOL_ENV} {TOOL_ENV}\n",
        probe,
        log,
        label=f"verify image ({probe}, not shipped)",
    )
    try:
        # The runtime image has no C++ compiler by design, and torch.compile's inductor needs one.
        _, compilers = run_once(client, probe, ["sh", "-c", "command -v c++ g++ cc || true"])
        argv = verify_argv(cfg, compile_check=bool(compilers.strip()))
        command = shlex.join(argv)
        log.step(f"verify inside {cfg.tag}: {command}")
        code, output = run_once(client, probe, argv, gpus=gpus)
        for line in output.splitlines():
            log.line(line)
        log.end_step()
    finally:
        client.images.remove(probe, force=True)
    return VerifyResult(command=command, ok=code == 0, output=output)
