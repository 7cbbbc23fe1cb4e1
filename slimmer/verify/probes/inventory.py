"""List what the environment holds: distributions, their top-level modules and extension modules.

Run with the environment's interpreter: `python -I -B inventory.py`. Prints one `@@slimmer` line
with the whole inventory. Reads metadata only; imports nothing of the distributions.
"""

# Runs on the checked environment's own Python (3.8 and later), so: no annotations, %-formatting.
# ruff: noqa: ANN001, ANN201, UP031, RUF005

from __future__ import annotations

import importlib.machinery
import json
import mmap
import os
import re
import sys
import sysconfig

try:
    from importlib import metadata
except ImportError:  # Python < 3.8
    import importlib_metadata as metadata  # type: ignore[no-redef]

# Top-level names that distributions ship but that are not meant to be imported.
NOT_FOR_IMPORT = {
    "test": "a test folder shipped by the distribution, not meant for import",
    "tests": "a test folder shipped by the distribution, not meant for import",
    "testing": "a test folder shipped by the distribution, not meant for import",
    "docs": "documentation, not a module",
    "doc": "documentation, not a module",
    "examples": "examples, not a module",
    "benchmarks": "benchmarks, not a module",
    "scripts": "scripts, not a module",
    "isympy": "a console script kept as a module",
}
# Libraries with operations `ops.py` knows how to check, by distribution name.
OP_LIBRARIES = {
    "torch": "torch",
    "torch-scatter": "torch_scatter",
    "torch-sparse": "torch_sparse",
    "torch-cluster": "torch_cluster",
    "torch-spline-conv": "torch_spline_conv",
    "pyg-lib": "pyg_lib",
    "torch-geometric": "torch_geometric",
}
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXT_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def record_paths(dist):
    try:
        files = dist.files or []
    except Exception:  # a broken RECORD: report the distribution without files
        return []
    return [str(f) for f in files]


def module_on_disk(base, top):
    path = os.path.join(base, *top.split("."))
    if os.path.isdir(path) or os.path.isfile(path + ".py"):
        return True
    folder, name = os.path.split(path)
    try:
        return any(f.startswith(name + ".") and f.endswith(EXT_SUFFIXES) for f in os.listdir(folder))
    except OSError:
        return False


def top_level_from_record(paths):
    names = set()
    for rel in paths:
        first = rel.split("/", 1)[0]
        if rel.startswith("..") or first.endswith((".dist-info", ".egg-info", ".data")) or first == "__pycache__":
            continue
        if "/" in rel:
            # A folder whose name is no identifier (numpy.libs, the vendored libraries auditwheel
            # adds) holds no importable package: `import numpy.libs` would look inside numpy.
            if rel.endswith((".py",) + EXT_SUFFIXES) and IDENT.match(first):
                names.add(first)
        elif first.endswith(".py"):
            if IDENT.match(first[:-3]):
                names.add(first[:-3])
        elif first.endswith(EXT_SUFFIXES):
            names.add(first.split(".", 1)[0])
    return names


def is_python_extension(path, name):
    """A plain `.so` is only a Python extension if it exports `PyInit_<name>`."""
    if ".cpython-" in name or ".abi3." in name:
        return True
    if name.startswith("lib"):
        return False
    stem = name.split(".", 1)[0]
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return mm.find(("PyInit_" + stem).encode()) >= 0
    except (OSError, ValueError):
        return False


def module_name(rel):
    folder, _, name = rel.rpartition("/")
    stem = name.split(".", 1)[0]
    return (folder.replace("/", ".") + "." + stem) if folder else stem


def main():  # noqa: PLR0912 - one branch per kind of RECORD entry
    prefix = sys.prefix
    seen = set()
    dists = []
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        key = normalize(name)
        if not key or key in seen:
            continue
        seen.add(key)
        base = str(dist.locate_file(""))
        paths = record_paths(dist)
        text = None
        try:
            text = dist.read_text("top_level.txt")
        except Exception:
            text = None
        tops = {t.strip().replace("/", ".") for t in (text or "").splitlines() if t.strip()}
        in_record = top_level_from_record(paths)
        if not tops:
            tops = in_record
        modules, skipped = [], {}
        if paths:
            # top_level.txt can name a module the wheel no longer ships (xxhash names `_xxhash`)
            for top in sorted(tops):
                if top in NOT_FOR_IMPORT or not all(IDENT.match(p) for p in top.split(".")):
                    continue  # said below, with its own reason
                if top.split(".", 1)[0] not in in_record and not module_on_disk(base, top):
                    skipped[top] = "named in top_level.txt, but no file of the distribution provides it"
            tops = {t for t in tops if t not in skipped}
        for top in sorted(tops):
            first = top.split(".", 1)[0]
            if top.startswith("__editable__") or first.startswith("__editable__"):
                skipped[top] = "an editable-install finder, not a module"
            elif not all(IDENT.match(p) for p in top.split(".")):
                skipped[top] = "not a valid module name"
            elif top in NOT_FOR_IMPORT:
                skipped[top] = NOT_FOR_IMPORT[top]
            else:
                modules.append(top)
        extensions = []
        for rel in paths:
            if rel.startswith(".."):
                continue
            name_ = rel.rsplit("/", 1)[-1]
            if not name_.endswith(EXT_SUFFIXES):
                continue
            full = os.path.join(base, rel)
            if os.path.isfile(full) and is_python_extension(full, name_):
                extensions.append({"module": module_name(rel), "path": full})
        dists.append(
            {
                "name": name,
                "version": dist.metadata["Version"] or "",
                "location": base,
                "modules": modules,
                "skipped": skipped,
                "extensions": extensions,
                "op_library": OP_LIBRARIES.get(key),
            }
        )
    info = {
        "python": sys.executable,
        "version": "%d.%d.%d" % sys.version_info[:3],
        "prefix": prefix,
        "include": sysconfig.get_paths().get("include"),
        "stdlib": sysconfig.get_paths().get("stdlib"),
        "dists": sorted(dists, key=lambda d: normalize(d["name"])),
    }
    sys.stdout.write("\n@@slimmer " + json.dumps(info) + "\n")


if __name__ == "__main__":
    main()
