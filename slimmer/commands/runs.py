"""`slimmer undo` and `slimmer commit`: finish the last run on ROOT one way or the other."""

from __future__ import annotations

import click

from slimmer.commands.options import root_argument
from slimmer.errors import SlimmerError


@click.command("undo")
@root_argument
@click.option("--wait", type=float, default=0.0, metavar="SECONDS", help="Wait this long for another run on ROOT.")
def undo_cmd(root: str, force: bool, wait: float) -> None:
    """Restore what the last run on ROOT removed, if it has not been committed."""
    from slimmer.apply import undo
    from slimmer.targets import check_root

    notes: list[str] = []
    run_id, restored, problems = undo(check_root(root, force=force), wait=wait, notes=notes)
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    for rel, why in problems:
        click.echo(f"could not restore {rel}: {why}", err=True)
    click.echo(f"Restored {restored} items of run {run_id}.")
    if problems:
        raise SlimmerError(f"{len(problems)} items could not be restored; they are still in the staging folder")


@click.command("commit")
@root_argument
def commit_cmd(root: str, force: bool) -> None:
    """Make the last run on ROOT final: delete the originals kept for undo."""
    from slimmer.apply import commit
    from slimmer.targets import check_root

    notes: list[str] = []
    run_id = commit(check_root(root, force=force), notes=notes)
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    click.echo(f"Committed run {run_id}.")
