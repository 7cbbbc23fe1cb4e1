"""`slimmer build-and-slim` and `slimmer dockerfile` on a real Docker engine (no registry: debootstrapped base).

The devel image (Python, a venv, CPU torch from /opt/wheels) is cached on the engine by the hash of
its inputs, so only the first session pays for the torch install.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from slimmer.cli import main
from slimmer.errors import EngineError, ExtensionUnavailableError, ImageMissingError
from slimmer.pipeline.build import Method, build_slimmer_wheel, run_pipeline
from slimmer.pipeline.config import make_config
from slimmer.pipeline.engine import Container, Mount, StepLog, build_image, run_once
from tests.helpers import REPO

BASE = os.environ.get("SLIMMER_DOCKER_BASE", "slimmer-base:bookworm")
TORCH_WHEELS = Path("/opt/wheels")
TORCH_VERSION = "2.13.0"
EXT = REPO / "fixtures" / "torch_ext_demo"
CHECK = (
    "import torch, slimmer_demo_ext; x = torch.arange(4.0); "
    "assert torch.equal(slimmer_demo_ext.scale_add(x, x, 2.0), 3 * x); print('scale_add ok')"
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not list(TORCH_WHEELS.glob(f"torch-{TORCH_VERSION}*.whl")):
        pytest.fail(f"no torch {TORCH_VERSION} wheel in {TORCH_WHEELS}")
    return tmp_path_factory.mktemp("pipeline")


def _check_passed(table: str) -> bool:
    """The user check's row of the verify table from inside the image says pass."""
    return any(
        line.startswith("python import torch, slimmer_demo_ext") and " pass " in line for line in table.splitlines()
    )


def _config(dirs: Path, tag: str, **extra: object) -> object:
    values = {
        "devel_image": BASE,
        "runtime_image": BASE,
        "tag": tag,
        "torch_version": TORCH_VERSION,
        "find_links": [str(TORCH_WHEELS)],
        "wheelhouse": str(dirs / "wheelhouse"),
        "ccache_dir": str(dirs / "cache" / "ccache"),
        "log_dir": str(dirs / "logs"),
        "extensions": [str(EXT)],
        "checks": [CHECK],
        # torch.compile before and after slimming costs minutes on 2 cores; slimmer verify's own tests cover it
        "compile_check": False,
        **extra,
    }
    return make_config(values, base=dirs)


