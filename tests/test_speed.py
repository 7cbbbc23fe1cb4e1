"""The fast paths of `slimmer apply` give exactly what the slow ones gave (issue 7).

Rule matching's one-regex prefilter, the import scanner's literal search, one warm worker pool for
plan and apply, and RECORD hashes taken while stripping: each is checked against the plain way.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimmer.elf.pool import bounded_map, shared_pool
from slimmer.protect.imports import _IMPORT_HINT, import_text
from slimmer.rules import Action, Base, RuleSet

PATTERNS = """\
# @relative-to site-packages
*.md
!README.md
docs/
/top.txt
**/tests/**
a/**/b
*.py[co]
!keep/*.pyc
[!x]y.cfg
name with space
\\#hash
# @relative-to prefix
share/
!share/keep/
bin/tool?
# @action strip
# @relative-to site-packages
*.so
!nostrip/*.so
"""

PATHS = [
    "README.md",
    "x/README.md",
    "x/a.md",
    "docs/",
    "docs/i.txt",
    "a/docs/",
    "top.txt",
    "a/top.txt",
    "tests/",
    "a/tests/t.py",
    "a/tests/",
    "a/b",
    "a/x/y/b",
    "a/bb",
    "m.pyc",
    "keep/m.pyc",
    "keep/x/m.pyc",
    "ay.cfg",
    "xy.cfg",
    "name with space",
    "#hash",
    "trail ",
    "trail",
    "share/",
    "share/keep/a",
    "share/keep/",
    "bin/tool1",
    "bin/tool12",
    "m.so",
    "nostrip/m.so",
    "deep/nostrip/m.so",
    "plain.txt",
]


def _rules(tmp_path: Path) -> RuleSet:
    path = tmp_path / "t.rules"
    path.write_text(PATTERNS)
    return RuleSet.load([str(path)]).with_keep(["keep2/"])


def _check_file_decide(rules: RuleSet, by_base: dict[Base, str]) -> object:
    """The plain way: pathspec's own GitIgnoreSpec over every pattern of each base, compiled afresh."""
    import pathspec

    best = -1
    for base, rel in by_base.items():
        indices = [i for i, r in enumerate(rules.rules) if r.base is base and r.action is rules.action]
        spec = pathspec.GitIgnoreSpec.from_lines([rules.rules[i].pattern for i in indices])
        index = spec.check_file(rel).index
        if index is not None:
            best = max(best, indices[index])
    return rules.rules[best] if best >= 0 else None


@pytest.mark.parametrize("chunk", [512, 3, 1])  # 3 and 1: the chunked path of a long rule file
@pytest.mark.parametrize("action", list(Action))
def test_rule_prefilter_decides_exactly_like_check_file(tmp_path, action, chunk, monkeypatch):
    monkeypatch.setattr("slimmer.rules._CHUNK", chunk)
    fast = _rules(tmp_path).for_action(action)
    for base, (matcher, _) in fast._compiled().items():
        assert matcher.anything is not None, f"patterns of {base} were not combined: the prefilter is off"
    for rel in PATHS:
        for by_base in ({Base.SITE_PACKAGES: rel}, {Base.PREFIX: rel}, {Base.SITE_PACKAGES: rel, Base.PREFIX: rel}):
            assert fast.decide(by_base) == _check_file_decide(fast, by_base), (rel, by_base)
    # The prefilter does answer "nothing" for most paths, or it would not save anything.
    matcher, _ = fast._compiled()[Base.SITE_PACKAGES]
    assert matcher.anything.search("plain.txt") is None


def _import_text_by_regex(source: bytes) -> bytes:
    """import_text's segments found with the original regular expression."""
    segments, end = [], 0
    for m in _IMPORT_HINT.finditer(source):
        if m.start() < end:
            continue
        start = source.rfind(b"\n", 0, m.start()) + 1
        end = source.find(b"\n", m.end())
        end = len(source) if end < 0 else end
        depth = source.count(b"(", start, end) - source.count(b")", start, end)
        while end < len(source) and (depth > 0 or source[start:end].rstrip().endswith(b"\\")):
            nxt = source.find(b"\n", end + 1)
            nxt = len(source) if nxt < 0 else nxt
            depth += source.count(b"(", end, nxt) - source.count(b")", end, nxt)
            end = nxt
        segments.append(source[start:end])
    return b"\n".join(segments)


EDGES = [
    b"import os",
    b"x = 1\nimport os\n",
    b"__import__('a')",
    b"a__import__('b')",
    b"importlib.import_module('c')",
    b"import_modules",
    b"_import x",
    b"import_",
    b"__import",
    b"import__",
    b"9import a",
    b"__import__9",
    b"reimport\nimported\nimport",
    b"importimport import",
    b"from . import (a,\n b)\nz = 1\n",
    b"import a, \\\n b\n",
    b"i = 'import'\n",
    b"",
    b"import",
    b"__import__",
    b"x.import_module(\n'q')",
]


def test_import_scanner_finds_the_lines_the_regex_finds():
    stdlib = Path(os.__file__).parent
    sources = EDGES + [p.read_bytes() for p in sorted(stdlib.glob("*.py"))]
    for source in sources:
        assert import_text(source).text == _import_text_by_regex(source), source[:80]


def _pid(_item: int) -> int:
    return os.getpid()


def test_a_pool_passed_in_serves_every_map_with_the_same_workers():
    with shared_pool(2) as pool:
        assert pool is not None
        first = {pid for _, pid in bounded_map(_pid, list(range(6)), cost=lambda i: 1, jobs=2, pool=pool)}
        second = {pid for _, pid in bounded_map(_pid, [1], cost=lambda i: 1, pool=pool)}  # small: still a worker
        assert os.getpid() not in first | second
        assert second <= first
        # A map asking for another number of workers gets its own pool, as before.
        other = {pid for _, pid in bounded_map(_pid, list(range(4)), cost=lambda i: 32 << 20, jobs=3, pool=pool)}
        assert not other & first
        # Nothing is global: a map not given the pool inside the block makes its own workers.
        own = {pid for _, pid in bounded_map(_pid, list(range(4)), cost=lambda i: 32 << 20, jobs=2)}
        assert not own & first and os.getpid() not in own
    with shared_pool(1) as pool:  # one job: no pool, the maps run here
        assert pool is None
        assert {pid for _, pid in bounded_map(_pid, [1, 2], cost=lambda i: 1, pool=pool)} == {os.getpid()}


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("strip") is None or shutil.which("cc") is None, reason="needs cc and strip")
def test_record_hash_of_a_stripped_library_matches_its_bytes(tmp_path):
    """The hash the strip step hands to the RECORD rewriter is the hash of what is on disk."""
    from slimmer.cli import main

    site = tmp_path / "env/lib/python3.11/site-packages"
    (site / "pkg").mkdir(parents=True)
    src = tmp_path / "ext.c"
    src.write_text(
        "int answer(void) { return 42; }\n" + "".join(f"int f{i}(int x) {{ return x + {i}; }}\n" for i in range(300))
    )
    ext = site / "pkg/_ext.so"
    subprocess.run(["cc", "-g", "-shared", "-fPIC", "-o", str(ext), str(src)], check=True)
    (site / "pkg/__init__.py").write_text("")
    rows = [[f"pkg/{n}", "sha256=x", "1"] for n in ("__init__.py", "_ext.so")] + [["pkg-1.0.dist-info/RECORD", "", ""]]
    (site / "pkg-1.0.dist-info").mkdir()
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    (site / "pkg-1.0.dist-info/RECORD").write_text(out.getvalue())
    (site / "pkg-1.0.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n")
    before = ext.stat().st_size
    assert main(["apply", "--rules", "strip", str(tmp_path / "env")]) == 0
    data = ext.read_bytes()
    assert len(data) < before
    want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    got = {r[0]: r[1:] for r in csv.reader(io.StringIO((site / "pkg-1.0.dist-info/RECORD").read_text()))}
    assert got["pkg/_ext.so"] == [want, str(len(data))]


def test_apply_starts_no_lief_in_the_main_process(tmp_path):
    """With workers, LIEF (60 MB, 0.7 s to import) is imported by them only."""
    from slimmer.elf.elf64 import ElfFile  # the plain reader, not LIEF

    with ElfFile(os.path.realpath(sys.executable)) as elf:
        if elf.section(".symtab") is None:
            pytest.skip(f"{sys.executable} is already stripped: nothing for the plan to strip")
    env = tmp_path / "env"
    (env / "lib/python3.11/site-packages/pkg").mkdir(parents=True)
    shutil.copy(sys.executable, env / "lib/python3.11/site-packages/pkg/_x.so")
    code = (
        "import sys; from slimmer.cli import main; main(['apply', '--dry-run', '--rules', 'strip', sys.argv[1]]);"
        "assert 'lief' not in sys.modules, 'lief imported in the main process'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(env)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SLIMMER_JOBS": "2"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # The ELF file was analysed (by the workers) and found worth stripping: the plan's strip summary counts it
    # with a saving ("strip" alone would match the header's "rules: strip" even if nothing was analysed).
    summary = re.search(r"^Stripping: 1 of 1 selected ELF files, ([0-9.]+) \S+ predicted$", proc.stdout, re.M)
    assert summary, proc.stdout
    assert float(summary.group(1)) > 0
