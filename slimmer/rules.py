"""Rule files: gitignore patterns, each anchored to a base, with the file and line it came from.

A rule file is gitignore syntax (pathspec's `GitIgnoreSpec`) plus two directives written as
comments, so that the file stays a valid gitignore file:

    # @relative-to site-packages    patterns below match paths inside each site-packages folder
    # @relative-to prefix           patterns below match paths inside each environment prefix
    # @include bytecode             the rules of another file, in place (a built-in name or a path)
    # @action strip                 patterns below select ELF files to strip, not to remove
    # @action remove                patterns below select paths to remove (the default)
    # @breaks torch.compile: the C++ headers it needs are removed
                                    what stops working when the pattern lines below (up to the
                                    next blank line) remove something; the plan reports it

Every pattern must come after a `@relative-to` line. Order is global across included files: the
last matching line decides, so `!pattern` keeps what an earlier line (of any file) removed.
Like `@relative-to`, `@action` holds until the end of its file (an included file starts at
`remove`). Remove and strip lines never decide for each other: a set decides for one action.

This module parses and matches; it never touches the file system beyond reading rule files.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pathspec
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern
from pathspec.util import normalize_file

from slimmer.errors import RuleError
from slimmer.safe_read import read_given

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

RULE_SUFFIX = ".rules"
_DIRECTIVE = re.compile(r"^#\s*@(?P<name>[a-z-]+)\s*(?P<arg>.*?)\s*$")


class Action(enum.Enum):
    """What a matching rule does to a path."""

    REMOVE = "remove"
    STRIP = "strip"


class Base(enum.Enum):
    """What a pattern is relative to."""

    SITE_PACKAGES = "site-packages"
    PREFIX = "prefix"


@dataclass(frozen=True)
class Rule:
    """One pattern line, with where it came from."""

    pattern: str
    base: Base
    source: str
    line: int
    action: Action = Action.REMOVE
    breaks: str = ""  # what stops working when this line removes something (@breaks)

    @property
    def negated(self) -> bool:
        return self.pattern.startswith("!")

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where} '{self.pattern}' (relative to {self.base.value})"


def builtin_rules_dir() -> Path:
    """The folder of built-in rule files: inside the wheel, or `rules/` of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "rules", here.parent / "rules"):
        if candidate.is_dir():
            return candidate
    msg = f"built-in rules not found next to {here}: reinstall torch-slimmer"
    raise RuleError(msg)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_rules_dir().glob(f"*{RULE_SUFFIX}"))


def rule_file_text(ref: str) -> str:
    """The text of a rule set (a built-in name or a path), read as a rule file is read."""
    return _read_rule_file(resolve_rule_file(ref))


def describe_builtins() -> dict[str, str]:
    """{built-in rule set: its `@description` line, or ""}, by name."""
    out = {}
    for name in builtin_names():
        found = (_DIRECTIVE.match(line.strip()) for line in rule_file_text(name).splitlines())
        out[name] = next((d["arg"] for d in found if d and d["name"] == "description"), "")
    return out


def resolve_rule_file(ref: str, relative_to: Path | None = None) -> Path:
    """A built-in rule name (`default`) or a path (`./my.rules`) to a readable rule file."""
    looks_like_path = "/" in ref or ref.endswith(RULE_SUFFIX)
    if looks_like_path:
        path = Path(ref).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if path.is_dir():
            msg = f"rule file {ref} is a folder: name a .rules file in it"
            raise RuleError(msg)
        if not path.exists():
            msg = f"rule file {ref} not found"
            raise RuleError(msg)
        return path
    path = builtin_rules_dir() / f"{ref}{RULE_SUFFIX}"
    if not path.is_file():
        known = ", ".join(builtin_names())
        msg = f"unknown rule set '{ref}': use a built-in name ({known}) or a path to a .rules file"
        raise RuleError(msg)
    return path


_MAX_RULE_FILE = 64 << 20


