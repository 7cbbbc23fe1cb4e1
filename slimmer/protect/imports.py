"""Keep the Python modules that kept code imports, found by static analysis; never runs any code.

For every module file (`.py`, extension module) that a rule would remove, the protector asks
whether a kept module imports it: `import a.b`, `from a import b` (b may be a submodule),
relative imports, imports inside functions, `importlib.import_module("a.b")` and `__import__`
with a literal name, and `import` lines of `.pth` files. A module that stays keeps what it
imports in turn, to a fixed point. Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py`,
so those stay too. Imports under `if TYPE_CHECKING:` never run and are ignored.

Some modules are imported by the user rather than by other modules: the top-level modules of an
installed distribution (`top_level.txt`, else its RECORD) and the targets of its entry points.
Those stay while the distribution's metadata stays (`import functorch` keeps working).

Not every kept file is parsed: two text filters on its import lines come first (does a line
name the last part of a removed module, with its parent package or through a relative import;
do the imports that regular expressions read there resolve to a removed module), and only files
that pass both go through `ast`. Parsed imports are cached by path, size and mtime. On torch
2.13 with the seed recipe's rules: 4,261 files read, 67 parsed, 62 kept, 3-4 s. Optional imports
(inside `try: ... except ImportError`) count as imports: what they name stays. Symlinks are
never read. Reads only.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer.dists import METADATA_SUFFIXES
from slimmer.safe_read import METADATA_LIMIT, SOURCE_LIMIT, open_regular, read_text
from slimmer.walk import Kind

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from slimmer.model.plan import PlanContext
    from slimmer.rules import Rule

_EXT_MODULE = re.compile(r"^(?P<name>[A-Za-z_]\w*)(\.[\w-]+)?\.(so|pyd)$")
_PYDIR = re.compile(r"^python\d+(\.\d+)?t?$")
# Where an import can be: `import`/`from` statements and dynamic imports with a literal name.
_IMPORT_HINT = re.compile(rb"\bimport\b|\bimport_module\b|\b__import__\b")
_WORD = re.compile(rb"[A-Za-z_]\w*")


@dataclass(frozen=True)
class ModuleFile:
    """A file that Python can import: its dotted name and the root it is imported from."""

    rel: str
    name: str
    root: str
    is_package: bool  # an __init__ file: relative imports start from the module itself


@dataclass(frozen=True)
class ImportStats:
    """What one analysis cost, for the plan's figures."""

    removed_modules: int
    importers: int  # kept .py files, each of which could import a removed module
    scanned: int  # files read for the text filters (importers and newly kept modules)
    parsed: int
    kept: int
    seconds: float


@dataclass(frozen=True)
class ImportRef:
    """One import statement, resolved to absolute names: `base` and the names taken from it."""

    base: str
    names: tuple[str, ...] = ()


class ModuleIndex:
    """Module names to files, per import root (site-packages, the stdlib and lib-dynload)."""

    def __init__(self, ctx: PlanContext) -> None:
        self.roots = _module_roots(ctx)
        ordered = sorted(self.roots, key=len, reverse=True)
        self.by_rel: dict[str, ModuleFile] = {}
        self.by_name: dict[str, list[ModuleFile]] = {}
        for entry in ctx.tree.entries:
            if entry.kind not in (Kind.FILE, Kind.LINK):
                continue
            root = next((r for r in ordered if r == "" or entry.rel.startswith(r + "/")), None)
            if root is None:
                continue
            module = _module_file(entry.rel, root)
            if module is not None:
                self.by_rel[entry.rel] = module
                self.by_name.setdefault(module.name, []).append(module)

    def files(self, name: str) -> list[ModuleFile]:
        return self.by_name.get(name, [])


def _module_roots(ctx: PlanContext) -> list[str]:
    roots = set(ctx.layout.site_packages)
    for site in ctx.layout.site_packages:
        parent, _, _ = site.rpartition("/")
        if _PYDIR.match(parent.rpartition("/")[2]) and parent in ctx.by_rel:
            roots.add(parent)  # the stdlib of a conda env or /usr/local
            if f"{parent}/lib-dynload" in ctx.by_rel:
                roots.add(f"{parent}/lib-dynload")
    return sorted(roots)


def _module_file(rel: str, root: str) -> ModuleFile | None:
    inside = rel[len(root) + 1 :] if root else rel
    *folders, filename = inside.split("/")
    if filename.endswith(".py"):
        stem = filename[:-3]
    else:
        match = _EXT_MODULE.match(filename)
        if match is None:
            return None
        stem = match["name"]
    is_package = stem == "__init__"
    parts = folders if is_package else [*folders, stem]
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ModuleFile(rel, ".".join(parts), root, is_package)


