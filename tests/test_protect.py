"""Protection on small synthetic packages and real ELF files: what the kept code needs stays, and why."""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from slimmer.cli import main
from slimmer.elf import identity
from slimmer.elf.analyze import analyse, is_elf
from slimmer.plan import make_plan
from slimmer.protect import default_protectors, imports, libraries
from slimmer.protect.imports import ImportProtector, ModuleFile, import_text, parse_imports
from slimmer.protect.libraries import LibraryProtector
from slimmer.rules import RuleSet
from tests.helpers import make_tree, run_pip

SP = "lib/python3.11/site-packages"


def _rules(tmp_path: Path, text: str) -> RuleSet:
    path = tmp_path / "test.rules"
    path.write_text(text)
    return RuleSet.load([str(path)])


PKG = {
    f"{SP}/pkg/__init__.py": "from pkg import core\n",
    f"{SP}/pkg/core.py": (
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.testing import typing_only\n"
        "def check():\n"
        "    from pkg.testing.helpers import helper\n"
        "    return helper()\n"
        "def dyn():\n"
        "    return importlib.import_module('pkg.testing.dynamic')\n"
    ),
    f"{SP}/pkg/testing/__init__.py": "",
    f"{SP}/pkg/testing/helpers.py": "from . import util\nfrom .sub import deep\ndef helper():\n    return 1\n",
    f"{SP}/pkg/testing/util.py": "X = 1\n",
    f"{SP}/pkg/testing/sub/__init__.py": "",
    f"{SP}/pkg/testing/sub/deep.py": "",
    f"{SP}/pkg/testing/dynamic.py": "",
    f"{SP}/pkg/testing/typing_only.py": "",
    f"{SP}/pkg/testing/unused.py": "import pkg.core\n",
    f"{SP}/pkg/testing/data.txt": "data\n",
    f"{SP}/pkg-1.0.dist-info/METADATA": "Name: pkg\nVersion: 1.0\n",
    f"{SP}/pkg-1.0.dist-info/top_level.txt": "pkg\n",
    f"{SP}/pkg-1.0.dist-info/RECORD": "pkg/__init__.py,,\n",
    f"{SP}/pkg-1.0.dist-info/entry_points.txt": "[console_scripts]\npkg-tool = pkg.tools.cli:main\n",
    f"{SP}/pkg/tools/__init__.py": "",
    f"{SP}/pkg/tools/cli.py": "def main():\n    pass\n",
    f"{SP}/other/__init__.py": "from .extra import thing\n",
    f"{SP}/other/extra.py": "thing = 1\n",
    f"{SP}/other-2.0.dist-info/METADATA": "Name: other\nVersion: 2.0\n",
    f"{SP}/other-2.0.dist-info/RECORD": "other/__init__.py,,\nother/extra.py,,\n",
}


def test_imports_keep_what_kept_code_imports(tmp_path):
    root = make_tree(tmp_path / "env", PKG)
    rules = _rules(tmp_path, "# @relative-to site-packages\npkg/testing/\npkg/tools/\nother/\n")
    plan = make_plan(root, rules, protectors=default_protectors())
    kept = {k.rel.removeprefix(f"{SP}/"): k.reason for k in plan.kept}
    removed = {r.rel.removeprefix(f"{SP}/") for r in plan.removals}
    assert kept["pkg/testing/helpers.py"] == "imported by pkg/core.py"
    assert kept["pkg/testing/util.py"] == "imported by pkg/testing/helpers.py"  # from . import util
    assert kept["pkg/testing/sub/deep.py"] == "imported by pkg/testing/helpers.py"  # from .sub import deep
    assert kept["pkg/testing/sub/__init__.py"] == "imported by pkg/testing/helpers.py"
    assert kept["pkg/testing/__init__.py"].startswith("imported by pkg/")
    assert kept["pkg/testing/dynamic.py"] == "imported by pkg/core.py"  # importlib.import_module literal
    assert kept["pkg/tools/cli.py"] == "entry point console_scripts/pkg-tool of pkg 1.0"
    assert kept["other/__init__.py"] == "top-level module of other 2.0 (import other)"
    assert kept["other/extra.py"] == "imported by other/__init__.py"
    # Nothing kept imports these: they go (a module imported only under TYPE_CHECKING, too).
    assert {"pkg/testing/unused.py", "pkg/testing/typing_only.py", "pkg/testing/data.txt"} <= removed
    assert not {"pkg/testing/helpers.py", "other/extra.py"} & removed


