"""Imported once by the forkserver that forks slimmer's ELF workers (`slimmer.elf.pool`), before
it forks any: LIEF and the modules whose functions the workers run are loaded there and frozen
(`gc.freeze`), so every worker shares their pages copy-on-write instead of importing LIEF itself,
some 45 MB of private memory per worker (measured with LIEF 1.0: two idle workers and the
forkserver 114 MB of PSS when each worker imports LIEF, 70 MB when the forkserver does).
Frozen objects are never scanned by a worker's garbage collection, which would copy their pages.
"""

from __future__ import annotations

import atexit
import contextlib
import gc

with contextlib.suppress(ImportError):  # without LIEF the workers say so where they need it
    import lief

    lief.logging.disable()

import slimmer.elf.pruner
import slimmer.elf.strip  # noqa: F401 - the task functions the workers run, and what they import

gc.collect()
gc.freeze()
# The forkserver itself ends as an interpreter does (its workers end with os._exit): frozen objects
# would outlive its last collection, and nanobind (LIEF's bindings) would report them as leaks.
atexit.register(gc.unfreeze)
