"""Where the Python environments inside a root are: site-packages folders and prefixes.

Works from the walked tree, so the same code serves a conda env (`lib/python3.11/site-packages`),
a venv, `/usr/local` (`lib/python3.11/dist-packages`), Debian's `/usr/lib/python3/dist-packages`
and a `pip install --target` folder (a folder holding `*.dist-info` directly). Reads only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimmer.rules import Base

if TYPE_CHECKING:
    from slimmer.walk import Tree

SITE_NAMES = frozenset({"site-packages", "dist-packages"})
_PYDIR = re.compile(r"^python\d+(\.\d+)?t?$")
_LIBDIRS = frozenset({"lib", "lib64", "Lib"})


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _name(rel: str) -> str:
    return rel.rpartition("/")[2]


def _prefix_of(site: str) -> str:
    """`x/lib/python3.11/site-packages` -> `x`; a site folder of another shape is its own prefix."""
    parts = site.split("/") if site else []
    if len(parts) >= 3 and _PYDIR.match(parts[-2]) and parts[-3] in _LIBDIRS:
        return "/".join(parts[:-3])
    if len(parts) >= 2 and parts[-2] in _LIBDIRS:
        return "/".join(parts[:-2])
    return ""


def _under(rel: str, folder: str) -> bool:
    return folder in ("", rel) or rel.startswith(folder + "/")


@dataclass(frozen=True)
class Layout:
    """Folders relative to the root ('' is the root itself), deepest first."""

    site_packages: tuple[str, ...]
    prefixes: tuple[str, ...]

    @classmethod
    def detect(cls, tree: Tree) -> Layout:
        dirs = [e.rel for e in tree.dirs()]
        sites = [d for d in dirs if _name(d) in SITE_NAMES]
        if tree.root.name in SITE_NAMES:
            sites.append("")
        if not sites and any(d.endswith(".dist-info") and "/" not in d for d in dirs):
            sites.append("")  # pip install --target folder
        sites = [s for s in sites if not any(o != s and _under(s, o) for o in sites)]
        prefixes = {_prefix_of(s) for s in sites} or {""}
        return cls(
            site_packages=tuple(sorted(sites, key=len, reverse=True)),
            prefixes=tuple(sorted(prefixes, key=len, reverse=True)),
        )

    def relative(self, rel: str) -> dict[Base, str]:
        """The path as each base sees it: relative to the innermost folder of that base holding it."""
        out: dict[Base, str] = {}
        for base, folders in ((Base.SITE_PACKAGES, self.site_packages), (Base.PREFIX, self.prefixes)):
            for folder in folders:
                if folder == "":
                    out[base] = rel
                    break
                if rel.startswith(folder + "/"):
                    out[base] = rel[len(folder) + 1 :]
                    break
        return out

    def site_of(self, rel: str) -> str | None:
        for folder in self.site_packages:
            if folder == "" or rel.startswith(folder + "/"):
                return folder
        return None
