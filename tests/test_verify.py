"""`slimmer verify`, `apply --verify` and `doctor` on a small real venv: real interpreter, real
distributions (dist-info, RECORD, top_level.txt), a real C extension compiled here."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from typing import TYPE_CHECKING

import pytest

from slimmer.cli import main
from slimmer.errors import UsageError
from slimmer.verify.checks import CheckKind, Status, VerifyCheck
from slimmer.verify.config import load_checks
from slimmer.verify.doctor import Distro, diagnose, diagnose_log, python_headers_fix
from slimmer.verify.rollback import _narrow
from slimmer.verify.runner import verify
from tests.helpers import listing, make_tree

if TYPE_CHECKING:
    from pathlib import Path

EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
EXTENSION_C = """
#include <Python.h>
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "fastmod", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_fastmod(void) { return PyModule_Create(&mod); }
"""
# The first lines of the Inductor error in ../shared/seeds/000_*.txt, as a user would paste them.
SEED_LOG = """\
torch._inductor.exc.InductorError: CppCompileError: C++ compile error

Command:
g++ /tmp/torchinductor_u/cx/cxyve26b.cpp -D TORCH_INDUCTOR_CPP_WRAPPER -shared -fPIC -O3 -I/usr/include/python3.13 \
-I/home/u/.local/lib/python3.13/site-packages/torch/include -ltorch -o /tmp/torchinductor_u/cx/cxyve26b.so

Output:
/tmp/torchinductor_u/cx/cxyve26b.cpp:94:10: fatal error: Python.h: No such file or directory
   94 | #include <Python.h>
compilation terminated.
"""


def _dist(sp: Path, name: str, files: dict[str, str | bytes], top_level: str) -> None:
    make_tree(sp, files)
    info = f"{name}-1.0.dist-info"
    record = [f"{rel},," for rel in files] + [f"{info}/{n},," for n in ("METADATA", "RECORD", "top_level.txt")]
    make_tree(
        sp,
        {
            f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
            f"{info}/top_level.txt": top_level,
            f"{info}/RECORD": "\n".join(record) + "\n",
        },
    )


@pytest.fixture(scope="module")
def small_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with distributions that import, fail, crash, hang, and a compiled extension."""
    root = tmp_path_factory.mktemp("verify") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    sp = next(root.glob("lib/python3*/site-packages"))
    _dist(
        sp,
        "goodpkg",
        {
            "goodpkg/__init__.py": "import json, pathlib\n"
            "CONFIG = json.loads((pathlib.Path(__file__).parent / 'data' / 'config.json').read_text())\n",
            "goodpkg/data/config.json": '{"ok": true}',
            "goodpkg/README.md": "docs",
        },
        "goodpkg\ntests\n",
    )
    _dist(sp, "brokenpkg", {"brokenpkg.py": "raise ImportError('libfoo.so.1: cannot open shared object file')\n"}, "")
    _dist(sp, "crashy", {"crashy.py": "import os\nos.abort()\n", "zafter.py": "X = 1\n"}, "crashy\nzafter\n")
    _dist(sp, "sleepy", {"sleepy.py": "import time\ntime.sleep(60)\n"}, "sleepy\n")
    # top_level.txt naming a module the wheel does not ship (xxhash 4.1 names `_xxhash`)
    _dist(sp, "hashy", {"hashy/__init__.py": ""}, "_hashy\nhashy\n")
    # an optional dependency that was never installed (cuda.bindings needs numpy): skipped, not failed;
    # a module that an installed distribution claims but lost (brokenpkg's libfoo case) still fails
    _dist(sp, "optdep", {"optdep/__init__.py": "import numpy_never_installed_zz\n"}, "optdep\n")
    _dist(sp, "lostdep", {"lostdep/__init__.py": "import hashy.gone\n"}, "lostdep\n")
    # a standard-library module this interpreter lacks (Debian's python3 without python3-tk has no
    # tkinter; winreg is a standard module no Linux build has): the venv's stdlib is outside ROOT
    _dist(sp, "tkish", {"tkish/__init__.py": "import winreg\n"}, "tkish\n")
    src = root.parent / "fastmod.c"
    src.write_text(EXTENSION_C)
    ext = f"fast/fastmod{EXT_SUFFIX}"
    (sp / "fast").mkdir()
    include = sysconfig.get_paths()["include"]
    subprocess.run(["gcc", "-shared", "-fPIC", f"-I{include}", str(src), "-o", str(sp / ext)], check=True)
    _dist(sp, "fast", {"fast/__init__.py": "", ext: (sp / ext).read_bytes()}, "fast\n")
    # the same extension in a package that imports it itself: the probe finds it already loaded
    eager = f"eager/fastmod{EXT_SUFFIX}"
    _dist(sp, "eager", {"eager/__init__.py": "from . import fastmod\n", eager: (sp / ext).read_bytes()}, "eager\n")
    return root


