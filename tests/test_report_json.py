"""`report.plan_to_dict` and `render_plan` on a small tree, compared with what they printed before
strip decisions and kept paths carried typed rule references (`Rule`, `Keeper`): the JSON keeps
the same keys and the same strings ("file:line" rules, the keeper's name)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from slimmer.model.plan import Keeper, Kept
from slimmer.plan import make_plan
from slimmer.protect import default_protectors
from slimmer.report import plan_to_dict, render_plan
from slimmer.rules import RuleSet
from slimmer.verify.rollback import _candidates, _subplan
from tests.helpers import make_tree

if TYPE_CHECKING:
    from slimmer.model.plan import Plan

SP = "lib/python3.11/site-packages"
RULES = """\
# @relative-to site-packages
*.md
tests/
!pkg/tests/keep.py
_impl.py
# @breaks pkg docs
docs/
# @action strip
# @relative-to prefix
*.so
"""
TREE: dict[str, str | bytes] = {
    f"{SP}/pkg/__init__.py": "from pkg import _impl\n",
    f"{SP}/pkg/_impl.py": "X = 1\n",
    f"{SP}/pkg/other/_impl.py": "Y = 2\n",
    f"{SP}/pkg/README.md": "readme\n",
    f"{SP}/pkg/tests/test_a.py": "assert True\n",
    f"{SP}/pkg/tests/keep.py": "kept\n",
    f"{SP}/pkg/docs/a.txt": "docs" * 100,
    f"{SP}/pkg/libfake.so": "not an ELF file\n",
    f"{SP}/pkg-1.0.dist-info/METADATA": "Name: pkg\nVersion: 1.0\n",
    f"{SP}/pkg-1.0.dist-info/top_level.txt": "pkg\n",
    f"{SP}/pkg-1.0.dist-info/LICENSE.md": "license\n",
    f"{SP}/pkg-1.0.dist-info/RECORD": "pkg/__init__.py,,\n",
}
GOLDEN = Path(__file__).parent / "golden"


def _plan(tmp_path: Path) -> Plan:
    root = make_tree(tmp_path / "env", TREE)
    (tmp_path / "t.rules").write_text(RULES)
    return make_plan(root, RuleSet.load([str(tmp_path / "t.rules")]), protectors=default_protectors())


def test_plan_json_is_what_it_was_before_typed_rule_references(tmp_path):
    """golden/report_plan.json was written by the code before StripDecision.rule became a `Rule`
    and Kept.by a `Keeper`: every key and value is the same (paths under tmp_path as TMP)."""
    plan = _plan(tmp_path)
    got = json.loads(json.dumps(plan_to_dict(plan)).replace(str(tmp_path), "TMP"))
    got["seconds"] = 0
    assert got == json.loads((GOLDEN / "report_plan.json").read_text())
    # what the golden file holds is what this test is about: each kind of keeper and a strip rule
    assert {k["by"] for k in got["kept"]} == {"rule", "import analysis", "package metadata"}
    assert got["strip"]["files"][0]["rule"] == "TMP/t.rules:10"


def test_plan_text_is_what_it_was_before_typed_rule_references(tmp_path):
    text = render_plan(_plan(tmp_path), verbose=True).replace(str(tmp_path), "TMP")
    text = re.sub(r"Planned in [0-9.]+ s\.", "Planned in S s.", text)
    # column widths follow the length of the temporary path: compare the words, not the padding
    assert _words(text + "\n") == _words((GOLDEN / "report_plan.txt").read_text())


def _words(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_every_default_protector_is_a_known_keeper_and_kept_paths_carry_it(tmp_path):
    """A protector renamed or added without its `Keeper` would show as OTHER: this fails first."""
    assert {Keeper.named(p.name) for p in default_protectors()} == {
        Keeper.METADATA,
        Keeper.IMPORTS,
        Keeper.DATA_FILES,
        Keeper.LIBRARIES,
    }
    kept = {k.rel.rpartition("/")[2]: k for k in _plan(tmp_path).kept}
    assert (kept["keep.py"].by, kept["_impl.py"].by, kept["LICENSE.md"].by) == (
        Keeper.RULE,
        Keeper.IMPORTS,
        Keeper.METADATA,
    )
    assert Kept("x", 0, None, "why", "someone else's protector").by is Keeper.OTHER


def test_strip_decisions_carry_their_rule_and_the_culprit_search_reads_its_line_from_it(tmp_path):
    """The culprit search orders rule lines by (file, line) taken from the `Rule` itself, and
    picks a strip decision by its rule: nothing parses "file:line" back."""
    plan = _plan(tmp_path)
    rule = plan.strips[0].rule
    assert rule is not None and (rule.line, rule.pattern) == (10, "*.so")
    saving = dataclasses.replace(plan.strips[0], saving=100)
    plan = dataclasses.replace(plan, strips=(saving,))
    rules = str(tmp_path / "t.rules")
    # by line number (2 < 10), not by the "file:line" string (":10" < ":2")
    assert list(_candidates(plan).items()) == [
        (f"{rules}:2", f"{rules}:2 '*.md'"),
        (f"{rules}:3", f"{rules}:3 'tests/'"),
        (f"{rules}:5", f"{rules}:5 '_impl.py'"),
        (f"{rules}:7", f"{rules}:7 'docs/'"),
        (f"{rules}:10", f"{rules}:10 (strip)"),
    ]
    assert _subplan(plan, frozenset({rule.where})).strips == (saving,)
    assert _subplan(plan, frozenset({plan.removals[0].rule.where})).strips == ()
