"""Conda prefixes: after `apply`, `conda-meta/*.json` lists only what is left, with the new hash and
size of each stripped file, so the real conda-pack packs the slimmed prefix (no
`--ignore-missing-files`) into an archive that unpacks to a working environment; `undo` restores
the records byte for byte.

The prefix is conda-shaped without conda (no registry here serves conda packages): a venv whose
files are described by `conda-meta` records the way conda writes them, package cache cleared
(`link.source` absent), as in an image after `conda clean --all`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from slimmer.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.venv]

SP = f"lib/python3.{sys.version_info[1]}/site-packages"
PY = f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}"
DEMO = {
    f"{SP}/demo/__init__.py": (
        "import ctypes, os\n"
        "LIB = ctypes.CDLL(os.path.join(os.path.dirname(__file__), '..', '..', '..', 'libdemo.so'))\n"
        "def answer():\n"
        "    return LIB.answer()\n"
    ),
    f"{SP}/demo/README.md": "# demo\nDocumentation nobody reads at run time.\n",
    f"{SP}/demo/tests/__init__.py": "",
    f"{SP}/demo/tests/test_demo.py": "def test(): pass\n",
}
UNTOUCHED = {f"{SP}/plain/__init__.py": "VALUE = 7\n", f"{SP}/plain/data.csv": "a,b\n1,2\n"}


def _conda_pack() -> str:
    tool = shutil.which("conda-pack") or str(Path(sys.executable).parent / "conda-pack")
    if not os.path.exists(tool):
        pytest.fail("conda-pack is not installed: `make test` installs it with the test extras")
    return tool


def _record(prefix: Path, name: str, version: str, files: list[str]) -> None:
    """A conda-meta record in conda's own format (indent 2), package cache gone."""
    paths = []
    for rel in files:
        data = (prefix / rel).read_bytes()
        paths.append(
            {
                "_path": rel,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_in_bytes": len(data),
            }
        )
    record = {
        "build": "0",
        "build_number": 0,
        "channel": "https://conda.anaconda.org/conda-forge/linux-64",
        "depends": [],
        "files": files,
        "fn": f"{name}-{version}-0.conda",
        "link": {"source": f"/nonexistent/pkgs/{name}-{version}-0", "type": 1},
        "name": name,
        "paths_data": {"paths": paths, "paths_version": 1},
        "url": f"https://conda.anaconda.org/conda-forge/linux-64/{name}-{version}-0.conda",
        "version": version,
    }
    (prefix / "conda-meta" / f"{name}-{version}-0.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    root = tmp_path / "envs" / "py"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    for rel, text in {**DEMO, **UNTOUCHED}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    src = tmp_path / "demo.c"
    src.write_text("int answer(void) { return 42; }\n")
    subprocess.run(["gcc", "-g", "-shared", "-fPIC", "-o", str(root / "lib/libdemo.so"), str(src)], check=True)
    (root / "conda-meta").mkdir()
    (root / "conda-meta/history").write_text("==> 2026-11-21 00:00:00 <==\n")
    _record(root, "python", PY, [])
    _record(root, "demo", "1.0", [*DEMO, "lib/libdemo.so"])
    _record(root, "plain", "2.0", list(UNTOUCHED))
    return root


def _pack(prefix: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_conda_pack(), "-p", str(prefix), "-o", str(out), "--format", "tar", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_slimmed_prefix_packs_with_conda_pack_and_unpacks_to_a_working_env(prefix, tmp_path):
    meta = prefix / "conda-meta"
    plain_before = (meta / "plain-2.0-0.json").read_bytes()
    demo_before = (meta / "demo-1.0-0.json").read_bytes()
    assert _pack(prefix, tmp_path / "before.tar").returncode == 0

    assert main(["apply", "--rules", "default", "--no-commit", str(prefix)]) == 0
    assert not (prefix / SP / "demo/README.md").exists()
    assert not (prefix / SP / "demo/tests").exists()
    record = json.loads((meta / "demo-1.0-0.json").read_text())
    assert record["files"] == [f"{SP}/demo/__init__.py", "lib/libdemo.so"]
    lib = (prefix / "lib/libdemo.so").read_bytes()
    entry = {p["_path"]: p for p in record["paths_data"]["paths"]}["lib/libdemo.so"]
    assert (entry["sha256"], entry["size_in_bytes"]) == (hashlib.sha256(lib).hexdigest(), len(lib))
    assert entry["size_in_bytes"] < json.loads(demo_before)["paths_data"]["paths"][-1]["size_in_bytes"]  # stripped
    assert (meta / "plain-2.0-0.json").read_bytes() == plain_before  # a package slimmer did not change

    packed = _pack(prefix, tmp_path / "after.tar")
    assert packed.returncode == 0, packed.stderr
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tmp_path / "after.tar") as tar:
        assert f"{SP}/demo/README.md" not in tar.getnames()
        # the "tar" filter where this Python has extraction filters (3.11.4+, 3.9.17+); older ones lack the argument
        safe = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
        tar.extractall(unpacked, **safe)  # conda-pack's own archive of a prefix the test made
    run = subprocess.run(
        [str(unpacked / "bin/python"), "-c", "import demo, plain; print(demo.answer(), plain.VALUE)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (run.returncode, run.stdout.strip()) == (0, "42 7"), run.stderr

    assert main(["undo", str(prefix)]) == 0
    assert (meta / "demo-1.0-0.json").read_bytes() == demo_before


def test_without_the_rewrite_conda_pack_refuses_the_slimmed_prefix(prefix, tmp_path):
    """The control: what the rewrite fixes is real (conda-pack's own error on stale records)."""
    from slimmer.apply import apply_plan
    from slimmer.plan import make_plan
    from slimmer.protect import default_protectors
    from slimmer.rules import RuleSet

    apply_plan(make_plan(prefix, RuleSet.load(["default"]), protectors=default_protectors()))
    packed = _pack(prefix, tmp_path / "out.tar")
    assert packed.returncode != 0
    assert "Files managed by conda were found to have been deleted" in packed.stderr


def test_records_that_are_links_or_not_json_are_left_alone(prefix, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"files": [f"{SP}/demo/README.md"], "name": "x"}))
    (prefix / "conda-meta/linked-1-0.json").symlink_to(outside)
    (prefix / "conda-meta/broken-1-0.json").write_text("{not json")
    before = outside.read_bytes()
    assert main(["apply", "--rules", "default", str(prefix)]) == 0
    assert outside.read_bytes() == before
    assert (prefix / "conda-meta/broken-1-0.json").read_text() == "{not json"


def test_only_what_this_run_removed_leaves_the_records(prefix):
    """A path that was already missing is not slimmer's to drop; a stripped file's
    `sha256_in_prefix` (what `conda doctor` checks) follows its new bytes."""
    meta = prefix / "conda-meta"
    gone = f"{SP}/plain/gone_before.py"
    record = json.loads((meta / "plain-2.0-0.json").read_text())
    record["files"].append(gone)
    (meta / "plain-2.0-0.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    plain_before = (meta / "plain-2.0-0.json").read_bytes()
    demo = json.loads((meta / "demo-1.0-0.json").read_text())
    for entry in demo["paths_data"]["paths"]:
        entry["sha256_in_prefix"] = entry["sha256"]
    (meta / "demo-1.0-0.json").write_text(json.dumps(demo, indent=2, sort_keys=True) + "\n")

    assert main(["apply", "--rules", "default", str(prefix)]) == 0
    assert (meta / "plain-2.0-0.json").read_bytes() == plain_before
    entry = {p["_path"]: p for p in json.loads((meta / "demo-1.0-0.json").read_text())["paths_data"]["paths"]}
    lib = hashlib.sha256((prefix / "lib/libdemo.so").read_bytes()).hexdigest()
    assert entry["lib/libdemo.so"]["sha256_in_prefix"] == entry["lib/libdemo.so"]["sha256"] == lib
