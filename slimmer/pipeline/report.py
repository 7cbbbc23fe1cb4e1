"""Text and JSON for the pipeline's results; pure functions over the result objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from humanize import naturalsize

if TYPE_CHECKING:
    from slimmer.pipeline.build import PipelineResult
    from slimmer.pipeline.layers import ImageLayers


def _size(n: int) -> str:
    return naturalsize(n, binary=True)


def pipeline_to_dict(result: PipelineResult) -> dict[str, Any]:
    return {
        "tag": result.tag,
        "seconds": round(result.seconds, 1),
        "max_jobs": result.max_jobs,
        "cached": result.cached,
        "extensions": [
            {
                "name": e.name,
                "method": e.method.value,
                "seconds": round(e.seconds, 1),
                "wheel": e.wheel,
                "tried": list(e.tried),
            }
            for e in result.extensions
        ],
        "sizes": result.sizes,
        "slim_command": result.slim_command,
        "slim_output": list(result.slim_output),
        "verify": {"command": result.verify.command, "ok": result.verify.ok, "output": result.verify.output},
        "log": str(result.log),
    }


def render_pipeline(result: PipelineResult) -> str:
    lines = [f"Built {result.tag} in {result.seconds:.0f} s (MAX_JOBS={result.max_jobs}; log: {result.log})", ""]
    if result.extensions:
        lines.append(f"{'extension':<24} {'obtained by':<16} {'time':>8}  wheel")
        lines += [f"{e.name:<24} {e.method.value:<16} {e.seconds:7.1f}s  {e.wheel}" for e in result.extensions]
        lines.append("")
    s = result.sizes
    saved = s["runtime_unslimmed"] - s["runtime"]
    lines += [
        f"{'image':<28} {'size':>10}",
        f"{'devel (with compilers)':<28} {_size(s['devel']):>10}",
        f"{'runtime before slimming':<28} {_size(s['runtime_unslimmed']):>10}",
        f"{'runtime after slimming':<28} {_size(s['runtime']):>10}   ({_size(saved)} smaller)",
        "",
        f"slimmed with: {result.slim_command}",
        *[f"  {ln}" for ln in result.slim_output[-3:]],
        f"verify inside {result.tag}: {'ok' if result.verify.ok else 'FAILED'}",
    ]
    lines += [f"  {ln}" for ln in result.verify.output.strip().splitlines()]
    return "\n".join(lines)


def layers_to_dict(report: ImageLayers) -> dict[str, Any]:
    return {
        "image": report.image,
        "total": report.total,
        "wasted": report.wasted,
        "layers": [
            {
                "index": layer.index,
                "created_by": layer.created_by,
                "size": layer.size,
                "wasted": layer.wasted,
                "whiteouts": layer.whiteouts,
                "wasted_by": [{"path": p, "size": n, "layer": i} for p, n, i in layer.top_waste],
            }
            for layer in report.layers
        ],
        "advice": list(report.advice),
    }


def render_layers(report: ImageLayers, *, top: int = 5) -> str:
    lines = [f"{report.image}: {len(report.layers)} layers, {_size(report.total)}", ""]
    lines.append(f"{'#':>3} {'size':>10} {'wasted':>10}  created by")
    for layer in report.layers:
        created = " ".join(layer.created_by.split())[:90]
        lines.append(f"{layer.index:>3} {_size(layer.size):>10} {_size(layer.wasted):>10}  {created}")
        for path, size, later in layer.top_waste[:top]:
            lines.append(f"{'':>26}{_size(size):>10} {path}  (gone in layer {later})")
    lines += ["", f"Wasted: {_size(report.wasted)} in files deleted or overwritten by a later layer."]
    lines += [f"- {a}" for a in report.advice]
    return "\n".join(lines)
