"""Data files that kept code reads at run time stay, whatever their suffix (slimmer.protect.datafiles).

Synthetic packages cover each access pattern and are run with the real interpreter after a real
`apply`: what the package reads must still be there, what nobody reads must be gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from slimmer.cli import main
from slimmer.model.plan import Keeper
from slimmer.plan import make_plan
from slimmer.protect import default_protectors
from slimmer.protect.datafiles import DataFileProtector
from slimmer.protect.imports import ImportProtector
from slimmer.protect.metadata import MetadataProtector
from slimmer.rules import RuleSet
from tests.helpers import make_tree

if TYPE_CHECKING:
    from pathlib import Path

SP = "lib/python3.11/site-packages"
GENERIC = "# @relative-to site-packages\n*.rst\n*.md\n*.txt\n*.json\n*.h\n*.pxd\n*.tmpl\n*.a\ntests/\n"

LOADERS = '''\
import os
import pkgutil
from importlib import resources
from pathlib import Path

DESCR_MODULE = "dpkg.descr"


def load_descr(name, module=DESCR_MODULE):
    """Read `name` from `module`, e.g. 'unused.rst' (a docstring is no reference)."""
    return (resources.files(module) / name).read_text()


def iris():
    return load_descr("iris.rst")


def schema():
    return pkgutil.get_data(__name__, "schemas/v1.json").decode()


def template(kind):
    return (Path(__file__).parent / "templates" / f"{kind}.tmpl").read_text()


def headers():
    folder = os.path.join(os.path.dirname(__file__), "include")
    return sorted(os.listdir(folder))

'''

UI = """\
from importlib import resources


def themed(kind):
    package = "dpkg"
    package += ".themes"
    return resources.files(package).joinpath(kind + ".md").read_text()
"""

BESIDE = """\
import os


def words(lang):
    with open(os.path.join(os.path.dirname(__file__), lang + ".txt")) as fh:
        return fh.read().split()
