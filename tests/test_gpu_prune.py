"""--gpu-arch: device code pruned inside linked libraries built here with nvcc, checked with NVIDIA's
own cuobjdump (PyPI: nvidia-cuda-cuobjdump), loaded with the system loader, and undone byte for byte."""

from __future__ import annotations

import ctypes
import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from slimmer.cli import main
from slimmer.elf import prune
from slimmer.elf.fatbin import KIND_PTX, KIND_SASS, Container, Entry
from slimmer.elf.gpuarch import FLAG_ARCH_SPECIFIC, GpuArchError, Target, parse_target, parse_targets
from tests.helpers import make_tree

NVCC = shutil.which("nvcc")
ARCHS = (75, 80, 86, 90)
GENCODE = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS] + ["-gencode=arch=compute_90,code=compute_90"]

KERNEL = """
__global__ void kern_NAME(float* out, const float* in, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float acc = in[i];
#pragma unroll
  for (int k = 0; k < 256; ++k) acc = acc * 1.0001f + __sinf(acc + k * 0.5f);
  out[i] = acc;
}
extern "C" int launch_NAME(float* out, const float* in, int n) {
  kern_NAME<<<(n + 255) / 256, 256>>>(out, in, n);
  return (int)cudaGetLastError();
}
"""
HOST = """
#include <stdexcept>
extern "C" int throws_and_catches(int x) {
  try { if (x > 0) throw std::runtime_error("boom"); return -1; }
  catch (const std::exception&) { return x * 2; }
}
"""
RDC_CALLER = """
__device__ float helper(float x);
__global__ void kern_r(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = helper(out[i]);
}
extern "C" int launch_r(float* out, int n) { kern_r<<<(n + 255) / 256, 256>>>(out, n); return (int)cudaGetLastError(); }
"""
RDC_CALLEE = """
__device__ float helper(float x) { float acc = x;
#pragma unroll
  for (int k = 0; k < 256; ++k) acc = acc * 1.0001f + __sinf(acc + k * 0.5f);
  return acc; }
"""


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    for base in sys.path:
        candidate = Path(base) / "nvidia" / "cu13" / "bin" / "cuobjdump"
        if candidate.is_file():
            return str(candidate)
    return None


CUOBJDUMP = _cuobjdump()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed: fixtures need it")
needs_cuobjdump = pytest.mark.skipif(
    CUOBJDUMP is None, reason="cuobjdump is not installed: pip install nvidia-cuda-cuobjdump (in the test extras)"
)


