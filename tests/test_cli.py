"""The command line: exit codes, one-line errors, JSON, explain, and the real entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from slimmer.cli import main
from tests.helpers import make_tree

SP = "lib/python3.11/site-packages"


def env(tmp_path):
    return make_tree(
        tmp_path / "env",
        {f"{SP}/torch/test/bin_test": "x" * 2048, f"{SP}/torch/__init__.py": "", f"{SP}/pkg/README.md": "r"},
    )


def run(*args):
    return subprocess.run([sys.executable, "-m", "slimmer", *args], capture_output=True, text=True, check=False)


def test_help_explains_every_command():
    proc = run("--help")
    assert proc.returncode == 0
    assert "slimmer apply --rules default /opt/conda/envs/py" in proc.stdout
    # The "Commands:" table, not the prose above it (which names plan, apply, undo... too): every command
    # the group has is listed there with a description, and nothing else is.
    table = proc.stdout.split("\nCommands:\n", 1)[1]
    listed = dict(line.split(None, 1) for line in table.splitlines() if line.strip())
    from slimmer.cli import cli

    assert set(listed) == set(cli.commands)
    assert {"plan", "apply", "explain", "undo", "commit", "rules", "verify", "dockerfile"} <= set(listed)
    assert all(len(text.strip()) > 10 for text in listed.values())


def test_unknown_rule_set_is_one_line_and_exit_2(tmp_path):
    proc = run("plan", str(env(tmp_path)), "--rules", "nosuch")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("slimmer: error: unknown rule set 'nosuch'")


def test_malformed_rule_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.rules"
    bad.write_text("# @relative-to prefix\n\\\n")
    proc = run("apply", str(env(tmp_path)), "--rules", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:2: malformed pattern" in proc.stderr and proc.stderr.count("\n") == 1


def test_missing_root_and_root_refusal(tmp_path):
    proc = run("apply", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("apply", "/")
    assert proc.returncode == 2 and "--force" in proc.stderr


def test_plan_json_and_text(tmp_path, capsys):
    root = env(tmp_path)
    assert main(["plan", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["files_removed"] == 2
    assert data["bytes_removed"] == 2049
    assert {r["path"] for r in data["removed"]} == {
        f"{SP}/torch/test",
        f"{SP}/torch/test/bin_test",
        f"{SP}/pkg/README.md",
    }
    assert data["by_rule_file"][0]["name"] == "rules/torch-tests.rules"
    assert main(["plan", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Total: 2 of 3 files removed, 2.0 KiB of" in out
    assert (root / SP / "torch/test/bin_test").exists()


def test_dry_run_changes_nothing_and_apply_reports_time(tmp_path, capsys):
    root = env(tmp_path)
    assert main(["apply", "--dry-run", str(root)]) == 0
    assert (root / SP / "torch/test").exists()
    capsys.readouterr()
    assert main(["apply", str(root)]) == 0
    out = capsys.readouterr().out
    assert not (root / SP / "torch/test").exists()
    assert "Removed 2 of 2 items" in out and "Took " in out and "committed" in out


def test_explain_names_the_deciding_line(tmp_path, capsys):
    root = env(tmp_path)
    assert main(["explain", str(root), f"{SP}/torch/test/bin_test"]) == 0
    out = capsys.readouterr().out
    assert "removed by rules/torch-tests.rules:3 'torch/test/' (relative to site-packages)" in out
    assert main(["explain", str(root), str(root / SP / "torch/__init__.py")]) == 0
    assert "no rule matches: kept" in capsys.readouterr().out
    assert main(["explain", str(root), "/etc/passwd"]) == 2


def test_undo_via_cli(tmp_path, capsys):
    root = env(tmp_path)
    assert main(["apply", "--no-commit", str(root)]) == 0
    assert "slimmer undo" in capsys.readouterr().out
    assert main(["undo", str(root)]) == 0
    assert (root / SP / "torch/test/bin_test").exists()
    assert main(["undo", str(root)]) == 4
    capsys.readouterr()
    assert main(["commit", str(root)]) == 4
    assert capsys.readouterr().err.startswith("slimmer: error: nothing to commit")


def test_exit_codes_are_distinct_and_the_table_is_in_the_readme(tmp_path, capsys):
    """A user error never exits 2 unless it is bad input (2 is click's usage error); a state conflict
    has its own code; the README's table matches the one in slimmer/errors.py."""
    import re

    from slimmer import errors
    from tests.helpers import REPO

    root = env(tmp_path)
    assert main(["apply", "--no-commit", str(root)]) == 0
    assert main(["apply", str(root)]) == errors.StateConflictError.exit_code == 9
    assert "unfinished run" in capsys.readouterr().err
    assert errors.SlimmerError.exit_code != 2
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.SlimmerError)]
    rows: dict[int, str] = {}  # the docstring's table: a row starts with its code, may go on below
    code = None
    for line in (errors.__doc__ or "").split("code  meaning", 1)[1].splitlines():
        found = re.match(r"\s+(\d+)\s", line)
        if found:
            code = int(found.group(1))
            rows[code] = line
        elif code is not None and line.strip():
            rows[code] += line
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for cls in classes:
        assert re.search(rf"\b{cls.__name__}\b", rows.get(cls.exit_code, "")), cls.__name__
        assert re.search(rf"^\s*\| {cls.exit_code} \|", readme, re.M), f"README lacks exit code {cls.exit_code}"