def _prefixes(name: str) -> Iterator[str]:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        yield ".".join(parts[:i])


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _package_of(module: ModuleFile) -> str:
    return module.name if module.is_package else module.name.rpartition(".")[0]


def _absolute(module: ModuleFile, level: int, name: str | None) -> str | None:
    if level == 0:
        return name
    parts = _package_of(module).split(".")
    if level - 1 > len(parts) or (level - 1 == len(parts) and not name):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, name] if name else base) or None


_DYNAMIC = re.compile(rb"""\b(?:import_module|__import__)\(\s*(?:name\s*=\s*)?[rb]?["']([\w.]+)["']""")
_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def parse_imports(source: bytes, module: ModuleFile) -> list[ImportRef]:
    """Every import in `source`, in any block, resolved against `module`'s package.

    Walks statements only (imports are statements; expressions are not entered), so a large
    file costs little more than its parse. A file over `_PIECES_ABOVE` is parsed in pieces of
    whole top-level statements (`_parse_in_pieces`): the same imports in the same order, with the
    memory of one piece's tree instead of the whole file's (85 MB for torch's 1.4 MB
    common_methods_invocations.py). Dynamic imports with a literal name come from the text.
    """
    refs = _parse_in_pieces(source, module) if len(source) > _PIECES_ABOVE else None
    if refs is None:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            refs = _regex_imports(source, module)
        else:
            refs = _statement_imports(tree, module)
    refs.extend(_dynamic_refs(module, source))
    return refs


def _statement_imports(tree: ast.AST, module: ModuleFile) -> list[ImportRef]:
    """The imports of a parsed tree, depth first from its last statement (`parse_imports`' order)."""
    refs: list[ImportRef] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            refs.extend(ImportRef(alias.name) for alias in node.names)
            continue
        if isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.level, node.module)
            if base:
                refs.append(ImportRef(base, tuple(a.name for a in node.names if a.name != "*")))
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # `if TYPE_CHECKING:` bodies never run
            continue
        for field in _BODIES:
            children = getattr(node, field, None)
            if children:
                stack.extend(children)
    return refs


_PIECES_ABOVE = 256 << 10  # bytes of source: larger files are parsed in pieces
_PIECE = 64 << 10  # about this many bytes per piece
_TOP_DEFINITION = re.compile(rb"^(?:def |async def |class |@)", re.M)
_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=]", re.M)


def _parse_in_pieces(source: bytes, module: ModuleFile) -> list[ImportRef] | None:
    """`source` cut before top-level definitions (`def`, `class`, a decorator at column 0) into
    pieces of about `_PIECE` bytes, each parsed alone and its tree dropped before the next. A piece
    parses alone only if its cut lies between two top-level statements (a cut inside a string,
    brackets or a decorated definition leaves a piece that does not parse); then, piece by piece,
    these are the whole file's top-level statements, and the pieces' imports, last piece first,
    are the whole file's in its order. None (parse the whole file) when a piece does not parse,
    there is nowhere to cut, or the file declares an encoding (a piece would lose it)."""
    first = source.find(b"\n")
    second = source.find(b"\n", first + 1) if first >= 0 else -1
    if _CODING.search(source, 0, second if second >= 0 else len(source)):  # PEP 263: lines 1 and 2
        return None
    cuts = [0]
    for m in _TOP_DEFINITION.finditer(source):
        at = m.start()
        if at - cuts[-1] < _PIECE:
            continue
        previous = source.rfind(b"\n", 0, at - 1) + 1
        if source.startswith(b"@", previous):
            continue  # a decorated definition: cut before its first decorator
        cuts.append(at)
    if len(cuts) == 1:
        return None
    cuts.append(len(source))
    found: list[list[ImportRef]] = []
    for start, end in zip(cuts, cuts[1:]):
        try:
            tree = ast.parse(source[start:end])
        except (SyntaxError, ValueError):
            return None
        found.append(_statement_imports(tree, module))
        del tree
    return [ref for refs in reversed(found) for ref in refs]


_FROM = re.compile(rb"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[\w \t,]+)", re.M)
_IMPORT = re.compile(rb"^[ \t]*import[ \t]+([\w. \t,]+)", re.M)


