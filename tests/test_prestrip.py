"""Strips made while the plan runs (`slimmer.elf.prestrip`), on the real binaries of fixtures/elf."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slimmer.apply import apply_plan, undo
from slimmer.elf.analyze import analyse
from slimmer.elf.pool import shared_pool
from slimmer.elf.prestrip import Prestrips, early_strips
from slimmer.elf.strip import Stripper
from slimmer.journal import root_lock
from slimmer.model.plan import Verdict
from slimmer.plan import make_plan
from slimmer.rules import RuleSet
from tests.test_elf import built, root  # noqa: F401 - fixtures

STRIPPED = ("lib/libfoo.so.1.0", "bin/main", "lib/libx.so.1.0")


def _scratch(where: Path) -> list[Path]:
    return sorted((where / ".slimmer").glob("prestrip-*"))


def _ready_inodes(prestrips: Prestrips) -> dict[str, int]:
    folder = Path(prestrips.folder)
    return {rel: (folder / made.name).stat().st_ino for rel, made in prestrips._ready.items()}


def test_apply_uses_the_strips_made_while_planning(root):  # noqa: F811
    before = {rel: (root / rel).read_bytes() for rel in STRIPPED}
    mode = (root / "bin/main").stat().st_mode
    with shared_pool(2) as pool, root_lock(root, reentrant=True), early_strips(root, pool) as prestrips:
        assert prestrips is not None
        plan = make_plan(root, RuleSet.load(["strip"]), pool=pool, trial_strips=False, prestrips=prestrips)
        to_strip = {d.rel for d in plan.strips if d.verdict is Verdict.STRIP}
        assert set(STRIPPED) <= to_strip
        # The plan stripped them into the scratch folder and changed nothing under the root.
        made = _ready_inodes(prestrips)
        assert set(STRIPPED) <= set(made)
        assert {rel: (root / rel).read_bytes() for rel in STRIPPED} == before
        assert len(_scratch(root)) == 1
        result = apply_plan(plan, commit=False, rewriters=(Stripper(pool=pool, prestrips=prestrips),))
    stripped = {rel for rel, _, _ in result.rewritten["strip"]}
    assert set(STRIPPED) <= stripped
    for rel in STRIPPED:
        st = (root / rel).stat()
        assert st.st_ino == made[rel], f"{rel} was stripped again instead of using the early strip"
        assert st.st_size < len(before[rel])
        assert analyse(root / rel).stripped
    assert (root / "bin/main").stat().st_mode == mode
    assert _scratch(root) == []  # the scratch folder is gone with the command
    assert not list(root.rglob("*.slimmer-tmp"))
    undo(root)
    assert {rel: (root / rel).read_bytes() for rel in STRIPPED} == before


def test_a_file_changed_after_its_early_strip_is_stripped_again(root):  # noqa: F811
    rel = "lib/libfoo.so.1.0"
    with shared_pool(2) as pool, root_lock(root, reentrant=True), early_strips(root, pool) as prestrips:
        assert prestrips is not None
        plan = make_plan(root, RuleSet.load(["strip"]), pool=pool, trial_strips=False, prestrips=prestrips)
        stale = _ready_inodes(prestrips)[rel]
        st = (root / rel).stat()
        os.utime(root / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime: not the file it stripped
        result = apply_plan(plan, commit=True, rewriters=(Stripper(pool=pool, prestrips=prestrips),))
    assert rel in {r for r, _, _ in result.rewritten["strip"]}
    assert (root / rel).stat().st_ino != stale
    assert analyse(root / rel).stripped


def test_the_next_run_sweeps_a_killed_runs_scratch_but_never_follows_a_link(root, tmp_path):  # noqa: F811
    with Prestrips.opened(root):
        pass  # makes ROOT/.slimmer as slimmer makes it
    state = root / ".slimmer"
    left = state / "prestrip-123-0badcafe"
    left.mkdir(mode=0o700)
    (left / "0123456789abcdef.stripped").write_bytes(b"half a library")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "0123456789abcdef.stripped").write_bytes(b"not ours")
    (state / "prestrip-456-0badcafe").symlink_to(outside)
    with Prestrips.opened(root) as prestrips:
        assert not left.exists()
        assert Path(prestrips.folder).is_dir()
    assert (outside / "0123456789abcdef.stripped").read_bytes() == b"not ours"
    assert (state / "prestrip-456-0badcafe").is_symlink()
    assert [p.name for p in _scratch(root)] == ["prestrip-456-0badcafe"]


def test_no_early_strips_without_workers(root):  # noqa: F811
    with early_strips(root, None) as prestrips:
        assert prestrips is None
    assert _scratch(root) == []


@pytest.mark.parametrize("command", [["apply", "--rules", "strip"], ["apply", "--rules", "strip", "--no-commit"]])
def test_cli_apply_leaves_no_scratch_folder(root, command):  # noqa: F811
    from slimmer.cli import main

    assert main([*command, str(root)]) == 0
    assert _scratch(root) == []
    assert analyse(root / "lib/libfoo.so.1.0").stripped


def _text(path: Path) -> bytes:
    from slimmer.elf.elf64 import ElfFile

    with ElfFile(path) as elf:
        text = elf.section(".text")
        assert text is not None
        return elf.read(text.offset, text.size)


def _text_offset(path: Path) -> int:
    from slimmer.elf.elf64 import ElfFile

    with ElfFile(path) as elf:
        text = elf.section(".text")
        assert text is not None
        return text.offset


def test_a_file_rewritten_in_place_with_its_size_and_mtime_kept_is_stripped_again(root):  # noqa: F811
    """`cp -p`, `rsync --inplace -t` or a tar extraction over the file keep its inode, size and
    mtime: only its ctime tells that the early strip was made from other bytes."""
    rel = "lib/libfoo.so.1.0"
    path = root / rel
    with shared_pool(2) as pool, root_lock(root, reentrant=True), early_strips(root, pool) as prestrips:
        assert prestrips is not None
        plan = make_plan(root, RuleSet.load(["strip"]), pool=pool, trial_strips=False, prestrips=prestrips)
        assert rel in _ready_inodes(prestrips)
        st = path.stat()
        offset = _text_offset(path)
        with path.open("r+b") as fh:
            fh.seek(offset)
            old = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([old[0] ^ 0xFF]))  # new code, same size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns) == (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
        )
        new_text = _text(path)
        apply_plan(plan, commit=True, rewriters=(Stripper(pool=pool, prestrips=prestrips),))
    assert analyse(path).stripped
    assert _text(path) == new_text, "apply put in a strip of the bytes the file held before"


@pytest.mark.parametrize(
    ("rules", "jobs"),
    [("strip", "1"), ("docs", None)],
    ids=["one job: no workers", "no strip rule: no workers"],
)
def test_every_apply_sweeps_a_killed_runs_scratch(root, monkeypatch, rules, jobs):  # noqa: F811
    """A run killed while planning leaves stripped copies in ROOT/.slimmer (hundreds of MB for
    torch): the next apply deletes them, with or without workers."""
    from slimmer.cli import main

    with Prestrips.opened(root):
        pass  # makes ROOT/.slimmer as slimmer makes it
    left = root / ".slimmer" / "prestrip-123-0badcafe"
    left.mkdir(mode=0o700)
    (left / "0123456789abcdef.stripped").write_bytes(b"half a library")
    if jobs is not None:
        monkeypatch.setenv("SLIMMER_JOBS", jobs)
    assert main(["apply", "--rules", rules, str(root)]) == 0
    assert _scratch(root) == []
