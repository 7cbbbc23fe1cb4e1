"""Protectors: analyses that keep what a rule would remove but the kept code still needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimmer.protect.metadata import MetadataProtector

if TYPE_CHECKING:
    from slimmer.plan import Protector


def default_protectors() -> tuple[Protector, ...]:
    return (MetadataProtector(),)
