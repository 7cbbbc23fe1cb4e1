"""Hostile trees; later work extends this file.

Each test is one reproduction from issue 11, on a real venv (made by `python -m venv`, with real
installed distributions copied in) and the real CLI. Every test checks that nothing outside ROOT
changed (a sha256 listing of a sentinel folder), that nothing is lost (after `undo`, a
sha256 + mode + link-target manifest of ROOT identical to the one before), and, where slimmer
cannot proceed, that it says so in one line with its documented exit code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slimmer.apply import apply_plan
from slimmer.errors import StateConflictError, UnsafeStateError
from slimmer.journal import Journal, RunState, _encode, root_lock
from slimmer.plan import make_plan
from slimmer.protect import default_protectors
from slimmer.rules import RuleSet

SP = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
REPO = Path(__file__).resolve().parent.parent
DISTS = ("pathspec", "click")  # pure-Python distributions the test environment has installed


def manifest(root: Path) -> dict[str, tuple[str, int, str]]:
    """sha256 (or link target) and mode of every entry under root, slimmer's state folder aside."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".slimmer" in dirnames:
            dirnames.remove(".slimmer")
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", st.st_mode, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, "")
            else:
                out[rel] = ("file", st.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def slimmer(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "slimmer", *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("slimmer: error:")]
    assert len(errors) == 1 and words in errors[0], proc.stderr


@pytest.fixture
def env(tmp_path: Path) -> Path:
    """A real venv with real distributions (their RECORDs included) and a package with tests."""
    root = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = root / SP
    site.mkdir(parents=True, exist_ok=True)
    for name in DISTS:
        dist = importlib.metadata.distribution(name)
        info = Path(str(dist.locate_file(""))) / f"{dist.metadata['Name']}-{dist.version}.dist-info"
        if not info.is_dir():
            info = next(Path(str(dist.locate_file(""))).glob(f"{name}-*.dist-info"))
        shutil.copytree(info, site / info.name, symlinks=True)
        package = Path(str(dist.locate_file(name)))
        shutil.copytree(package, site / name, symlinks=True)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(site / name)], check=True)
    (site / "mpkg/tests/mnt").mkdir(parents=True)
    (site / "mpkg/__init__.py").write_text("x = 1\n")
    (site / "mpkg/tests/test_a.py").write_text("def test(): pass\n")
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sentinel folder outside ROOT, with a subfolder (what rmtree through a link would empty)."""
    root = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        (root / f"f{i}").write_text(f"outside {i}\n")
        (root / "sub" / f"g{i}").write_text(f"outside sub {i}\n")
    return root


@pytest.fixture
def tmpfs(env: Path):  # type: ignore[no-untyped-def]
    """A real tmpfs mounted inside a folder the rules remove (ENV/.../mpkg/tests/mnt)."""
    point = env / SP / "mpkg/tests/mnt"
    proc = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], capture_output=True, text=True, check=False)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    (point / "data").write_text("on another file system\n")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
        for line in Path("/proc/self/mounts").read_text().splitlines():  # a mount a bad run carried away
            if str(env) in line.split()[1]:
                subprocess.run(["umount", "-l", line.split()[1]], check=False)


def _plan(root: Path):  # type: ignore[no-untyped-def]
    return make_plan(root, RuleSet.load(["default"]), protectors=default_protectors())


def test_mount_inside_a_removed_folder_is_kept_and_never_emptied(env: Path, tmpfs: Path, outside: Path) -> None:
    before, sentinel = manifest(env), manifest(outside)
    plan = _plan(env)
    kept = {k.rel: k.reason for k in plan.kept}
    assert "another file system" in kept[f"{SP}/mpkg/tests/mnt"]
    assert all(not u.rel.startswith(f"{SP}/mpkg/tests") or u.rel == f"{SP}/mpkg/tests/test_a.py" for u in plan.units)
    proc = slimmer("apply", "--no-commit", str(env))
    assert proc.returncode == 0, proc.stderr
    assert not (env / SP / "mpkg/tests/test_a.py").exists()
    assert (tmpfs / "data").read_text() == "on another file system\n"
    assert slimmer("undo", str(env)).returncode == 0
    assert manifest(env) == before
    assert slimmer("apply", str(env)).returncode == 0  # and the commit deletes nothing on it
    assert (tmpfs / "data").read_text() == "on another file system\n"
    assert os.path.ismount(tmpfs)
    assert manifest(outside) == sentinel


def test_mount_made_after_the_plan_is_not_staged(env: Path, outside: Path) -> None:
    point = env / SP / "mpkg/tests/mnt"
    before, sentinel = manifest(env), manifest(outside)
    plan = _plan(env)
    assert any(u.rel == f"{SP}/mpkg/tests" for u in plan.units)
    proc = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], capture_output=True, text=True, check=False)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        (point / "data").write_text("mounted late\n")
        result = apply_plan(plan, commit=True)
        assert dict(result.failures)[f"{SP}/mpkg/tests"].startswith("holds a mount point")
        assert (point / "data").read_text() == "mounted late\n"
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
    assert manifest(outside) == sentinel
    assert manifest(env)[f"{SP}/mpkg/tests/test_a.py"] == before[f"{SP}/mpkg/tests/test_a.py"]


def test_state_folder_that_is_a_link_is_refused(env: Path, outside: Path) -> None:
    os.symlink(outside, env / ".slimmer")
    before, sentinel = manifest(env), manifest(outside)
    for args in (("apply", str(env)), ("apply", "--no-commit", str(env)), ("undo", str(env)), ("commit", str(env))):
        one_line_error(slimmer(*args), UnsafeStateError.exit_code, "is a link or not a folder")
    assert manifest(outside) == sentinel
    assert manifest(env) == before


def _plant_run(env: Path, staged_to: Path | None, lines: list[bytes]) -> Path:
    run = env / ".slimmer/runs/20990101T000000-1"
    run.mkdir(parents=True, mode=0o700)
    os.chmod(env / ".slimmer", 0o700)
    os.chmod(env / ".slimmer/runs", 0o700)
    if staged_to is None:
        (run / "staged").mkdir(mode=0o700)
    else:
        os.symlink(staged_to, run / "staged")
    (run / "journal.jsonl").write_bytes(b"".join(lines))
    return run


def test_planted_staging_link_and_journal_lines_touch_nothing_outside(env: Path, outside: Path) -> None:
    begin = _encode({"op": "begin", "root": str(env), "time": 4e9})
    _plant_run(env, outside, [begin, _encode({"op": "move", "rel": "f0"}), _encode({"op": "move", "rel": "sub"})])
    before, sentinel = manifest(env), manifest(outside)
    one_line_error(slimmer("commit", str(env)), UnsafeStateError.exit_code, "staged is a link or not a folder")
    one_line_error(slimmer("undo", str(env)), UnsafeStateError.exit_code, "staged is a link or not a folder")
    one_line_error(slimmer("apply", str(env)), StateConflictError.exit_code, "has an unfinished run")  # refused first
    assert manifest(outside) == sentinel
    assert manifest(env) == before


def test_planted_journal_lines_naming_outside_paths_are_ignored(env: Path, outside: Path) -> None:
    rel_out = os.path.relpath(outside / "f0", env)  # ../outside/f0
    lines = [_encode({"op": "begin", "root": str(env), "time": 4e9})]
    lines += [_encode({"op": "move", "rel": rel_out}), _encode({"op": "tmp", "rel": str(outside / "f1")})]
    run = _plant_run(env, None, lines)
    os.symlink(outside / "f2", run / "staged" / "f2")  # staged entries are moved, never followed
    before, sentinel = manifest(env), manifest(outside)
    proc = slimmer("undo", str(env))
    assert proc.stderr.count("is damaged and was ignored") == 2, proc.stderr
    assert manifest(outside) == sentinel
    assert os.readlink(env / "f2") == str(outside / "f2")  # the staged link itself went back, as a link
    os.unlink(env / "f2")
    assert manifest(env) == before


def test_undo_after_a_damaged_journal_line_restores_everything(env: Path, outside: Path) -> None:
    before, sentinel = manifest(env), manifest(outside)
    assert slimmer("apply", "--no-commit", str(env)).returncode == 0
    journal = Journal.latest(env)
    assert journal is not None
    lines = journal.path.read_bytes().split(b"\n")
    assert lines[1].split(b" ", 1)[1].startswith(b'{"op":"move"')
    lines[1] = lines[1].replace(b'"move"', b'"mov!"', 1)  # the first batch of moves
    journal.path.write_bytes(b"\n".join(lines))
    proc = slimmer("undo", str(env))
    assert proc.returncode == 0, proc.stderr
    assert "line 2 is damaged" in proc.stderr
    assert manifest(env) == before
    assert manifest(outside) == sentinel
    assert not journal.staged.exists()


def test_temp_file_names_planted_as_links_or_files_are_never_used_nor_deleted(env: Path, outside: Path) -> None:
    info = next((env / SP).glob("pathspec-*.dist-info"))
    os.symlink(outside / "f0", info / ".RECORD.slimmer-tmp")  # what the old temp name was
    (info / ".INSTALLER.slimmer-tmp").write_text("the user's own file\n")
    before, sentinel = manifest(env), manifest(outside)
    proc = slimmer("apply", "--no-commit", str(env))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISREG((info / "RECORD").lstat().st_mode)
    assert (info / "RECORD").read_text() != before[f"{SP}/{info.name}/RECORD"]
    assert manifest(outside) == sentinel
    assert not [p for p in info.iterdir() if p.name.endswith(".slimmer-tmp") and len(p.name) > 30]
    assert slimmer("undo", str(env)).returncode == 0
    assert manifest(env) == before
    assert manifest(outside) == sentinel


def test_torn_last_journal_record_does_not_wedge_the_root(env: Path, outside: Path) -> None:
    before, sentinel = manifest(env), manifest(outside)
    assert slimmer("apply", "--no-commit", str(env)).returncode == 0
    journal = Journal.latest(env)
    assert journal is not None
    with journal.path.open("ab") as fh:
        fh.write(b'1234abcd {"op":"mo')  # what a kill in the middle of an append leaves
    proc = slimmer("undo", str(env))
    assert proc.returncode == 0, proc.stderr
    assert "cut short" in proc.stderr
    assert manifest(env) == before
    assert journal.state() is RunState.UNDONE
    proc = slimmer("apply", str(env))
    assert proc.returncode == 0, proc.stderr
    assert manifest(outside) == sentinel


def test_undo_never_creates_folders_outside_when_a_parent_became_a_link(env: Path, outside: Path) -> None:
    before, sentinel = manifest(env), manifest(outside)
    assert slimmer("apply", "--no-commit", str(env)).returncode == 0
    pkg = env / SP / "pathspec"
    assert not (pkg / "patterns/__pycache__").exists()
    pkg.rename(env / "moved-away")
    os.symlink(outside, pkg)
    proc = slimmer("undo", str(env))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "no longer a real folder under the root" in proc.stderr
    assert manifest(outside) == sentinel
    os.unlink(pkg)
    (env / "moved-away").rename(pkg)
    assert slimmer("undo", str(env)).returncode == 0
    assert manifest(env) == before


def test_apply_wait_plans_after_the_lock_is_taken(env: Path) -> None:
    other_done = threading.Event()

    def other_run() -> None:  # another slimmer run that holds the lock and removes things
        with root_lock(env, reentrant=True):
            time.sleep(2.0)
            apply_plan(_plan(env))
        other_done.set()

    holder = threading.Thread(target=other_run)
    holder.start()
    time.sleep(0.3)
    proc = slimmer("apply", "--wait", "60", str(env))
    holder.join()
    assert other_done.is_set()
    assert proc.returncode == 0, proc.stderr
    assert "could not" not in proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout


def test_after_a_kill_during_commit_apply_points_to_commit(env: Path) -> None:
    assert slimmer("apply", "--no-commit", str(env)).returncode == 0
    journal = Journal.latest(env)
    assert journal is not None
    journal.set_state(RunState.COMMITTING)  # what a kill in the middle of the commit leaves
    one_line_error(slimmer("apply", str(env)), StateConflictError.exit_code, "run 'slimmer commit' to finish it")
    one_line_error(slimmer("undo", str(env)), StateConflictError.exit_code, "run 'slimmer commit' to finish it")
    assert slimmer("commit", str(env)).returncode == 0
    assert journal.state() is RunState.COMMITTED and not journal.staged.exists()


def test_kill_9_leaves_no_worker_behind(tmp_path):
    """Issue 11 item 15: the pool's workers, busy in a task, end when slimmer is killed."""
    script = tmp_path / "run.py"
    script.write_text(
        "import os, signal, time\n"
        "from slimmer.elf.pool import WorkerPool\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(2)\n"
        "    pool._starter.join()\n"
        "    busy = [pool.executor.submit(time.sleep, 300) for _ in range(2)]\n"  # workers in the middle of a task
        "    time.sleep(1)\n"
        "    print(' '.join(str(p) for p in pool.executor._processes), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    # Output to files: a worker that outlives slimmer would hold a pipe open and block the run.
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as fh_out, err.open("w") as fh_err:
        proc = subprocess.run(
            [sys.executable, str(script)], stdout=fh_out, stderr=fh_err, timeout=120, check=False, cwd=REPO
        )
    assert proc.returncode == -signal.SIGKILL, err.read_text()
    pids = [int(p) for p in out.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        time.sleep(0.2)
    for pid in alive:  # do not leave them to the next test
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert alive == [], f"workers still running after kill -9 of slimmer: {alive}"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
