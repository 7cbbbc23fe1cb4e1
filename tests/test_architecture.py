"""The layering of ARCHITECTURE.md, enforced: each module imports only modules of its own layer or
below (type-only imports included), and no two modules import each other, directly or around a
circle. The checker is tested on planted packages so it cannot pass vacuously."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "slimmer"

# Lowest first. A module belongs to the first layer with a matching pattern; ARCHITECTURE.md lists the same.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "infrastructure",
        (
            "slimmer",
            "slimmer.errors",
            "slimmer.progress",
            "slimmer.safe_read",
            "slimmer.walk",
            "slimmer.rules",
            "slimmer.layout",
            "slimmer.dists",
            "slimmer.journal",
            "slimmer.mounts",
            "slimmer.oserrors",
            "slimmer.targets",
            "slimmer.profiles",
            "slimmer.config_file",
            "slimmer.proc",
            "slimmer.runner",
            "slimmer.elf",
            "slimmer.elf.gpuarch",
            "slimmer.elf.elf64",
            "slimmer.elf.pool",
        ),
    ),
    ("model", ("slimmer.model", "slimmer.model.*")),
    (
        "analyses and rewriters",
        ("slimmer.elf.*", "slimmer.protect", "slimmer.protect.*", "slimmer.rewriters", "slimmer.rewriters.*"),
    ),
    ("engines", ("slimmer.plan", "slimmer.apply")),
    (
        "features",
        (
            "slimmer.report",
            "slimmer.explain",
            "slimmer.verify",
            "slimmer.verify.*",
            "slimmer.pipeline",
            "slimmer.pipeline.*",
            "slimmer.image",
            "slimmer.image.*",
        ),
    ),
    ("cli", ("slimmer.cli", "slimmer.__main__", "slimmer.commands", "slimmer.commands.*")),
)


def modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of the package that `name` imports anywhere in its source (module level, in
    functions, under TYPE_CHECKING)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for candidate in (target, *(f"{target}.{a.name}" for a in node.names)):
                if candidate in known:
                    out.add(candidate)
    out.discard(name)
    return out


def graph(package: Path) -> dict[str, set[str]]:
    known = modules(package)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(deps: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(deps.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(deps):
        if v not in index:
            visit(v)
    return found


def layer_of(name: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int:
    for i, (_, patterns) in enumerate(layers):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return i
    raise LookupError(f"{name} is in no layer: add it to LAYERS and to ARCHITECTURE.md")


def upward(deps: dict[str, set[str]], layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """Imports from a lower layer into a higher one, as 'a (layer) -> b (layer)'."""
    bad = []
    for name, targets in sorted(deps.items()):
        mine = layer_of(name, layers)
        for t in sorted(targets):
            theirs = layer_of(t, layers)
            if theirs > mine:
                bad.append(f"{name} ({layers[mine][0]}) -> {t} ({layers[theirs][0]})")
    return bad


def test_slimmer_has_no_import_cycle():
    deps = graph(PACKAGE)
    assert len(deps) > 50  # the walk found the package
    assert cycles(deps) == []


def test_every_module_imports_only_its_layer_or_below():
    deps = graph(PACKAGE)
    assert upward(deps) == []


def test_the_model_imports_no_analysis_rewriter_or_engine():
    deps = graph(PACKAGE)
    model = {n: d for n, d in deps.items() if n.startswith("slimmer.model")}
    assert model, "no slimmer.model package"
    for name, targets in model.items():
        assert all(layer_of(t) <= layer_of("slimmer.model") for t in targets), (name, targets)


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "slimmer"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_a_planted_cycle_through_a_type_only_import(tmp_path):
    root = _plant(
        tmp_path,
        {
            "__init__.py": "",
            "apply.py": "from slimmer.plan import make_plan\n",
            "plan.py": "from slimmer.elf import strip\n",
            "elf/__init__.py": "",
            "elf/strip.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from slimmer.apply import ApplyResult\n"
            ),
            "walk.py": "from . import errors\n",
            "errors.py": "",
        },
    )
    assert cycles(graph(root)) == [["slimmer.apply", "slimmer.elf.strip", "slimmer.plan"]]


def test_the_checker_finds_a_planted_upward_import(tmp_path):
    root = _plant(
        tmp_path,
        {
            "__init__.py": "",
            "walk.py": "def f():\n    from slimmer.cli import main\n",
            "cli.py": "import slimmer.walk\n",
            "model/__init__.py": "",
            "model/plan.py": "from ..plan import make_plan\n",
            "plan.py": "",
        },
    )
    assert upward(graph(root)) == [
        "slimmer.model.plan (model) -> slimmer.plan (engines)",
        "slimmer.walk (infrastructure) -> slimmer.cli (cli)",
    ]
    with pytest.raises(LookupError, match="slimmer.stray is in no layer"):
        layer_of("slimmer.stray")


def rewriter_classes(package: Path, under: str) -> list[str]:
    """'module.Class' of every class under `under` (a subpackage) that defines `rewrite`: a rewriter."""
    found = []
    for name, path in sorted(modules(package).items()):
        if name != under and not name.startswith(under + "."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(f, ast.FunctionDef) and f.name == "rewrite" for f in node.body
            ):
                found.append(f"{name}.{node.name}")
    return found


def test_protect_holds_plan_time_protectors_only_and_the_metadata_rewriters_live_in_rewriters():
    from slimmer.rewriters import default_rewriters

    assert rewriter_classes(PACKAGE, "slimmer.protect") == []
    assert rewriter_classes(PACKAGE, "slimmer.rewriters") == [
        "slimmer.rewriters.condameta.CondaMetaRewriter",
        "slimmer.rewriters.records.RecordRewriter",
    ]
    homes = [type(r).__module__ for r in default_rewriters()]
    assert homes == ["slimmer.elf.strip", "slimmer.rewriters.records", "slimmer.rewriters.condameta"]


def test_the_rewriter_finder_sees_a_planted_rewriter_in_protect(tmp_path):
    root = _plant(
        tmp_path,
        {"__init__.py": "", "protect/__init__.py": "", "protect/x.py": "class X:\n    def rewrite(self): ...\n"},
    )
    assert rewriter_classes(root, "slimmer.protect") == ["slimmer.protect.x.X"]
