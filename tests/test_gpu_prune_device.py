"""--gpu-arch on a machine with a GPU: a copy of a CUDA torch environment pruned to the GPU's own
architecture still runs CUDA ops, cuBLAS, cuDNN and torch.compile with Triton, and `slimmer verify`
passes; a copy pruned to another architecture with --no-ptx fails a kernel launch with CUDA's
"no kernel image is available", which shows the pruning took effect.

Runs when SLIMMER_GPU_ENV names a venv whose torch sees a GPU (else SLIMMER_TORCH_CUDA_ENV is
tried); skipped otherwise, with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from slimmer.cli import main

pytestmark = [pytest.mark.torch, pytest.mark.slow]

WORKLOAD = """
import torch
d = torch.device("cuda")
x = torch.randn(512, 512, device=d)
assert torch.allclose((x + 1).cpu(), x.cpu() + 1)                       # elementwise kernels
assert torch.allclose((x @ x).cpu(), x.cpu() @ x.cpu(), atol=1e-2, rtol=1e-2)   # cuBLAS
conv = torch.nn.Conv2d(3, 8, 3).to(d)
img = torch.randn(2, 3, 32, 32, device=d)
assert torch.allclose(conv(img).cpu(), conv.cpu()(img.cpu()), atol=1e-3, rtol=1e-3)  # cuDNN
f = torch.compile(lambda a: (a.sin() * a.cos()).sum(dim=1))
assert torch.allclose(f(x).cpu(), (x.sin() * x.cos()).sum(dim=1).cpu(), atol=1e-3, rtol=1e-3)  # Triton
torch.cuda.synchronize()
print("ok")
"""
LAUNCH = """
import torch
try:
    (torch.ones(16, device="cuda") * 3).sum().item()
except Exception as exc:
    print(str(exc))
    raise SystemExit(3)
print("launched")
"""


def _gpu_env() -> tuple[Path, tuple[int, int]]:
    for var in ("SLIMMER_GPU_ENV", "SLIMMER_TORCH_CUDA_ENV"):
        value = os.environ.get(var)
        if not value or not (Path(value) / "bin/python").exists():
            continue
        probe = subprocess.run(
            [str(Path(value) / "bin/python"), "-c", "import torch; print(*torch.cuda.get_device_capability())"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if probe.returncode == 0:
            major, minor = map(int, probe.stdout.split())
            return Path(value), (major, minor)
    pytest.skip("no GPU: set SLIMMER_GPU_ENV to a venv whose torch sees a GPU")


def _copy(env: Path, dest: Path) -> Path:
    shutil.copytree(env, dest, symlinks=True)
    return dest


def test_pruned_to_own_architecture_runs_on_the_gpu(tmp_path: Path) -> None:
    env, (major, minor) = _gpu_env()
    copy = _copy(env, tmp_path / "own")
    assert main(["apply", "--rules", "default", "--gpu-arch", f"sm_{major}{minor}", str(copy)]) == 0
    out = subprocess.run(
        [str(copy / "bin/python"), "-c", WORKLOAD], capture_output=True, text=True, timeout=1800, check=False
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
    assert main(["verify", str(copy)]) == 0


def test_pruned_to_another_architecture_cannot_launch(tmp_path: Path) -> None:
    env, (major, _minor) = _gpu_env()
    other = "sm_75" if major != 7 else "sm_90"
    copy = _copy(env, tmp_path / "other")
    assert main(["apply", "--rules", "default", "--gpu-arch", other, "--no-ptx", str(copy)]) == 0
    out = subprocess.run(
        [str(copy / "bin/python"), "-c", LAUNCH], capture_output=True, text=True, timeout=900, check=False
    )
    assert out.returncode == 3, out.stdout + out.stderr[-2000:]
    assert "no kernel image is available" in out.stdout