def _nvcc(out: Path, sources: dict[str, str], *flags: str) -> Path:
    work = out.parent / (out.name + ".src")
    work.mkdir()
    paths = []
    for name, text in sources.items():
        (work / name).write_text(text)
        paths.append(str(work / name))
    assert NVCC is not None
    subprocess.run(
        [NVCC, "-shared", "-Xcompiler", "-fPIC", *flags, "-o", str(out), *paths],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three translation units for sm_75/80/86/90 + PTX 90 and a C++ file whose exceptions need
    .eh_frame and .gcc_except_table (which lie after .nv_fatbin); the same compressed; an -rdc build."""
    if NVCC is None:
        pytest.skip("nvcc is not installed")
    base = tmp_path_factory.mktemp("cuda")
    units = {f"{n}.cu": KERNEL.replace("NAME", n) for n in "abc"} | {"host.cpp": HOST}
    return {
        "plain": _nvcc(base / "libmulti.so", units, *GENCODE),
        "compressed": _nvcc(base / "libmulti_z.so", units, *GENCODE, "-Xfatbin", "-compress-all"),
        "rdc": _nvcc(
            base / "librdc.so",
            {"r1.cu": RDC_CALLER, "r2.cu": RDC_CALLEE},
            "-rdc=true",
            "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90,code=sm_90",
        ),
    }


def _listing(path: Path) -> Counter[str]:
    """cuobjdump's list of cubins and PTX: {'sm_80': 3, 'compute_90': 3, ...}."""
    assert CUOBJDUMP is not None
    out = subprocess.run(
        [CUOBJDUMP, "-lelf", "-lptx", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    names: Counter[str] = Counter()
    for line in out.stdout.splitlines():
        name = line.rsplit(".", 2)[-2] if line.count(".") >= 2 else ""
        if line.startswith("ELF file"):
            names[name] += 1
        elif line.startswith("PTX file"):
            names[name.replace("sm_", "compute_")] += 1
    return names


def _cubins(path: Path, work: Path) -> Counter[tuple[str, str]]:
    """{(arch, sha256)} of every cubin cuobjdump extracts."""
    assert CUOBJDUMP is not None
    work.mkdir()
    subprocess.run([CUOBJDUMP, "-xelf", "all", str(path)], cwd=work, capture_output=True, timeout=120, check=True)
    return Counter(
        (p.name.rsplit(".", 2)[-2], hashlib.sha256(p.read_bytes()).hexdigest()) for p in work.glob("*.cubin")
    )


def _prune(src: Path, dest: Path, targets: str, keep_ptx: bool = True) -> prune.Plan:
    plan = prune.layout(str(src), parse_targets([targets]), keep_ptx)
    prune.write(plan, str(dest))
    assert prune.check(plan, str(dest)) is None
    return plan


# What stays, per target set, of four containers: one per kernel translation unit (SASS for
# sm_75/80/86/90 and PTX 90) and the CUDA runtime's own (SASS only).
CASES = [
    ("sm_80", True, {"sm_80": 4}),
    ("sm_86", True, {"sm_86": 4}),
    ("sm_89", True, {"sm_86": 4}),  # sm_86 SASS runs on 8.9; sm_90 does not; PTX 90 cannot be compiled for 8.9
    ("sm_75,sm_90", True, {"sm_75": 4, "sm_90": 4, "compute_90": 3}),
    ("sm_90", False, {"sm_90": 4}),
    # Only PTX can run on a newer GPU; the runtime's container has none, so it is kept whole.
    ("sm_100", True, {"compute_90": 3, "sm_75": 1, "sm_80": 1, "sm_86": 1, "sm_90": 1}),
]


@needs_cuobjdump
@pytest.mark.parametrize(("targets", "keep_ptx", "expected"), CASES)
@pytest.mark.parametrize("kind", ["plain", "compressed"])
def test_pruned_library_holds_exactly_what_runs_on_the_targets(
    libs: dict[str, Path], tmp_path: Path, kind: str, targets: str, keep_ptx: bool, expected: dict[str, int]
) -> None:
    src = libs[kind]
    before = _listing(src)
    assert before == {"sm_75": 4, "sm_80": 4, "sm_86": 4, "sm_90": 4, "compute_90": 3}
    dest = tmp_path / "pruned.so"
    plan = _prune(src, dest, targets, keep_ptx)

    assert _listing(dest) == expected
    assert dest.stat().st_size == plan.new_size < src.stat().st_size
    kept = _cubins(dest, tmp_path / "after")
    original = _cubins(src, tmp_path / "before")
    assert kept and all(original[cubin] >= n for cubin, n in kept.items())  # each kept cubin byte-identical
    assert sum(kept.values()) == sum(n for name, n in expected.items() if name.startswith("sm_"))


@needs_nvcc
def test_code_after_the_fatbin_still_runs_and_the_library_loads(libs: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "libpruned.so"
    plan = _prune(libs["plain"], dest, "sm_80")
    assert plan.phdr_at is not None  # the PT_LOAD was split: .eh_frame and friends kept their addresses
    lib = ctypes.CDLL(str(dest))
    # C++ exceptions unwind through .eh_frame_hdr/.eh_frame/.gcc_except_table, now in the second part
    assert lib.throws_and_catches(21) == 42
    readelf = shutil.which("readelf")
    if readelf:
        out = subprocess.run([readelf, "-a", "-W", str(dest)], capture_output=True, text=True, check=False)
        assert out.returncode == 0
        assert out.stderr == ""


@needs_cuobjdump
def test_relocatable_device_code_library(libs: dict[str, Path], tmp_path: Path) -> None:
    src = libs["rdc"]
    assert _listing(src) == {"sm_80": 1, "sm_90": 1}
    dest = tmp_path / "librdc.so"
    _prune(src, dest, "sm_80")
    assert _listing(dest) == {"sm_80": 1}
    ctypes.CDLL(str(dest))


@needs_nvcc
def test_nothing_runnable_keeps_the_file(libs: dict[str, Path]) -> None:
    with pytest.raises(prune.PruneRefused, match="nothing to drop"):
        prune.layout(str(libs["plain"]), parse_targets(["sm_100"]), keep_ptx=False)


@needs_cuobjdump
def test_apply_gpu_arch_then_undo(libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tree(tmp_path / "env", {"lib/python3.11/site-packages/pkg/__init__.py": ""})
    lib = root / "lib/python3.11/site-packages/pkg/libmulti.so"
    shutil.copy2(libs["plain"], lib)
    original = lib.read_bytes()
    rules = tmp_path / "none.rules"  # no rule: only the device code changes
    rules.write_text("# nothing to remove\n")

    assert main(["plan", "--rules", str(rules), "--gpu-arch", "sm_90", "--no-ptx", "--json", str(root)]) == 0
    planned = json.loads(capsys.readouterr().out)["gpu_prune"]
    assert planned["targets"] == ["sm_90"]
    (entry,) = planned["files"]
    assert entry["bytes"] > 0
    assert set(entry["dropped"]) == {"sm_75", "sm_80", "sm_86", "compute_90"}

    assert main(["apply", "--rules", str(rules), "--gpu-arch", "sm_90", "--no-ptx", "--no-commit", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Pruned device code of 1 libraries" in out
    assert len(original) - lib.stat().st_size == entry["bytes"]  # measured = predicted
    assert _listing(lib) == {"sm_90": 4}

    assert main(["undo", str(root)]) == 0
    assert lib.read_bytes() == original


@pytest.mark.parametrize("bad", ["sm_9x", "gfx90a", "sm_", "90.1.2"])
def test_bad_gpu_arch_is_one_line(bad: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", "--gpu-arch", bad, str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not a GPU architecture" in err


def test_no_ptx_needs_gpu_arch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", "--no-ptx", str(tmp_path)]) == 2
    assert "--no-ptx needs --gpu-arch" in capsys.readouterr().err


def test_targets_parse() -> None:
    assert parse_target("sm_90a") == parse_target("9.0") == Target(9, 0)
    assert parse_targets(["sm_100f,sm_80", "sm_80"]) == (Target(8, 0), Target(10, 0))
    with pytest.raises(GpuArchError):
        parse_target("compute")


def _entry(offset: int, kind: int, sm: int, flags: int = 0) -> Entry:
    return Entry(offset, 64, 64, kind, sm, flags)


def test_choose_compatibility_rules() -> None:
    entries = (
        _entry(0, KIND_SASS, 80),
        _entry(1, KIND_SASS, 90),
        _entry(2, KIND_SASS, 90, FLAG_ARCH_SPECIFIC),
        _entry(3, KIND_PTX, 80),
        _entry(4, KIND_PTX, 100),
    )
    c = Container(0, 16, 5 * 128, entries)

    def names(choice: prune.Choice) -> list[str]:
        return sorted(e.name for e in choice.keep)

    assert names(prune.choose(c, (Target(9, 0),), True)) == ["compute_80", "sm_90", "sm_90a"]
    assert names(prune.choose(c, (Target(8, 6),), False)) == ["sm_80"]
    assert names(prune.choose(c, (Target(10, 0),), True)) == ["compute_100"]
    whole = prune.choose(c, (Target(7, 5),), False)  # nothing runs on sm_75: the container stays whole
    assert whole.keep == entries and "sm_75" in whole.whole