def _by_name(results):
    return {r.check.name: r for r in results}


def test_verify_reports_each_check(small_env):
    before = listing(small_env)
    extra = [
        VerifyCheck(CheckKind.PYTHON, "import goodpkg; assert goodpkg.CONFIG['ok']", "user"),
        VerifyCheck(CheckKind.PYTHON, "assert 1 == 2, 'user says no'", "user"),
        VerifyCheck(CheckKind.COMMAND, "python -c 'import fast.fastmod' && exit 3", "user"),
    ]
    report = verify(small_env, extra=extra, timeout=4)
    got = _by_name(report.results)
    assert got["import goodpkg"].status is Status.PASS
    assert got["import tests"].status is Status.SKIP
    assert "test folder" in got["import tests"].error
    assert got["import brokenpkg"].error == "ImportError: libfoo.so.1: cannot open shared object file"
    # A crash is blamed on the module that crashed; the rest of its group runs again.
    assert got["import crashy"].status is Status.FAIL
    assert got["import crashy"].error.startswith("crashed (SIGABRT)")
    assert got["import zafter"].status is Status.PASS
    assert got["import hashy"].status is Status.PASS
    assert got["import _hashy"].status is Status.SKIP  # a pristine environment passes verify
    assert "no file of the distribution provides it" in got["import _hashy"].error
    assert got["import optdep"].status is Status.SKIP
    assert got["import optdep"].error.startswith("needs numpy_never_installed_zz, which no installed distribution")
    assert got["import lostdep"].status is Status.FAIL  # hashy is installed: its lost module is a breakage
    assert got["import tkish"].status is Status.SKIP
    assert "needs winreg, which this interpreter's standard library" in got["import tkish"].error
    assert got["import sleepy"].error == "timed out after 4 s"
    assert got["extension fast.fastmod"].status is Status.PASS
    assert got["extension fast.fastmod"].detail == "loaded directly"  # fast/__init__.py does not import it
    assert got["extension eager.fastmod"].status is Status.PASS
    assert got["extension eager.fastmod"].detail == "loaded by its package"
    assert got["python import goodpkg; assert goodpkg.CONFIG['ok']"].status is Status.PASS
    assert got["python assert 1 == 2, 'user says no'"].error == "AssertionError: user says no"
    assert got["command python -c 'import fast.fastmod' && exit 3"].error.startswith("exit 3")
    assert not any(r.check.kind is CheckKind.COMPILE for r in report.results)  # no torch here
    assert {r.check.name for r in report.failed} == {
        "import lostdep",
        "import brokenpkg",
        "import crashy",
        "import sleepy",
        "python assert 1 == 2, 'user says no'",
        "command python -c 'import fast.fastmod' && exit 3",
    }
    assert listing(small_env) == before  # verify writes nothing into the environment (no __pycache__)


def test_verify_cli_table_json_and_exit_code(small_env, capsys):
    assert main(["verify", str(small_env), "--check-timeout", "3"]) == 5
    captured = capsys.readouterr()
    assert "import brokenpkg" in captured.out
    assert "ImportError: libfoo.so.1" in captured.out
    assert "check(s) failed" in captured.err
    assert main(["verify", str(small_env), "--check-timeout", "3", "--json"]) == 5
    data = json.loads(capsys.readouterr().out)
    rows = {c["check"]: c for c in data["checks"]}
    assert rows["import goodpkg"]["result"] == "pass"
    assert rows["import brokenpkg"]["result"] == "fail"
    assert data["ok"] is False