def _read_rule_file(path: Path) -> str:
    """The text of a rule file: a regular file (a link to one is fine: it is the user's own file,
    not one of the tree), never a FIFO or a device that would block or never end, bounded."""
    try:
        data = read_given(path, _MAX_RULE_FILE)
    except OSError as exc:
        msg = f"{_display(path)}: cannot read rule file: {exc.strerror or exc}"
        raise RuleError(msg) from None
    except ValueError as exc:
        msg = f"{_display(path)}: cannot read rule file: {exc}"
        raise RuleError(msg) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        msg = f"{_display(path)}:{line}: not UTF-8 (byte {data[exc.start]:#04x}): save the file as UTF-8"
        raise RuleError(msg) from None


def _display(path: Path) -> str:
    builtin = builtin_rules_dir()
    try:
        return f"rules/{path.resolve().relative_to(builtin)}"
    except ValueError:
        return str(path)


# Each pattern is compiled once per process: checking it while the file loads, the sets that
# decide and `explain` share the compiled object (a 100k-line rule file compiled 2-3 times cost
# most of a minute).
# A pattern's own regular expression is compiled only when it is asked for (`check_file` on a
# path that the combined expression of `_any_match` says some pattern matches): most of the
# lines of a long rule file are never compiled on their own.


class _LazyPattern(GitIgnoreSpecPattern):
    """A gitignore pattern translated at once, its regular expression compiled on first use."""

    def __init__(self, pattern: str) -> None:  # no super().__init__: it compiles
        source, include = self.pattern_to_regex(pattern)
        self.pattern = pattern
        self.include = include
        self.source: str | None = source if include is not None else None
        self._regex: re.Pattern[str] | None = None

    @property
    def regex(self) -> re.Pattern[str] | None:
        if self._regex is None and self.source is not None:
            self._regex = re.compile(self.source)
        return self._regex

    @regex.setter
    def regex(self, value: re.Pattern[str] | None) -> None:
        self._regex = value


_COMPILED: dict[str, _LazyPattern] = {}


def _pattern(pattern: str) -> _LazyPattern:
    compiled = _COMPILED.get(pattern)
    if compiled is None:
        compiled = _COMPILED[pattern] = _LazyPattern(pattern)
    return compiled


def _check_pattern(pattern: str, where: str) -> None:
    try:
        compiled = _pattern(pattern)
    except Exception as exc:  # pathspec raises several types for a bad pattern
        msg = f"{where}: malformed pattern '{pattern}': {exc}"
        raise RuleError(msg) from None
    if compiled.include is None:
        why = "unbalanced '[' ?" if "[" in pattern else "it names no path: a lone '/' is not a pattern"
        msg = f"{where}: malformed pattern '{pattern}': it can never match ({why})"
        raise RuleError(msg)


_E = TypeVar("_E", bound=enum.Enum)


def _choice(kind: type[_E], arg: str, problem: str) -> _E:
    """The member of `kind` named `arg`, or a RuleError that says `problem` and lists the choices."""
    try:
        return kind(arg)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        msg = f"{problem}: use one of {choices}"
        raise RuleError(msg) from None