def test_imports_keep_package_inits_of_kept_modules(tmp_path):
    files = {
        f"{SP}/pkg/__init__.py": "",
        f"{SP}/pkg/a/__init__.py": "",
        f"{SP}/pkg/a/b.py": "",
    }
    root = make_tree(tmp_path / "env", files)
    rules = _rules(tmp_path, "# @relative-to site-packages\n__init__.py\n")
    plan = make_plan(root, rules, protectors=default_protectors())
    kept = {k.rel.removeprefix(f"{SP}/"): k.reason for k in plan.kept}
    assert kept == {"pkg/a/__init__.py": "package of pkg/a/b.py", "pkg/__init__.py": "package of pkg/a/b.py"}


def test_without_protection_the_same_rules_remove_them(tmp_path):
    root = make_tree(tmp_path / "env", PKG)
    rules = _rules(tmp_path, "# @relative-to site-packages\npkg/testing/\n")
    plan = make_plan(root, rules)
    assert f"{SP}/pkg/testing/helpers.py" in {r.rel for r in plan.removals}


def test_pth_import_lines_keep_their_module(tmp_path):
    files = {
        f"{SP}/hook.pth": "import _hook_impl\n",
        f"{SP}/_hook_impl.py": "",
        f"{SP}/_other_impl.py": "",
    }
    root = make_tree(tmp_path / "env", files)
    plan = make_plan(
        root, _rules(tmp_path, "# @relative-to site-packages\n_*_impl.py\n"), protectors=default_protectors()
    )
    assert {k.rel: k.reason for k in plan.kept} == {f"{SP}/_hook_impl.py": "imported at start-up by hook.pth"}


@pytest.mark.parametrize(
    ("source", "name", "is_package", "expected"),
    [
        ("import a.b.c as d", "x.y", False, [("a.b.c", ())]),
        ("from .. import z", "x.y.m", False, [("x", ("z",))]),
        ("from . import z", "x.y", True, [("x.y", ("z",))]),
        ("from ...q import r", "a.b.c.m", False, [("a.q", ("r",))]),
        (
            "def f():\n    try:\n        import deep.one\n    except ImportError:\n        pass",
            "m",
            False,
            [("deep.one", ())],
        ),
        ("__import__('p.q')", "m", False, [("p.q", ())]),
        ("if TYPE_CHECKING:\n    import t\nelse:\n    import u", "m", False, [("u", ())]),
        ("print 'python 2'\nimport old\nfrom .rel import x", "p.m", False, [("p.rel", ("x",)), ("old", ())]),
    ],
)
def test_parse_imports(source, name, is_package, expected):
    module = ModuleFile("f.py", name, "", is_package)
    got = sorted((r.base, r.names) for r in parse_imports(source.encode(), module))
    assert got == sorted(expected)


def test_prefilter_sees_multiline_and_continued_imports():
    src = b"x = 1\nfrom a.b import (\n    one,\n    two,\n)\nimport c, \\\n    d\n"
    found = import_text(src)
    assert {b"two", b"d", b"b"} <= found.words
    assert b"a.b" in found.text


