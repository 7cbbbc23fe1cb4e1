"""Text and JSON for `slimmer image slim`; pure functions over `ImageSlimResult`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimmer.report import _table, size
from slimmer.verify.checks import Status

if TYPE_CHECKING:
    from slimmer.image.relayer import LayerChange
    from slimmer.image.slim import EnvOutcome, ImageSlimResult


def _why(layer: LayerChange) -> str:
    if not layer.rewritten:
        if layer.kept_hidden:
            return f"kept byte for byte ({size(layer.kept_hidden)} of hidden copies is below --min-gain)"
        return "kept byte for byte"
    parts = []
    if layer.removed[0]:
        parts.append(f"{layer.removed[0]} removed by rules ({size(layer.removed[1])})")
    if layer.hidden[0]:
        parts.append(f"{layer.hidden[0]} copies a later layer hides ({size(layer.hidden[1])})")
    if layer.changed[0]:
        parts.append(f"{layer.changed[0]} files rewritten ({size(layer.changed[1])} saved)")
    return "; ".join(parts) or "rewritten"


def _gzip(value: int | None) -> str:
    return size(value) if value is not None else "-"


def render_image_slim(result: ImageSlimResult) -> str:
    target = " and ".join(x for x in (result.tag or "", str(result.archive or "")) if x) or "-"
    lines = [f"slimmer image slim {result.source} -> {target}"]
    lines.append(f"  {'layer':<5} {'before':>10} {'after':>10} {'gzip before':>12} {'gzip after':>11}  why")
    for layer in result.layers:
        made = " ".join(layer.created_by.split())[:60]
        lines.append(
            f"  {layer.index:<5} {size(layer.size_before):>10} {size(layer.size_after):>10} "
            f"{_gzip(layer.gzip_before):>12} {_gzip(layer.gzip_after):>11}  {_why(layer)}"
        )
        if made:
            lines.append(f"  {'':<5} {made}")
    before, after = result.size_before, result.size_after
    saved = before - after
    pct = f"{100 * saved / before:.1f}%" if before else "0.0%"
    lines.append(f"Total: {size(before)} -> {size(after)} ({size(saved)} saved, {pct})")
    gz_before, gz_after = result.gzip_total("gzip_before"), result.gzip_total("gzip_after")
    if gz_before is not None and gz_after is not None:
        lines.append(f"As pushed (gzip): {size(gz_before)} -> {size(gz_after)} ({size(gz_before - gz_after)} saved)")
    for outcome in result.envs:
        lines += _env_lines(outcome)
    lines.append(f"Verified: {result.verified}")
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.stages.items())
    lines.append(f"Time: {sum(result.stages.values()):.1f} s ({stages})")
    if result.image_id:
        lines.append(f"Image: {result.image_id}")
    return "\n".join(lines)


def _env_lines(outcome: EnvOutcome) -> list[str]:
    plan, applied = outcome.plan, outcome.result
    stripped = sum(old - new for _, old, new in applied.rewritten.get("strip", []))
    pruned = sum(old - new for _, old, new in applied.rewritten.get("prune", []))
    lines = [
        f"/{outcome.env.path} ({outcome.env.kind}, {size(outcome.env.size)}): {size(applied.freed)} removed, "
        f"{size(stripped)} stripped" + (f", {size(pruned)} device code pruned" if plan.gpu is not None else "")
    ]
    lines += ["  " + line for line in _table("By rule file:", plan.by_rule_file(), 5)]
    lines += ["  " + line for line in _table("By distribution:", plan.by_distribution(), 5)]
    already = [r for r in outcome.before if r.status is Status.FAIL]
    for r in already:
        lines.append(f"  already failing in the input (not blamed): {r.check.name}: {r.error}")
    for r in outcome.broken:
        lines.append(f"  BROKEN: {r.check.name}: {r.error}")
    if outcome.culprit is not None:
        exact = "" if outcome.culprit.exact else " (narrowest found, not exact)"
        lines.append(f"  culprit{exact}: {', '.join(outcome.culprit.lines) or 'not found'}")
    return lines


def _checks(results: Any) -> list[dict[str, Any]]:
    return [{"check": r.check.name, "status": r.status.value, "error": r.error} for r in results]


def image_slim_to_dict(result: ImageSlimResult) -> dict[str, Any]:
    return {
        "source": result.source,
        "source_id": result.source_id,
        "tag": result.tag,
        "archive": str(result.archive) if result.archive else None,
        "image_id": result.image_id,
        "bytes_before": result.size_before,
        "bytes_after": result.size_after,
        "gzip_before": result.gzip_total("gzip_before"),
        "gzip_after": result.gzip_total("gzip_after"),
        "layers": [
            {
                "index": layer.index,
                "created_by": layer.created_by,
                "bytes_before": layer.size_before,
                "bytes_after": layer.size_after,
                "gzip_before": layer.gzip_before,
                "gzip_after": layer.gzip_after,
                "diff_id": layer.diff_id,
                "rewritten": layer.rewritten,
                "kept_hidden_bytes": layer.kept_hidden,
                "hidden": {"members": layer.hidden[0], "bytes": layer.hidden[1]},
                "removed": {"members": layer.removed[0], "bytes": layer.removed[1]},
                "changed": {"files": layer.changed[0], "bytes_saved": layer.changed[1]},
            }
            for layer in result.layers
        ],
        "envs": [
            {
                "path": "/" + o.env.path,
                "kind": o.env.kind,
                "bytes": o.env.size,
                "removed": o.result.freed,
                "stripped": sum(old - new for _, old, new in o.result.rewritten.get("strip", [])),
                "pruned": sum(old - new for _, old, new in o.result.rewritten.get("prune", [])),
                "by_rule_file": [{"name": k, "files": f, "bytes": b} for k, (f, b) in o.plan.by_rule_file().items()],
                "by_distribution": [
                    {"name": k, "files": f, "bytes": b} for k, (f, b) in o.plan.by_distribution().items()
                ],
                "checks_before": _checks(o.before),
                "checks_after": _checks(o.after),
                "broken": [r.check.name for r in o.broken],
                "culprit": list(o.culprit.lines) if o.culprit is not None else None,
            }
            for o in result.envs
        ],
        "verified": result.verified,
        "seconds": {k: round(v, 2) for k, v in result.stages.items()},
    }
