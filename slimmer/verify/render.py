"""Verify results as a text table or as JSON-ready data. Formats only; runs nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimmer.verify.checks import Status

if TYPE_CHECKING:
    from collections.abc import Iterable

    from slimmer.verify.checks import CheckResult, VerifyReport

MAX_ERROR = 110


def result_to_dict(r: CheckResult) -> dict[str, object]:
    return {
        "check": r.check.name,
        "kind": r.check.kind.value,
        "target": r.check.target,
        "group": r.check.group,
        "result": r.status.value,
        "seconds": round(r.seconds, 3),
        "device": r.device,
        "error": r.error,
        "detail": r.detail,
    }


def report_to_dict(report: VerifyReport) -> dict[str, object]:
    counts = {s.value: sum(1 for r in report.results if r.status is s) for s in Status}
    return {
        "python": report.python,
        "python_version": report.python_version,
        "ok": report.ok,
        "seconds": round(report.seconds, 2),
        "counts": counts,
        "checks": [result_to_dict(r) for r in report.results],
    }


def render_results(results: Iterable[CheckResult]) -> str:
    rows = list(results)
    width = max([len(r.check.name) for r in rows] + [5])
    width = min(width, 60)
    lines = [f"{'check':<{width}}  result  {'time':>7}  device  error"]
    for r in rows:
        name = r.check.name if len(r.check.name) <= width else r.check.name[: width - 1] + "…"
        error = r.error if len(r.error) <= MAX_ERROR else r.error[: MAX_ERROR - 1] + "…"
        lines.append(f"{name:<{width}}  {r.status.value:<6}  {r.seconds:6.2f}s  {r.device or '-':<6}  {error}".rstrip())
    return "\n".join(lines)


def render_report(report: VerifyReport) -> str:
    counts = {s: sum(1 for r in report.results if r.status is s) for s in Status}
    devices = sorted({r.device for r in report.results if r.device})
    summary = (
        f"{counts[Status.PASS]} passed, {counts[Status.FAIL]} failed, {counts[Status.SKIP]} skipped "
        f"in {report.seconds:.1f} s with {report.python} (Python {report.python_version})"
    )
    if devices:
        summary += f"; ops ran on {', '.join(devices)}"
    return f"{render_results(report.results)}\n\n{summary}"
