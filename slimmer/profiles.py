"""Profiles: what an image does at run time, as a rule file that comes after the user's rules.

`default` keeps what run-time compilation needs (torch.compile's C++ and Triton paths,
`torch.utils.cpp_extension.load`, `Python.h`): its `!` lines come last, so they win over any
rule. `runtime`, for images that never compile at run time, removes those too; the `@breaks`
lines of the rules that remove them tell the plan what stops working. A profile is a rule file
in `rules/profiles/`, so what it keeps or removes is data, not code. Reads rule files only.
"""

from __future__ import annotations

from slimmer.errors import RuleError
from slimmer.rules import RULE_SUFFIX, RuleSet, builtin_rules_dir


def profile_names() -> list[str]:
    return sorted(p.stem for p in (builtin_rules_dir() / "profiles").glob(f"*{RULE_SUFFIX}"))


def with_profile(ruleset: RuleSet, name: str) -> RuleSet:
    """`ruleset` followed by the rules of profile `name`; the profile shows in the set's names."""
    path = builtin_rules_dir() / "profiles" / f"{name}{RULE_SUFFIX}"
    if not path.is_file():
        msg = f"unknown profile '{name}': use one of {', '.join(profile_names())}"
        raise RuleError(msg)
    profile = RuleSet.load([str(path)])
    return RuleSet(rules=ruleset.rules + profile.rules, names=(*ruleset.names, f"profile {name}"))
