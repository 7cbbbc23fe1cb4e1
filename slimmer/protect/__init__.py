"""Protectors: analyses that keep what a rule would remove but the kept code still needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimmer.protect.datafiles import DataFileProtector
from slimmer.protect.imports import ImportProtector
from slimmer.protect.libraries import LibraryProtector
from slimmer.protect.metadata import MetadataProtector

if TYPE_CHECKING:
    from slimmer.model.plan import Protector


def default_protectors() -> tuple[Protector, ...]:
    """In order: metadata, then Python imports (may keep extension modules), then the data files
    that kept code reads (the modules the import analysis kept read too), then the libraries that
    every kept ELF file needs (so those extension modules keep theirs)."""
    return (MetadataProtector(), ImportProtector(), DataFileProtector(), LibraryProtector())
