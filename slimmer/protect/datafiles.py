"""Keep the data files that kept code reads at run time, whatever their suffix; never runs any code.

Import analysis keeps what is imported; this keeps what is *read*. A file that a remove rule
selects stays when kept Python code of the same distribution refers to it:

- by name: its basename, or a path ending (`descr/iris.rst`, `templates/page.md`), is a string
  literal in a kept module (`load_descr("iris.rst")`, `pkgutil.get_data(__name__, "data/x.txt")`);
- through its folder: a kept module that opens files names the folder as a literal, as a path
  (`Path(__file__).parent / "templates"`, `os.path.join(os.path.dirname(__file__), "data")`,
  resolved against its own folder, or against each of its packages when it uses a resource API) or as a dotted package
  (`importlib.resources.files("sklearn.datasets.descr")`, `package + ".templates"`); then every
  selected file right in that folder (not in its subfolders) stays, since the name read may be
  built at run time;
- next to the code: a kept module that reaches its own folder (`__file__`, or
  `resources.files(__name__)` and its kin), opens files and builds their names with a suffix
  literal (`lang + ".txt"`, `"*.txt"`, `f"{name}.txt"`) keeps the selected files with that suffix
  beside it.

The distribution is the one `slimmer.dists.Owners` names (the top-level folder where there is no
record). Files in test folders are never protected, and module files (`.py`, bytecode) belong to
the import analysis. Only string literals count: a text filter finds the literals and the words
that open files; only files with a hit are parsed with `ast`, which confirms the literal and gives
its line (a file `ast` cannot parse keeps the text's hits).

Rules stay free to remove such files on purpose: when the deciding rule names a location (its
pattern has a `/` inside, such as `torch/include/`) rather than a kind of file (`*.rst`), the file
goes and, when kept code names the file itself, the protector records who reads it in `reads`,
which the plan reports under what stops working. `--keep` and `!` lines keep files before any
protector runs. Symlinks are never read through and files over 8 MiB are not scanned. Reads only.
"""

from __future__ import annotations

import ast
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer.dists import METADATA_SUFFIXES
from slimmer.safe_read import read_regular
from slimmer.walk import Kind

if TYPE_CHECKING:
    from collections.abc import Iterator

    from slimmer.model.plan import PlanContext
    from slimmer.rules import Rule