def test_build_and_slim_end_to_end_then_a_wheelhouse_hit(
    docker_engine: object, pipeline_dirs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = "slimmer-test:e2e"
    first = run_pipeline(_config(pipeline_dirs, tag))
    (ext,) = first.extensions
    assert ext.method is Method.SOURCE and ext.wheel.startswith("slimmer_demo_ext-0.2.0-")
    assert (pipeline_dirs / "wheelhouse" / ext.wheel).is_file()  # saved for the next run
    assert first.verify.ok, first.verify.output
    assert _check_passed(first.verify.output)
    sizes = first.sizes
    assert sizes["runtime"] < sizes["runtime_unslimmed"] < sizes["devel"]
    # The shipped image holds no compiler, and the op runs there without slimmer's help.
    code, out = run_once(docker_engine, tag, ["bash", "-c", "command -v g++ c++ gcc || echo no-compiler"])
    assert out.strip() == "no-compiler", out
    code, out = run_once(docker_engine, tag, ["python", "-c", CHECK])
    assert code == 0 and "scale_add ok" in out, out

    # The second run, through the CLI and a slimmer.toml: the extension's wheel is in the wheelhouse now.
    (pipeline_dirs / "slimmer.toml").write_text(
        f"devel_image = '{BASE}'\nruntime_image = '{BASE}'\ntorch_version = '{TORCH_VERSION}'\n"
        f"find_links = ['{TORCH_WHEELS}']\nwheelhouse = 'wheelhouse'\nextensions = ['{EXT}']\n"
        f"ccache_dir = 'cache/ccache'\nlog_dir = 'logs'\n"
    )
    monkeypatch.chdir(pipeline_dirs)
    assert main(["build-and-slim", "--tag", tag, "--check", CHECK, "--no-compile-check", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    (ext2,) = second["extensions"]
    assert (ext2["name"], ext2["method"], ext2["wheel"]) == ("slimmer_demo_ext", "wheelhouse hit", ext.wheel)
    assert ext2["seconds"] < ext.seconds
    assert second["cached"] == {"devel": True, "runtime_base": True}
    assert second["verify"]["ok"] and _check_passed(second["verify"]["output"])
    assert second["sizes"]["runtime"] < second["sizes"]["runtime_unslimmed"]
    assert Path(second["log"]).is_file()
    with capsys.disabled():  # the figures for the closing note
        print(
            "\npipeline figures:",
            json.dumps(
                {
                    "first_s": round(first.seconds),
                    "second_s": second["seconds"],
                    "sizes": sizes,
                    "source_build_s": round(ext.seconds, 1),
                    "wheelhouse_hit_s": ext2["seconds"],
                }
            ),
        )


def test_a_committed_step_container_declares_no_volumes(docker_engine: object, tmp_path: Path) -> None:
    """The devel image is a committed container whose steps ran with bind mounts (wheelhouse, ccache,
    the CA bundle): the mounts must not become VOLUME entries of the image, or every container of it
    gets anonymous volumes and a build FROM it cannot write a file where a mount was."""
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    tag = "slimmer-test:committed"
    log = StepLog(tmp_path / "step.log", None)
    with Container(
        docker_engine,
        BASE,
        log,
        mounts=[Mount(str(tmp_path), "/wheelhouse"), Mount(str(tmp_path / "ca.pem"), "/etc/x.pem", read_only=True)],
    ) as box:
        box.call("test -f /wheelhouse/ca.pem && test -f /etc/x.pem && echo made > /made", label="a step")
        box.commit(tag)
    log.close()
    try:
        config = docker_engine.images.get(tag).attrs["Config"]  # type: ignore[attr-defined]
        assert not config.get("Volumes"), config.get("Volumes")
        dockerfile = f"FROM {tag}\nRUN test -f /made && echo x > /etc/x.pem && mkdir -p /wheelhouse/w\n"
        child_log = StepLog(tmp_path / "build.log", None)
        build_image(docker_engine, dockerfile, tag + "-child", child_log, label="child")
        child_log.close()
    finally:
        for name in (tag + "-child", tag):
            docker_engine.images.remove(name, force=True)  # type: ignore[attr-defined]


def test_unreachable_wheel_and_source_fail_fast_naming_the_sources(docker_engine: object, pipeline_dirs: Path) -> None:
    cfg = _config(
        pipeline_dirs,
        "slimmer-test:unreachable",
        extensions=["slimmer-no-such-extension-zz9"],
        index_urls=["http://127.0.0.1:9/simple", "http://127.0.0.1:9/wheels/"],
        pip_timeout=5,
        checks=[],
    )
    start = time.monotonic()
    with pytest.raises(ExtensionUnavailableError) as info:
        run_pipeline(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert "slimmer-no-such-extension-zz9" in message.replace("_", "-")
    assert "http://127.0.0.1:9/simple" in message and "http://127.0.0.1:9/wheels/" in message
    assert "source (" in message and "full log:" in message
    assert time.monotonic() - start < 240


def test_pyg_lib_from_no_source_says_every_place_tried_and_what_to_do(
    docker_engine: object, pipeline_dirs: Path
) -> None:
    """pyg_lib has no sdist on PyPI and its wheel index (data.pyg.org) is out of reach here: a real
    run in which no source has it."""
    cfg = _config(pipeline_dirs, "slimmer-test:pyg-lib", extensions=["pyg_lib"], pip_timeout=5, checks=[])
    with pytest.raises(ExtensionUnavailableError) as info:
        run_pipeline(cfg)
    message = str(info.value)
    print(f"\npyg_lib message: {message}")
    assert "\n" not in message
    assert message.startswith("pyg_lib: no wheel and no source build; tried ")
    for place in (
        f"the wheelhouse {pipeline_dirs / 'wheelhouse'}",
        str(TORCH_WHEELS),
        f"https://data.pyg.org/whl/torch-{TORCH_VERSION}+cpu.html",
        "source (pyg_lib)",
    ):
        assert place in message, place
    for remedy in ("--find-links", "--index-url", "publishes no sdist on PyPI", "full log:"):
        assert remedy in message, remedy


def test_a_missing_base_image_is_one_line(docker_engine: object, pipeline_dirs: Path) -> None:
    cfg = _config(pipeline_dirs, "slimmer-test:x", devel_image="slimmer-test:no-such-base")
    with pytest.raises(ImageMissingError, match="devel base image 'slimmer-test:no-such-base' is not on the engine"):
        run_pipeline(cfg)


def test_no_engine_says_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(EngineError, match="no Docker engine answers at unix://.*no-engine.sock: start one"):
        run_pipeline(dataclasses.replace(_config(tmp_path, "x")))
    assert main(["image", "anything"]) == 6
    assert "sudo dockerd" in capsys.readouterr().err


def _buildkit() -> bool:
    docker = shutil.which("docker")
    return (
        bool(docker) and subprocess.run([docker, "buildx", "version"], capture_output=True, check=False).returncode == 0
    )


def test_generated_dockerfile_builds_on_the_same_engine(
    docker_engine: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "wheels").mkdir(parents=True)
    for wheel in TORCH_WHEELS.glob(f"torch-{TORCH_VERSION}*.whl"):
        try:
            os.link(wheel, ctx / "wheels" / wheel.name)
        except OSError:
            shutil.copy2(wheel, ctx / "wheels" / wheel.name)
    shutil.copytree(EXT, ctx / "torch_ext_demo", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    slimmer_wheel = build_slimmer_wheel(ctx)
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    shutil.copy(ca, ctx / "slimmer-ca.pem")  # pip inside the build reaches PyPI through the host's CAs
    (ctx / "slimmer.toml").write_text(
        f"devel_image = '{BASE}'\nruntime_image = '{BASE}'\ntorch_version = '{TORCH_VERSION}'\n"
        f"find_links = ['wheels']\nextensions = ['./torch_ext_demo']\npip_cert = 'slimmer-ca.pem'\n"
        "compile_check = false\n"
    )
    monkeypatch.chdir(ctx)
    buildkit = _buildkit()
    args = ["dockerfile", "-o", "Dockerfile", "--slimmer-requirement", slimmer_wheel.name]
    assert main([*args, *([] if buildkit else ["--no-cache-mounts"])]) == 0
    text = (ctx / "Dockerfile").read_text()
    assert 'COPY --from=devel ["/opt/venv", "/opt/venv"]' in text
    devel_runs = [ln for ln in text.split("AS runtime")[0].splitlines() if ln.startswith("RUN ")]
    assert "/opt/slimmer-tool/bin/slimmer apply --rules default" in devel_runs[-1]
    tag = "slimmer-test:dockerfile"
    if buildkit:
        subprocess.run(
            ["docker", "build", "-t", tag, "."], cwd=ctx, check=True, env={**os.environ, "DOCKER_BUILDKIT": "1"}
        )
    else:
        print("BuildKit unavailable (no `docker buildx`): built with the classic builder, without cache mounts")
        log = StepLog(tmp_path / "build.log", None)
        dockerfile = text
        build_image(docker_engine, dockerfile, tag, log, label="docker build", context=ctx)
        log.close()
    code, out = run_once(docker_engine, tag, ["python", "-c", CHECK])
    assert code == 0 and "scale_add ok" in out, out
    # slimmed in the devel stage (its journal came along with the environment), no compiler shipped
    script = "ls -d /opt/venv/.slimmer/runs/* >/dev/null && echo journal; command -v g++ c++ gcc || echo no-compiler"
    code, out = run_once(docker_engine, tag, ["bash", "-c", script])
    assert out.split() == ["journal", "no-compiler"], out
