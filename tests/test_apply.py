"""apply / undo / commit on real trees: exact results, journal, locking and every safety edge."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slimmer import apply as apply_mod
from slimmer.apply import apply_plan, commit, undo
from slimmer.errors import (
    LockedError,
    NothingToCommitError,
    NothingToUndoError,
    SlimmerError,
    StateConflictError,
    UsageError,
)
from slimmer.journal import Journal, RunState, root_lock
from slimmer.plan import make_plan
from slimmer.protect import default_protectors
from slimmer.rules import RuleSet
from slimmer.targets import check_root
from tests.helpers import listing, make_tree, snapshot

SP = "lib/python3.11/site-packages"
RULES = "# @relative-to site-packages\ntests/\n*.md\n# @relative-to prefix\n__pycache__/\n"


@pytest.fixture
def rules(tmp_path):
    f = tmp_path / "t.rules"
    f.write_text(RULES)
    return RuleSet.load([str(f)])


@pytest.fixture
def env(tmp_path):
    root = make_tree(
        tmp_path / "env",
        {
            f"{SP}/pkg/__init__.py": "init",
            f"{SP}/pkg/README.md": "readme",
            f"{SP}/pkg/tests/test_x.py": "test",
            f"{SP}/pkg/tests/data/blob.bin": b"\0" * 4096,
            f"{SP}/pkg/__pycache__/m.cpython-311.pyc": b"pyc",
            f"{SP}/other/tests/t.py": "t",
            "bin/tool": "#!/bin/sh\n",
        },
    )
    os.chmod(root / "bin/tool", 0o755)
    return root


def plan(root, rules):
    return make_plan(root, rules, protectors=default_protectors())


GONE = {
    f"{SP}/pkg/README.md",
    f"{SP}/pkg/tests",
    f"{SP}/pkg/tests/test_x.py",
    f"{SP}/pkg/tests/data",
    f"{SP}/pkg/tests/data/blob.bin",
    f"{SP}/pkg/__pycache__",
    f"{SP}/pkg/__pycache__/m.cpython-311.pyc",
    f"{SP}/other/tests",
    f"{SP}/other/tests/t.py",
}


def test_apply_removes_exactly_the_plan_and_commits(env, rules):
    before = listing(env)
    result = apply_plan(plan(env, rules))
    assert listing(env) == before - GONE
    assert result.committed and not result.failures
    assert result.freed == len("readme") + len("test") + 4096 + len("pyc") + len("t")
    journal = Journal.latest(env)
    assert journal is not None and journal.state() is RunState.COMMITTED
    assert not journal.staged.exists()
    with pytest.raises(NothingToUndoError, match="committed"):
        undo(env)


def test_no_commit_then_undo_restores_bytes_and_modes(env, rules):
    before = snapshot(env)
    result = apply_plan(plan(env, rules), commit=False)
    assert not result.committed
    assert not (env / SP / "pkg/tests").exists()
    run_id, restored, problems = undo(env)
    assert (run_id, problems) == (result.run_id, [])
    assert restored == result.staged
    assert snapshot(env) == before
    with pytest.raises(NothingToUndoError, match="already undone"):
        undo(env)


def test_unfinished_run_blocks_a_new_one_until_commit(env, rules):
    apply_plan(plan(env, rules), commit=False)
    with pytest.raises(StateConflictError, match="unfinished run") as conflict:
        apply_plan(plan(env, rules))
    assert conflict.value.exit_code not in (SlimmerError.exit_code, UsageError.exit_code)
    commit(env)
    assert not (env / SP / "pkg/tests").exists()
    with pytest.raises(NothingToCommitError, match="nothing to commit") as nothing:
        commit(env)
    assert not isinstance(nothing.value, NothingToUndoError)


def test_before_commit_saying_no_undoes_everything(env, rules):
    before = snapshot(env)
    seen = {}

    def judge(result):
        seen["missing"] = not (env / SP / "pkg/README.md").exists()
        return False

    result = apply_plan(plan(env, rules), before_commit=judge)
    assert seen == {"missing": True}
    assert result.undone and not result.committed
    assert snapshot(env) == before


def test_run_interrupted_half_way_is_restored_by_undo(env, rules, monkeypatch):
    before = snapshot(env)
    real_stage = apply_mod._Mover.stage
    calls = {"n": 0}

    def dying_stage(self, rel):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_stage(self, rel)

    monkeypatch.setattr(apply_mod._Mover, "stage", dying_stage)
    with pytest.raises(KeyboardInterrupt):
        apply_plan(plan(env, rules))
    monkeypatch.undo()
    assert snapshot(env) != before
    undo(env)
    assert snapshot(env) == before


def test_run_killed_by_sigkill_is_restored_by_undo(tmp_path, rules):
    files = {f"{SP}/p{i}/tests/t{j}.py": "x" for i in range(300) for j in range(10)}
    root = make_tree(tmp_path / "big", files)
    before = snapshot(root)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from slimmer import apply as a\n"
        "from slimmer.plan import make_plan\n"
        "from slimmer.rules import RuleSet\n"
        "real = a._Mover.stage\n"
        "def slow(self, rel):\n"
        "    real(self, rel); time.sleep(0.01)\n"
        "a._Mover.stage = slow\n"
        f"p = make_plan(Path({str(root)!r}), RuleSet.load([{str(tmp_path / 't.rules')!r}]))\n"
        "print('go', flush=True)\n"
        "a.apply_plan(p)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    journal = Journal.latest(root)
    assert journal is not None and journal.state() is RunState.OPEN
    assert snapshot(root) != before  # it was killed half-way
    undo(root)
    assert snapshot(root) == before


def test_second_run_refuses_or_waits_for_the_lock(env, rules):
    with root_lock(env), pytest.raises(LockedError, match="another run"):
        apply_plan(plan(env, rules))

    # The waiting half: another holder has the lock when apply starts and keeps it a while; apply must
    # block until it is released, then run (not fail, and not run beside it).
    the_plan = plan(env, rules)  # made first: planning must not eat the holder's time
    acquired = threading.Event()
    released_at: list[float] = []
    failures: list[BaseException] = []

    def hold():
        try:
            with root_lock(env):
                acquired.set()
                time.sleep(1.0)
                released_at.append(time.monotonic())
        except BaseException as exc:
            failures.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    assert acquired.wait(30), failures
    started = time.monotonic()
    result = apply_plan(the_plan, wait=30)
    ended = time.monotonic()
    holder.join()
    assert not failures
    assert result.committed
    assert started < released_at[0] <= ended  # it started while the lock was held and ended after release


@pytest.mark.tools  # chattr
def test_unremovable_file_is_reported_and_the_run_goes_on(env, rules):
    target = env / SP / "pkg/README.md"
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        result = apply_plan(plan(env, rules))
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=False)
    assert [rel for rel, _ in result.failures] == [f"{SP}/pkg/README.md"]
    assert target.exists()
    assert not (env / SP / "pkg/tests").exists()
    assert result.committed


def test_symlinked_folder_swapped_in_after_planning_is_not_followed(env, rules, tmp_path):
    outside = make_tree(tmp_path / "outside", {"tests/precious.py": "keep me", "README.md": "mine"})
    p = plan(env, rules)
    shutil.rmtree(env / SP / "other")
    os.symlink(outside, env / SP / "other")  # an attacker's swap between plan and apply
    result = apply_plan(p)
    assert (outside / "tests/precious.py").read_text() == "keep me"
    assert f"{SP}/other/tests" in {rel for rel, _ in result.failures}


def test_removing_a_matched_symlink_leaves_its_target(env, rules, tmp_path):
    outside = make_tree(tmp_path / "outside", {"NOTES.md": "outside"})
    os.symlink(outside / "NOTES.md", env / SP / "pkg" / "NOTES.md")
    apply_plan(plan(env, rules))
    assert not os.path.lexists(env / SP / "pkg/NOTES.md")
    assert (outside / "NOTES.md").read_text() == "outside"


def test_hard_linked_file_keeps_its_other_link(env, rules, tmp_path):
    shared = env / SP / "pkg/README.md"
    os.link(shared, tmp_path / "cache-copy")  # e.g. a conda package cache outside the root
    apply_plan(plan(env, rules))
    assert not shared.exists()
    assert (tmp_path / "cache-copy").read_text() == "readme"


def test_root_checks(tmp_path):
    with pytest.raises(UsageError, match="file system root"):
        check_root("/")
    with pytest.raises(UsageError, match="home folder"):
        check_root(Path.home())
    assert check_root(Path.home(), force=True) == Path.home().resolve()
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        check_root(tmp_path / "f", force=True)
    with pytest.raises(UsageError, match="no such folder"):
        check_root(tmp_path / "missing")
