"""Turn plans and results into text for people and dictionaries for `--json`. Pure functions."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

import humanize

from slimmer.model.plan import Keeper

if TYPE_CHECKING:
    from slimmer.model.apply import ApplyResult
    from slimmer.model.plan import Plan


def size(n: int) -> str:
    return humanize.naturalsize(n, binary=True, format="%.1f")


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "0.0%"


def _table(title: str, rows: dict[str, tuple[int, int]], limit: int) -> list[str]:
    if not rows:
        return []
    lines = [title]
    width = min(60, max(len(k) for k in list(rows)[:limit]))
    for key, (files, nbytes) in list(rows.items())[:limit]:
        lines.append(f"  {key:<{width}}  {files:>7} files  {size(nbytes):>10}")
    if len(rows) > limit:
        rest = list(rows.values())[limit:]
        lines.append(
            f"  {'(' + str(len(rest)) + ' more)':<{width}}  {sum(f for f, _ in rest):>7} files  "
            f"{size(sum(b for _, b in rest)):>10}"
        )
    return lines


def render_plan(plan: Plan, *, top: int = 10, verbose: bool = False) -> str:  # noqa: PLR0912 - one optional section of the report per branch
    lines = [f"slimmer plan for {plan.root} (rules: {', '.join(plan.rule_names)})"]
    if plan.layout.site_packages:
        lines.append("  site-packages: " + ", ".join(s or "." for s in plan.layout.site_packages))
    lines += _table("By rule file:", plan.by_rule_file(), top)
    lines += _table("By distribution:", plan.by_distribution(), top)
    if verbose:
        lines += _table("By rule line:", plan.by_rule(), 1000)
    largest = plan.largest(top)
    if largest:
        lines.append("Largest items:")
        for unit in largest:
            suffix = "/" if unit.kind.value == "dir" else ""
            lines.append(f"  {size(unit.freed):>10}  {unit.rel}{suffix}  ({unit.rule.where})")
    if plan.kept:
        lines.append(f"Kept although a rule matched ({len(plan.kept)}):")
        by: dict[str, list[int]] = {}
        for k in plan.kept:
            key = k.reason if k.by is Keeper.RULE else k.label
            by.setdefault(key, [0, 0])
            by[key][0] += 1
            by[key][1] += k.size
        if len(by) > 1 or len(plan.kept) > top:
            for key, (files, nbytes) in sorted(by.items(), key=lambda kv: -kv[1][1]):
                lines.append(f"  {files:>7} files  {size(nbytes):>10}  {key}")
        shown = plan.kept if verbose else plan.kept[:top]
        for k in shown:
            lines.append(f"  {k.rel}: {k.reason}")
        if len(plan.kept) > len(shown):
            lines.append(f"  ... {len(plan.kept) - len(shown)} more (--verbose lists all)")
    lines += _strip_lines(plan, top)
    lines += _prune_lines(plan, top, verbose)
    breaks = plan.breakages()
    if breaks:
        lines.append("Stops working after this plan (@breaks of the rules that remove it):")
        lines.extend(f"  {what} ({files} files, {size(nbytes)})" for what, (files, nbytes) in breaks.items())
    if plan.reads:
        lines.append(
            f"Stops working: {len(plan.reads)} removed file(s) that kept code reads "
            "(a rule names their place; --keep PATTERN keeps them):"
        )
        reads = plan.reads if verbose else plan.reads[:top]
        lines.extend(f"  {rel}: {why}" for rel, why in reads)
        if len(plan.reads) > len(reads):
            lines.append(f"  ... {len(plan.reads) - len(reads)} more (--verbose lists all)")
    lines.extend(f"warning: {w}" for w in plan.warnings)
    saved = plan.bytes_saved_predicted
    parts = [f"{size(plan.bytes_removed)} removed"]
    if plan.strip_saving:
        parts.append(f"{size(plan.strip_saving)} stripped")
    if plan.prune_saving:
        parts.append(f"{size(plan.prune_saving)} device code pruned")
    split = f" ({' + '.join(parts)}, predicted)" if len(parts) > 1 else ""
    lines.append(
        f"Total: {plan.files_removed} of {plan.files_before} files removed, "
        f"{size(saved)} of {size(plan.bytes_before)} saved ({_pct(saved, plan.bytes_before)}){split}; "
        f"{size(plan.bytes_before - saved)} would remain. Planned in {plan.seconds:.2f} s."
    )
    return "\n".join(lines)


def _strip_lines(plan: Plan, top: int) -> list[str]:
    if not plan.strips:
        return []
    to_strip = sum(1 for d in plan.strips if d.saving)
    lines = _table("Stripping, predicted, by distribution:", plan.strips_by_distribution(), top)
    lines.append(f"Stripping: {to_strip} of {len(plan.strips)} selected ELF files, {size(plan.strip_saving)} predicted")
    for reason, count in plan.strip_skips().items():
        lines.append(f"  skipped {count:>5}: {reason}")
    return lines


def _prune_lines(plan: Plan, top: int, verbose: bool) -> list[str]:
    from slimmer.elf.pruner import dropped_by_arch

    if plan.gpu is None:
        return []
    pruned = [d for d in plan.prunes if d.saving]
    title = f"GPU device code, pruned to {plan.gpu.label}, predicted, by distribution:"
    lines = _table(title, plan.prunes_by_distribution(), top)
    lines.append(
        f"Device code: {len(pruned)} of {len(plan.prunes)} libraries with a .nv_fatbin pruned, "
        f"{size(plan.prune_saving)} predicted"
    )
    dropped = dropped_by_arch(plan.prunes)
    if dropped:
        lines.append("  dropped: " + ", ".join(f"{name} {size(n)}" for name, n in list(dropped.items())[:12]))
    shown = pruned if verbose else sorted(pruned, key=lambda d: -d.saving)[:top]
    for d in shown:
        whole = f"; {len(d.kept_whole)} of {d.containers} containers kept whole" if d.kept_whole else ""
        lines.append(f"  {size(d.saving):>10}  {d.rel} (device code {size(d.fatbin)}{whole})")
    for d in plan.prunes:
        if d.skip:
            lines.append(f"  not pruned {d.rel}: {d.skip}")
    kept_whole = sum(len(d.kept_whole) for d in pruned)
    if kept_whole:
        example = next(w for d in pruned for w in d.kept_whole)
        lines.append(f"  {kept_whole} containers kept whole: nothing in them would run on a target (e.g. {example})")
    outside = [d for d in plan.prunes if d.outside]
    if outside:
        lines.append(
            f"  device code outside .nv_fatbin, left as is: {sum(d.outside for d in outside)} images "
            f"in {len(outside)} libraries (e.g. {outside[0].rel})"
        )
    return lines


def _prunes_to_dict(plan: Plan) -> dict[str, Any] | None:
    from slimmer.elf.pruner import dropped_by_arch

    if plan.gpu is None:
        return None
    return {
        "targets": [str(t) for t in plan.gpu.targets],
        "keep_ptx": plan.gpu.keep_ptx,
        "predicted_bytes": plan.prune_saving,
        "by_distribution": [{"name": k, "files": f, "bytes": b} for k, (f, b) in plan.prunes_by_distribution().items()],
        "dropped_by_arch": dropped_by_arch(plan.prunes),
        "files": [
            {
                "path": d.rel,
                "dist": d.dist,
                "size": d.size,
                "fatbin_bytes": d.fatbin,
                "bytes": d.saving,
                "skipped": d.skip or None,
                "dropped": d.dropped,
                "kept": d.kept,
                "containers": d.containers,
                "kept_whole": list(d.kept_whole),
                "device_code_outside_fatbin": d.outside,
            }
            for d in plan.prunes
        ],
    }


def _strips_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "predicted_bytes": plan.strip_saving,
        "by_distribution": [{"name": k, "files": f, "bytes": b} for k, (f, b) in plan.strips_by_distribution().items()],
        "skipped_by_reason": plan.strip_skips(),
        "files": [
            {
                "path": d.rel,
                "dist": d.dist,
                "verdict": d.verdict.value,
                "reason": d.reason,
                "bytes": d.saving,
                "size": d.size,
                "rule": d.rule.where if d.rule is not None else "",
            }
            for d in plan.strips
        ],
    }


def stripped_by_distribution(plan: Plan, result: ApplyResult) -> dict[str, tuple[int, int]]:
    """Measured after apply: {distribution: (files stripped, bytes saved)}."""
    dist = {d.rel: d.dist for d in plan.strips}
    out: dict[str, tuple[int, int]] = {}
    for rel, old, new in result.rewritten.get("strip", []):
        files, nbytes = out.get(dist.get(rel, "?"), (0, 0))
        out[dist.get(rel, "?")] = (files + 1, nbytes + old - new)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1][1], kv[0])))


def plan_to_dict(plan: Plan, *, top: int = 20) -> dict[str, Any]:
    def table(rows: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
        return [{"name": k, "files": f, "bytes": b} for k, (f, b) in rows.items()]

    return {
        "root": str(plan.root),
        "rules": list(plan.rule_names),
        "site_packages": list(plan.layout.site_packages),
        "prefixes": list(plan.layout.prefixes),
        "files_before": plan.files_before,
        "bytes_before": plan.bytes_before,
        "files_removed": plan.files_removed,
        "bytes_removed": plan.bytes_removed,
        "bytes_saved_predicted": plan.bytes_saved_predicted,  # removed + stripping's and pruning's predictions
        "seconds": round(plan.seconds, 3),
        "by_rule_file": table(plan.by_rule_file()),
        "by_rule": table(plan.by_rule()),
        "by_distribution": table(plan.by_distribution()),
        "largest": [
            {"path": u.rel, "kind": u.kind.value, "bytes": u.freed, "rule": u.rule.where} for u in plan.largest(top)
        ],
        "kept": [
            {
                "path": k.rel,
                "bytes": k.size,
                "reason": k.reason,
                "by": k.label,
                "rule": k.rule.where if k.rule else None,
            }
            for k in plan.kept
        ],
        "removed": [
            {"path": r.rel, "kind": r.kind.value, "bytes": r.freed, "rule": r.rule.where, "dist": r.dist}
            for r in plan.removals
        ],
        "breaks": [{"what": k, "files": f, "bytes": b} for k, (f, b) in plan.breakages().items()],
        "read_at_run_time": [{"path": rel, "reader": why} for rel, why in plan.reads],
        "warnings": list(plan.warnings),
        "strip": _strips_to_dict(plan),
        "gpu_prune": _prunes_to_dict(plan),
    }


_REWRITE_VERB = {"strip": "strip", "prune": "prune the device code of"}  # others: "rewrite"


def render_apply(plan: Plan, result: ApplyResult) -> str:
    lines = []
    for rel, why in result.failures:
        name, sep, rest = why.partition(": ")
        if sep and name in result.rewritten:  # a rewriter's failure: the file was not removed, only not rewritten
            lines.append(f"could not {_REWRITE_VERB.get(name, 'rewrite')} {rel}: {rest} (the file is unchanged)")
        else:
            lines.append(f"could not remove {rel}: {why}")
    stripped = result.rewritten.get("strip", [])
    if stripped or plan.strips:
        lines += _table("Stripped, measured, by distribution:", stripped_by_distribution(plan, result), 10)
        measured = sum(old - new for _, old, new in stripped)
        lines.append(f"Stripped {len(stripped)} files: {size(measured)} saved (predicted {size(plan.strip_saving)})")
        for rel, why in result.skipped.get("strip", []):
            lines.append(f"  not stripped {rel}: {why}")
    pruned = result.rewritten.get("prune", [])
    if plan.gpu is not None:
        measured = sum(old - new for _, old, new in pruned)
        predicted = size(plan.prune_saving)
        lines.append(f"Pruned device code of {len(pruned)} libraries: {size(measured)} saved (predicted {predicted})")
        for rel, old, new in sorted(pruned, key=lambda r: r[2] - r[1])[:10]:
            lines.append(f"  {size(old - new):>10}  {rel}")
        for rel, why in result.skipped.get("prune", []):
            lines.append(f"  not pruned {rel}: {why}")
    if result.undone:
        state = "undone: the tree is as it was"
    elif result.committed:
        state = "committed"
    else:
        root = shlex.quote(str(plan.root))
        state = f"staged, not committed: slimmer commit {root} keeps it, slimmer undo {root} restores it"
    lines.append(
        f"Removed {result.staged} of {len(plan.units)} items, {size(result.freed)} freed "
        f"({_pct(result.freed, plan.bytes_before)} of {size(plan.bytes_before)}); "
        f"{len(result.failures)} failed; run {result.run_id} {state}. "
        f"Took {plan.seconds + result.seconds:.2f} s (plan {plan.seconds:.2f} s, apply {result.seconds:.2f} s)."
    )
    return "\n".join(lines)


def apply_to_dict(plan: Plan, result: ApplyResult) -> dict[str, Any]:
    return {
        "plan": plan_to_dict(plan),
        "run": result.run_id,
        "staged": result.staged,
        "freed": result.freed,
        "failures": [{"path": p, "error": e} for p, e in result.failures],
        "stripped": [{"path": r, "before": old, "after": new} for r, old, new in result.rewritten.get("strip", [])],
        "strip_skipped": [{"path": r, "reason": why} for r, why in result.skipped.get("strip", [])],
        "pruned": [{"path": r, "before": old, "after": new} for r, old, new in result.rewritten.get("prune", [])],
        "prune_skipped": [{"path": r, "reason": why} for r, why in result.skipped.get("prune", [])],
        "committed": result.committed,
        "undone": result.undone,
        "seconds": round(plan.seconds + result.seconds, 3),
    }
