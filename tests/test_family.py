"""The PyG extension family built from sdists (`make family-env`), proven after slimming: every op
check and the torch_geometric workload (GCNConv and SAGEConv forward and backward against their
formulas) pass before and after `--rules default` and after `--profile runtime`, and the checks fail
when a compiled library is broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimmer.verify.checks import Status
from slimmer.verify.runner import verify

pytestmark = [pytest.mark.torch, pytest.mark.slow]

# Family members and the top-level folder of each under site-packages.
BUILT = ("torch_scatter", "torch_sparse", "torch_cluster", "torch_spline_conv")
OPS = (*BUILT, "torch_geometric")


@pytest.fixture(scope="module")
def family_env() -> Path:
    value = os.environ.get("SLIMMER_FAMILY_ENV")
    if not value:
        pytest.skip("SLIMMER_FAMILY_ENV is not set: run the tests with 'make test'")
    path = Path(value)
    if not (path / ".complete").is_file():
        # Building the family from sdists takes long on small machines, so `make test` does not do it.
        pytest.skip(f"{path} is not built: run 'make family-env' (a cold build takes minutes)")
    return path


def _du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _sizes(env: Path) -> dict[str, int]:
    sp = next(env.glob("lib/python3*/site-packages"))
    return {name: _du(sp / name) for name in OPS}


def _op_results(env: Path) -> dict[str, Status]:
    report = verify(env, compile_check=False)
    got = {r.check.name: r for r in report.results}
    missing = [f"op {name}" for name in OPS if f"op {name}" not in got]
    assert not missing, f"verify ran no {missing}: {sorted(got)}"
    return {name: got[f"op {name}"].status for name in OPS} | {"all": Status.PASS if report.ok else Status.FAIL}


def _slim(env: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimmer", "apply", *args, "--verify", "--no-compile-check", str(env)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )


@pytest.mark.parametrize("variant", [("--rules", "default"), ("--rules", "default", "--profile", "runtime")])
def test_family_ops_pass_after_slimming(family_env, tmp_path, variant):
    before = _op_results(family_env)
    assert set(before.values()) == {Status.PASS}, before
    copy = tmp_path / "env"
    shutil.copytree(family_env, copy, symlinks=True)
    sizes = _sizes(copy)
    done = _slim(copy, *variant)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = _op_results(copy)
    assert set(after.values()) == {Status.PASS}, after
    slimmed = _sizes(copy)
    # Slimming took something from the compiled libraries (tests, bytecode, symbols) and kept them working.
    assert sum(sizes[n] for n in BUILT) > sum(slimmed[n] for n in BUILT)
    for name in OPS:
        print(f"{' '.join(variant)}: {name} {sizes[name]} -> {slimmed[name]} bytes")


def test_a_broken_family_library_fails_its_op_and_the_workload(family_env, tmp_path):
    """torch_geometric swallows a library that does not load; the workload must not."""
    copy = tmp_path / "env"
    shutil.copytree(family_env, copy, symlinks=True)
    sp = next(copy.glob("lib/python3*/site-packages"))
    spmm = sorted((sp / "torch_sparse").glob("_spmm_cpu*.so"))
    assert spmm, sorted(p.name for p in (sp / "torch_sparse").iterdir())
    for lib in spmm:
        lib.write_bytes(b"\x7fELF broken on purpose")
    results = _op_results(copy)
    assert results["torch_sparse"] is Status.FAIL
    assert results["torch_geometric"] is Status.FAIL
    assert results["torch_scatter"] is Status.PASS
    report = verify(copy, compile_check=False)
    workload = next(r for r in report.results if r.check.name == "op torch_geometric")
    assert "torch_sparse is installed but torch_geometric could not load it" in workload.error