"""

DPKG = {
    f"{SP}/dpkg/__init__.py": "from . import loaders, ui\n",
    f"{SP}/dpkg/ui.py": UI,
    f"{SP}/dpkg/loaders.py": LOADERS,
    f"{SP}/dpkg/descr/__init__.py": "",
    f"{SP}/dpkg/descr/iris.rst": "Iris plants dataset\n",
    f"{SP}/dpkg/descr/unused.rst": "nobody reads this one by name\n",
    f"{SP}/dpkg/schemas/v1.json": '{"type": "object"}\n',
    f"{SP}/dpkg/templates/page.tmpl": "<html>{{ body }}</html>\n",
    f"{SP}/dpkg/templates/mail.tmpl": "Dear {{ name }}\n",
    f"{SP}/dpkg/include/dpkg.h": "#define DPKG 1\n",
    f"{SP}/dpkg/include/dpkg_ops.h": "int op(void);\n",
    # In a subfolder of the folder the code reaches: not protected by that reach (static archives to link)
    f"{SP}/dpkg/include/cupti/libcupti_static.a": "!<arch>\n",
    f"{SP}/dpkg/themes/__init__.py": "",
    f"{SP}/dpkg/themes/dark.md": "# dark\n",
    f"{SP}/dpkg/lang/__init__.py": "",
    f"{SP}/dpkg/lang/words.py": BESIDE,
    f"{SP}/dpkg/lang/en.txt": "one two three\n",
    f"{SP}/dpkg/README.md": "# dpkg\nA real doc file that no code reads.\n",
    f"{SP}/dpkg/docs/guide.rst": "Guide\n=====\n",
    f"{SP}/dpkg/tests/__init__.py": "",
    f"{SP}/dpkg/tests/expected.txt": "only the tests read this\n",
    f"{SP}/dpkg/tests/test_it.py": "open('expected.txt')\n",
    f"{SP}/dpkg-1.0.dist-info/METADATA": "Name: dpkg\nVersion: 1.0\n",
    f"{SP}/dpkg-1.0.dist-info/top_level.txt": "dpkg\n",
    f"{SP}/dpkg-1.0.dist-info/RECORD": "dpkg/__init__.py,,\ndpkg/loaders.py,,\n",
    # Another distribution that names a file of dpkg's: not a reference (not the same distribution).
    f"{SP}/other/__init__.py": "NAME = 'guide.rst'\nopen(NAME)\n",
    f"{SP}/other-2.0.dist-info/METADATA": "Name: other\nVersion: 2.0\n",
    f"{SP}/other-2.0.dist-info/RECORD": "other/__init__.py,,\n",
}

READ_ALL = (
    "import dpkg.ui, dpkg.loaders as l, dpkg.lang.words as w\n"
    "print(l.iris().strip(), l.schema().strip(), l.template('page').strip(), l.headers(), "
    "dpkg.ui.themed('dark').strip(), w.words('en'), sep='|')\n"
)


def _rules(tmp_path: Path, text: str) -> RuleSet:
    path = tmp_path / "test.rules"
    path.write_text(text)
    return RuleSet.load([str(path)])


def _run(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root / SP), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)


def _short(rel: str) -> str:
    return rel.removeprefix(f"{SP}/")


def test_every_access_pattern_is_kept_with_its_reason(tmp_path):
    root = make_tree(tmp_path / "env", DPKG)
    plan = make_plan(root, _rules(tmp_path, GENERIC), protectors=default_protectors())
    kept = {_short(k.rel): k.reason for k in plan.kept if k.by is Keeper.DATA_FILES}
    removed = {_short(r.rel) for r in plan.removals}
    assert kept == {
        "dpkg/descr/iris.rst": "named in dpkg/loaders.py:15",
        "dpkg/schemas/v1.json": "named in dpkg/loaders.py:19",
        "dpkg/templates/page.tmpl": "folder templates opened by dpkg/loaders.py:23",
        "dpkg/templates/mail.tmpl": "folder templates opened by dpkg/loaders.py:23",
        "dpkg/include/dpkg.h": "folder include opened by dpkg/loaders.py:27",
        "dpkg/include/dpkg_ops.h": "folder include opened by dpkg/loaders.py:27",
        "dpkg/themes/dark.md": "folder .themes opened by dpkg/ui.py:6",
        "dpkg/lang/en.txt": "beside dpkg/lang/words.py, which opens files ending .txt from its own folder",
        # resources.files(DESCR_MODULE): the folder is reached by its dotted name, any file in it may be read
        "dpkg/descr/unused.rst": "folder dpkg.descr opened by dpkg/loaders.py:6",
    }
    # Real doc files nobody reads, test data, and a name that only another distribution mentions: removed.
    assert {"dpkg/README.md", "dpkg/docs/guide.rst", "dpkg/tests/expected.txt"} <= removed
    assert "dpkg/include/cupti/libcupti_static.a" in removed
    assert not removed & set(kept)
    assert "dpkg/descr" not in removed and "dpkg/templates" not in removed


def test_after_apply_the_package_still_reads_its_data(tmp_path):
    root = make_tree(tmp_path / "env", DPKG)
    before = _run(root, READ_ALL)
    assert before.returncode == 0, before.stderr
    rules = tmp_path / "test.rules"
    rules.write_text(GENERIC)
    assert main(["apply", "--rules", str(rules), str(root)]) == 0
    after = _run(root, READ_ALL)
    assert after.returncode == 0, after.stderr
    assert after.stdout == before.stdout
    assert not (root / SP / "dpkg/README.md").exists()
    assert not (root / SP / "dpkg/docs/guide.rst").exists()


def test_without_the_protector_the_same_rules_break_the_package(tmp_path):
    """The control: the package really reads these files, so the protector is what keeps it working."""
    root = make_tree(tmp_path / "env", DPKG)
    rules = _rules(tmp_path, GENERIC)
    plan = make_plan(root, rules, protectors=(MetadataProtector(), ImportProtector()))
    removed = {_short(r.rel) for r in plan.removals}
    assert {"dpkg/descr/iris.rst", "dpkg/schemas/v1.json", "dpkg/lang/en.txt"} <= removed
    from slimmer.apply import apply_plan

    apply_plan(plan)
    broken = _run(root, READ_ALL)
    assert broken.returncode != 0
    assert "FileNotFoundError" in broken.stderr


def test_a_rule_that_names_the_place_wins_and_the_plan_says_what_breaks(tmp_path, capsys):
    root = make_tree(tmp_path / "env", DPKG)
    rules = tmp_path / "named.rules"
    rules.write_text("# @relative-to site-packages\ndpkg/descr/*.rst\n*.md\n")
    plan = make_plan(root, RuleSet.load([str(rules)]), protectors=default_protectors())
    removed = {_short(r.rel) for r in plan.removals}
    assert "dpkg/descr/iris.rst" in removed  # the rule names the place: removed on purpose
    assert dict((_short(rel), why) for rel, why in plan.reads)["dpkg/descr/iris.rst"] == "named in dpkg/loaders.py:15"
    assert "dpkg/themes/dark.md" not in removed  # `*.md` names a kind of file: the protector keeps it

    assert main(["plan", "--rules", str(rules), str(root)]) == 0
    out = capsys.readouterr().out
    assert "Stops working: 1 removed file(s) that kept code reads" in out
    assert f"{SP}/dpkg/descr/iris.rst: named in dpkg/loaders.py:15" in out

    assert main(["plan", "--json", "--rules", str(rules), str(root)]) == 0
    reads = json.loads(capsys.readouterr().out)["read_at_run_time"]
    assert {"path": f"{SP}/dpkg/descr/iris.rst", "reader": "named in dpkg/loaders.py:15"} in reads

    assert main(["explain", "--rules", str(rules), str(root), f"{SP}/dpkg/descr/iris.rst"]) == 0
    assert "removed although kept code reads it (named in dpkg/loaders.py:15)" in capsys.readouterr().out


def test_keep_and_negation_still_decide(tmp_path):
    root = make_tree(tmp_path / "env", DPKG)
    rules = _rules(tmp_path, GENERIC + "!dpkg/README.md\n")
    plan = make_plan(root, rules.with_keep(["dpkg/docs/guide.rst"]), protectors=default_protectors())
    removed = {_short(r.rel) for r in plan.removals}
    assert "dpkg/README.md" not in removed
    assert "dpkg/docs/guide.rst" not in removed


def test_reader_removed_by_a_rule_protects_nothing(tmp_path):
    """Only kept code counts: when the module that reads a file goes, so may the file."""
    root = make_tree(tmp_path / "env", DPKG)
    plan = make_plan(root, _rules(tmp_path, GENERIC + "dpkg/lang/\n"), protectors=default_protectors())
    removed = {_short(r.rel) for r in plan.removals}
    assert {"dpkg/lang/en.txt", "dpkg/lang/words.py"} <= removed


def test_never_reads_through_a_link_or_a_fifo(tmp_path):
    root = make_tree(tmp_path / "env", DPKG)
    outside = tmp_path / "outside.py"
    outside.write_text("X = 'guide.rst'\nopen(X)\n")
    (root / SP / "dpkg/linked.py").symlink_to(outside)
    os.mkfifo(root / SP / "dpkg/fifo.py")
    protector = DataFileProtector()
    plan = make_plan(root, _rules(tmp_path, GENERIC), protectors=(protector,))
    assert f"{SP}/dpkg/docs/guide.rst" in {r.rel for r in plan.removals}
    assert protector.stats is not None
    assert protector.stats.readers == protector.stats.scanned == 7  # neither the link nor the FIFO is read


@pytest.mark.parametrize("literal", ["'guide.rst'", "'docs/guide.rst'", "'./docs/guide.rst'", "'dpkg/docs/guide.rst'"])
def test_a_basename_or_path_ending_literal_keeps_the_file(tmp_path, literal):
    files = {**DPKG, f"{SP}/dpkg/docs_reader.py": f"def guide():\n    return {literal}\n"}
    root = make_tree(tmp_path / "env", files)
    plan = make_plan(root, _rules(tmp_path, GENERIC), protectors=default_protectors())
    kept = {_short(k.rel): k.reason for k in plan.kept}
    assert kept["dpkg/docs/guide.rst"] == "named in dpkg/docs_reader.py:2"


def test_a_path_ending_of_another_folder_keeps_nothing(tmp_path):
    files = {**DPKG, f"{SP}/dpkg/docs_reader.py": "GUIDE = 'manual/guide.rst'\n"}
    root = make_tree(tmp_path / "env", files)
    plan = make_plan(root, _rules(tmp_path, GENERIC), protectors=default_protectors())
    assert f"{SP}/dpkg/docs/guide.rst" in {r.rel for r in plan.removals}


def _pkg(root: Path, code: str, data: dict[str, str]) -> Path:
    files = {f"{SP}/p/__init__.py": code, **{f"{SP}/p/{rel}": text for rel, text in data.items()}}
    files[f"{SP}/p-1.0.dist-info/RECORD"] = "p/__init__.py,,\n"
    return make_tree(root, files)


@pytest.mark.parametrize(
    "code",
    [
        "import os\nHERE = os.path.dirname(__file__)\n"
        "def f(n):\n    return open(os.path.join(HERE, 'data', 'fonts', n))\n",
        "from pathlib import Path\ndef f(n):\n    return (Path(__file__).parent / 'data' / 'fonts' / n).open()\n",
        "from pathlib import Path\ndef f(n):\n    return open(Path(__file__).parent / f'data/fonts/{n}')\n",
        "import pkg_resources\n"
        "def f(n):\n    return pkg_resources.resource_filename(__name__, 'data/fonts/%s.ttf' % n)\n",
    ],
)
def test_folder_paths_built_from_several_literals_or_formatting(tmp_path, code):
    root = _pkg(tmp_path / "env", code, {"data/fonts/a.ttf": "font", "data/fonts/README.txt": "doc"})
    rules = _rules(tmp_path, "# @relative-to site-packages\n*.ttf\n")
    plan = make_plan(root, rules, protectors=default_protectors())
    assert f"{SP}/p/data/fonts/a.ttf" in {k.rel for k in plan.kept}


def test_odd_sources_and_names_never_crash_the_plan(tmp_path, capsys):
    deep = "import os\nX = " + "+".join(["'a'"] * 5000) + "\nopen(os.path.join(os.path.dirname(__file__), 'a.csv'))\n"
    root = _pkg(tmp_path / "env", deep, {"a.csv": "1,2\n"})
    (root / SP / "p" / os.fsdecode(b"caf\xe9.csv")).write_bytes(b"x")  # a file name that is not UTF-8
    rules = tmp_path / "r.rules"
    rules.write_text("# @relative-to site-packages\n*.csv\n")
    assert main(["plan", "--json", "--rules", str(rules), str(root)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["files_removed"] >= 1


def test_a_double_star_pattern_names_a_kind_of_file_not_a_place(tmp_path):
    root = _pkg(tmp_path / "env", "def f():\n    return open('a.csv')\n", {"a.csv": "1,2\n"})
    plan = make_plan(
        root, _rules(tmp_path, "# @relative-to site-packages\n**/*.csv\n"), protectors=default_protectors()
    )
    assert f"{SP}/p/a.csv" in {k.rel for k in plan.kept}
    assert plan.reads == ()
