"""`# @action strip`: strip rules select ELF files to strip and never remove; remove rules never strip."""

from __future__ import annotations

import pytest

from slimmer.errors import RuleError
from slimmer.rules import Action, Base, RuleSet

RULES = """\
# @relative-to prefix
*.a
# @action strip
# @relative-to prefix
*.so
!keep_symbols.so
# @action remove
# @relative-to site-packages
tests/
"""


def load(tmp_path, text, name="t.rules"):
    path = tmp_path / name
    path.write_text(text)
    return RuleSet.load([str(path)])


def decide(ruleset, prefix_rel, sp_rel=None):
    bases = {Base.PREFIX: prefix_rel}
    if sp_rel:
        bases[Base.SITE_PACKAGES] = sp_rel
    rule = ruleset.decide(bases)
    return None if rule is None else (rule.pattern, rule.where)


def test_action_applies_until_the_next_action_with_provenance(tmp_path):
    rules = load(tmp_path, RULES)
    actions = {(r.pattern, r.action, r.line) for r in rules.rules}
    assert actions == {
        ("*.a", Action.REMOVE, 2),
        ("*.so", Action.STRIP, 5),
        ("!keep_symbols.so", Action.STRIP, 6),
        ("tests/", Action.REMOVE, 9),
    }


def test_strip_rules_never_remove(tmp_path):
    rules = load(tmp_path, RULES)
    assert decide(rules, "lib/libfoo.so") is None
    assert decide(rules, "lib/libfoo.a") == ("*.a", f"{tmp_path}/t.rules:2")
    assert decide(rules, "lib/python3.11/site-packages/pkg/tests/x.so", "pkg/tests/x.so")[0] == "tests/"


def test_remove_rules_never_strip(tmp_path):
    strip = load(tmp_path, RULES).for_action(Action.STRIP)
    assert decide(strip, "lib/libfoo.so") == ("*.so", f"{tmp_path}/t.rules:5")
    assert decide(strip, "lib/libfoo.a") is None
    assert decide(strip, "lib/python3.11/site-packages/pkg/tests/x.py", "pkg/tests/x.py") is None
    # A "!" line under @action strip keeps a file from stripping, not from removal.
    assert decide(strip, "lib/keep_symbols.so")[0] == "!keep_symbols.so"
    explained = strip.explain({Base.PREFIX: "lib/libfoo.a"})
    assert explained.rule is None
    assert explained.matched == ()


def test_action_does_not_leak_out_of_an_included_file(tmp_path):
    (tmp_path / "inner.rules").write_text("# @action strip\n# @relative-to prefix\n*.so\n")
    outer = load(tmp_path, "# @include ./inner.rules\n# @relative-to prefix\n*.so.1\n", "outer.rules")
    by_pattern = {r.pattern: r.action for r in outer.rules}
    assert by_pattern == {"*.so": Action.STRIP, "*.so.1": Action.REMOVE}


def test_unknown_action_names_file_and_line(tmp_path):
    with pytest.raises(RuleError, match=r"t.rules:2: unknown action 'shred' for @action: use one of remove, strip"):
        load(tmp_path, "# @relative-to prefix\n# @action shred\n")


def test_keep_protects_from_stripping_too(tmp_path):
    rules = load(tmp_path, RULES).with_keep(["libfoo.so"])
    assert decide(rules.for_action(Action.STRIP), "lib/libfoo.so")[0] == "!libfoo.so"
    assert decide(rules.for_action(Action.STRIP), "lib/libbar.so")[0] == "*.so"


def test_default_strips_libraries_and_removes_none_of_them():
    default = RuleSet.load(["default"])
    strip_sources = {r.source for r in default.rules if r.action is Action.STRIP}
    assert strip_sources == {"rules/strip.rules"}
    for rel in ("lib/libfoo.so", "lib/libfoo.so.1.0", "bin/python3.11"):
        assert default.for_action(Action.STRIP).decide({Base.PREFIX: rel}) is not None, rel
        assert default.decide({Base.PREFIX: rel}) is None, rel
