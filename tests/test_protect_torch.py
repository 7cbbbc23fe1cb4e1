"""The seed recipe's removals as rules on a real torch environment: protection keeps torch working.

Under the default profile every smoke check passes (import, a tensor op, functorch, torch.compile);
under `--profile runtime` the plan says torch.compile stops working, the rest still works, and it
removes at least as many bytes as the seed recipe's shell lines on the same environment.
Afterwards pip agrees with the disk: RECORD hashes, `pip check`, `pip uninstall -y`.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from slimmer.cli import main
from tests.helpers import REPO, run_pip, run_smoke

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.torch

SEED_SCRIPT = REPO.parent / "shared" / "bench" / "seed_recipe.sh"


def _site(env: Path) -> Path:
    return next(env.glob("lib/python3*/site-packages"))


def _bytes(root: Path) -> int:
    """Bytes of every file and link under root, each inode once (what `du` counts, less folders)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if ".slimmer" in dirnames:
            dirnames.remove(".slimmer")
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _record_problems(site: Path) -> list[str]:
    problems = []
    for record in site.glob("*.dist-info/RECORD"):
        with record.open(newline="") as fh:
            for row in csv.reader(fh):
                if not row or row[0].startswith(".."):
                    continue
                path = site / row[0]
                if not path.exists():
                    problems.append(f"{record.parent.name}: {row[0]} is listed but gone")
                elif row[1]:
                    digest = hashlib.sha256(path.read_bytes()).digest()
                    if row[1] != "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode():
                        problems.append(f"{record.parent.name}: {row[0]} has another hash")
    return problems


def _apply_json(env: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["apply", "--json", "--rules", "default", "--rules", "seed-recipe", *args, str(env)]) == 0
    return json.loads(capsys.readouterr().out)


def test_seed_rules_default_profile_keeps_torch_working(torch_copy, capsys):
    site = _site(torch_copy)
    result = _apply_json(torch_copy, capsys)
    kept = {k["path"].removeprefix(f"{site.relative_to(torch_copy)}/"): k["reason"] for k in result["plan"]["kept"]}
    assert kept["torch/testing/_internal/logging_tensor.py"] == "imported by torch/utils/checkpoint.py"
    assert kept["functorch/__init__.py"].startswith("top-level module of torch")
    assert "compile-needs.rules" in kept["torch/include/torch/csrc/inductor/cpp_prefix.h"]
    assert all(reason for reason in kept.values())
    assert result["plan"]["breaks"] == []
    # What nothing imports still goes.
    assert not (site / "torch/testing/_internal/common_nn.py").exists()
    assert not (site / "torch/test").exists()
    assert (site / "torch/testing/_internal/logging_tensor.py").is_file()

    proc = run_smoke(torch_copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") == 4

    assert _record_problems(site) == []
    proc = run_pip(torch_copy, "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_pip(torch_copy, "show", "-f", "torch")
    assert "torch/testing/_internal/logging_tensor.py" in proc.stdout
    assert "torch/testing/_internal/common_nn.py" not in proc.stdout
    proc = run_pip(torch_copy, "uninstall", "-y", "torch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(site.glob("torch-*.dist-info"))
    assert not (site / "torch/__init__.py").exists()


def test_runtime_profile_reports_compile_and_beats_the_seed_recipe(torch_env, torch_copy, tmp_path, capsys):
    assert (
        main(
            ["plan", "--json", "--rules", "default", "--rules", "seed-recipe", "--profile", "runtime", str(torch_copy)]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert any(b["what"].startswith("torch.compile will fail") for b in plan["breaks"]), plan["breaks"]

    before = _bytes(torch_copy)
    _apply_json(torch_copy, capsys, "--profile", "runtime")
    removed = before - _bytes(torch_copy)
    site = _site(torch_copy)
    assert not (site / "torch/include").exists()
    proc = run_smoke(torch_copy)
    lines = proc.stdout.splitlines()
    assert [ln.split()[0] for ln in lines if ln.startswith(("ok", "FAIL"))] == ["ok", "ok", "ok", "FAIL"], proc.stdout
    assert run_pip(torch_copy, "check").returncode == 0
    assert _record_problems(site) == []

    if not SEED_SCRIPT.is_file():
        pytest.fail(f"{SEED_SCRIPT} is missing: the seed recipe lives beside the repository, in shared/bench")
    seed_env = tmp_path / "seed"
    shutil.copytree(torch_env, seed_env, symlinks=True)
    seed_before = _bytes(seed_env)
    subprocess.run(["bash", str(SEED_SCRIPT), str(seed_env)], check=True, capture_output=True, timeout=600)
    seed_removed = seed_before - _bytes(seed_env)
    assert removed >= seed_removed, f"runtime profile removed {removed} bytes, the seed recipe {seed_removed}"


def test_import_text_filter_misses_nothing(torch_env):
    """The text filters only skip parsing: on torch with the seed rules, parsing every kept module
    keeps exactly the same files. Reads the cached environment, changes nothing."""
    from slimmer.dists import Owners
    from slimmer.layout import Layout
    from slimmer.model.plan import PlanContext
    from slimmer.plan import _decide_all
    from slimmer.profiles import with_profile
    from slimmer.protect import imports
    from slimmer.rules import RuleSet
    from slimmer.walk import walk

    rules = with_profile(RuleSet.load(["default", "seed-recipe"]), "runtime")
    tree = walk(torch_env)
    layout = Layout.detect(tree)
    ctx = PlanContext(tree=tree, layout=layout, owners=Owners(tree, layout), rules=rules)
    removing, _ = _decide_all(tree, layout, rules)
    imports._CACHE.clear()
    filtered = imports.ImportProtector()
    kept = filtered.protect(ctx, dict(removing))
    imports._CACHE.clear()
    everything = imports.ImportProtector(filter_by_text=False)
    assert everything.protect(ctx, dict(removing)) == kept
    assert filtered.stats is not None
    assert everything.stats is not None
    assert filtered.stats.parsed * 10 < everything.stats.parsed
    assert "lib/python3.11/site-packages/torch/testing/_internal/logging_tensor.py" in kept
