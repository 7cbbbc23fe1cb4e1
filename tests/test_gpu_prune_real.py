"""--gpu-arch on the real torch 2.14.1 CUDA 13 environment (5.4 GB, `make envs TORCH_VERSION=2.14.1`):
a copy is slimmed with `--rules default --gpu-arch sm_90`, torch still imports and runs on the CPU
(which loads libtorch_cuda.so and runs its constructors, `__cudaRegisterFatBinary` included), and
`undo` gives every library back byte for byte. Skipped when that environment is not built."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from slimmer.cli import main

pytestmark = [pytest.mark.torch, pytest.mark.slow]

CHECK = """
import torch, functorch
x = torch.randn(64, 64)
assert torch.allclose(x @ torch.eye(64), x)
f = torch.compile(lambda a: (a.sin() + a.cos()).sum())
assert abs(f(x).item() - (x.sin() + x.cos()).sum().item()) < 1e-2
print(torch.__version__)
"""


def _cuda_env() -> Path:
    value = os.environ.get("SLIMMER_TORCH_CUDA_ENV")
    if not value or not (Path(value) / ".complete").is_file():
        pytest.skip("the torch CUDA environment is not built (make envs TORCH_VERSION=2.14.1; 5.4 GB)")
    return Path(value)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_gpu_arch_sm90_on_torch_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / "env"
    shutil.copytree(_cuda_env(), env, symlinks=True)

    assert main(["apply", "--rules", "default", "--gpu-arch", "sm_90", "--no-commit", "--json", str(env)]) == 0
    result = json.loads(capsys.readouterr().out)
    pruned = {p["path"]: p for p in result["pruned"]}
    assert not result["prune_skipped"]
    saved = sum(p["before"] - p["after"] for p in pruned.values())
    assert saved >= 1_000_000_000  # the goal: >= 1.0 GB on top of the default rules
    assert "lib/python3.11/site-packages/torch/lib/libtorch_cuda.so" in pruned

    out = subprocess.run(
        [str(env / "bin/python"), "-c", CHECK], capture_output=True, text=True, timeout=900, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]

    staged = next((env / ".slimmer/runs").iterdir()) / "staged"
    originals = {rel: _digest(staged / rel) for rel in pruned}
    assert main(["undo", str(env)]) == 0
    assert {rel: _digest(env / rel) for rel in pruned} == originals