def _parse_file(path: Path, stack: tuple[Path, ...]) -> list[Rule]:  # noqa: PLR0912 - one branch per rule-file directive and line form
    real = path.resolve()
    if real in stack:
        chain = " -> ".join(_display(p) for p in (*stack, real))
        msg = f"{_display(path)}: include cycle: {chain}"
        raise RuleError(msg)
    text = _read_rule_file(path).removeprefix("\ufeff")  # a BOM is no part of the first line
    source = _display(path)
    rules: list[Rule] = []
    base: Base | None = None
    action = Action.REMOVE
    breaks = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\n")
        where = f"{source}:{number}"
        directive = _DIRECTIVE.match(line.strip())
        if directive:
            name, arg = directive["name"], directive["arg"]
            if name == "relative-to":
                base = _choice(Base, arg, f"{where}: unknown base '{arg}' for @relative-to")
            elif name == "include":
                if not arg:
                    msg = f"{where}: @include needs a rule name or path"
                    raise RuleError(msg)
                try:
                    included = resolve_rule_file(arg, relative_to=path.parent)
                except RuleError as exc:
                    msg = f"{where}: {exc}"
                    raise RuleError(msg) from None
                rules.extend(_parse_file(included, (*stack, real)))
            elif name == "action":
                action = _choice(Action, arg, f"{where}: unknown action '{arg}' for @action")
            elif name == "breaks":
                breaks = arg
            elif name != "description":
                msg = (
                    f"{where}: unknown directive '@{name}': "
                    "use @relative-to, @action, @include, @breaks or @description"
                )
                raise RuleError(msg)
            continue
        stripped = line.strip()
        if not stripped:
            breaks = ""  # @breaks covers one paragraph of patterns
        if not stripped or stripped.startswith("#"):
            continue
        if base is None:
            msg = (
                f"{where}: pattern '{stripped}' comes before any '# @relative-to' line: "
                "say whether it is relative to site-packages or prefix"
            )
            raise RuleError(msg)
        _check_pattern(stripped, where)
        rules.append(Rule(pattern=stripped, base=base, source=source, line=number, action=action, breaks=breaks))
    return rules


_DIR_GROUP = "(?P<ps_d>"


def _any_match(patterns: Sequence[object]) -> re.Pattern[str] | None:
    """One regular expression that matches a path if and only if some pattern of `spec` does.

    It is the alternation of the patterns' own expressions (pathspec matches each with `search`),
    with their directory-marker group made non-capturing, as the alternation cannot repeat a group
    name. `check_file` then runs only on a hit, to find the deciding pattern. None when the
    patterns cannot be combined (flags, another group): `decide` then asks `check_file` always.
    """
    parts = []
    for pattern in patterns:
        if getattr(pattern, "include", None) is None:
            continue
        if isinstance(pattern, _LazyPattern) and pattern.source is not None:
            source = pattern.source  # not compiled on its own
        else:
            regex = getattr(pattern, "regex", None)
            if regex is None:
                continue
            if not isinstance(regex, re.Pattern) or not isinstance(regex.pattern, str) or regex.flags & ~re.UNICODE:
                return None
            source = regex.pattern
        if "(?P<" in source.replace(_DIR_GROUP, ""):
            return None
        parts.append(f"(?:{source.replace(_DIR_GROUP, '(?:')})")
    if not parts:
        return re.compile(r"(?!)")  # matches nothing
    try:
        return re.compile("|".join(parts))
    except re.error:
        return None


_CHUNK = 512


