"""The `slimmer` command: turns arguments into typed values, calls the core, prints the result.

Errors meant for the user (`SlimmerError`) print as one line with their own exit code; an
`OSError` (full disk, read-only file system, ...) prints as one line with the path and what to do,
exit 6; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from slimmer import __version__
from slimmer.errors import CheckFailedError, SlimmerError

if TYPE_CHECKING:
    from collections.abc import Sequence


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="slimmer")
def cli() -> None:
    """Slim a Python/PyTorch environment by rules, safely: every change is planned, journaled and undoable.

    \b
    Typical use, as the last RUN of a Dockerfile's build stage:
        slimmer apply --rules default /opt/conda/envs/py
    Look first:    slimmer plan /opt/conda/envs/py
    Ask why:       slimmer explain /opt/conda/envs/py lib/python3.11/site-packages/torch/test
    Change mind:   slimmer apply --no-commit ROOT, then slimmer undo ROOT
    """


def main(argv: Sequence[str] | None = None, *, command: click.Command = cli) -> int:  # noqa: PLR0911 - one return per error family: the exit-code table in one place
    """Run the CLI; return the exit code instead of exiting.

    Every error is one line on stderr (`slimmer: error: ...`); with `--json` it is also a JSON
    object on stdout (`{"error": ..., "exit_code": ...}`), so a script that parses stdout gets one."""
    args = list(argv) if argv is not None else sys.argv[1:]
    as_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args

    def fail(message: str, code: int) -> int:
        click.echo(f"slimmer: error: {message}", err=True)
        if as_json:
            click.echo(json.dumps({"error": message, "exit_code": code}))
        return code

    try:
        command.main(args=args, prog_name="slimmer", standalone_mode=False)
    except CheckFailedError as exc:  # the command's own JSON report already says what failed
        click.echo(f"slimmer: error: {exc}", err=True)
        return exc.exit_code
    except SlimmerError as exc:
        return fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        click.echo("slimmer: interrupted", err=True)
        return 130
    except click.exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "slimmer"
        message = " ".join(exc.format_message().split())
        return fail(f"{message} (see '{where} --help')", exc.exit_code)
    except click.exceptions.ClickException as exc:
        return fail(" ".join(exc.format_message().split()), exc.exit_code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("slimmer: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a full disk, a read-only file system, a file where a folder should be
        from slimmer import oserrors

        return fail(oserrors.describe(exc), oserrors.EXIT_CODE)
    return 0


def entrypoint() -> None:
    sys.exit(main(sys.argv[1:]))


# The commands, one module per group in slimmer/commands/; they import lief and docker lazily.
from slimmer.commands.elf import elf_cmd  # noqa: E402
from slimmer.commands.image import image_cmd  # noqa: E402
from slimmer.commands.pipeline import build_and_slim_cmd, dockerfile_cmd  # noqa: E402
from slimmer.commands.rules import rules_cmd  # noqa: E402
from slimmer.commands.runs import commit_cmd, undo_cmd  # noqa: E402
from slimmer.commands.slim import apply_cmd, explain_cmd, plan_cmd  # noqa: E402
from slimmer.commands.verify import doctor_cmd, verify_cmd  # noqa: E402

for _command in (
    plan_cmd,
    apply_cmd,
    explain_cmd,
    undo_cmd,
    commit_cmd,
    rules_cmd,
    verify_cmd,
    doctor_cmd,
    elf_cmd,
    build_and_slim_cmd,
    dockerfile_cmd,
    image_cmd,
):
    cli.add_command(_command)
