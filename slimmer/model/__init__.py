"""The model: plain data that flows from rules to plan to apply to report, and the contracts of the
plug-ins the engines call (`Protector` at plan time, `Rewriter` at apply time).

It imports only infrastructure (rules, walk, layout, dists, elf/gpuarch), never an analysis, a
rewriter or an engine, so every layer above can import it without a cycle:
- `model.elf`: what an ELF file and its device code look like (`ElfReport`, `FatbinInfo`);
- `model.plan`: `Plan` and its parts, strip and prune decisions, `PlanContext`, `Protector`;
- `model.apply`: `ApplyResult`, `Rewriter` and what passes through it (`RewriteInput`, `RewriteOutcome`).
"""
