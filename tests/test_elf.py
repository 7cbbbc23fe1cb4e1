"""ELF analysis, strip decisions and the Stripper on real binaries built by fixtures/elf/build.sh."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from slimmer.apply import apply_plan, undo
from slimmer.cli import main
from slimmer.elf import fatbin
from slimmer.elf.analyze import analyse, analyse_many, find_elf, is_elf
from slimmer.elf.pool import bounded_map
from slimmer.elf.rewrite import run_jobs
from slimmer.elf.strip import Stripper
from slimmer.model.plan import Skip, Verdict
from slimmer.plan import make_plan
from slimmer.rules import RuleSet
from tests.helpers import REPO

SITE = "lib/python3.11/site-packages"


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """The fixtures `make elf-fixtures` built (SLIMMER_ELF_FIXTURES), or a fresh build when run by hand."""
    env = os.environ.get("SLIMMER_ELF_FIXTURES")
    if env:
        path = Path(env)
        if not (path / ".complete").is_file():
            pytest.fail(f"{path} is not built: run 'make elf-fixtures'")
        return path
    dest = tmp_path_factory.mktemp("elf") / "fixtures"
    subprocess.run([str(REPO / "fixtures/elf/build.sh"), str(dest)], check=True, capture_output=True)
    return dest


@pytest.fixture
def root(built, tmp_path) -> Path:
    """A venv-like prefix holding a copy of the fixtures (cp -a keeps the symlinks and the hard-link pair)."""
    env = tmp_path / "env"
    (env / SITE / "pkg").mkdir(parents=True)
    subprocess.run(["cp", "-a", f"{built}/lib", f"{built}/bin", str(env)], check=True)
    shutil.copy2(built / "lib/libfoo.so.1.0", env / SITE / "pkg/_ext.so")
    return env


def needs_nvcc(built: Path) -> None:
    if (built / "NO_NVCC").exists():
        pytest.skip("nvcc is not installed: the CUDA fixture lib/libkernel.so was not built")


def strip_plan(root: Path):
    return make_plan(root, RuleSet.load(["strip"]))


def decision(plan, rel):
    return next(d for d in plan.strips if d.rel == rel)


# --- analysis ---------------------------------------------------------------------------------


def test_is_elf_reads_content_not_names(built):
    assert is_elf(built / "bin/main")
    assert is_elf(built / "lib/libfoo.so.1.0")
    assert not is_elf(built / "lib/libnotelf.so")
    assert not is_elf(built / "lib/libfoo.so")  # a symlink is never read through
    assert not is_elf(built / "lib")
    assert analyse(built / "lib/libnotelf.so") is None


def test_debug_library_report(built):
    r = analyse(built / "lib/libfoo.so.1.0")
    assert r is not None
    assert r.error is None
    assert r.kind == "shared object"
    assert not r.stripped
    assert r.soname == "libfoo.so.1"
    assert r.needed == ("libm.so.6",)
    assert r.load_aligned
    assert r.patchelf_signs == ()
    assert r.fatbin is None
    readelf = subprocess.run(
        ["readelf", "-n", str(built / "lib/libfoo.so.1.0")], capture_output=True, text=True, check=True
    )
    assert f"Build ID: {r.build_id}" in readelf.stdout
    exe = analyse(built / "bin/main")
    assert exe.needed == ("libfoo.so.1", "libc.so.6")
    assert exe.runpath == ("$ORIGIN/../lib",)
    assert exe.kind.startswith("executable")


def test_predicted_saving_matches_strip(built, tmp_path):
    for name in ("lib/libfoo.so.1.0", "bin/main"):
        r = analyse(built / name)
        out = tmp_path / "stripped"
        subprocess.run(["strip", "--strip-unneeded", "-o", str(out), str(built / name)], check=True)
        measured = r.size - out.stat().st_size
        assert abs(measured - r.strip_saving) < 512, (name, measured, r.strip_saving)


def test_stripped_truncated_and_patched(built):
    assert analyse(built / "lib/libstripped.so").stripped
    trunc = analyse(built / "lib/libtrunc.so")
    assert trunc.error and "truncated" in trunc.error
    patched = analyse(built / "lib/libpatched.so")
    assert patched.patchelf_signs
    assert patched.load_aligned
    assert patched.soname == "libpatched.so"
    assert patched.needed == ("libdl.so.2", "libm.so.6")
    assert patched.runpath[0].startswith("$ORIGIN/a/long/runpath")
    assert analyse(built / "lib/libdbg.so").debuglink == "libdbg.so.debug"


def test_fatbin_lists_exactly_the_built_architectures(built):
    needs_nvcc(built)
    r = analyse(built / "lib/libkernel.so")
    assert r.fatbin is not None
    assert r.fatbin.sections == (".nv_fatbin",)
    assert r.fatbin.sass == (80, 90)
    assert r.fatbin.ptx == (90,)
    assert r.fatbin.error is None
    if shutil.which("cuobjdump"):
        listing = subprocess.run(
            ["cuobjdump", "--list-elf", "--list-ptx", str(built / "lib/libkernel.so")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "sm_80" in listing
        assert "sm_90" in listing


def test_fatbin_parser_on_two_containers():
    def entry(kind, sm, payload):
        head = bytearray(0x40)
        head[0:2] = kind.to_bytes(2, "little")
        head[4:8] = (0x40).to_bytes(4, "little")
        head[8:16] = len(payload).to_bytes(8, "little")
        head[0x1C:0x20] = sm.to_bytes(4, "little")
        return bytes(head) + payload

    def container(*entries):
        body = b"".join(entries)
        return (
            fatbin.MAGIC.to_bytes(4, "little")
            + (1).to_bytes(2, "little")
            + (16).to_bytes(2, "little")
            + len(body).to_bytes(8, "little")
            + body
        )

    data = container(entry(2, 75, b"x" * 16), entry(1, 75, b"p" * 8)) + container(entry(2, 120, b"y" * 24)) + b"\0" * 8
    parsed = fatbin.parse(data)
    assert (sorted(parsed.sass), sorted(parsed.ptx), parsed.containers, parsed.entries) == ([75, 120], [75], 2, 3)
    assert parsed.error is None
    assert fatbin.parse(data[:-40]).error  # cut inside the second container


def test_find_and_analyse_many_in_parallel(root):
    files = find_elf([root])
    names = {Path(f).name for f in files}
    assert "libnotelf.so" not in names
    assert "libfoo.so" not in names  # symlinks are not followed
    assert {"libfoo.so.1.0", "main", "libtrunc.so", "_ext.so"} <= names
    reports = analyse_many(files, jobs=2)
    assert [r.path for r in reports] == files


def _span(item: int) -> tuple[float, float]:
    import time

    start = time.monotonic()
    time.sleep(0.3)
    return start, time.monotonic()


def test_pool_keeps_in_flight_sizes_under_the_budget():
    # Costs are what the scheduler sees: the two of 60 never run together under a budget of 100,
    # but the pool does run tasks side by side when they fit.
    costs = {1: 60, 2: 60, 3: 30, 4: 30}
    spans = dict(bounded_map(_span, list(costs), cost=lambda i: costs[i] << 20, jobs=2, budget=100 << 20, overhead=0))
    assert set(spans) == set(costs)
    pairs = [(a, b) for a in costs for b in costs if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    assert (1, 2) not in pairs
    assert pairs, "nothing ran in parallel"
    assert all(costs[a] + costs[b] <= 100 for a, b in pairs), pairs


_DIRTY_KB = """
import gc, os, sys