def _regex_imports(source: bytes, module: ModuleFile) -> list[ImportRef]:
    """For a file `ast` cannot parse (another Python's syntax): statements at line starts."""
    refs: list[ImportRef] = []
    for m in _FROM.finditer(source):
        base = _absolute(module, len(m[1]), m[2].decode() or None)
        if base:
            names = tuple(w.decode() for w in _WORD.findall(m[3]) if w != b"as")
            refs.append(ImportRef(base, names))
    for m in _IMPORT.finditer(source):
        for part in m[1].decode().split(","):
            name = part.split(" as ")[0].strip()
            if name:
                refs.append(ImportRef(name))
    return refs


@dataclass(frozen=True)
class ImportText:
    """The lines of a file that can import something (with their continuations), as words and text."""

    words: frozenset[bytes]
    text: bytes
    relative: bool  # has a `from .` import


_RELATIVE = re.compile(rb"\bfrom\s+\.")


_WORD_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _import_hints(source: bytes) -> Iterator[int]:
    """Where `_IMPORT_HINT` matches, as the offset of its `import`: the same lines, found about ten
    times faster by looking for the literal `import` (fast) and checking the word boundaries here."""
    n = len(source)

    def edge(i: int) -> bool:  # `\b` at i: a word byte on exactly one side
        before = i > 0 and source[i - 1] in _WORD_BYTES
        return before != (i < n and source[i] in _WORD_BYTES)

    i = source.find(b"import")
    while i >= 0:
        after = i + 6
        if (
            (edge(i) and edge(after))  # import
            or (edge(i) and source.startswith(b"_module", after) and edge(after + 7))  # import_module
            or (
                i >= 2
                and source.startswith(b"__", i - 2)
                and source.startswith(b"__", after)
                and edge(i - 2)
                and edge(after + 2)
            )  # __import__
        ):
            yield i
        i = source.find(b"import", after)


def import_text(source: bytes) -> ImportText:
    """A cheap superset of what the file's imports can name, without parsing it."""
    segments: list[bytes] = []
    end = 0
    for hit in _import_hints(source):
        if hit < end:
            continue
        start = source.rfind(b"\n", 0, hit) + 1
        end = source.find(b"\n", hit + 6)
        end = len(source) if end < 0 else end
        depth = source.count(b"(", start, end) - source.count(b")", start, end)
        while end < len(source) and (depth > 0 or source[start:end].rstrip().endswith(b"\\")):
            nxt = source.find(b"\n", end + 1)
            nxt = len(source) if nxt < 0 else nxt
            depth += source.count(b"(", end, nxt) - source.count(b")", end, nxt)
            end = nxt
        segments.append(source[start:end])
    text = b"\n".join(segments)
    return ImportText(frozenset(_WORD.findall(text)), text, _RELATIVE.search(text) is not None)


@dataclass(frozen=True)
class _Removed:
    """A removed module as the pre-filter sees it."""

    parent: str
    parent_text: bytes
    parent_last: bytes
    top: str


class _Prefilter:
    """Says whether a kept file's import lines could name one of the removed modules.

    `from a.b import c` and `import a.b.c` both contain the parent's dotted name and the last
    name; a relative import can only reach a module of the file's own top-level package, through
    a package that is an ancestor of the file's package or whose last name is on the line.
    """

    def __init__(self, removed: Iterable[ModuleFile]) -> None:
        self.by_last: dict[bytes, list[_Removed]] = {}
        for module in removed:
            parent, _, last = module.name.rpartition(".")
            item = _Removed(parent, parent.encode(), parent.rpartition(".")[2].encode(), module.name.split(".")[0])
            self.by_last.setdefault(last.encode(), []).append(item)

    def may_import(self, module: ModuleFile, found: ImportText) -> bool:
        package = _package_of(module)
        top = module.name.split(".")[0]
        for word in found.words:
            for item in self.by_last.get(word, ()):
                if not item.parent or item.parent_text in found.text:
                    return True
                if (
                    found.relative
                    and item.top == top
                    and (
                        package == item.parent
                        or package.startswith(item.parent + ".")
                        or item.parent_last in found.words
                    )
                ):
                    return True
        return False


_LIGHT_FROM = re.compile(rb"\bfrom\s+(\.*)\s*([\w.]*)\s+import\b\s*(\([^)]*\)|[\w \t,*]*)")
_LIGHT_IMPORT = re.compile(rb"\bimport\s+([\w.]+(?:[ \t]*,[ \t]*[\w.]+|[ \t]+as[ \t]+\w+)*)")


