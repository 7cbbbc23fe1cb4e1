"""Keep package metadata (`*.dist-info`, `*.egg-info`) unless a rule names it explicitly.

pip, `importlib.metadata` and entry points (Triton finds its backends through them) read these
folders; a generic rule such as `*.md` must not reach into them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimmer.dists import METADATA_SUFFIXES

if TYPE_CHECKING:
    from slimmer.model.plan import PlanContext
    from slimmer.rules import Rule

_NAMES = ("dist-info", "egg-info")


def in_metadata(rel: str) -> bool:
    return any(part.endswith(METADATA_SUFFIXES) for part in rel.split("/"))


class MetadataProtector:
    name = "package metadata"

    def protect(self, ctx: PlanContext, removing: dict[str, Rule]) -> dict[str, str]:
        del ctx
        return {
            rel: "package metadata: a rule must name dist-info or egg-info to remove it"
            for rel, rule in removing.items()
            if in_metadata(rel) and not any(n in rule.pattern for n in _NAMES)
        }