def dirty_kb(_item):
    # In a worker: its private and shared dirty memory (kB), whether LIEF is loaded, the frozen objects.
    with open(f"/proc/{os.getpid()}/smaps_rollup") as f:
        kb = {line.split()[0]: int(line.split()[1]) for line in f if line.endswith("kB\\n")}
    return kb["Private_Dirty:"], kb["Shared_Dirty:"], "lief" in sys.modules, gc.get_freeze_count()
"""


def test_workers_share_lief_from_the_forkserver(tmp_path):
    # The forkserver imports LIEF once and freezes it (slimmer.elf.preload): a worker finds it loaded,
    # its pages shared with the forkserver, not copied: a process that imports LIEF itself holds
    # some 45 MB (LIEF 1.0) of its own; and the forkserver ends without nanobind's leak report.
    own = subprocess.run(
        [
            sys.executable,
            "-c",
            "import lief, os; print(next(int(l.split()[1]) for l in open(f'/proc/{os.getpid()}/smaps_rollup') "
            "if l.startswith('Private_Dirty:')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lief_kb = int(own.stdout)
    (tmp_path / "probe.py").write_text(_DIRTY_KB)  # a small module: the worker imports it to run dirty_kb
    code = (
        "from probe import dirty_kb; from slimmer.elf.pool import shared_pool, bounded_map\n"
        "with shared_pool(2) as pool:\n"
        "    print(list(dict(bounded_map(dirty_kb, [1, 2], cost=lambda _i: 1 << 25, pool=pool)).values()))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert "leak" not in done.stderr, done.stderr[:500]
    for private, shared, has_lief, frozen in ast.literal_eval(done.stdout):
        assert has_lief
        assert frozen > 10_000, "the forkserver did not freeze what it imported"
        assert shared > lief_kb * 0.6, (shared, lief_kb)
        assert private < lief_kb * 0.4, (private, lief_kb)


@dataclass(frozen=True)
class _Job:
    src: str
    tmp: str
    size: int


def _rewrite(job: _Job) -> str | None:
    Path(job.tmp).write_text("new")
    return "refused by the map" if job.src.endswith("c") else None


def test_run_jobs_settles_each_file_alone_after_the_map_and_yields_it_first(tmp_path):
    events: list[str] = []
    work = [_Job(str(tmp_path / n), str(tmp_path / f"{n}.tmp"), size) for n, size in (("a", 30), ("b", 20), ("c", 10))]

    def settle(job: _Job) -> str | None:
        events.append(f"settle {Path(job.src).name} in {os.getpid()}")
        if job.src.endswith("b"):
            os.unlink(job.tmp)
            return "does not load"
        return None

    run = run_jobs(_rewrite, work, root=tmp_path, jobs=1, settle=settle)
    while True:
        try:
            events.append(f"yield {next(run)}")
        except StopIteration as stop:
            outcome = stop.value
            break
    me = os.getpid()
    assert events == [f"settle a in {me}", "yield a", f"settle b in {me}"]  # the map's order: largest first
    assert sorted(outcome.skipped) == [("b", "does not load"), ("c", "refused by the map")]
    assert set(outcome.digests) == {"a"}


# --- decisions: one test per verdict ------------------------------------------------------------


def test_verdict_strip_for_debug_library_executable_and_extension(root):
    plan = strip_plan(root)
    # the line of rules/strip.rules whose pattern selects each file (the last match wins, as in gitignore)
    lines = (REPO / "rules/strip.rules").read_text(encoding="utf-8").splitlines()
    expected = {
        "lib/libfoo.so.1.0": lines.index("*.so.*") + 1,
        "bin/main": lines.index("bin/*") + 1,
        f"{SITE}/pkg/_ext.so": lines.index("*.so") + 1,
    }
    assert len(set(expected.values())) == 3
    for rel, line in expected.items():
        d = decision(plan, rel)
        assert d.verdict is Verdict.STRIP, d.reason
        assert d.saving > 1024
        assert d.rule is not None and d.rule.where == f"rules/strip.rules:{line}"
    assert not any(d.rel in ("lib/libfoo.so", "lib/libfoo.so.1", "lib/libx.so") for d in plan.strips)  # links


@pytest.mark.parametrize(
    ("rel", "skip"),
    [
        ("lib/libstripped.so", Skip.ALREADY_STRIPPED),
        ("lib/libtiny.so", Skip.SAVES_NOTHING),
        ("lib/libnotelf.so", Skip.NOT_ELF),
        ("lib/libtrunc.so", Skip.DAMAGED),
        ("lib/libhard.so", Skip.LINKS_INSIDE),
        ("lib/libhard2.so", Skip.LINKS_INSIDE),
        ("lib/libpatched.so", Skip.PATCHELF_CHECK_FAILED),
    ],
)
def test_verdict_skip(root, rel, skip):
    d = decision(strip_plan(root), rel)
    assert d.verdict is Verdict.SKIP
    assert d.skip is skip, d.reason
    assert d.saving == 0


def test_patchelf_skip_names_the_loader_check(root):
    d = decision(strip_plan(root), "lib/libpatched.so")
    assert "not aligned" in d.reason
    # What the check prevents: the loader refuses binutils' output.
    out = root / "stripped.so"
    subprocess.run(["strip", "--strip-unneeded", "-o", str(out), str(root / "lib/libpatched.so")], check=True)
    assert not analyse(out).load_aligned
    load = subprocess.run(
        ["python3", "-c", f"import ctypes; ctypes.CDLL({str(out)!r})"], capture_output=True, text=True, check=False
    )
    assert "not page-aligned" in load.stderr or "not properly aligned" in load.stderr


def test_verdict_not_writable(root):
    (root / "lib/libx.so.1.0").chmod(0o555)
    d = decision(strip_plan(root), "lib/libx.so.1.0")
    assert d.skip is Skip.NOT_WRITABLE, d.reason


def test_verdict_hard_links_outside_root(root, tmp_path):
    os.link(root / "lib/libfoo.so.1.0", tmp_path / "outside.so")
    d = decision(strip_plan(root), "lib/libfoo.so.1.0")
    assert d.skip is Skip.LINKS_OUTSIDE, d.reason


def test_split_debug_files_are_not_selected(root):
    rels = {d.rel for d in strip_plan(root).strips}
    assert "lib/libdbg.so" in rels
    assert "lib/libdbg.so.debug" not in rels  # !*.debug in rules/strip.rules


def test_removed_files_are_not_stripped(root, tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text("# @relative-to prefix\nlib/libfoo.so.1.0\n# @include strip\n")
    plan = make_plan(root, RuleSet.load([str(rules)]))
    assert "lib/libfoo.so.1.0" in {r.rel for r in plan.removals}
    assert "lib/libfoo.so.1.0" not in {d.rel for d in plan.strips}
    assert "lib/libx.so.1.0" in {d.rel for d in plan.strips}


# --- stripping through apply --------------------------------------------------------------------


def test_strip_apply_then_undo_restores_the_bytes(root, built):
    before = {rel: (root / rel).read_bytes() for rel in ("lib/libfoo.so.1.0", "bin/main", "lib/libpatched.so")}
    mode = (root / "bin/main").stat().st_mode
    mtime = (root / "lib/libfoo.so.1.0").stat().st_mtime_ns
    if os.geteuid() == 0:
        os.chown(root / "lib/libfoo.so.1.0", 1234, 5678)
    plan = strip_plan(root)
    result = apply_plan(plan, commit=False, rewriters=(Stripper(),))
    stripped = {rel: (old, new) for rel, old, new in result.rewritten["strip"]}
    assert {"lib/libfoo.so.1.0", "bin/main", f"{SITE}/pkg/_ext.so", "lib/libx.so.1.0"} <= set(stripped)
    for rel, (old, new) in stripped.items():
        assert new < old
        assert (root / rel).stat().st_size == new
        assert analyse(root / rel).stripped
    predicted = decision(plan, "lib/libfoo.so.1.0").saving
    old, new = stripped["lib/libfoo.so.1.0"]
    assert abs((old - new) - predicted) < 512
    assert (root / "bin/main").stat().st_mode == mode
    st = (root / "lib/libfoo.so.1.0").stat()
    assert st.st_mtime_ns // 10**9 == mtime // 10**9
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    # The symlink chain is still a chain of links, and the stripped executable still loads its library.
    assert os.readlink(root / "lib/libx.so") == "libx.so.1"
    assert os.readlink(root / "lib/libx.so.1") == "libx.so.1.0"
    run = subprocess.run([str(root / "bin/main")], capture_output=True, text=True, check=True)
    assert run.stdout == "5\n"
    assert (root / "lib/libpatched.so").read_bytes() == before["lib/libpatched.so"]
    assert analyse(root / "lib/libdbg.so").debuglink == "libdbg.so.debug"  # strip keeps the link
    assert (root / "lib/libhard.so").stat().st_nlink == 2
    assert not list(root.rglob("*.slimmer-tmp"))

    undo(root)
    for rel, data in before.items():
        assert (root / rel).read_bytes() == data, rel
    assert (root / "bin/main").stat().st_mode == mode


def test_strip_keeps_device_code(root, built):
    needs_nvcc(built)
    before = analyse(root / "lib/libkernel.so")
    result = apply_plan(strip_plan(root), commit=True, rewriters=(Stripper(),))
    assert "lib/libkernel.so" in {rel for rel, _, _ in result.rewritten["strip"]}
    after = analyse(root / "lib/libkernel.so")
    assert after.size < before.size
    assert after.fatbin == before.fatbin


def test_stripper_refuses_a_copy_that_fails_the_check(root):
    # Force the plan to strip the patchelf-rewritten library: apply's own check must still refuse it.
    plan = strip_plan(root)
    forced = tuple(
        replace(d, verdict=Verdict.STRIP, skip=None, saving=1) if d.rel == "lib/libpatched.so" else d
        for d in plan.strips
    )
    before = (root / "lib/libpatched.so").read_bytes()
    result = apply_plan(replace(plan, strips=forced), commit=True, rewriters=(Stripper(),))
    assert "lib/libpatched.so" not in {rel for rel, _, _ in result.rewritten["strip"]}
    reasons = dict(result.skipped["strip"])
    assert "not aligned" in reasons["lib/libpatched.so"]
    assert (root / "lib/libpatched.so").read_bytes() == before
    assert not list(root.rglob("*.slimmer-tmp"))


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_elf_json_and_text(built, capsys):
    assert main(["elf", "--json", str(built / "lib"), str(built / "bin/main")]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {Path(f["path"]).name: f for f in data["files"]}
    assert "libnotelf.so" not in by_name
    assert by_name["libfoo.so.1.0"]["soname"] == "libfoo.so.1"
    assert by_name["main"]["needed"] == ["libfoo.so.1", "libc.so.6"]
    assert by_name["libtrunc.so"]["error"]
    if "libkernel.so" in by_name:
        assert by_name["libkernel.so"]["fatbin"]["sass"] == ["sm_80", "sm_90"]
        assert by_name["libkernel.so"]["fatbin"]["ptx"] == ["compute_90"]
    assert main(["elf", str(built / "lib/libpatched.so")]) == 0
    out = capsys.readouterr().out
    assert "patchelf:" in out
    assert "soname:   libpatched.so" in out


def test_cli_plan_json_and_apply_report_strips(root, capsys):
    assert main(["plan", "--json", "--rules", "strip", str(root)]) == 0
    strip = json.loads(capsys.readouterr().out)["strip"]
    files = {f["path"]: f for f in strip["files"]}
    assert files["lib/libfoo.so.1.0"]["verdict"] == "strip"
    # the patchelf-rewritten library is checked on its real strip, unless asked for now
    assert files["lib/libpatched.so"]["verdict"] == "strip"
    assert "checked after the strip" in files["lib/libpatched.so"]["reason"]
    assert strip["skipped_by_reason"][Skip.LINKS_INSIDE.value] == 2
    assert strip["predicted_bytes"] == sum(f["bytes"] for f in strip["files"])
    assert main(["plan", "--json", "--check-strips", "--rules", "strip", str(root)]) == 0
    checked = {f["path"]: f for f in json.loads(capsys.readouterr().out)["strip"]["files"]}
    assert checked["lib/libpatched.so"]["verdict"] == "skip"
    assert "not aligned" in checked["lib/libpatched.so"]["reason"]
    before = (root / "lib/libpatched.so").read_bytes()
    assert main(["apply", "--rules", "strip", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Stripping: " in out
    assert "Stripped " in out
    assert f"skipped     2: {Skip.LINKS_INSIDE.value}" in out
    # apply's own check refused the stripped copy, said why, and left the library as it was
    assert "lib/libpatched.so" in out and "not aligned" in out
    assert (root / "lib/libpatched.so").read_bytes() == before
