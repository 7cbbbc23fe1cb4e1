"""The pipeline config (file + CLI), MAX_JOBS from memory, and the Dockerfile `slimmer dockerfile` writes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from slimmer.cli import main
from slimmer.errors import UsageError
from slimmer.pipeline.config import PipelineConfig, load_config, make_config
from slimmer.pipeline.dockerfile import render_dockerfile
from slimmer.pipeline.engine import max_jobs_for
from tests.helpers import REPO

if TYPE_CHECKING:
    from pathlib import Path

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
    assert "COPY fixtures/torch_ext_demo/ /src/slimmer_demo_ext/" in devel
    run_lines = [ln for ln in devel.splitlines() if ln.startswith("RUN ")]
    assert run_lines[-1] == "RUN /opt/slimmer-tool/bin/slimmer apply --rules default --verify /opt/conda/envs/py"
    assert "COPY --from=devel /opt/conda/envs/py /opt/conda/envs/py" in runtime
    assert "g++" not in runtime and "--mount" not in runtime
    plain = render_dockerfile(cfg, cwd=REPO, cache_mounts=False, apply_verify=False)
    assert "--mount" not in plain
    assert "slimmer apply --rules default /opt/conda/envs/py" in plain


def test_checks_take_the_forms_slimmer_verify_reads_and_reach_the_final_run(tmp_path: Path) -> None:
    (tmp_path / "slimmer.toml").write_text(
        "checks = ['import torch', { python = 'import numpy' }, { command = 'my-server --self-test' }]\n"
    )
    cfg, _ = load_config(None, {}, cwd=tmp_path)
    assert cfg.checks == (("python", "import torch"), ("python", "import numpy"), ("command", "my-server --self-test"))
    args = " --check 'import torch' --check 'import numpy' --check-cmd 'my-server --self-test'"
    assert cfg.check_args() == args
    text = render_dockerfile(cfg, cwd=tmp_path, apply_verify=True)
    assert f"slimmer apply --rules default --verify{args} /opt/venv" in text
    with pytest.raises(UsageError, match="checks must be a list of Python snippets"):
        make_config({"checks": [{"shell": "x"}]}, base=tmp_path)


def test_gpu_archs_and_profile_reach_the_slim_command_of_both_paths(tmp_path: Path) -> None:
    from slimmer.pipeline.build import _slim_command

    cfg = make_config({"gpu_archs": ["sm_90a", "8.0"], "profile": "runtime"}, base=tmp_path, origin="slimmer.toml")
    assert cfg.gpu_archs == ("sm_80", "sm_90")
    expected = "--rules default --gpu-arch sm_80 --gpu-arch sm_90 --profile runtime"
    assert expected in _slim_command(cfg)
    assert expected in render_dockerfile(cfg, cwd=tmp_path)


def test_bad_gpu_arch_in_config_is_one_clean_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="slimmer.toml: gpu_archs: 'gfx90a' is not a GPU architecture"):
        make_config({"gpu_archs": ["gfx90a"]}, base=tmp_path, origin="slimmer.toml")
