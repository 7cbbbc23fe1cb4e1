from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from slimmer.errors import RuleError
from slimmer.rules import Base, RuleSet, builtin_names

if TYPE_CHECKING:
    from pathlib import Path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_builtin_rule_file_loads():
    names = builtin_names()
    assert {"default", "docs", "bytecode", "cython", "static-libs", "headers", "tests", "torch-tests"} <= set(names)
    for name in names:
        assert RuleSet.load([name]).rules, name


def test_default_composes_the_concern_files():
    sources = {r.source for r in RuleSet.load(["default"]).rules}
    assert {"rules/docs.rules", "rules/bytecode.rules", "rules/tests.rules", "rules/torch-tests.rules"} <= sources


def test_unknown_name_is_one_line_error():
    with pytest.raises(RuleError, match="unknown rule set 'nope'.*built-in name"):
        RuleSet.load(["nope"])


def test_malformed_pattern_names_file_and_line(tmp_path):
    f = write(tmp_path / "bad.rules", "# @relative-to prefix\nok/\n\nfoo[\n")
    with pytest.raises(RuleError, match=r"bad.rules:4: malformed pattern 'foo\['"):
        RuleSet.load([str(f)])


def test_pattern_needs_a_base(tmp_path):
    f = write(tmp_path / "nobase.rules", "# just a comment\n*.md\n")
    with pytest.raises(RuleError, match=r"nobase.rules:2: .*before any '# @relative-to'"):
        RuleSet.load([str(f)])


def test_unknown_base_and_directive(tmp_path):
    f = write(tmp_path / "a.rules", "# @relative-to nowhere\n")
    with pytest.raises(RuleError, match=r"a.rules:1: unknown base 'nowhere'"):
        RuleSet.load([str(f)])
    g = write(tmp_path / "b.rules", "# @frobnicate x\n")
    with pytest.raises(RuleError, match=r"b.rules:1: unknown directive '@frobnicate'"):
        RuleSet.load([str(g)])


def test_include_by_relative_path_and_cycle(tmp_path):
    write(tmp_path / "inner.rules", "# @relative-to site-packages\n*.md\n")
    outer = write(tmp_path / "outer.rules", "# @include ./inner.rules\n# @relative-to prefix\nshare/doc/\n")
    rules = RuleSet.load([str(outer)])
    assert [(r.pattern, r.base, r.line) for r in rules.rules] == [
        ("*.md", Base.SITE_PACKAGES, 2),
        ("share/doc/", Base.PREFIX, 3),
    ]
    write(tmp_path / "x.rules", "# @include ./y.rules\n")
    y = write(tmp_path / "y.rules", "# @include ./x.rules\n")
    with pytest.raises(RuleError, match="include cycle"):
        RuleSet.load([str(y)])


def test_missing_include_names_the_line(tmp_path):
    f = write(tmp_path / "a.rules", "# @relative-to prefix\nx/\n# @include ./missing.rules\n")
    with pytest.raises(RuleError, match=r"a.rules:3: rule file ./missing.rules not found"):
        RuleSet.load([str(f)])


def test_last_matching_line_decides_across_files(tmp_path):
    a = write(tmp_path / "a.rules", "# @relative-to site-packages\ndocs/\n")
    b = write(tmp_path / "b.rules", "# @relative-to site-packages\n!**/docs/keep.md\n")
    rules = RuleSet.load([str(a), str(b)])
    removed = rules.decide({Base.SITE_PACKAGES: "pkg/docs/x.md"})
    kept = rules.decide({Base.SITE_PACKAGES: "pkg/docs/keep.md"})
    assert removed is not None and removed.where.endswith("a.rules:2") and not removed.negated
    assert kept is not None and kept.negated and kept.where.endswith("b.rules:2")


def test_bases_are_separate(tmp_path):
    f = write(tmp_path / "a.rules", "# @relative-to prefix\ninclude/python3*/\n")
    rules = RuleSet.load([str(f)])
    assert rules.decide({Base.PREFIX: "include/python3.11/Python.h"}) is not None
    assert rules.decide({Base.SITE_PACKAGES: "include/python3.11/Python.h"}) is None


def test_keep_protects_on_both_bases(tmp_path):
    f = write(tmp_path / "a.rules", "# @relative-to site-packages\n*.md\n")
    rules = RuleSet.load([str(f)]).with_keep(["README.md"])
    decision = rules.decide({Base.SITE_PACKAGES: "pkg/README.md", Base.PREFIX: "lib/x/pkg/README.md"})
    assert decision is not None and decision.negated and decision.source == "--keep"
    with pytest.raises(RuleError, match="--keep:1: malformed"):
        RuleSet.load([str(f)]).with_keep(["foo["])


def test_explain_lists_every_matching_line(tmp_path):
    f = write(tmp_path / "a.rules", "# @relative-to site-packages\ntests/\n*.py\n!keep_*.py\n")
    decision = RuleSet.load([str(f)]).explain({Base.SITE_PACKAGES: "pkg/tests/keep_me.py"})
    assert [r.line for r in decision.matched] == [2, 3, 4]
    assert decision.rule is not None and decision.rule.line == 4 and not decision.removes


def test_the_rules_command_lists_every_set_with_its_description_and_prints_one(tmp_path, capsys):
    import os

    from slimmer.cli import main
    from slimmer.rules import builtin_rules_dir

    assert main(["rules"]) == 0
    listed = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert sorted(listed) == builtin_names()
    for name, description in listed.items():
        text = (builtin_rules_dir() / f"{name}.rules").read_text(encoding="utf-8")
        assert f"@description {description.strip()}" in " ".join(text.split())
    assert main(["rules", "default"]) == 0
    assert capsys.readouterr().out == (builtin_rules_dir() / "default.rules").read_text(encoding="utf-8")
    fifo = tmp_path / "pipe.rules"
    os.mkfifo(fifo)
    assert main(["rules", str(fifo)]) == 2  # never blocks on a FIFO: one line, the rule-file exit code
    err = capsys.readouterr().err
    assert "not a regular file" in err and len(err.strip().splitlines()) == 1