def text_imports(found: ImportText, module: ModuleFile) -> list[ImportRef]:
    """Imports read from the import lines alone, with regular expressions: a superset of what the
    file imports (it also sees `if TYPE_CHECKING:` blocks, strings and comments), for a cheap
    second filter before a file is parsed."""
    text = found.text.replace(b"\\\n", b" ")
    refs: list[ImportRef] = []
    for m in _LIGHT_FROM.finditer(text):
        base = _absolute(module, len(m[1]), m[2].decode() or None)
        if base:
            refs.append(ImportRef(base, tuple(w.decode() for w in _WORD.findall(m[3]))))
    for m in _LIGHT_IMPORT.finditer(text):
        refs.extend(ImportRef(w.decode()) for w in re.findall(rb"[\w.]+", m[1]) if w != b"as")
    refs.extend(_dynamic_refs(module, text))
    return refs


def _dynamic_refs(module: ModuleFile, source: bytes) -> list[ImportRef]:
    """`importlib.import_module("literal")` and `__import__("literal")`, relative ones resolved."""
    refs: list[ImportRef] = []
    for m in _DYNAMIC.finditer(source):
        name = m[1].decode()
        dots = len(name) - len(name.lstrip("."))
        resolved = _absolute(module, dots, name[dots:] or None) if dots else name
        if resolved:
            refs.append(ImportRef(resolved))
    return refs


def _names(ref: ImportRef) -> Iterator[str]:
    yield from _prefixes(ref.base)
    for name in ref.names:
        yield f"{ref.base}.{name}"


# Parsed imports by (path, size, mtime, module name, is package): a second plan in the same
# process (plan, then apply; explain) parses nothing again.
_CACHE: dict[tuple[object, ...], list[ImportRef]] = {}