def test_verify_without_interpreter_is_a_usage_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "--python" in capsys.readouterr().err


def _rules(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mine.rules"
    path.write_text("# @relative-to site-packages\n" + "\n".join(lines) + "\n")
    return path


def test_apply_verify_rolls_back_and_names_the_rule(small_env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = _rules(tmp_path, "goodpkg/README.md", "goodpkg/data/")
    before = listing(small_env)
    code = main(["apply", "--verify", "--rules", str(rules), "--check-timeout", "3", str(small_env)])
    err = capsys.readouterr().err
    assert code == 5
    assert listing(small_env) - {".slimmer"} == before  # everything restored
    # Checks that failed before slimming are reported, not blamed on it.
    already = err.split("Checks that failed before slimming", 1)[1].split("Checks that slimming broke", 1)[0]
    assert "import brokenpkg" in already
    broke = err.split("Checks that slimming broke", 1)[1]
    assert "import goodpkg" in broke
    assert "import brokenpkg" not in broke
    assert f"{rules}:3 'goodpkg/data/'" in broke
    assert "mine.rules:2" not in broke
    assert "FileNotFoundError" in err.splitlines()[-1]


def test_apply_verify_commits_when_nothing_breaks(small_env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme = next(small_env.glob("lib/python3*/site-packages/goodpkg/README.md"))
    rules = _rules(tmp_path, "goodpkg/README.md")
    assert main(["apply", "--verify", "--rules", str(rules), "--check-timeout", "3", str(small_env)]) == 0
    assert "checks pass after slimming" in capsys.readouterr().err
    assert not readme.exists()
    readme.write_text("docs")


def test_user_checks_from_pyproject(tmp_path):
    config = tmp_path / "pyproject.toml"
    config.write_text(
        textwrap.dedent(
            """
            [tool.slimmer]
            checks = ["import goodpkg", { command = "true", timeout = 5 }, { python = "pass" }]
            """
        )
    )
    checks = load_checks(config)
    assert [(c.kind, c.target, c.timeout) for c in checks] == [
        (CheckKind.PYTHON, "import goodpkg", 120.0),
        (CheckKind.COMMAND, "true", 5.0),
        (CheckKind.PYTHON, "pass", 120.0),
    ]
    config.write_text('[tool.slimmer]\nchecks = [{ shell = "x" }]\n')
    with pytest.raises(UsageError, match=r"checks\[0\]: expected a Python snippet") as info:
        load_checks(config)
    assert str(info.value).startswith(f"{config}: checks[0]: ")


def test_narrow_finds_one_line_and_says_when_lines_only_break_together():
    lines = list("abcdefgh")
    tried = []

    def fails(subset):
        tried.append(subset)
        return "f" in subset

    assert _narrow(lines, fails, deadline=float("inf")) == (["f"], True)
    assert len(tried) <= 6

    def both(subset):
        return "b" in subset and "g" in subset

    assert _narrow(lines, both, deadline=float("inf")) == (lines, False)


DEBIAN = Distro("debian", (), "Debian GNU/Linux 12")
FEDORA = Distro("fedora", (), "Fedora Linux 41")
UBUNTU = Distro("ubuntu", ("debian",), "Ubuntu 24.04")


def test_doctor_log_names_header_and_fix_per_distribution():
    found = diagnose_log(SEED_LOG, distro=UBUNTU)
    assert found is not None
    assert (found.error, found.missing, found.looked_in) == ("InductorError", "Python.h", ("/usr/include/python3.13",))
    assert found.fix == "apt-get install -y python3.13-dev"
    assert diagnose_log(SEED_LOG, distro=FEDORA).fix == "dnf install -y python3.13-devel"
    assert diagnose_log("all good", distro=DEBIAN) is None
    cxx = diagnose_log("torch._inductor.exc.InvalidCxxCompiler: No working C++ compiler found", distro=DEBIAN)
    assert (cxx.missing, cxx.fix) == ("C++ compiler", "apt-get install -y g++")


def test_python_headers_fix_follows_the_owner():
    assert python_headers_fix("/usr/include/python3.12", "3.12.3", DEBIAN) == "apt-get install -y python3.12-dev"
    assert python_headers_fix("/usr/include/python3.11", "3.11.2", FEDORA) == "dnf install -y python3.11-devel"
    conda = python_headers_fix(
        "/opt/conda/envs/py/include/python3.11", "3.11.9", DEBIAN, conda_prefix="/opt/conda/envs/py"
    )
    assert conda == "conda install -p /opt/conda/envs/py --force-reinstall python=3.11.9"
    pyenv = python_headers_fix("/root/.pyenv/versions/3.11.7/include/python3.11", "3.11.7", DEBIAN)
    assert pyenv == "pyenv install --force 3.11.7"


def test_doctor_cli_log(tmp_path, capsys):
    log = tmp_path / "build.log"
    log.write_text(SEED_LOG)
    assert main(["doctor", "--log", str(log)]) == 5
    out = capsys.readouterr().out
    assert "InductorError: missing Python.h" in out
    assert "python3.13-dev" in out or "python3.13-devel" in out


def test_doctor_on_small_env_without_torch(small_env):
    findings = {f.need: f for f in diagnose(small_env, small_env / "bin" / "python")}
    assert findings["Python.h"].ok
    assert "torch include folder" not in findings  # no torch: nothing to say about its headers


def test_runtime_profile_skips_the_compile_check():
    import click
    from click.testing import CliRunner

    from slimmer.commands.verify import apply_verify_options
    from slimmer.verify.runner import discover

    inv = {"dists": [{"name": "torch", "modules": ["torch"], "skipped": {}, "extensions": [], "op_library": "torch"}]}
    assert "compile torch.compile" in {c.name for c in discover(inv)}
    assert "compile torch.compile" not in {c.name for c in discover(inv, compile_check=False)}
    seen = []

    @click.command()
    @click.option("--profile")
    @apply_verify_options
    def fake_apply(profile, verify):
        seen.append(verify.compile_check)

    assert CliRunner().invoke(fake_apply, ["--verify", "--profile", "runtime"]).exit_code == 0
    assert CliRunner().invoke(fake_apply, ["--verify", "--profile", "default"]).exit_code == 0
    assert seen == [False, True]


def test_culprit_is_the_line_that_decides_the_file_not_the_folder_around_it(small_env, tmp_path):
    from slimmer.plan import make_plan
    from slimmer.rules import RuleSet
    from slimmer.verify.rollback import apply_verified
    from slimmer.verify.runner import discover, find_python, inventory

    rules = _rules(tmp_path, "goodpkg/README.md", "goodpkg/data/", "goodpkg/data/config.json")
    plan = make_plan(small_env, RuleSet.load([str(rules)]))
    assert any(u.rel.endswith("goodpkg/data") for u in plan.units)  # the folder goes whole, under line 3
    python = find_python(small_env)
    checks = [c for c in discover(inventory(python)) if c.group == "goodpkg" and not c.skip_reason]
    before = listing(small_env)
    done = apply_verified(plan, python, checks)
    assert [r.check.name for r in done.broken] == ["import goodpkg"]
    assert done.culprit is not None
    assert done.culprit.lines == (f"{rules}:4 'goodpkg/data/config.json'",)
    assert done.culprit.exact
    assert "FileNotFoundError" in done.culprit.failures[0].error
    assert listing(small_env) - {".slimmer"} == before - {".slimmer"}


def test_a_missing_stdlib_module_inside_root_stays_a_failure(tmp_path):
    """In a conda prefix the standard library is inside ROOT: slimming could have removed it."""
    from slimmer.verify.checks import CheckResult
    from slimmer.verify.runner import optional_dependencies

    check = VerifyCheck(CheckKind.IMPORT, "tkish", "tkish")
    failed = CheckResult(check, Status.FAIL, 0.1, "ModuleNotFoundError: No module named 'winreg'", "")
    inv = {"dists": [], "stdlib": str(tmp_path / "lib" / "python3.11")}
    [inside] = optional_dependencies(inv, [failed], tmp_path)
    assert inside.status is Status.FAIL
    [outside] = optional_dependencies(inv, [failed], tmp_path / "other-root")
    assert outside.status is Status.SKIP
