"""The rewriters an apply runs, in their order.

Stripping first; pruning device code after it (it lays out the stripped file, only with
--gpu-arch); RECORD and conda-meta last, because they hash what the stripper and the pruner rewrote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slimmer.elf.pool import WorkerPool
    from slimmer.elf.prestrip import Prestrips
    from slimmer.model.apply import Rewriter
    from slimmer.model.plan import GpuPruning


def default_rewriters(
    gpu: GpuPruning | None = None, pool: WorkerPool | None = None, prestrips: Prestrips | None = None
) -> tuple[Rewriter, ...]:
    """The chain in its order; `pool`: warm workers for the ELF rewriters (else each makes its own);
    `prestrips`: the strips the plan made already (`slimmer apply`)."""
    from slimmer.elf.pruner import Pruner
    from slimmer.elf.strip import Stripper
    from slimmer.rewriters.condameta import CondaMetaRewriter
    from slimmer.rewriters.records import RecordRewriter

    return (
        Stripper(pool=pool, prestrips=prestrips),
        *([Pruner(gpu, pool=pool)] if gpu else []),
        RecordRewriter(),
        CondaMetaRewriter(),
    )