_TEST_FOLDERS = frozenset({"tests", "test"})
_MODULE_SUFFIXES = (".py", ".pyc", ".pyo")
_MAX_SOURCE = 8 << 20
# Single-line string literals, a superset (it also finds quoted words in comments and docstrings):
# `ast` confirms the hits.
_LITERAL = re.compile(rb"""'([^'\\\n]{1,300})'|"([^"\\\n]{1,300})\"""")
# Calls that open or list files, directly or through importlib.resources / pkgutil / pkg_resources.
_OPENS = re.compile(
    rb"\b(?:open|read_text|read_bytes|open_text|open_binary|read_binary|get_data|resource_string|resource_stream"
    rb"|resource_filename|resource_listdir|resource_exists|files|as_file|joinpath|iterdir|listdir|scandir|glob"
    rb"|loadtxt|genfromtxt|load)\s*\("
)
# Code that reaches its own folder: `__file__`, or a resource call on its own module or package.
_OWN_FOLDER = re.compile(
    rb"\b__file__\b|\b(?:files|get_data|resource_\w+|open_text|open_binary|read_text|read_binary|path)\s*\(\s*"
    rb"(?:__name__|__package__|__spec__\.(?:name|parent))\b"
)
# The resource APIs that reach a package's files by its dotted name.
_RESOURCES = re.compile(rb"\bimportlib[._]resources\b|\bimport resources\b|\bpkgutil\b|\bpkg_resources\b")
_DOTTED = re.compile(r"^\.*[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class DataFileStats:
    """What one analysis cost, for the plan's figures."""

    candidates: int  # data files a remove rule selects, outside test folders
    readers: int  # kept Python files of the distributions that own them
    scanned: int
    parsed: int
    kept: int
    seconds: float


@dataclass(frozen=True)
class _Hit:
    value: str
    line: int
    col: int = 0  # orders the literals of one line as written


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _is_candidate(rel: str) -> bool:
    parts = rel.split("/")
    if any(p in _TEST_FOLDERS or p == "__pycache__" or p.endswith(METADATA_SUFFIXES) for p in parts[:-1]):
        return False
    return not parts[-1].endswith(_MODULE_SUFFIXES)


def names_location(rule: Rule) -> bool:
    """A pattern that names a place (`torch/include/`, `pkg/data/*.txt`), not a kind of file (`*.rst`)."""
    pattern = rule.pattern.lstrip("!").strip("/")
    while pattern.startswith("**/"):
        pattern = pattern[3:]
    return "/" in pattern


def _clean(value: str) -> str:
    """A literal as a relative path: no leading `./` or `/`, no trailing `/`."""
    value = value.strip()
    if len(value) > 300:
        return ""
    while value.startswith(("./", "/")):
        value = value[2:] if value.startswith("./") else value[1:]
    return value.rstrip("/")


def _text_literals(source: bytes, names: frozenset[bytes]) -> list[_Hit]:
    """Quoted single-line literals found by a regular expression (a superset of the real ones), with
    their lines: those whose last part (as a path, or as a dotted package), folder or suffix is one
    of `names`, and the other literals of their lines (`os.path.join(here, "data", "fonts", n)`).
    Lines are counted only for the lines that hold a hit (most files have none)."""
    found: list[tuple[int, bytes]] = []
    hit_spans: list[tuple[int, int]] = []  # (start, end) of each line with a hit, in order
    for m in _LITERAL.finditer(source):
        literal = (m[1] or m[2]).strip().rstrip(b"/")
        start = m.start()
        found.append((start, literal))
        head, _, last = literal.rpartition(b"/")
        tail = last.rpartition(b".")[2]
        if last in names or tail in names or b"." + tail in names or head.rpartition(b"/")[2] in names:
            if hit_spans and start < hit_spans[-1][1]:
                continue  # on a line already hit
            line_start = source.rfind(b"\n", 0, start) + 1
            line_end = source.find(b"\n", start)
            hit_spans.append((line_start, len(source) if line_end < 0 else line_end))
    if not hit_spans:
        return []
    hits: list[_Hit] = []
    span = 0
    line, counted = 1, 0
    for start, literal in found:
        while span < len(hit_spans) and start >= hit_spans[span][1]:
            span += 1
        if span == len(hit_spans):
            break
        if start < hit_spans[span][0]:
            continue
        line += source.count(b"\n", counted, start)
        counted = start
        hits.append(_Hit(literal.decode("utf-8", "replace"), line, start))
    return hits


def _ast_literals(source: bytes) -> list[_Hit] | None:
    """The string constants of a Python file with their lines; None when `ast` cannot parse it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # generated code can nest too deep
        return None
    return [
        _Hit(node.value, node.lineno, node.col_offset)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) <= 300
    ]


class _Group:
    """The selected data files of one distribution, indexed by basename and by folder."""

    def __init__(self) -> None:
        self.by_name: dict[str, list[str]] = defaultdict(list)
        # The files right in each folder (not in its subfolders: code that reaches `lib/` reads
        # `lib/libdevice.10.bc`, not the static archives of `lib/cupti/`).
        self.by_folder: dict[str, list[str]] = defaultdict(list)
        self.folder_names: set[str] = set()

    def add(self, rel: str, site: str, *, named_only: bool) -> None:
        """Index `rel`; `named_only`: its rule names its place, so only a reference by name counts."""
        self.by_name[rel.rpartition("/")[2]].append(rel)
        if named_only:
            return
        folder = _parent(rel)
        if folder != site:
            self.by_folder[folder].append(rel)
            self.folder_names.add(folder.rpartition("/")[2])

    def names(self) -> frozenset[bytes]:
        """What a literal's last part must be for a reference: a basename, a folder name, a suffix."""
        suffixes = {"." + name.rpartition(".")[2] for name in self.by_name if "." in name}
        return frozenset(w.encode("utf-8", "surrogateescape") for w in (*self.by_name, *self.folder_names, *suffixes))


class DataFileProtector:
    """Keeps the data files a rule would remove that kept code of their distribution reads."""

    name = "data-file analysis"

    def __init__(self) -> None:
        self.stats: DataFileStats | None = None
        self.reads: dict[str, str] = {}  # removed on purpose (a rule names the place) but read: {rel: by whom}

    def protect(self, ctx: PlanContext, removing: dict[str, Rule]) -> dict[str, str]:  # noqa: PLR0912 - one branch per kind of run-time read found
        start = time.monotonic()
        self.reads = {}
        groups: dict[str, _Group] = {}
        site_of: dict[str, str] = {}
        candidates = 0
        for rel, rule in removing.items():
            entry = ctx.by_rel.get(rel)
            if entry is None or entry.kind not in (Kind.FILE, Kind.LINK) or not _is_candidate(rel):
                continue
            site = ctx.layout.site_of(rel)
            if site is None or rel.count("/") <= site.count("/") + (1 if site else 0):
                continue  # not inside a package folder of a site-packages
            key = _group_key(ctx, rel, site)
            site_of[key] = site
            groups.setdefault(key, _Group()).add(rel, site, named_only=names_location(rule))
            candidates += 1
        found: dict[str, str] = {}
        readers = scanned = parsed = 0
        if groups:
            root = os.fspath(ctx.tree.root)
            names = {key: group.names() for key, group in groups.items()}
            for rel, key in _readers(ctx, removing, groups, site_of):
                readers += 1
                source = read_regular(os.path.join(root, rel), _MAX_SOURCE)
                if source is None:
                    continue
                scanned += 1
                group = groups[key]
                hits = _text_literals(source, names[key])
                if not hits:
                    continue
                # The text's literals decide whether there is a reference at all; `ast` then confirms
                # them (a quoted word in a comment or docstring is no literal) and gives the lines.
                refs = list(_references(rel, hits, source, group, site_of[key]))
                if not refs:
                    continue
                parsed += 1
                confirmed = _ast_literals(source)
                if confirmed is not None:
                    refs = list(_references(rel, confirmed, source, group, site_of[key]))
                for target, why in refs:
                    found.setdefault(target, why)
        keep: dict[str, str] = {}
        for rel, why in found.items():
            if names_location(removing[rel]):
                self.reads[rel] = why
            else:
                keep[rel] = why
        self.stats = DataFileStats(candidates, readers, scanned, parsed, len(keep), time.monotonic() - start)
        return keep


def _group_key(ctx: PlanContext, rel: str, site: str) -> str:
    owner = ctx.owners.owner(rel)
    if owner is not None:
        return owner.label
    inside = rel[len(site) + 1 :] if site else rel
    return f"{site}/{inside.split('/', 1)[0]}"


def _readers(
    ctx: PlanContext, removing: dict[str, Rule], groups: dict[str, _Group], site_of: dict[str, str]
) -> Iterator[tuple[str, str]]:
    """(rel, group) of every kept `.py` file of a distribution that has selected data files."""
    for entry in ctx.tree.entries:
        rel = entry.rel
        if entry.kind is not Kind.FILE or not rel.endswith(".py") or rel in removing:
            continue
        site = ctx.layout.site_of(rel)
        if site is None:
            continue
        key = _group_key(ctx, rel, site)
        if key in groups and site_of[key] == site:
            yield rel, key


def _references(reader: str, hits: list[_Hit], source: bytes, group: _Group, site: str) -> Iterator[tuple[str, str]]:
    """(data file, why) for each selected file of `group` that `reader` refers to."""
    where = reader[len(site) + 1 :] if site else reader
    folder = _parent(reader)
    hits = _with_joins(sorted(hits, key=lambda h: (h.line, h.col)))
    values = [(hit, _clean(hit.value)) for hit in hits]
    values = [(hit, v) for hit, v in values if len(v) >= 3 and not any(c.isspace() for c in v)]
    for hit, value in values:  # by name first: the most precise reason wins
        last = value.rpartition("/")[2]
        for rel in group.by_name.get(last, ()):
            if rel == value or rel.endswith("/" + value):
                yield rel, f"named in {where}:{hit.line}"
    if _OPENS.search(source) is None:
        return
    own = _OWN_FOLDER.search(source) is not None
    resources = _RESOURCES.search(source) is not None
    packages = []  # the reader's package folders, innermost first, down to (not including) the site
    f = folder
    while f and f != site:
        packages.append(f)
        f = _parent(f)
    seen: set[str] = set()
    for hit, value in values:
        for target in _folder_targets(value, folder, packages, site, own=own, resources=resources):
            # A package's top folder is no data folder: naming it (`files("pkg")`) would keep every
            # file of the package. Files right in it are reached by name or from beside.
            if _parent(target) == site or target in seen:
                continue
            seen.add(target)
            for rel in group.by_folder.get(target, ()):
                yield rel, f"folder {value} opened by {where}:{hit.line}"
    if own:
        # The name is built at run time (`lang + ".txt"`, `"*.txt"`): the suffix literal says which files.
        suffixes = {
            v.rpartition("*")[2].rpartition("}")[2] for _, v in values if v.startswith(".") or "*" in v or "}" in v
        }
        for rel in group.by_folder.get(folder, ()):
            name = rel.rpartition("/")[2]
            if any(suffix.startswith(".") and name.endswith(suffix) for suffix in suffixes):
                yield rel, f"beside {where}, which opens files ending {name[name.index('.') :]} from its own folder"


def _with_joins(hits: list[_Hit]) -> list[_Hit]:
    """The hits, plus what a path built from several literals names: the literals of one line joined
    (`os.path.join(here, "data", "fonts", name)` -> `data/fonts`), and the folder of a name built
    by formatting (`f"data/{name}"`, `"data/%s.csv" % name` -> `data`)."""
    out = list(hits)
    by_line: dict[int, list[str]] = defaultdict(list)
    for hit in hits:
        value = hit.value.strip().strip("/")
        if any(c in value for c in "{}%*"):
            folder = value.rpartition("/")[0]
            if folder and not any(c in folder for c in "{}%*"):
                out.append(_Hit(folder, hit.line))
            continue
        if value and not value.startswith(".") and not any(c.isspace() for c in value):
            by_line[hit.line].append(value)
    for line, parts in by_line.items():
        for start in range(len(parts)):
            for end in range(start + 2, len(parts) + 1):
                out.append(_Hit("/".join(parts[start:end]), line))
    return out


def _join(base: str, path: str) -> str:
    return f"{base}/{path}" if base else path


def _folder_targets(
    value: str, folder: str, packages: list[str], site: str, *, own: bool, resources: bool
) -> Iterator[str]:
    """The folders a literal can name, for a reader in `folder`:
    - a path (`templates`, `data/json`): below the reader's own folder when the reader derives paths
      from its location (`__file__`, `files(__name__)`); below any of its packages when it uses a
      resource API (`files("pkg") / "templates"`);
    - a dotted package (`a.b.c`), with a resource API: that package's folder;
    - a relative dotted name (`.templates`, as in `package + ".templates"`), with a resource API:
      below any of the reader's packages.
    """
    if _DOTTED.match(value) and "." in value:
        if not resources:
            return
        if value.startswith("."):
            tail = value.lstrip(".").replace(".", "/")
            for package in packages:
                yield _join(package, tail)
        else:
            yield _join(site, value.replace(".", "/"))
        return
    if own:
        yield _join(folder, value)
    if resources:
        for package in packages:
            yield _join(package, value)