def test_plan_reports_what_import_analysis_kept(tmp_path, capsys):
    root = make_tree(tmp_path / "env", PKG)
    rules_file = tmp_path / "t.rules"
    rules_file.write_text("# @relative-to site-packages\npkg/testing/\n")
    assert main(["plan", "--rules", str(rules_file), "-v", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{SP}/pkg/testing/helpers.py: imported by pkg/core.py" in out


def _elf_fixtures() -> Path:
    path = os.environ.get("SLIMMER_ELF_FIXTURES")
    if not path:
        pytest.skip("SLIMMER_ELF_FIXTURES is not set: run the tests with 'make test'")
    if not (Path(path) / ".complete").exists():
        pytest.fail(f"{path} is not built: run 'make elf-fixtures'")
    return Path(path)


@pytest.mark.tools  # the ELF fixtures (gcc, patchelf)
def test_libraries_a_kept_executable_needs_stay(tmp_path):
    root = tmp_path / "prefix"
    shutil.copytree(_elf_fixtures(), root, symlinks=True)
    rules = _rules(tmp_path, "# @relative-to prefix\nlib/libfoo*\nlib/libtiny.so\n")
    protector = LibraryProtector()
    plan = make_plan(root, rules, protectors=(protector,))
    kept = {k.rel: k.reason for k in plan.kept}
    # bin/main has DT_NEEDED libfoo.so.1 and RUNPATH $ORIGIN/../lib: the link and its target stay.
    assert kept["lib/libfoo.so.1"] == "needed by bin/main (DT_NEEDED libfoo.so.1)"
    assert kept["lib/libfoo.so.1.0"] == "needed by bin/main (DT_NEEDED libfoo.so.1)"
    removed = {r.rel for r in plan.removals}
    assert {"lib/libfoo.so", "lib/libtiny.so"} <= removed  # nothing needs them
    assert protector.stats is not None
    assert protector.stats.analysed >= 1
    # And the kept program still runs after apply.
    assert main(["apply", "--rules", str(tmp_path / "test.rules"), str(root)]) == 0
    proc = subprocess.run([str(root / "bin/main")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_library_analysis_runs_in_the_commands_workers(tmp_path):
    # With the command's warm workers, the protector's LIEF reads run there: no LIEF in this process
    # (45 MB), no second pool of workers beside the one that analyses the strip rules' files.
    root = tmp_path / "prefix"
    shutil.copytree(_elf_fixtures(), root, symlinks=True)
    _rules(tmp_path, "# @relative-to prefix\nlib/libfoo*\nlib/libtiny.so\n")
    code = (
        "import sys; from pathlib import Path; from slimmer.plan import make_plan; from slimmer.rules import RuleSet; "
        "from slimmer.elf.pool import shared_pool; from slimmer.protect.libraries import LibraryProtector; "
        "p = LibraryProtector(); pool_cm = shared_pool(2)\n"
        "with pool_cm as pool: make_plan(Path(sys.argv[1]), RuleSet.load([sys.argv[2]]), protectors=(p,), pool=pool)\n"
        "print(p.stats.analysed, 'lief' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(tmp_path / "test.rules")],
        capture_output=True,
        text=True,
        check=True,
    )
    analysed, lief_here = done.stdout.split()
    assert int(analysed) >= 1
    assert lief_here == "False"


@pytest.mark.tools  # the ELF fixtures (gcc, patchelf)
def test_libraries_nothing_read_when_no_library_goes(tmp_path):
    root = tmp_path / "prefix"
    shutil.copytree(_elf_fixtures(), root, symlinks=True)
    protector = LibraryProtector()
    make_plan(root, _rules(tmp_path, "# @relative-to prefix\n*.c\n"), protectors=(protector,))
    assert protector.stats is not None
    assert protector.stats.analysed == 0
    assert protector.stats.candidates == 0


def _elf_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and is_elf(p)]


@pytest.mark.tools  # the ELF fixtures (gcc, patchelf)
def test_the_dynamic_section_reader_agrees_with_lief(tmp_path):
    # What the library protector reads itself (DT_NEEDED, DT_RPATH, DT_RUNPATH through PT_DYNAMIC and
    # DT_STRTAB) is what LIEF reads, on the fixtures (gcc, patchelf-rewritten, RUNPATH $ORIGIN) and,
    # when the torch environment is built, on every library of torch's wheel.
    files = _elf_files(_elf_fixtures())
    torch_env = os.environ.get("SLIMMER_TORCH_ENV")
    if torch_env:
        files += _elf_files(next(Path(torch_env).glob("lib/python3*/site-packages/torch/lib")))
    compared = 0
    for path in files:
        report = analyse(path)
        if report is None or report.error:  # the truncated fixture: LIEF cannot read it either
            continue
        dynamic = identity.read_dynamic(str(path))
        assert dynamic is not None, path
        assert dynamic.needed == tuple(report.needed), path
        assert (dynamic.rpath, dynamic.runpath) == (tuple(report.rpath), tuple(report.runpath)), path
        assert dynamic.soname == report.soname, path
        compared += bool(dynamic.needed)
    assert compared >= 3
    assert "libfoo.so.1" in identity.read_dynamic(str(_elf_fixtures() / "bin/main")).needed
    # A name appended past the ELF data is no DT_NEEDED string.
    tiny = tmp_path / "libtiny.so"
    tiny.write_bytes((_elf_fixtures() / "lib/libtiny.so").read_bytes() + b"libfoo.so.1\0")
    assert "libfoo.so.1" not in identity.read_dynamic(str(tiny)).needed
    # Files it does not take go to LIEF (None); what cannot be opened as a file needs nothing.
    (tmp_path / "not-elf.so").write_bytes(b"#!/bin/sh\n" * 10)
    assert identity.read_dynamic(str(tmp_path / "not-elf.so")) is None
    big_endian = bytearray((_elf_fixtures() / "lib/libtiny.so").read_bytes())
    big_endian[5] = 2
    (tmp_path / "be.so").write_bytes(bytes(big_endian))
    assert identity.read_dynamic(str(tmp_path / "be.so")) is None
    (tmp_path / "link.so").symlink_to(_elf_fixtures() / "bin/main")
    assert identity.read_dynamic(str(tmp_path / "link.so")) == identity.NO_NEEDS


@pytest.mark.parametrize("at", [4, 60, 61, 62, 63, 64, 65, 100, 120, 155, 156])
def test_library_scan_finds_a_name_wherever_the_chunks_cut_it(tmp_path, monkeypatch, at):
    # Chunks of 64 bytes: the name lies inside one, across the cut, or ends the file.
    monkeypatch.setattr(libraries, "_CHUNK", 64)
    needles = re.compile(re.escape(b"libfoo.so.1\0") + b"|" + re.escape(b"libz.so\0"))
    data = bytearray(b"\x7fELF" + b"x" * 160)
    data[at : at + 12] = b"libfoo.so.1\0"
    path = tmp_path / "lib.so"
    path.write_bytes(bytes(data[:168]))
    assert libraries._mentions(str(path), needles, 12)
    path.write_bytes(bytes(data[:at]) + b"libfoo.so.1" + b"y" * 100)  # no NUL: not a DT_NEEDED string
    assert not libraries._mentions(str(path), needles, 12)
    path.write_bytes(b"libfoo.so.1\0" * 20)  # not ELF: never searched
    assert not libraries._mentions(str(path), needles, 12)


def test_library_scan_memory_does_not_grow_with_the_file(tmp_path):
    # 200 MB without the name: the scan holds one chunk, not the file or a heap of 8 MB pieces.
    path = tmp_path / "big.so"
    with path.open("wb") as f:
        f.write(b"\x7fELF")
        f.truncate(200 << 20)
    needles = re.compile(re.escape(b"libfoo.so.1\0"))
    code = (
        "import resource, sys, re; from slimmer.protect import libraries as l; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"assert not l._mentions(sys.argv[1], re.compile({needles.pattern!r}), 12); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert int(done.stdout) < 8 * 1024, f"the scan grew the process by {done.stdout} KB"


# ---- A real venv, a real wheel, pip: RECORD agrees with the disk after apply --------------------


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(dest: Path) -> Path:
    files = {
        "demo/__init__.py": "from demo.core import run\n",
        "demo/core.py": "def run():\n    from demo.testing.helpers import answer\n    return answer()\n",
        "demo/testing/__init__.py": "",
        "demo/testing/helpers.py": "def answer():\n    return 42\n",
        "demo/testing/test_big.py": "# a test nothing imports\n" + "x = 1\n" * 2000,
        "demo/README.md": "# demo\n",
        "demo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
        "demo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "demo-1.0.dist-info/top_level.txt": "demo\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, text in files.items():
        writer.writerow([name, _hash(text.encode()), len(text.encode())])
    writer.writerow(["demo-1.0.dist-info/RECORD", "", ""])
    path = dest / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr("demo-1.0.dist-info/RECORD", record.getvalue())
    return path


@pytest.mark.slow
@pytest.mark.venv
def test_pip_agrees_with_the_disk_after_apply(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    wheel = _wheel(tmp_path)
    proc = run_pip(venv, "install", "--no-index", "--no-deps", str(wheel), timeout=300)
    assert proc.returncode == 0, proc.stderr
    site = next(venv.glob("lib/python3*/site-packages"))
    record = site / "demo-1.0.dist-info/RECORD"
    before = record.read_text()
    rules = tmp_path / "demo.rules"
    rules.write_text("# @relative-to site-packages\ndemo/testing/\n*.md\n")
    assert main(["apply", "--no-commit", "--rules", str(rules), str(venv)]) == 0
    assert (site / "demo/testing/helpers.py").is_file()  # demo.core imports it
    assert not (site / "demo/testing/test_big.py").exists()
    rows = [r[0] for r in csv.reader(io.StringIO(record.read_text()))]
    assert "demo/testing/test_big.py" not in rows
    assert "demo/README.md" not in rows
    assert "demo/testing/helpers.py" in rows
    assert all((site / r).exists() for r in rows if not r.startswith("..")), rows

    py = str(venv / "bin/python")
    check = "import demo, importlib.metadata as m; assert demo.run() == 42; "
    check += "assert all(f.locate().exists() for f in m.files('demo')), [f for f in m.files('demo')]"
    assert subprocess.run([py, "-c", check], capture_output=True, text=True, check=False).returncode == 0
    proc = run_pip(venv, "check", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_pip(venv, "show", "-f", "demo", timeout=300)
    assert "demo/testing/helpers.py" in proc.stdout
    assert "test_big.py" not in proc.stdout

    # undo restores the old RECORD with the files
    assert main(["undo", str(venv)]) == 0
    assert record.read_text() == before
    assert (site / "demo/testing/test_big.py").is_file()

    assert main(["apply", "--rules", str(rules), str(venv)]) == 0
    proc = run_pip(venv, "uninstall", "-y", "demo", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (site / "demo").exists()
    assert not (site / "demo-1.0.dist-info").exists()


def test_import_analysis_is_fast_on_many_files(tmp_path):
    files = {f"{SP}/big/__init__.py": ""}
    for i in range(2000):
        files[f"{SP}/big/m{i}.py"] = f"import os\nfrom big import m{(i + 1) % 2000}\n" + "y = 1\n" * 50
    files[f"{SP}/big/tests/__init__.py"] = ""
    files[f"{SP}/big/tests/test_x.py"] = "import big\n"
    root = make_tree(tmp_path / "env", files)
    protector = ImportProtector()
    start = time.monotonic()
    plan = make_plan(root, _rules(tmp_path, "# @relative-to site-packages\ntests/\n"), protectors=(protector,))
    assert time.monotonic() - start < 10
    assert protector.stats is not None
    assert protector.stats.parsed == 0  # nothing names big.tests: no file needs parsing
    assert {r.rel for r in plan.removals} >= {f"{SP}/big/tests/test_x.py"}


def test_egg_info_installed_files_follow_the_disk(tmp_path):
    files = {
        f"{SP}/foo/__init__.py": "",
        f"{SP}/foo/tests/test_a.py": "",
        f"{SP}/foo-1.0-py3.11.egg-info/PKG-INFO": "Name: foo\nVersion: 1.0\n",
        f"{SP}/foo-1.0-py3.11.egg-info/installed-files.txt": "../foo/__init__.py\n../foo/tests/test_a.py\nPKG-INFO\n",
    }
    root = make_tree(tmp_path / "env", files)
    rules = tmp_path / "t.rules"
    rules.write_text("# @relative-to site-packages\ntests/\n")
    listing = root / SP / "foo-1.0-py3.11.egg-info/installed-files.txt"
    assert main(["apply", "--no-commit", "--rules", str(rules), str(root)]) == 0
    assert listing.read_text() == "../foo/__init__.py\nPKG-INFO\n"
    assert main(["undo", str(root)]) == 0
    assert "test_a.py" in listing.read_text()


def test_profiles_keep_or_remove_compile_headers_and_say_what_breaks(tmp_path, capsys):
    files = {
        f"{SP}/torch/__init__.py": "",
        f"{SP}/torch/include/torch/csrc/inductor/cpp_prefix.h": "#pragma once\n",
        f"{SP}/torch-9.0.dist-info/METADATA": "Name: torch\nVersion: 9.0\n",
        "include/python3.11/Python.h": "/* */\n",
    }
    root = make_tree(tmp_path / "env", files)
    header = f"{SP}/torch/include/torch/csrc/inductor/cpp_prefix.h"

    assert main(["plan", "--json", "--rules", "compile-headers", str(root)]) == 0
    plan = json.loads(capsys.readouterr().out)
    kept = {k["path"]: k["reason"] for k in plan["kept"]}
    assert "compile-needs.rules" in kept[header]
    assert "torch.compile will fail" in kept[header]
    assert "Python.h" in kept["include/python3.11/Python.h"]
    assert plan["breaks"] == []
    assert plan["rules"] == ["compile-headers", "profile default"]

    assert main(["plan", "--json", "--rules", "default", "--profile", "runtime", str(root)]) == 0
    plan = json.loads(capsys.readouterr().out)
    removed = {r["path"] for r in plan["removed"]}
    assert {header, "include/python3.11/Python.h"} <= removed
    breaks = {b["what"]: b["files"] for b in plan["breaks"]}
    assert any(w.startswith("torch.compile will fail") for w in breaks), breaks
    assert any("Python.h" in w for w in breaks), breaks

    assert main(["plan", "--profile", "runtime", str(root)]) == 0
    assert "Stops working after this plan" in capsys.readouterr().out
    assert main(["plan", "--profile", "nope", str(root)]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_breaks_covers_one_paragraph(tmp_path):
    rules = _rules(
        tmp_path,
        "# @relative-to site-packages\n# @breaks x will fail: y\na/\nb/\n\nc/\n",
    )
    assert [(r.pattern, r.breaks) for r in rules.rules] == [
        ("a/", "x will fail: y"),
        ("b/", "x will fail: y"),
        ("c/", ""),
    ]


def test_text_filter_keeps_what_parsing_everything_keeps(tmp_path):
    root = make_tree(tmp_path / "env", PKG)
    rules = _rules(tmp_path, "# @relative-to site-packages\npkg/testing/\npkg/tools/\nother/\n")
    filtered = make_plan(root, rules, protectors=(ImportProtector(),))
    everything = make_plan(root, rules, protectors=(ImportProtector(filter_by_text=False),))
    assert {(k.rel, k.reason) for k in filtered.kept} == {(k.rel, k.reason) for k in everything.kept}


def test_a_module_linked_from_outside_the_root_is_never_read(tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("import pkg.testing.helpers\n")
    root = make_tree(tmp_path / "env", PKG)
    (root / SP / "pkg/linked.py").symlink_to(outside)
    protector = ImportProtector()
    plan = make_plan(root, _rules(tmp_path, "# @relative-to site-packages\npkg/testing/\n"), protectors=(protector,))
    reasons = {k.reason for k in plan.kept}
    assert "imported by pkg/linked.py" not in reasons
    assert "imported by pkg/core.py" in reasons


def test_explain_names_the_protection(tmp_path, capsys):
    root = make_tree(tmp_path / "env", PKG)
    rules = tmp_path / "t.rules"
    rules.write_text("# @relative-to site-packages\npkg/testing/\n")
    assert main(["explain", "--rules", str(rules), str(root), f"{SP}/pkg/testing/util.py"]) == 0
    assert "but kept: imported by pkg/testing/helpers.py" in capsys.readouterr().out


def _big_module(body_in_string: bool) -> bytes:
    parts = ["from typing import TYPE_CHECKING\nimport os\n"]
    for i in range(1500):
        parts.append(f"@decorator_{i}\ndef f{i}(x):\n    import pkg.lazy{i % 7}\n    return x  # {'.' * 150}\n\n")
        if i == 400:
            parts.append("if TYPE_CHECKING:\n    import pkg.only_for_types\nelse:\n    from . import sibling\n")
        if i == 700:
            # A triple-quoted string whose lines start at column 0 with `def`: a cut inside it must not count.
            lines = 3000 if body_in_string else 1
            text = "\n".join(f"def not_code_{j}(): import pkg.in_a_string" for j in range(lines))
            parts.append(f'DOC = """\n{text}\n"""\n')
        if i == 900:
            parts.append("class K:\n    from .deep import thing\n")
    return "".join(parts).encode()


@pytest.mark.parametrize("body_in_string", [False, True])
def test_a_large_module_parsed_in_pieces_gives_the_whole_files_imports_in_order(body_in_string):
    source = _big_module(body_in_string)
    assert len(source) > imports._PIECES_ABOVE
    module = ModuleFile("pkg/big.py", "pkg.big", "", False)
    whole = imports._statement_imports(ast.parse(source), module)
    pieces = imports._parse_in_pieces(source, module)
    if body_in_string:  # 150 KB of string: a cut falls inside it, that piece does not parse, the file is parsed whole
        assert pieces is None
    else:
        assert pieces == whole
    assert parse_imports(source, module)[: len(whole)] == whole
    names = {ref.base for ref in whole}
    assert {"os", "pkg.lazy3", "pkg", "pkg.deep"} <= names
    assert "pkg.only_for_types" not in names
    assert "pkg.in_a_string" not in names


def test_a_module_that_declares_its_encoding_is_parsed_whole():
    source = b"# -*- coding: latin-1 -*-\n" + _big_module(False)
    assert imports._parse_in_pieces(source, ModuleFile("pkg/big.py", "pkg.big", "", False)) is None