def test_errors_are_one_line_and_json_with_json(tmp_path, capsys):
    assert main(["plan", "--json", str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)
    assert error["exit_code"] == 2 and "no such folder" in error["error"]
    assert captured.err.count("\n") == 1 and captured.err.startswith("slimmer: error: ")

    # click's usage errors: one line that names the command's --help, JSON too with --json
    assert main(["plan", "--json", "--no-such-option", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"].startswith("No such option '--no-such-option'")
    assert captured.err == "slimmer: error: No such option '--no-such-option'. (see 'slimmer plan --help')\n"
    assert main(["no-such-command"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err.count("\n")) == ("", 1)
    assert "'slimmer --help'" in captured.err


@pytest.mark.tools  # gcc, strip
def test_plan_total_includes_the_predicted_strip_saving(tmp_path, capsys):
    if shutil.which("gcc") is None or shutil.which("strip") is None:
        pytest.skip("needs gcc and strip")
    root = env(tmp_path)
    src = tmp_path / "x.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    subprocess.run(["gcc", "-g", "-shared", "-fPIC", "-o", str(root / SP / "pkg/libx.so"), str(src)], check=True)
    assert main(["plan", "--rules", "default", "--json", str(root)]) == 0
    data = json.loads(capsys.readouterr().out)
    predicted = data["strip"]["predicted_bytes"]
    assert predicted > 0
    assert data["bytes_saved_predicted"] == data["bytes_removed"] + predicted
    assert main(["plan", "--rules", "default", str(root)]) == 0
    out = capsys.readouterr().out
    assert "stripped, predicted)" in out.splitlines()[-1]


def test_cli_module_only_registers_commands_that_live_in_commands_modules():
    """cli.py holds the group and the error handling; every command is a module in slimmer/commands/."""
    import ast
    from pathlib import Path

    from slimmer.cli import cli

    homes = {name: cmd.callback.__module__ for name, cmd in cli.commands.items() if cmd.callback is not None}
    assert set(homes) == set(cli.commands)
    assert {name: home for name, home in homes.items() if not home.startswith("slimmer.commands.")} == {}
    assert homes["plan"] == homes["apply"] == homes["explain"] == "slimmer.commands.slim"
    assert homes["undo"] == homes["commit"] == "slimmer.commands.runs"
    source = ast.parse((Path(__file__).parent.parent / "slimmer/cli.py").read_text())
    commands_in_cli = [
        f.name
        for f in ast.walk(source)
        if isinstance(f, ast.FunctionDef)
        for d in f.decorator_list
        if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
    ]
    assert commands_in_cli == []