class _Matcher:
    """The patterns of one base, matched the way `GitIgnoreSpec.check_file` does, but fast for
    long rule files: one combined expression says whether any pattern matches (most paths end
    there); on a hit, combined expressions of chunks of patterns name the few candidates, and
    `check_file` runs over those only (patterns that do not match cannot change its answer)."""

    def __init__(self, patterns: list[_LazyPattern]) -> None:
        self.patterns = patterns
        self.anything = _any_match(patterns)
        self.spec = pathspec.GitIgnoreSpec(patterns)
        self._chunks: list[re.Pattern[str] | bool | None] = [False] * ((len(patterns) + _CHUNK - 1) // _CHUNK)

    def _chunk(self, n: int) -> re.Pattern[str] | None:
        got = self._chunks[n]
        if got is False:
            got = self._chunks[n] = _any_match(self.patterns[n * _CHUNK : (n + 1) * _CHUNK])
        return got if isinstance(got, re.Pattern) else None

    def check(self, rel: str) -> int | None:
        """The index of the pattern that decides `rel`, or None."""
        norm = normalize_file(rel)
        if self.anything is not None and self.anything.search(norm) is None:
            return None
        if len(self.patterns) <= _CHUNK:
            return self.spec.check_file(rel).index
        candidates: list[int] = []
        for n in range(len(self._chunks)):
            chunk = self._chunk(n)
            if chunk is None or chunk.search(norm) is not None:
                candidates.extend(range(n * _CHUNK, min((n + 1) * _CHUNK, len(self.patterns))))
        found = pathspec.GitIgnoreSpec([self.patterns[i] for i in candidates]).check_file(rel).index
        return candidates[found] if found is not None else None


@dataclass(frozen=True)
class Decision:
    """The rule line that decides a path, and every line that matched it."""

    rule: Rule | None
    matched: tuple[Rule, ...] = ()

    @property
    def removes(self) -> bool:
        return self.rule is not None and not self.rule.negated


@dataclass(frozen=True)
class RuleSet:
    """An ordered, immutable list of rules. Methods that add rules return a new set.

    `decide` and `explain` consider only the rules of `action` (remove, unless the set came
    from `for_action`), so a strip line never removes a file and a remove line never strips one.
    """

    rules: tuple[Rule, ...]
    names: tuple[str, ...] = ()
    action: Action = Action.REMOVE
    _specs: dict[Base, tuple[_Matcher, tuple[int, ...]]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, refs: Sequence[str]) -> RuleSet:
        rules: list[Rule] = []
        for ref in refs:
            rules.extend(_parse_file(resolve_rule_file(ref), ()))
        return cls(rules=tuple(rules), names=tuple(refs))

    def with_keep(self, patterns: Iterable[str]) -> RuleSet:
        """Protect paths matching `patterns` (relative to either base), whatever came before."""
        extra: list[Rule] = []
        for number, pattern in enumerate(patterns, start=1):
            clean = pattern.strip().removeprefix("!")
            if not clean:
                msg = "--keep: empty pattern"
                raise RuleError(msg)
            where = f"--keep:{number}"
            _check_pattern(clean, where)
            extra.extend(Rule(f"!{clean}", base, "--keep", number, action) for base in Base for action in Action)
        return RuleSet(rules=self.rules + tuple(extra), names=self.names, action=self.action)

    def for_action(self, action: Action) -> RuleSet:
        """The same rules, deciding for `action`."""
        return RuleSet(rules=self.rules, names=self.names, action=action)

    def removers(self) -> RuleSet:
        """The same set without its `!` lines."""
        return RuleSet(rules=tuple(r for r in self.rules if not r.negated), names=self.names, action=self.action)

    def _compiled(self) -> dict[Base, tuple[_Matcher, tuple[int, ...]]]:
        if not self._specs:
            for base in Base:
                indices = tuple(i for i, r in enumerate(self.rules) if r.base is base and r.action is self.action)
                self._specs[base] = (_Matcher([_pattern(self.rules[i].pattern) for i in indices]), indices)
        return self._specs

    def decide(self, rel_by_base: Mapping[Base, str]) -> Rule | None:
        """The last rule (in global order) that matches the path, or None."""
        best = -1
        compiled = self._compiled()
        for base, rel in rel_by_base.items():
            matcher, indices = compiled[base]
            index = matcher.check(rel)
            if index is not None:
                best = max(best, indices[index])
        return self.rules[best] if best >= 0 else None

    def explain(self, rel_by_base: Mapping[Base, str]) -> Decision:
        """Like `decide`, and also every rule that matched on the way."""
        matched: list[int] = []
        for base, rel in rel_by_base.items():
            for i, rule in enumerate(self.rules):
                if rule.base is not base or rule.action is not self.action:
                    continue
                if _pattern(rule.pattern.removeprefix("!")).match_file(normalize_file(rel)) is not None:
                    matched.append(i)
        matched.sort()
        return Decision(rule=self.decide(rel_by_base), matched=tuple(self.rules[i] for i in matched))
