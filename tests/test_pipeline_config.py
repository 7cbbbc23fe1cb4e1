"""The pipeline config (file + CLI), MAX_JOBS from memory, and the Dockerfile `slimmer dockerfile` writes."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slimmer.cli import main
from slimmer.errors import UsageError
from slimmer.pipeline.build import slim_command
from slimmer.pipeline.config import PipelineConfig, load_config, make_config
from slimmer.pipeline.dockerfile import render_dockerfile
from slimmer.pipeline.engine import max_jobs_for, split_tag
from slimmer.pipeline.recipe import SYSTEM_PATH, apt_install, check_argv, make_venv, slim_argv, verify_argv
from slimmer.verify.checks import CheckKind
from slimmer.verify.config import load_checks
from tests.helpers import REPO

EXT = REPO / "fixtures" / "torch_ext_demo"


def test_pyproject_table_is_read_and_cli_overrides_win(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname='x'\n[tool.slimmer]\n"
        "devel-image = 'my-devel:1'\nmax_jobs = 3\nextensions = ['torch_scatter', 'torch-sparse==0.6.18']\n"
        "find_links = ['wheels']\nrules = ['default', 'headers']\n"
    )
    cfg, path = load_config(None, {"max_jobs": 5, "tag": None, "checks": ()}, cwd=tmp_path)
    assert path == tmp_path / "pyproject.toml"
    assert cfg.devel_image == "my-devel:1"
    assert cfg.max_jobs == 5  # the option wins over the file
    assert [e.name for e in cfg.extensions] == ["torch_scatter", "torch_sparse"]
    assert cfg.extensions[1].source == "torch-sparse==0.6.18"
    assert cfg.find_links == ("wheels",)
    assert cfg.rules == ("default", "headers")
    assert cfg.tag == PipelineConfig().tag


def test_slimmer_toml_local_extension_takes_its_name_from_setup_py(tmp_path: Path) -> None:
    (tmp_path / "slimmer.toml").write_text(f"extensions = ['{EXT}']\nwheelhouse = 'wh'\n")
    cfg, _ = load_config(None, {}, cwd=tmp_path)
    (ext,) = cfg.extensions
    assert (ext.name, ext.local, ext.source) == ("slimmer_demo_ext", True, str(EXT))
    assert cfg.wheelhouse == tmp_path / "wh"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"devel_imag": "x"}, "unknown key 'devel_imag'"),
        ({"max_jobs": -1}, "max_jobs must be a whole number"),
        ({"extensions": "./no/such/folder"}, "is not a folder"),
        ({"env_path": "relative"}, "env_path must be an absolute path"),
        ({"gpus": "some"}, "gpus must be one of auto, all, none"),
        ({"find_links": [1]}, "find_links must be a list of strings"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        make_config(values, base=tmp_path, origin="slimmer.toml")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("slimmer.toml: ")


def test_cli_reports_a_bad_config_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "slimmer.toml"
    bad.write_text("max_jobs = 'many'\n")
    assert main(["dockerfile", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimmer: error:") and "max_jobs" in err and "\n" not in err


def test_max_jobs_follows_memory_not_only_cpus() -> None:
    gib = 1 << 30
    assert max_jobs_for(16, 8 * gib) == 2  # 3 GiB a job: a 16-core box with 8 GiB must not run 16 cc1plus
    assert max_jobs_for(2, 64 * gib) == 2
    assert max_jobs_for(8, 2 * gib) == 1


def test_pyg_extensions_get_the_pyg_wheel_index_for_the_torch_and_cuda_tag(tmp_path: Path) -> None:
    cfg = make_config(
        {"torch_version": "2.13.0", "cuda": "cu130", "extensions": ["torch_scatter", "numpy"]}, base=tmp_path
    )
    scatter, numpy = cfg.extensions
    assert cfg.wheel_sources(scatter) == ("https://data.pyg.org/whl/torch-2.13.0+cu130.html",)
    assert cfg.wheel_sources(numpy) == ()


def test_dockerfile_is_multi_stage_with_per_library_fallback_and_slimming_last(tmp_path: Path) -> None:
    cfg = make_config(
        {
            "torch_version": "2.13.0",
            "cuda": "cu130",
            "extensions": ["torch_scatter", "torch_sparse", str(EXT)],
            "devel_image": "nvidia/cuda:13.1.1-cudnn-devel-ubuntu24.04",
            "runtime_image": "nvidia/cuda:13.1.1-cudnn-runtime-ubuntu24.04",
            "env_path": "/opt/conda/envs/py",
        },
        base=tmp_path,
    )
    text = render_dockerfile(cfg, cwd=REPO, apply_verify=True)
    devel, runtime = text.split("\nFROM nvidia/cuda:13.1.1-cudnn-runtime-ubuntu24.04 AS runtime\n")
    assert "FROM nvidia/cuda:13.1.1-cudnn-devel-ubuntu24.04 AS devel" in devel
    # one RUN per library, each a wheel first and a source build only when that library has none
    for name in ("torch_scatter", "torch_sparse"):
        step = next(block for block in devel.split("\nRUN ") if f"--only-binary {name}" in block)
        assert "--mount=type=cache,target=/root/.cache/pip" in step
        assert "--mount=type=cache,target=/root/.cache/ccache" in step
        assert f"|| {{ echo 'no wheel for {name}: building from source'" in step
        assert "--no-build-isolation" in step and "MAX_JOBS" in step
        assert "https://data.pyg.org/whl/torch-2.13.0+cu130.html" in step
    assert 'COPY ["fixtures/torch_ext_demo/", "/src/slimmer_demo_ext/"]' in devel
    run_lines = [ln for ln in devel.splitlines() if ln.startswith("RUN ")]
    assert run_lines[-1] == "RUN /opt/slimmer-tool/bin/slimmer apply --rules default --verify /opt/conda/envs/py"
    assert 'COPY --from=devel ["/opt/conda/envs/py", "/opt/conda/envs/py"]' in runtime
    assert "g++" not in runtime and "--mount" not in runtime
    plain = render_dockerfile(cfg, cwd=REPO, cache_mounts=False, apply_verify=False)
    assert "--mount" not in plain
    assert "slimmer apply --rules default /opt/conda/envs/py" in plain


def test_checks_are_parsed_like_slimmer_verify_and_reach_the_final_run_with_their_timeout(tmp_path: Path) -> None:
    config = tmp_path / "slimmer.toml"
    config.write_text(
        "checks = ['import torch', { python = 'import numpy', timeout = 300 }, { command = 'my-server --self-test' }]\n"
    )
    cfg, _ = load_config(None, {}, cwd=tmp_path)
    # one parser: the pipeline reads exactly what `slimmer verify --config` reads, timeout included
    assert list(cfg.checks) == load_checks(config)
    assert [(c.kind, c.target, c.timeout) for c in cfg.checks] == [
        (CheckKind.PYTHON, "import torch", 120.0),
        (CheckKind.PYTHON, "import numpy", 300.0),
        (CheckKind.COMMAND, "my-server --self-test", 120.0),
    ]
    args = "--check 'import torch' --check 'import numpy' --check-cmd 'my-server --self-test' --check-timeout 300"
    assert shlex.join(check_argv(cfg.checks)) == args
    text = render_dockerfile(cfg, cwd=tmp_path, apply_verify=True)
    assert f"RUN /opt/slimmer-tool/bin/slimmer apply --rules default --verify {args} /opt/venv\n" in text
    assert args in shlex.join(verify_argv(cfg, compile_check=False))
    with pytest.raises(UsageError, match="slimmer.toml: checks\\[0\\]: expected a Python snippet"):
        make_config({"checks": [{"shell": "x"}]}, base=tmp_path, origin="slimmer.toml")
    with pytest.raises(UsageError, match="timeout must be a positive number"):
        make_config({"checks": [{"python": "x", "timeout": 0}]}, base=tmp_path)


def test_gpu_archs_and_profile_reach_the_slim_command_of_both_paths(tmp_path: Path) -> None:
    cfg = make_config({"gpu_archs": ["sm_90a", "8.0"], "profile": "runtime"}, base=tmp_path, origin="slimmer.toml")
    assert cfg.gpu_archs == ("sm_80", "sm_90")
    expected = "--rules default --gpu-arch sm_80 --gpu-arch sm_90 --profile runtime"
    assert expected in slim_command(cfg)
    assert expected in render_dockerfile(cfg, cwd=tmp_path)


# A value other than the default for every key of PipelineConfig; the test below fails on a key missing
# here, so a new key cannot escape it.
SAMPLES: dict[str, Any] = {
    "devel_image": "my-devel:1",
    "runtime_image": "my-runtime:1",
    "tag": "registry:5000/team/app:v2",
    "env_path": "/opt/my env",
    "python": "/usr/bin/python3.12",
    "devel_packages": ["python3", "g++-13"],
    "runtime_packages": ["python3", "libgomp1"],
    "torch_version": "2.13.0",
    "torch_index": "https://download.pytorch.org/whl/cpu",
    "cuda": "cu130",
    "extensions": ["torch_scatter"],
    "find_links": ["https://example.org/wheels.html"],
    "index_urls": ["https://example.org/simple"],
    "wheelhouse": "/tmp/wh",
    "torch_cuda_arch_list": "8.0;9.0",
    "max_jobs": 3,
    "rules": ["default", "headers"],
    "profile": "runtime",
    "gpu_archs": ["sm_90"],
    "checks": ["import torch", {"command": "my-server --self-test", "timeout": 300}],
    "gpus": "none",
    "compile_check": False,
    "pip_timeout": 60,
    "pip_cert": "",  # filled in by the test: it must name an existing file
    "ccache_dir": "/tmp/ccache",
    "log_dir": "/tmp/logs",
}
# The keys that change `slimmer apply`'s command line; every other key must leave it alone.
SLIM_KEYS = {"env_path", "rules", "profile", "gpu_archs", "checks", "compile_check"}


def _dockerfile_slim_line(cfg: PipelineConfig, tmp_path: Path) -> str:
    lines = [ln for ln in render_dockerfile(cfg, cwd=tmp_path).splitlines() if "slimmer apply" in ln]
    assert len(lines) == 1 and lines[0].startswith("RUN ")
    return lines[0].removeprefix("RUN ")


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(PipelineConfig)])
def test_build_and_slim_and_dockerfile_run_the_same_slim_command_for_every_config_key(tmp_path: Path, key: str) -> None:
    assert key in SAMPLES, f"add a sample value for the new config key {key!r} to SAMPLES"
    value = SAMPLES[key]
    if key == "pip_cert":
        value = tmp_path / "ca.pem"
        value.write_text("cert")
    default = PipelineConfig()
    cfg = make_config({key: value}, base=tmp_path)
    assert getattr(cfg, key) != getattr(default, key), "the sample must differ from the default"
    command = slim_command(cfg)
    assert _dockerfile_slim_line(cfg, tmp_path) == command
    assert shlex.split(command) == slim_argv(cfg)
    # a key that belongs to the slim command must change it (a dropped --profile fails here), others must not
    assert (command != slim_command(default)) == (key in SLIM_KEYS)


@pytest.mark.venv  # python -m venv --without-pip, at a path with a space and a quote
def test_package_names_and_paths_are_quoted_in_every_shell_line(tmp_path: Path) -> None:
    odd = tmp_path / "my py'thon"
    odd.mkdir()
    python = odd / "python 3"
    python.symlink_to(sys.executable)
    env_path = str(tmp_path / "my env's venv")
    cfg = make_config(
        {
            "python": str(python),
            "env_path": env_path,
            "devel_packages": ["python3", "lib'odd pkg"],
            "runtime_packages": ["it's"],
            "profile": "run time",
            "checks": ["print('a b')"],
        },
        base=tmp_path,
    )
    # the venv line runs as is: the interpreter and the target are one word each
    subprocess.run(["bash", "-ec", make_venv(cfg.python, cfg.env_path) + " --without-pip"], check=True, timeout=120)
    assert (Path(env_path) / "pyvenv.cfg").is_file()

    def packages(script: str) -> list[str]:
        words = shlex.split(script)
        start = words.index("--no-install-recommends") + 1
        return words[start : words.index("&&", start)]

    assert packages(apt_install(cfg.devel_packages)) == ["python3", "lib'odd pkg"]
    assert packages(apt_install(cfg.runtime_packages, clean=True)) == ["it's"]
    assert shlex.split(slim_command(cfg))[-6:] == [
        "--profile",
        "run time",
        "--verify",
        "--check",
        "print('a b')",
        env_path,
    ]
    text = render_dockerfile(cfg, cwd=tmp_path)
    runs = [re.sub(r"^RUN (--mount=\S+ )*", "", ins) for ins in text.replace("\\\n", "").splitlines()]
    runs = [run for run in runs if not run.startswith(("#", "FROM ", "ENV ", "COPY ", "ARG ")) and run]
    assert len(runs) == 7
    for run in runs:  # every RUN is well-formed shell
        subprocess.run(["bash", "-n", "-c", run], check=True, timeout=30)
    assert f"RUN {make_venv(str(python), env_path)}" in text
    assert f"ENV PATH={json.dumps(env_path + '/bin:' + SYSTEM_PATH)}" in text
    assert f'COPY --from=devel ["{env_path}", "{env_path}"]' in text


def test_tag_parsing_tells_a_registry_port_from_a_tag() -> None:
    assert split_tag("app") == ("app", "latest")
    assert split_tag("app:v1") == ("app", "v1")
    assert split_tag("registry:5000/team/app") == ("registry:5000/team/app", "latest")
    assert split_tag("registry:5000/team/app:v1") == ("registry:5000/team/app", "v1")


def test_bad_gpu_arch_in_config_is_one_clean_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="slimmer.toml: gpu_archs: 'gfx90a' is not a GPU architecture"):
        make_config({"gpu_archs": ["gfx90a"]}, base=tmp_path, origin="slimmer.toml")
