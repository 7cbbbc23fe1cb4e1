"""slimmer.proc: the one subprocess runner (logged, bounded, one error type with the last lines)."""

from __future__ import annotations

import logging
import shutil
import sys
from typing import TYPE_CHECKING

import pytest

from slimmer import proc
from slimmer.errors import CommandError, SlimmerError

if TYPE_CHECKING:
    from pathlib import Path


def test_a_failing_command_raises_with_the_command_and_its_last_lines(caplog: pytest.LogCaptureFixture) -> None:
    script = "import sys\nfor i in range(9): print('line', i, file=sys.stderr)\nsys.exit(3)"
    with caplog.at_level(logging.DEBUG, logger="slimmer.proc"), pytest.raises(CommandError) as info:
        proc.run([sys.executable, "-c", script, "an arg"], timeout=60)
    err = info.value
    assert isinstance(err, SlimmerError) and err.exit_code not in (1, 2)
    assert err.returncode == 3 and err.argv[-1] == "an arg"
    assert err.tail == ("line 4", "line 5", "line 6", "line 7", "line 8")
    assert str(err).endswith("failed (exit 3): line 8") and "[" not in str(err).split("`")[-1]
    assert "'an arg'" in str(err)  # the command as a shell line, not a Python list
    assert any("'an arg'" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_check_false_returns_the_status_and_output() -> None:
    done = proc.run([sys.executable, "-c", "print('out'); raise SystemExit(4)"], timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (4, "out")


def test_a_command_past_its_timeout_is_killed_and_named() -> None:
    with pytest.raises(CommandError, match=r"timed out after 0.5s") as info:
        proc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert info.value.returncode is None and info.value.last_line == "timed out after 0.5s"


def test_a_missing_program_is_a_command_error_not_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="could not start"):
        proc.run([str(tmp_path / "no-such-tool")], timeout=5)


@pytest.mark.tools
def test_strip_failure_reads_as_a_line_not_a_list(tmp_path: Path) -> None:
    from slimmer.elf.strip import run_strip

    if shutil.which("strip") is None:
        pytest.skip("no strip")
    src = tmp_path / "not-elf.so"
    src.write_bytes(b"plain text, not ELF")
    message = run_strip(str(src), str(tmp_path / "out"))
    assert message is not None and message.startswith("strip failed: ")
    assert "['" not in message and "file format not recognized" in message
