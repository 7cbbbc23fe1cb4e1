"""Triage before analysis: the headers settle the strip decision for files that stripping would not
change, the same way LIEF's full analysis does, and LIEF reads only the others."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from slimmer.elf import strip as strip_mod
from slimmer.elf.analyze import analyse, is_elf
from slimmer.elf.triage import triage
from slimmer.walk import Kind, walk
from tests.helpers import cached_env


def elf_files(*roots: Path) -> list[Path]:
    found = []
    for root in roots:
        tree = walk(root)
        found += [root / e.rel for e in tree.entries if e.kind is Kind.FILE and is_elf(root / e.rel)]
    return found


def lief_outcome(path: Path) -> strip_mod._Outcome:
    """The outcome as it was before the triage: LIEF reads every file (and patchelf-rewritten ones
    get their trial strip)."""
    settle = strip_mod._settled_by_headers
    strip_mod._settled_by_headers = lambda _path: None  # type: ignore[assignment]
    try:
        return strip_mod._analyse_job(strip_mod._Job(str(path), path.stat().st_size))
    finally:
        strip_mod._settled_by_headers = settle


def decision(path: Path, outcome: strip_mod._Outcome) -> tuple[object, ...]:
    entry = next(e for e in walk(path.parent).entries if e.rel == path.name)
    d = strip_mod.decide(entry, outcome, links_inside=entry.nlink, dist="-", rule=None)
    return d.verdict, d.reason, d.detail, d.saving


@pytest.fixture(scope="module")
def fixtures() -> Path:
    value = os.environ.get("SLIMMER_ELF_FIXTURES")
    if not value:
        pytest.skip("SLIMMER_ELF_FIXTURES is not set: run the tests with 'make test'")
    return Path(value)


@pytest.mark.tools
def test_headers_agree_with_lief_on_every_fixture(fixtures: Path) -> None:
    """Debug info, already stripped, patchelf-rewritten, CUDA, truncated and tiny files: where the
    triage reads the headers, its answer is LIEF's; what it cannot read, LIEF decides."""
    files = elf_files(fixtures)
    assert len(files) >= 8
    settled = 0
    for path in files:
        by_lief = analyse(path)
        assert by_lief is not None
        found = triage(path)
        if found is None or not found.whole:
            assert by_lief.error, f"{path.name}: the triage gave up on a file LIEF reads"
            continue
        assert found.strippable == (not by_lief.stripped), path.name
        assert found.strip_saving == by_lief.strip_saving, path.name
        outcome = strip_mod._analyse_job(strip_mod._Job(str(path), path.stat().st_size))
        assert decision(path, outcome) == decision(path, lief_outcome(path)), path.name
        settled += outcome.by_headers
        if outcome.by_headers:
            assert not found.strippable or found.strip_saving < strip_mod.MIN_SAVING
        else:
            assert outcome.report is not None and outcome.report.loads, "a file to strip has LIEF's full report"
    assert settled >= 1  # libstripped.so at least


@pytest.mark.tools
def test_an_already_stripped_library_is_never_read_whole(tmp_path: Path, fixtures: Path) -> None:
    """A 256 MiB stripped library (a real one, grown by a large allocated section the way device
    code grows CUDA libraries): the triage reads its headers only, so LIEF is never called."""
    src = tmp_path / "blob.c"
    src.write_text("__attribute__((used)) static const char blob[1] = {1};\nint f(void) { return blob[0]; }\n")
    lib = tmp_path / "libbig.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    data = tmp_path / "data.bin"
    with data.open("wb") as f:
        f.truncate(256 << 20)
    subprocess.run(
        [
            "objcopy",
            "--add-section",
            f".nv_fatbin={data}",
            "--set-section-flags",
            ".nv_fatbin=alloc,readonly,data",
            str(lib),
        ],
        check=True,
    )
    subprocess.run(["strip", "--strip-unneeded", str(lib)], check=True)
    data.unlink()
    size = lib.stat().st_size
    assert size > 256 << 20

    calls: list[str] = []

    def no_lief(path: str) -> None:
        calls.append(path)
        raise AssertionError("LIEF read an already stripped file")

    original = strip_mod.analyse
    strip_mod.analyse = no_lief  # type: ignore[assignment]
    try:
        outcome = strip_mod._analyse_job(strip_mod._Job(str(lib), size))
    finally:
        strip_mod.analyse = original
    assert calls == []
    assert outcome.by_headers and outcome.report is not None and outcome.report.stripped
    assert decision(lib, outcome) == decision(lib, lief_outcome(lib))


@pytest.mark.slow
def test_headers_agree_with_lief_on_real_wheels() -> None:
    """Every ELF file of the manylinux wheels (numpy, scipy, pillow, opencv: auditwheel-patched,
    some with symbols): the same strip decision from the headers as from LIEF."""
    env = cached_env("SLIMMER_LIBS_ENV", "libs-env")
    files = elf_files(env)
    assert len(files) > 20
    settled = 0
    for path in files:
        outcome = strip_mod._analyse_job(strip_mod._Job(str(path), path.stat().st_size))
        assert decision(path, outcome) == decision(path, lief_outcome(path)), path
        settled += outcome.by_headers
    assert settled > 0
