"""Stripping on real environments: manylinux wheels (numpy, scipy, pillow, opencv) and torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from slimmer.cli import main
from slimmer.elf.analyze import analyse
from tests.helpers import cached_env, run_smoke

OPS = """
import numpy as np, scipy.linalg, PIL.Image, cv2
a = np.arange(9.0).reshape(3, 3) + np.eye(3)
assert abs(scipy.linalg.det(a) - np.linalg.det(a)) < 1e-9
assert abs((np.linalg.inv(a) @ a - np.eye(3)).max()) < 1e-9
assert PIL.Image.new("RGB", (4, 4), (255, 0, 0)).convert("L").getpixel((0, 0)) == 76
assert cv2.GaussianBlur(np.full((8, 8), 10, np.uint8), (3, 3), 0)[4, 4] == 10
print("ops ok")
"""


def run_python(env: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env / "bin/python"), "-c", code], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
@pytest.mark.venv
def test_manylinux_wheels_still_work_after_default(tmp_path, capsys):
    env = tmp_path / "env"
    shutil.copytree(cached_env("SLIMMER_LIBS_ENV", "libs-env"), env, symlinks=True)
    sp = next(env.glob("lib/python3*/site-packages"))
    blas = next(sp.glob("numpy.libs/libscipy_openblas*.so"))
    blas_bytes = blas.read_bytes()

    assert main(["apply", "--rules", "default", "--json", str(env)]) == 0
    out = json.loads(capsys.readouterr().out)
    files = {f["path"]: f for f in out["plan"]["strip"]["files"]}
    rel_blas = str(blas.relative_to(env))
    # apply checks a patchelf-rewritten library on its real strip (no trial copy first): the
    # stripped copy of the vendored OpenBLAS breaks PT_LOAD alignment, so it is refused, with why.
    assert "patchelf-rewritten, checked after the strip" in files[rel_blas]["reason"]
    refused = {s["path"]: s["reason"] for s in out["strip_skipped"]}
    assert "not aligned" in refused[rel_blas]
    stripped = {s["path"]: s for s in out["stripped"]}
    assert len(stripped) > 50
    assert any(p.startswith(f"{sp.relative_to(env)}/scipy/") for p in stripped)
    assert all(s["after"] < s["before"] for s in stripped.values())
    assert out["committed"]
    assert blas.read_bytes() == blas_bytes

    proc = run_python(env, OPS)
    assert proc.returncode == 0, proc.stderr
    assert "ops ok" in proc.stdout

    # What the skip prevents: the seed recipe strips the same library and numpy no longer imports.
    subprocess.run(["strip", "--strip-unneeded", str(blas)], check=True)
    broken = run_python(env, "import numpy")
    assert broken.returncode != 0
    assert "aligned" in broken.stderr


@pytest.mark.torch
@pytest.mark.slow
def test_torch_default_strips_and_undo_restores_the_bytes(torch_env, torch_copy, capsys):
    lib = next(torch_copy.glob("lib/python3*/site-packages/torch/lib/libtorch_cpu.so"))
    original = next(torch_env.glob("lib/python3*/site-packages/torch/lib/libtorch_cpu.so"))
    assert main(["apply", "--rules", "default", "--no-commit", "--json", str(torch_copy)]) == 0
    out = json.loads(capsys.readouterr().out)
    rel = str(lib.relative_to(torch_copy))
    stripped = {s["path"]: s for s in out["stripped"]}
    assert rel in stripped
    assert lib.stat().st_size < original.stat().st_size
    assert analyse(lib).stripped
    proc = run_smoke(torch_copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") == 4

    assert main(["undo", str(torch_copy)]) == 0
    assert lib.stat().st_size == original.stat().st_size
    assert subprocess.run(["cmp", str(lib), str(original)], check=False).returncode == 0


def cuobjdump_archs(tool: Path, lib: Path, what: str) -> set[int]:
    """SM numbers that NVIDIA's cuobjdump lists (-all: also relocatable device code); 'sm_90a' is 90."""
    listing = subprocess.run(
        [str(tool), "-all", f"--list-{what}", str(lib)], capture_output=True, text=True, check=False
    ).stdout
    return {int(m) for m in re.findall(r"\.sm_(\d+)[a-z]?\.(?:cubin|ptx)", listing)}


@pytest.mark.slow
def test_cuda_env_lists_device_architectures(capsys):
    value = os.environ.get("SLIMMER_TORCH_CUDA_ENV")
    if not value or not Path(value, "bin/python").exists():
        pytest.skip("the torch CUDA environment is not built (make envs TORCH_VERSION=2.14.1; 5.4 GB)")
    env = Path(value)
    sp = next(env.glob("lib/python3*/site-packages"))
    small = [
        sp / "nvidia/cu13/lib/libcufile.so.0",
        sp / "torch/lib/libtorch_nvshmem.so",  # .nv_fatbin and __nv_relfatbin
        sp / "nvidia/cudnn/lib/libcudnn_cnn.so.9",
    ]
    assert main(["elf", "--json", str(sp / "torch/lib/libtorch_cuda.so"), *map(str, small)]) == 0
    reports = {Path(f["path"]).name: f["fatbin"] for f in json.loads(capsys.readouterr().out)["files"]}
    torch_sass = reports["libtorch_cuda.so"]["sass"]
    flags = run_python(env, "import torch; print(torch._C._cuda_getArchFlags())")
    assert flags.returncode == 0, flags.stderr
    # Every architecture torch was built for, plus its arch-specific kernels (sm_89, sm_103, ...).
    assert set(flags.stdout.split()) <= set(torch_sass)
    assert reports["libtorch_cuda.so"]["ptx"] == []
    tool = next(sp.glob("triton/backends/nvidia/bin/cuobjdump"), None)
    if tool is None:
        pytest.skip("no cuobjdump (shipped by triton) to compare the small libraries with")
    for lib in small:
        fb = reports[lib.name]
        assert {int(a[3:]) for a in fb["sass"]} == cuobjdump_archs(tool, lib, "elf"), lib.name
        assert {int(a[8:]) for a in fb["ptx"]} == cuobjdump_archs(tool, lib, "ptx"), lib.name
