"""Plans on small real trees in tmp_path: exactly what goes and what stays, for every layout."""

from __future__ import annotations

import os

import pytest

from slimmer.layout import Layout
from slimmer.plan import make_plan
from slimmer.protect import default_protectors
from slimmer.rules import RuleSet
from slimmer.walk import walk
from tests.helpers import make_tree

RULES = """\
# @relative-to site-packages
torch/test/
tests/
*.md
!LICENSE*
# @relative-to prefix
include/python3*/
__pycache__/
*.a
"""

SITE = {
    "conda env": "lib/python3.11/site-packages",
    "venv": "lib/python3.12/site-packages",
    "/usr/local": "lib/python3.11/dist-packages",
    "debian /usr": "lib/python3/dist-packages",
}


def plan_for(root, rules_text, tmp_path, keep=()):
    rules_file = tmp_path / "t.rules"
    rules_file.write_text(rules_text)
    rules = RuleSet.load([str(rules_file)]).with_keep(keep)
    return make_plan(root, rules, protectors=default_protectors())


def removed(plan):
    return {r.rel for r in plan.removals}


@pytest.mark.parametrize("kind", list(SITE))
def test_same_rules_work_for_every_layout(tmp_path, kind):
    sp = SITE[kind]
    root = make_tree(
        tmp_path / "root",
        {
            f"{sp}/torch/__init__.py": "",
            f"{sp}/torch/test/a_test": "x" * 100,
            f"{sp}/pkg/tests/test_a.py": "t",
            f"{sp}/pkg/README.md": "r",
            f"{sp}/pkg/LICENSE.md": "l",
            f"{sp}/pkg/__pycache__/x.pyc": "c",
            f"{sp}/pkg-1.0.dist-info/RECORD": "pkg/__init__.py,,\npkg/README.md,,\n",
            f"{sp}/pkg-1.0.dist-info/README.md": "metadata",
            "include/python3.11/Python.h": "h",
            "lib/libfoo.a": "a",
            "bin/python3": "p",
        },
    )
    plan = plan_for(root, RULES, tmp_path)
    assert plan.layout.site_packages == (sp,)
    assert removed(plan) == {
        f"{sp}/torch/test",
        f"{sp}/torch/test/a_test",
        f"{sp}/pkg/tests",
        f"{sp}/pkg/tests/test_a.py",
        f"{sp}/pkg/README.md",
        f"{sp}/pkg/__pycache__",
        f"{sp}/pkg/__pycache__/x.pyc",
        "include/python3.11",
        "include/python3.11/Python.h",
        "lib/libfoo.a",
    }
    # Whole folders move in one rename; the metadata README is protected.
    assert {u.rel for u in plan.units} >= {f"{sp}/torch/test", f"{sp}/pkg/tests", "include/python3.11"}
    assert f"{sp}/pkg-1.0.dist-info/README.md" in {k.rel for k in plan.kept}
    assert plan.by_distribution()["pkg 1.0"][0] == 3  # README.md, tests/test_a.py, x.pyc


def test_pip_target_folder_is_its_own_site_packages(tmp_path):
    root = make_tree(
        tmp_path / "target",
        {"torch/test/t": "x", "torch/__init__.py": "", "torch-2.0.dist-info/RECORD": "", "doc.md": "d"},
    )
    plan = plan_for(root, RULES, tmp_path)
    assert plan.layout.site_packages == ("",)
    assert removed(plan) == {"torch/test", "torch/test/t", "doc.md"}


def test_negation_inside_a_removed_folder_keeps_the_file_and_its_folders(tmp_path):
    sp = SITE["venv"]
    root = make_tree(tmp_path / "r", {f"{sp}/pkg/tests/LICENSE": "l", f"{sp}/pkg/tests/t.py": "t"})
    plan = plan_for(root, RULES, tmp_path)
    assert removed(plan) == {f"{sp}/pkg/tests/t.py"}
    assert [k.rel for k in plan.kept] == [f"{sp}/pkg/tests/LICENSE"]
    assert "t.rules:5" in plan.kept[0].reason


def test_keep_option_protects(tmp_path):
    sp = SITE["venv"]
    root = make_tree(tmp_path / "r", {f"{sp}/torch/test/a": "a", f"{sp}/torch/test/b": "b"})
    plan = plan_for(root, RULES, tmp_path, keep=["torch/test/b"])
    assert removed(plan) == {f"{sp}/torch/test/a"}


def test_hard_links_free_space_once_and_only_when_every_link_goes(tmp_path):
    sp = SITE["venv"]
    root = make_tree(tmp_path / "r", {f"{sp}/a/tests/big": "x" * 1000, f"{sp}/b/kept": ""})
    os.link(root / sp / "a/tests/big", root / sp / "a/tests/big2")
    plan = plan_for(root, RULES, tmp_path)
    assert plan.bytes_removed == 1000  # two links, one inode
    os.unlink(root / sp / "b/kept")
    os.link(root / sp / "a/tests/big", root / sp / "b/kept")  # a third link that stays
    plan = plan_for(root, RULES, tmp_path)
    assert removed(plan) >= {f"{sp}/a/tests/big", f"{sp}/a/tests/big2"}
    assert plan.bytes_removed == 0


def test_hard_link_outside_root_frees_nothing_and_is_reported(tmp_path):
    sp = SITE["venv"]
    root = make_tree(tmp_path / "r", {f"{sp}/a/README.md": "x" * 500})
    os.link(root / sp / "a/README.md", tmp_path / "outside-link")
    plan = plan_for(root, RULES, tmp_path)
    assert removed(plan) == {f"{sp}/a/README.md"}
    assert plan.bytes_removed == 0
    assert any("hard links outside the root" in w for w in plan.warnings)


def test_symlinks_are_matched_as_links_and_never_followed(tmp_path):
    sp = SITE["venv"]
    outside = make_tree(tmp_path / "outside", {"tests/secret.md": "s", "doc.md": "d"})
    root = make_tree(tmp_path / "r", {f"{sp}/pkg/__init__.py": ""})
    os.symlink(outside / "doc.md", root / sp / "pkg" / "linked.md")
    os.symlink(outside / "tests", root / sp / "pkg" / "dirlink")
    plan = plan_for(root, RULES, tmp_path)
    # The matching link goes (as a link); the folder link is not entered, so nothing under it is seen.
    assert removed(plan) == {f"{sp}/pkg/linked.md"}
    assert plan.removals[0].kind.value == "link"
    tree = walk(root)
    assert not any("secret" in e.rel for e in tree.entries)


def test_plan_changes_nothing(tmp_path):
    sp = SITE["venv"]
    root = make_tree(tmp_path / "r", {f"{sp}/torch/test/a": "a", "include/python3.11/Python.h": "h"})
    before = sorted(p.as_posix() for p in root.rglob("*"))
    plan_for(root, RULES, tmp_path)
    assert sorted(p.as_posix() for p in root.rglob("*")) == before
    assert not (root / ".slimmer").exists()


def test_layout_ignores_nested_site_packages(tmp_path):
    root = make_tree(
        tmp_path / "r",
        {"lib/python3.11/site-packages/x/site-packages/y.py": "", "lib/python3.11/site-packages/a.py": ""},
    )
    layout = Layout.detect(walk(root))
    assert layout.site_packages == ("lib/python3.11/site-packages",)
    assert layout.prefixes == ("",)
