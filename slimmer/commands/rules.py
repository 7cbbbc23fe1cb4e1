"""`slimmer rules`: list the built-in rule sets, or print one."""

from __future__ import annotations

import click


@click.command("rules")
@click.argument("name", required=False)
def rules_cmd(name: str | None) -> None:
    """List the built-in rule sets, or print one (NAME)."""
    from slimmer.rules import builtin_names, resolve_rule_file

    if name:
        click.echo(resolve_rule_file(name).read_text(encoding="utf-8"), nl=False)
        return
    for builtin in builtin_names():
        first = resolve_rule_file(builtin).read_text(encoding="utf-8").splitlines()
        desc = next((ln.split("@description", 1)[1].strip() for ln in first if "@description" in ln), "")
        click.echo(f"{builtin:<16} {desc}")
