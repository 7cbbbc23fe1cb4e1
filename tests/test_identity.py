"""The header reader that checks a strip's output (`slimmer.elf.identity`) against LIEF, on real files:
the ELF fixtures (gcc, nvcc, patchelf), torch's libraries and, when it is built, the CUDA 13 env."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from slimmer.elf.analyze import analyse, is_elf
from slimmer.elf.elf64 import ElfFile
from slimmer.elf.identity import read_identity
from slimmer.elf.strip import check_output, check_stripped, run_strip
from tests.test_elf import built, needs_nvcc  # noqa: F401 - fixture

STRIPPABLE = ("lib/libfoo.so.1.0", "bin/main", "lib/libdbg.so", "lib/libx.so.1.0")


def _elf_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and is_elf(p)]


def _real_files(built: Path) -> list[Path]:  # noqa: F811
    files = _elf_files(built)
    for var, glob in (
        ("SLIMMER_TORCH_ENV", "lib/python3*/site-packages/torch/lib"),
        ("SLIMMER_TORCH_CUDA_ENV", "lib/python3*/site-packages/nvidia/cu13/lib"),
        ("SLIMMER_TORCH_CUDA_ENV", "lib/python3*/site-packages/torch/lib"),
    ):
        env = os.environ.get(var)
        if env:
            files += [p for folder in Path(env).glob(glob) for p in _elf_files(folder)]
    return files


def test_the_header_reader_agrees_with_lief(built):  # noqa: F811
    compared = fatbins = 0
    for path in _real_files(built):
        report = analyse(path)
        if report is None or report.error:  # the truncated fixture: LIEF cannot read it either
            continue
        found = read_identity(str(path))
        assert found is not None, path
        assert found.size == report.size, path
        assert found.dynamic.needed == report.needed, path
        assert found.dynamic.soname == report.soname, path
        assert (found.dynamic.rpath, found.dynamic.runpath) == (report.rpath, report.runpath), path
        assert found.build_id == report.build_id, path
        assert found.debuglink == report.debuglink, path
        assert found.loads == report.loads, path
        assert found.load_aligned == report.load_aligned, path
        assert found.fatbin_digest == (report.fatbin.digest if report.fatbin else None), path
        compared += 1
        fatbins += report.fatbin is not None
    assert compared >= 8
    if not (built / "NO_NVCC").exists() or os.environ.get("SLIMMER_TORCH_CUDA_ENV"):
        assert fatbins >= 1


def _strip(src: Path, dest: Path) -> Path:
    assert run_strip(str(src), str(dest)) is None
    return dest


def test_a_good_strip_passes_both_checks(built, tmp_path):  # noqa: F811
    for rel in STRIPPABLE:
        src = built / rel
        before = analyse(src)
        out = _strip(src, tmp_path / src.name)
        assert check_output(str(src), str(out), before) == (None, out.stat().st_size), rel
        assert check_stripped(before, analyse(out)) is None, rel


def test_a_strip_that_breaks_the_layout_is_refused_by_both(built, tmp_path):  # noqa: F811
    src = built / "lib/libpatched.so"
    before = analyse(src)
    out = _strip(src, tmp_path / "libpatched.so")
    why, _ = check_output(str(src), str(out), before)
    assert why is not None and "not aligned" in why
    assert "not aligned" in (check_stripped(before, analyse(out)) or "")


@pytest.mark.parametrize(
    ("section", "said"), [(".note.gnu.build-id", "build-id changed"), (".gnu_debuglink", ".gnu_debuglink changed")]
)
def test_a_changed_identity_is_refused(built, tmp_path, section, said):  # noqa: F811
    src = built / "lib/libdbg.so"
    before = analyse(src)
    out = _strip(src, tmp_path / "libdbg.so")
    subprocess.run(["objcopy", f"--remove-section={section}", str(out)], check=True)
    why, _ = check_output(str(src), str(out), before)
    assert why is not None and said in why
    assert said in (check_stripped(before, analyse(out)) or "")


def test_changed_device_code_is_refused(built, tmp_path):  # noqa: F811
    needs_nvcc(built)
    src = built / "lib/libkernel.so"
    before = analyse(src)
    assert before.fatbin is not None
    out = _strip(src, tmp_path / "libkernel.so")
    with ElfFile(str(out)) as elf:
        section = elf.section(".nv_fatbin")
        assert section is not None
        at = section.offset + section.size // 2
    with out.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    why, _ = check_output(str(src), str(out), before)
    assert why is not None and "device code (fatbin) bytes changed" in why


def test_an_output_the_reader_does_not_take_goes_to_lief(built, tmp_path):  # noqa: F811
    # EI_DATA says big-endian: the header reader refuses the file (None), LIEF reads it anyway and
    # its check decides: here the patchelf library's strip, whose PT_LOAD is not aligned.
    src = built / "lib/libpatched.so"
    before = analyse(src)
    out = _strip(src, tmp_path / "odd.so")
    data = bytearray(out.read_bytes())
    data[5] = 2
    out.write_bytes(bytes(data))
    assert read_identity(str(out)) is None
    why, size = check_output(str(src), str(out), before)
    assert why is not None and "not aligned" in why
    assert size == out.stat().st_size
