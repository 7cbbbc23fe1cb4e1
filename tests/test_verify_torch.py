"""Verify on real torch 2.13 environments: the whole check list, a rollback that names its rule,
a deleted Python.h caught by the compile check and `doctor`, and torch_scatter built from source."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from slimmer.cli import main
from slimmer.plan import make_plan
from slimmer.rules import RuleSet
from slimmer.verify.checks import CheckKind, Status, VerifyCheck
from slimmer.verify.doctor import diagnose
from slimmer.verify.rollback import apply_verified
from slimmer.verify.runner import discover, find_python, inventory, run_checks, verify
from tests.helpers import cached_env, listing

pytestmark = pytest.mark.torch


@pytest.fixture(scope="session")
def scatter_env() -> Path:
    """The torch 2.13 environment with torch_scatter built from its sdist (`make scatter-env`)."""
    return cached_env("SLIMMER_SCATTER_ENV", "scatter-env")


def test_verify_whole_torch_env(torch_env):
    report = verify(torch_env)
    got = {r.check.name: r for r in report.results}
    assert report.ok, [(r.check.name, r.error) for r in report.failed]
    for name in ("import torch", "import functorch", "import torchgen", "extension torch._C", "op torch"):
        assert got[name].status is Status.PASS
    # the ops run where the environment's own torch sees a GPU, else on the CPU (asked here independently)
    probe = "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')"
    python = find_python(torch_env)
    expected = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert got["op torch"].device == expected.stdout.strip()
    assert got["compile torch.compile"].status is Status.PASS
    print(f"verify on {torch_env}: {len(report.results)} checks in {report.seconds:.1f} s")


def test_rollback_names_the_rule_that_deletes_testing_internal(torch_copy, tmp_path):
    rules = tmp_path / "testing.rules"
    rules.write_text("# @relative-to site-packages\ntorch/README*\ntorch/testing/_internal/\n")
    internal = next(torch_copy.glob("lib/python3*/site-packages/torch/testing/_internal"))
    before = listing(torch_copy)
    # No protectors: the import analysis would keep what import torch needs.
    plan = make_plan(torch_copy, RuleSet.load([str(rules)]), protectors=())
    assert any(u.rel.endswith("torch/testing/_internal") for u in plan.units)
    python = find_python(torch_copy)
    checks = [c for c in discover(inventory(python), compile_check=False) if c.group == "torch"]
    done = apply_verified(plan, python, checks)
    assert done.result.undone
    assert not done.already_failing
    assert "import torch" in {r.check.name for r in done.broken}
    assert done.culprit is not None
    assert done.culprit.exact
    assert done.culprit.lines == (f"{rules}:3 'torch/testing/_internal/'",)
    assert any("torch.testing._internal" in r.error for r in done.culprit.failures)
    assert internal.is_dir()
    assert listing(torch_copy) - {".slimmer"} == before - {".slimmer"}


def _conda_like_prefix(torch_env: Path, dest: Path) -> Path:
    """A prefix that owns its interpreter and include/python3.X, like a conda env: the base
    interpreter of torch_env (stdlib, headers, libpython) plus torch_env's site-packages."""
    base = Path(
        subprocess.run(
            [str(torch_env / "bin" / "python"), "-I", "-c", "import sys; print(sys.base_prefix)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    sp = next(torch_env.glob("lib/python3*/site-packages"))
    xy = sp.parent.name  # python3.11
    (dest / "bin").mkdir(parents=True)
    (dest / "conda-meta").mkdir()
    shutil.copy2(base / "bin" / xy, dest / "bin" / xy)
    (dest / "bin" / "python3").symlink_to(xy)
    (dest / "include").mkdir()
    shutil.copytree(base / "include" / xy, dest / "include" / xy, symlinks=True)
    (dest / "lib").mkdir()
    for lib in (base / "lib").glob("libpython3*"):
        shutil.copy2(lib, dest / "lib" / lib.name, follow_symlinks=False)
    skip = shutil.ignore_patterns("site-packages", "test", "__pycache__")
    shutil.copytree(base / "lib" / xy, dest / "lib" / xy, symlinks=True, ignore=skip)
    shutil.copytree(sp, dest / "lib" / xy / "site-packages", symlinks=True)
    return dest


def test_deleted_python_h_fails_compile_check_and_doctor_names_fix(torch_env, tmp_path, capsys):
    prefix = _conda_like_prefix(torch_env, tmp_path / "conda-env")
    python = prefix / "bin" / "python3"
    header = next(prefix.glob("include/python3*/Python.h"))
    version = subprocess.run(
        [str(python), "-I", "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    rules = tmp_path / "headers.rules"
    rules.write_text("# @relative-to prefix\ninclude/python3*/Python.h\n")
    assert main(["apply", "--no-commit", "--rules", str(rules), str(prefix)]) == 0
    assert not header.exists()
    [result] = run_checks(prefix, python, [VerifyCheck(CheckKind.COMPILE, "torch.compile", "compile", 300)])
    assert result.status is Status.FAIL
    assert "Python.h" in result.error, result.error
    log = tmp_path / "inductor.log"
    log.write_text(result.detail)  # the traceback a user would paste
    assert main(["doctor", "--log", str(log), str(prefix)]) == 5
    explained = capsys.readouterr().out
    assert "InductorError: missing Python.h" in explained
    assert f"conda install -p {prefix} --force-reinstall python=3." in explained
    findings = {f.need: f for f in diagnose(prefix, python)}
    assert not findings["Python.h"].ok
    assert findings["Python.h"].where == str(header)
    fix = f"conda install -p {prefix} --force-reinstall python={version}"
    assert findings["Python.h"].fix.startswith(f"slimmer undo {prefix}  (run ")
    assert findings["Python.h"].fix.endswith(f"not committed; else: {fix})")
    assert "torch.compile" in findings["Python.h"].breaks
    assert findings["torch include folder"].ok
    assert main(["doctor", str(prefix)]) == 5
    out = capsys.readouterr().out
    assert "MISSING  Python.h" in out
    assert fix in out
    assert main(["undo", str(prefix)]) == 0
    assert header.is_file()
    assert {f.need: f for f in diagnose(prefix, python)}["Python.h"].ok


def test_torch_scatter_built_from_sdist_matches_plain_torch(scatter_env, tmp_path):
    python = find_python(scatter_env)
    inv = inventory(python)
    assert any(d["name"] == "torch_scatter" or d["name"] == "torch-scatter" for d in inv["dists"])
    checks = [c for c in discover(inv, compile_check=False) if c.group in ("torch_scatter", "torch-scatter")]
    assert {c.name for c in checks} >= {"import torch_scatter", "op torch_scatter"}
    results = {r.check.name: r for r in run_checks(scatter_env, python, checks)}
    assert results["op torch_scatter"].status is Status.PASS, results["op torch_scatter"].error
    assert results["op torch_scatter"].device == "cpu"
    assert results["import torch_scatter"].status is Status.PASS
    # The op library gone: the op check fails and says why (torch_geometric would have hidden it).
    broken = tmp_path / "env"
    shutil.copytree(scatter_env, broken, symlinks=True)
    lib = next(broken.glob("lib/python3*/site-packages/torch_scatter/_scatter_cpu.so"))
    lib.unlink()
    op = [c for c in checks if c.kind is CheckKind.OP]
    [result] = run_checks(broken, find_python(broken), op)
    assert result.status is Status.FAIL
    assert "_scatter" in result.error, result.error
