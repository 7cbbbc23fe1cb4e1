"""Real PyPI packages whose own API reads data files that `--rules default` selects: after a real
`slimmer apply --rules default` their calls still work, and without the data-file protector the
same rules break them (the control, so the test can fail).

scikit-learn's dataset loaders return the text of `sklearn/datasets/descr/*.rst` (found through
`importlib.resources`); towncrier renders its news file from `towncrier/templates/default.rst|md`
(found through `importlib.resources.files(package + ".templates")`). The environment is built by
`make data-env` (SLIMMER_DATA_ENV).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from slimmer.apply import apply_plan
from slimmer.cli import main
from slimmer.model.plan import Keeper
from slimmer.plan import make_plan
from slimmer.protect import default_protectors
from slimmer.protect.datafiles import DataFileProtector
from slimmer.rules import RuleSet
from tests.helpers import cached_env

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.venv]

SKLEARN = (
    "from sklearn.datasets import load_iris, load_wine, load_diabetes, load_digits\n"
    "for load in (load_iris, load_wine, load_diabetes, load_digits):\n"
    "    print(load.__name__, load().DESCR.splitlines()[2])\n"
)


@pytest.fixture(scope="module")
def data_env() -> Path:
    return cached_env("SLIMMER_DATA_ENV", "data-env")


def _copy(env: Path, dest: Path) -> Path:
    shutil.copytree(env, dest, symlinks=True)
    return dest


def _sklearn(env: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env / "bin/python"), "-c", SKLEARN], capture_output=True, text=True, timeout=300, check=False
    )


def _towncrier(env: Path, project: Path, news: str) -> subprocess.CompletedProcess[str]:
    project.mkdir()
    (project / "changes").mkdir()
    (project / "changes/7.feature").write_text("Slimmed images keep their data files.\n")
    (project / "pyproject.toml").write_text(
        f'[tool.towncrier]\ndirectory = "changes"\nfilename = "{news}"\nname = "demo"\n'
    )
    return subprocess.run(
        [str(env / "bin/python"), "-m", "towncrier", "build", "--draft", "--version", "1.0"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_default_rules_keep_what_sklearn_and_towncrier_read(data_env, tmp_path):
    env = _copy(data_env, tmp_path / "env")
    before = _sklearn(env)
    assert before.returncode == 0, before.stderr
    assert "load_iris Iris plants dataset" in before.stdout

    assert main(["apply", "--rules", "default", str(env)]) == 0

    site = next(env.glob("lib/python3*/site-packages"))
    assert not (site / "sklearn/datasets/tests").exists()  # the rules did run
    assert not any(site.glob("sklearn/**/*.pyx"))
    after = _sklearn(env)
    assert after.returncode == 0, after.stderr
    assert after.stdout == before.stdout
    for news, marker in (("NEWS.rst", "Features\n--------"), ("NEWS.md", "## Features")):
        built = _towncrier(env, tmp_path / news, news)
        assert built.returncode == 0, built.stdout + built.stderr
        assert marker in built.stdout
        assert "Slimmed images keep their data files. (#7)" in built.stdout


def test_the_plan_names_the_reader_of_each_kept_file(data_env):
    plan = make_plan(data_env, RuleSet.load(["default"]), protectors=default_protectors())
    kept = {k.rel.split("site-packages/")[1]: k.reason for k in plan.kept if k.by is Keeper.DATA_FILES}
    assert kept["sklearn/datasets/descr/iris.rst"].startswith("named in sklearn/datasets/_base.py:")
    assert kept["towncrier/templates/default.rst"].startswith("folder .templates opened by towncrier/_settings/")
    removed = {r.rel.split("site-packages/")[1] for r in plan.removals if "site-packages/" in r.rel}
    # What nobody reads still goes: Cython sources, tests, and the docs no code names.
    assert "sklearn/datasets/_svmlight_format_fast.pyx" in removed
    assert "sklearn/datasets/tests/test_base.py" in removed


def test_without_the_protector_the_default_rules_break_both(data_env, tmp_path):
    env = _copy(data_env, tmp_path / "env")
    protectors = tuple(p for p in default_protectors() if not isinstance(p, DataFileProtector))
    plan = make_plan(env, RuleSet.load(["default"]), protectors=protectors)
    apply_plan(plan)
    broken = _sklearn(env)
    assert broken.returncode != 0
    assert "FileNotFoundError" in broken.stderr and "iris.rst" in broken.stderr
    built = _towncrier(env, tmp_path / "project", "NEWS.rst")
    assert built.returncode != 0
    assert "does not have a template named" in built.stdout + built.stderr