def _read(path: str) -> tuple[bytes, tuple[str, int, int]] | None:
    """A regular file's bytes and (path, size, mtime); None for a symlink, a FIFO, a device or a
    file over the bound: never read through a link, never block, never grow without limit."""
    fd = open_regular(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as fh:
        try:
            st = os.fstat(fh.fileno())
            if st.st_size > SOURCE_LIMIT:
                return None
            data = fh.read(SOURCE_LIMIT + 1)
        except OSError:
            return None
    if len(data) > SOURCE_LIMIT:
        return None
    return data, (path, st.st_size, st.st_mtime_ns)


class ImportProtector:
    """Keeps every module file that a kept module imports, directly or through other kept modules."""

    name = "import analysis"

    def __init__(self, *, filter_by_text: bool = True) -> None:
        self.filter_by_text = filter_by_text  # False: parse every kept module (slow; for checking the filter)
        self.stats: ImportStats | None = None

    def protect(self, ctx: PlanContext, removing: dict[str, Rule]) -> dict[str, str]:
        start = time.monotonic()
        index = ModuleIndex(ctx)
        root = os.fspath(ctx.tree.root)
        removed = {rel: m for rel, m in index.by_rel.items() if rel in removing}
        if not removed:
            self.stats = ImportStats(0, 0, 0, 0, 0, time.monotonic() - start)
            return {}
        keep: dict[str, str] = {}
        todo: list[ModuleFile] = []
        parsed = scanned = 0

        def need(name: str, why: str) -> None:
            for prefix in _prefixes(name):
                for target in index.files(prefix):
                    if target.rel in removed and target.rel not in keep:
                        keep[target.rel] = why
                        todo.append(target)

        def display(rel: str) -> str:
            module = index.by_rel.get(rel)
            return rel[len(module.root) + 1 :] if module and module.root else rel

        for name, why in _entry_modules(ctx, removing):
            need(name, why)
        for rel, name in _pth_imports(ctx, root, removing):
            need(name, f"imported at start-up by {rel.rpartition('/')[2]}")

        # A kept module needs its packages' __init__ files: Python runs them first.
        for rel, module in index.by_rel.items():
            if rel not in removing and "." in module.name:
                need(module.name.rpartition(".")[0], f"package of {display(rel)}")

        prefilter = _Prefilter(removed.values())
        removed_names = {m.name for m in removed.values()}

        def settled(name: str) -> bool:
            """Whether `need(name)` would keep nothing more: every removed file it names is kept."""
            return all(t.rel not in removed or t.rel in keep for p in _prefixes(name) for t in index.files(p))

        def visit(module: ModuleFile) -> None:
            """Parse `module` if its import lines can name a removed module that is not kept yet (the
            lines the text shows hold every import the parse finds, and more); keep what it imports."""
            nonlocal scanned, parsed
            got = _read(os.path.join(root, module.rel))
            if got is None:
                return
            scanned += 1
            source, stamp = got
            key = (*stamp, module.name, module.is_package)
            if key not in _CACHE and self.filter_by_text:
                found = import_text(source)
                if not prefilter.may_import(module, found):
                    return
                named = {n for ref in text_imports(found, module) for n in _names(ref) if n in removed_names}
                if all(settled(n) for n in named):
                    return
            parsed += key not in _CACHE
            for ref in _imports_cached(source, key, module):
                _need_ref(ref, module, need, display)

        importers = [m for rel, m in index.by_rel.items() if rel not in removing and rel.endswith(".py")]
        for module in importers:
            visit(module)
        while todo:
            module = todo.pop()
            if module.rel.endswith(".py"):
                visit(module)
        self.stats = ImportStats(
            removed_modules=len(removed),
            importers=len(importers),
            scanned=scanned,
            parsed=parsed,
            kept=len(keep),
            seconds=time.monotonic() - start,
        )
        return keep


def _imports_cached(source: bytes, key: tuple[object, ...], module: ModuleFile) -> list[ImportRef]:
    refs = _CACHE.get(key)
    if refs is None:
        refs = _CACHE[key] = parse_imports(source, module)
    return refs


def _need_ref(ref: ImportRef, module: ModuleFile, need: object, display: object) -> None:
    why = f"imported by {display(module.rel)}"  # type: ignore[operator]
    need(ref.base, why)  # type: ignore[operator]
    for name in ref.names:
        need(f"{ref.base}.{name}", why)  # type: ignore[operator]


def _metadata_dirs(ctx: PlanContext, removing: dict[str, Rule]) -> Iterable[tuple[str, str]]:
    """(metadata folder, label) of each distribution that stays installed."""
    for dist in ctx.owners.dists:
        if dist.metadata_dir not in removing:
            yield dist.metadata_dir, dist.label


def _read_text(path: str) -> str | None:
    return read_text(path, METADATA_LIMIT)


def _entry_modules(ctx: PlanContext, removing: dict[str, Rule]) -> Iterator[tuple[str, str]]:
    """Modules a user imports or runs by name: top-level modules and entry point targets."""
    root = os.fspath(ctx.tree.root)
    for meta, label in _metadata_dirs(ctx, removing):
        base = os.path.join(root, meta)
        top_level = _read_text(os.path.join(base, "top_level.txt"))
        names = (
            {n.strip().replace("/", ".") for n in top_level.splitlines()}
            if top_level is not None
            else _record_top_level(_read_text(os.path.join(base, "RECORD")) or "")
        )
        for name in sorted(n for n in names if n and all(p.isidentifier() for p in n.split("."))):
            yield name, f"top-level module of {label} (import {name})"
        entry_points = _read_text(os.path.join(base, "entry_points.txt"))
        if entry_points:
            parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            try:
                parser.read_string(entry_points)
            except configparser.Error:
                continue
            for section in parser.sections():
                for ep_name, value in parser.items(section):
                    target = value.split(":")[0].split("[")[0].strip()
                    if target and all(p.isidentifier() for p in target.split(".")):
                        yield target, f"entry point {section}/{ep_name} of {label}"


def _record_top_level(record: str) -> set[str]:
    names = set()
    for line in record.splitlines():
        first = line.split(",", 1)[0]
        top, _, rest = first.partition("/")
        if top.endswith(METADATA_SUFFIXES) or top.startswith(".") or top == "__pycache__":
            continue
        if rest:
            names.add(top)
        elif top.endswith(".py"):
            names.add(top[:-3])
    return names


def _pth_imports(ctx: PlanContext, root: str, removing: dict[str, Rule]) -> Iterator[tuple[str, str]]:
    """Modules that `import` lines of kept `.pth` files load at every start-up."""
    for site in ctx.layout.site_packages:
        prefix = f"{site}/" if site else ""
        for entry in ctx.tree.entries:
            rel = entry.rel
            if not rel.endswith(".pth") or rel in removing or not rel.startswith(prefix) or "/" in rel[len(prefix) :]:
                continue
            text = _read_text(os.path.join(root, rel)) or ""
            for line in text.splitlines():
                if line.startswith(("import ", "import\t")):
                    try:
                        tree = ast.parse(line)
                    except SyntaxError:
                        continue
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Import):
                            for alias in node.names:
                                yield rel, alias.name
