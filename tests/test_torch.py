"""`--rules default` on a real torch environment: it still imports, runs ops and compiles."""

from __future__ import annotations

import pytest

from slimmer.cli import main
from tests.helpers import run_smoke

pytestmark = pytest.mark.torch


def test_default_keeps_torch_working(torch_copy, capsys):
    sp = next(torch_copy.glob("lib/python3*/site-packages"))
    assert (sp / "torch/test").is_dir()
    assert main(["apply", "--rules", "default", str(torch_copy)]) == 0
    out = capsys.readouterr().out
    assert "committed" in out
    assert not (sp / "torch/test").exists()
    assert not list(sp.glob("torch/__pycache__"))
    # What torch.compile needs stays.
    assert (sp / "torch/include/torch/csrc/inductor/cpp_prefix.h").is_file()
    assert (sp / "torch/testing/_internal/logging_tensor.py").is_file()
    proc = run_smoke(torch_copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") == 4
