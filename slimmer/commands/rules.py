"""`slimmer rules`: list the built-in rule sets, or print one."""

from __future__ import annotations

import click


@click.command("rules")
@click.argument("name", required=False)
def rules_cmd(name: str | None) -> None:
    """List the built-in rule sets, or print one (NAME)."""
    from slimmer.rules import describe_builtins, rule_file_text

    if name:
        click.echo(rule_file_text(name), nl=False)
        return
    for builtin, description in describe_builtins().items():
        click.echo(f"{builtin:<16} {description}")
