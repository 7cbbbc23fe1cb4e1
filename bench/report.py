"""Turns the benchmark's results (the dict that run.py writes as results.json) into a table, the goals
of issues 7 and 15 as PASS/FAIL lines, and RESULTS.md. Pure: reads the dict, returns text."""

from __future__ import annotations

import statistics
from typing import Any

MB = 1e6
SLIMMER_VARIANTS = ("default", "runtime", "default+sm_90")
STEADY_SLACK = 64 * 1024
RSS_SLACK = 200 * MB  # the goal: peak memory within the largest ELF analysed + 200 MB
NOT_PROMISED_BY_RUNTIME = {"torch.compile"}  # the runtime profile says that run-time compilation goes
# issue 15: median apply time over the seed recipe's, per variant (default 1.0)
TIME_RATIO_GOAL = {"runtime": 1.1}
PLAN_ALONE_GOAL_S = 5.0  # issue 15: `slimmer plan` alone on the CUDA environment, warm cache

METHOD = """\
- Each run works on a fresh byte copy of the cached environment (`cp -a --reflink=never`: hard links
  inside the environment stay hard links, nothing is shared with the cache), deleted right after the run.
- Bytes: apparent size (`st_size`) of regular files, each inode once (a hard-linked file counts once);
  files: regular-file inodes; symlinks and folders are not counted; slimmer's own `.slimmer` folder
  (journal) is counted. MB = 10^6 bytes.
- Time: wall clock of the slimming command alone (not the copy, not the counting, not the checks),
  median over the runs; every run is listed. Runs are interleaved variant by variant within each
  repeat, so load changes on the machine hit every variant alike. The copy was just written, so the
  page cache is equally warm for every variant.
- Peak RSS: `/usr/bin/time -v` "Maximum resident set size" of the command, which is the largest
  single process. Tree peak: the largest sum of PSS over all processes of the command at one moment,
  sampled every 0.1 s (parallel workers add up here); at least the peak RSS. The memory goal uses the tree peak.
- Checks: `fixtures/smoke.py NAME` with the environment's own python, each in its own process with
  new, empty torch.compile/Triton caches, on the first run's copy, after the bytes were counted.
  n/a: the package the check exercises is not installed in the environment.
- The seed recipe is `../shared/bench/seed_recipe.sh`, run as it is: `seed_recipe.sh COPY`.
- `slimmer verify ENV` (`--profile runtime` after the runtime profile), where it exists, runs after the
  bytes were counted: on every run of slimmer's variants, and once on the untouched and the seed copies to
  show what fails there too. Its time is its own column ("verify s", FAIL: non-zero exit), never part of
  the apply time.
"""


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _row_data(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]
    first = runs[0]
    befores = {r["before"]["bytes"] for r in runs}
    afters = {r["after"]["bytes"] for r in runs}
    walls = [r["wall_s"] for r in runs]
    verify = [v["wall_s"] for v in result.get("verify", [])]
    plan_apply = [(r.get("plan_s", 0.0), r.get("apply_s", 0.0)) for r in runs if r.get("plan_s")]
    return {
        "before": first["before"]["bytes"],
        "after": first["after"]["bytes"],
        "removed": first["before"]["bytes"] - first["after"]["bytes"],
        "files_before": first["before"]["files"],
        "files_after": first["after"]["files"],
        # slimmer's journal differs by a few bytes from run to run (run ids, times)
        "steady": len(befores) == 1 and max(afters) - min(afters) <= STEADY_SLACK,
        "walls": walls,
        "median": _median(walls),
        "rss": max(r["max_rss_kb"] for r in runs) * 1024,
        "tree": max(r["tree_peak_kb"] for r in runs) * 1024,
        "exit": max(r["returncode"] for r in runs),
        "verify": verify,
        "verify_ok": all(v["returncode"] == 0 for v in result.get("verify", [])),
        "plan_apply": (_median([p for p, _ in plan_apply]), _median([a for _, a in plan_apply]))
        if plan_apply
        else None,
    }


def _fmt_runs(walls: list[float]) -> str:
    if not walls or not any(walls):
        return "-"
    runs = ", ".join(f"{w:.1f}" for w in walls)
    return f"{_median(walls):.1f} ({runs})"


def table_rows(data: dict[str, Any]) -> list[list[str]]:
    checks = data["checks"]
    header = [
        "env",
        "variant",
        "MB before",
        "MB after",
        "MB removed",
        "files before",
        "files after",
        "median s (runs)",
        "plan / apply s",
        "peak RSS MB",
        "tree peak MB",
        "exit",
        "verify s",
        *checks,
    ]
    rows = [header]
    for result in data["results"]:
        d = _row_data(result)
        timed = result["variant"] != "original"
        verify = _fmt_runs(d["verify"]) + ("" if d["verify_ok"] else " FAIL") if d["verify"] else "-"
        rows.append(
            [
                result["env"],
                result["variant"],
                f"{d['before'] / MB:.1f}",
                f"{d['after'] / MB:.1f}" + ("" if d["steady"] else " *"),
                f"{d['removed'] / MB:.1f}",
                str(d["files_before"]),
                str(d["files_after"]),
                _fmt_runs(d["walls"]) if timed else "-",
                f"{d['plan_apply'][0]:.1f} / {d['plan_apply'][1]:.1f}" if d["plan_apply"] else "-",
                f"{d['rss'] / MB:.0f}" if timed else "-",
                f"{d['tree'] / MB:.0f}" if timed else "-",
                str(d["exit"]) if timed else "-",
                verify,
                *(result["checks"].get(c, {"status": "-"})["status"] for c in checks),
            ]
        )
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def goals(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The goals of issues 7 and 15, one line per environment and variant: (PASS or FAIL, what and why)."""
    out: list[tuple[str, str]] = []
    by_key = {(r["env"], r["variant"]): r for r in data["results"]}
    for env in data["envs"]:
        name = env["name"]
        if env["skipped"]:
            out.append(("FAIL", f"{name}: not measured ({env['skipped']})"))
            continue
        applicable = env["checks"]
        default = by_key.get((name, "default"))
        if default is None:
            out.append(("FAIL", f"{name}: every check passes after --rules default: not measured"))
        else:
            failed = [c for c in applicable if default["checks"].get(c, {}).get("status") != "ok"]
            exits = _row_data(default)["exit"]
            ok = not failed and exits == 0
            why = f"failed: {', '.join(failed)}" if failed else f"{len(applicable)} checks ok"
            out.append(
                ("PASS" if ok else "FAIL", f"{name}: every check passes after --rules default ({why}; exit {exits})")
            )
        seed = by_key.get((name, "seed"))
        runtime = by_key.get((name, "runtime"))
        if runtime is None or seed is None:
            missing = " and ".join(v for v, r in (("runtime profile", runtime), ("seed recipe", seed)) if r is None)
            out.append(("FAIL", f"{name}: runtime removes >= seed with its promised checks: {missing} not measured"))
        else:
            rt, sd = _row_data(runtime), _row_data(seed)
            promised = [c for c in applicable if c not in NOT_PROMISED_BY_RUNTIME]
            failed = [c for c in promised if runtime["checks"].get(c, {}).get("status") != "ok"]
            ok = rt["removed"] >= sd["removed"] and not failed and rt["exit"] == 0
            out.append(
                (
                    "PASS" if ok else "FAIL",
                    f"{name}: runtime removes {rt['removed'] / MB:.1f} MB vs seed {sd['removed'] / MB:.1f} MB; "
                    f"promised checks ({', '.join(promised) or 'none'}): "
                    f"{'failed ' + ', '.join(failed) if failed else 'ok'}",
                )
            )
        largest = env["largest_elf"][1]
        for variant in SLIMMER_VARIANTS:
            result = by_key.get((name, variant))
            if result is None:
                continue
            d = _row_data(result)
            if seed is None:
                out.append(("FAIL", f"{name} {variant}: time ratio to the seed recipe: seed not measured"))
            else:
                ratio = d["median"] / _row_data(seed)["median"]
                limit = TIME_RATIO_GOAL.get(variant, 1.0)
                out.append(
                    (
                        "PASS" if ratio <= limit else "FAIL",
                        f"{name} {variant}: median time {d['median']:.1f} s / seed {_row_data(seed)['median']:.1f}"
                        f" s = {ratio:.2f} (goal <= {limit:.1f})",
                    )
                )
            bound = largest + RSS_SLACK
            out.append(
                (
                    "PASS" if d["tree"] <= bound else "FAIL",
                    f"{name} {variant}: peak memory {d['tree'] / MB:.0f} MB (tree) <= largest ELF "
                    f"{largest / MB:.0f} MB ({env['largest_elf'][0] or 'none'}) + 200 MB "
                    f"= {bound / MB:.0f} MB",
                )
            )
        out.extend(_plan_alone_goal(env))
    if data.get("image"):
        out.extend(image_goals(data["image"]))
    return out


def _image_row(r: dict[str, Any], one: dict[str, Any], checks: list[str]) -> list[str]:
    walls = [run["wall_s"] for run in r["runs"]]
    peaks = [run["tree_peak_kb"] for run in r["runs"] if run["tree_peak_kb"]]
    if r["cached"]:
        took = "built earlier"
    else:
        took = f"{_median(walls):.0f} ({', '.join(f'{w:.0f}' for w in walls)})" if walls else "-"
    return [
        r["variant"],
        f"`{r['how']}`",
        f"{r['size'] / MB:.0f}",
        f"{r['gzip'] / MB:.0f}",
        "-" if r is one else f"{(one['gzip'] - r['gzip']) / MB:.0f}",
        f"{r['layers']} ({r['shared'] / MB:.0f})" if r is not one else str(r["layers"]),
        took,
        f"{max(peaks) / 1000:.0f}" if peaks else "-",
        " ".join(r["checks"].get(c, {}).get("status", "-") for c in checks),
    ]


def image_section(image: dict[str, Any]) -> list[str]:
    """RESULTS.md's image row: one line per variant of the one-stage torch image."""
    if image["skipped"]:
        return [f"Not measured: {image['skipped']}."]
    results = [r for r in image["results"] if not r["error"]]
    failed = [f"- {r['variant']}: {r['error']}" for r in image["results"] if r["error"]]
    if not results or results[0]["variant"] != "one-stage":
        return ["No one-stage image was built.", *failed]
    one, checks = results[0], image["checks"]
    header = ["image", "how", "MB", "gzip MB", "gzip saved", "layers (shared, gzip MB)", "s", "peak MB", "checks"]
    rows = [header] + [_image_row(r, one, checks) for r in results]
    return [
        markdown_table(rows),
        "",
        f"checks, in order: {', '.join(checks)}. MB: the layers uncompressed, as `docker images` counts them; "
        "gzip MB: each layer gzipped at the default level, as `docker push` sends it; gzip saved: against "
        "one-stage; shared: layers also in one-stage (stored and pulled once for both). s: the build of the "
        "slimming step with its cache busted (seed RUN, multi-stage apply: the apply, the COPY into the "
        "new stage and docker's commits) or the `slimmer image slim` command (its checks in containers of "
        "the input and the new image included), median (runs); peak MB: its process tree (PSS).",
        *failed,
    ]


def image_goals(image: dict[str, Any]) -> list[tuple[str, str]]:
    """Issue 13: `image slim` gives a smaller image than the seed's final RUN and than the multi-stage
    route, and every check that passes on the one-stage image passes on it."""
    if image["skipped"]:
        return [("FAIL", f"image row: not measured ({image['skipped']})")]
    by = {r["variant"]: r for r in image["results"]}
    one, slim = by.get("one-stage"), by.get("image slim")
    if not one or not slim or slim["error"] or one["error"]:
        why = (slim or {}).get("error") or "not built"
        return [("FAIL", f"image row: image slim: {why}")]
    out = []
    for other in ("seed RUN", "multi-stage apply"):
        r = by.get(other)
        if r is None or r["error"]:
            out.append(("FAIL", f"image row: {other}: {(r or {}).get('error') or 'not built'}"))
            continue
        # the same files as the multi-stage route's, in other tar entries: gzip may differ by a few KB
        slack = 0.001 if other == "multi-stage apply" else 0.0
        ok = slim["size"] <= r["size"] and slim["gzip"] <= r["gzip"] * (1 + slack)
        out.append(
            (
                "PASS" if ok else "FAIL",
                f"image row: image slim {slim['size'] / MB:.1f} MB (gzip {slim['gzip'] / MB:.1f}) <= {other} "
                f"{r['size'] / MB:.1f} MB (gzip {r['gzip'] / MB:.1f}{f' + {slack:.1%}' if slack else ''})",
            )
        )
    passing = [c for c in image["checks"] if one["checks"].get(c, {}).get("status") == "ok"]
    broken = [c for c in passing if slim["checks"].get(c, {}).get("status") != "ok"]
    out.append(
        (
            "FAIL" if broken else "PASS",
            f"image row: the checks that pass on one-stage pass after image slim "
            f"({'broken: ' + ', '.join(broken) if broken else ', '.join(passing) or 'none'})",
        )
    )
    return out


def _plan_alone_goal(env: dict[str, Any]) -> list[tuple[str, str]]:
    """Issue 15: the plan alone on the CUDA environment (one with device code) under 5 s, warm; other
    environments get their figure as an informational PASS line."""
    walls = env.get("plan_alone") or []
    if not walls:
        return []
    median = _median(walls)
    runs = ", ".join(f"{w:.1f}" for w in walls)
    if env.get("cuda"):
        ok = median < PLAN_ALONE_GOAL_S
        goal = f"(goal < {PLAN_ALONE_GOAL_S:.0f} s, warm cache)"
        return [("PASS" if ok else "FAIL", f"{env['name']}: plan alone {median:.1f} s ({runs}) {goal}")]
    return [("PASS", f"{env['name']}: plan alone {median:.1f} s ({runs}) (no goal: not the CUDA environment)")]


def render_table(data: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    return markdown_table(table_rows(data)), goals(data)


def render_markdown(data: dict[str, Any]) -> str:
    m, v = data["machine"], data["versions"]
    table, goal_lines = render_table(data)
    env_lines = []
    for env in data["envs"]:
        if env["skipped"]:
            env_lines.append(f"- {env['name']}: not measured: {env['skipped']}")
            continue
        pkgs = ", ".join(f"{k} {ver}" for k, ver in env["versions"].items()) or "no torch"
        env_lines.append(
            f"- {env['name']} (`{env['path']}`): python {env['python']}, {pkgs}; "
            f"{env['count']['bytes'] / MB:.1f} MB in {env['count']['files']} files; largest ELF "
            f"{env['largest_elf'][0] or 'none'} ({env['largest_elf'][1] / MB:.1f} MB)"
        )
    parts = [
        "# Benchmark: slimmer against the seed recipe",
        "",
        "Written by `make bench` (`bench/run.py`); the same data is in `results.json`.",
        "",
        f"- Date: {data['date']}, {data['duration_s'] / 60:.1f} min in all, {data['repeat']} run(s) per variant.",
        f"- Machine: {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}, Linux {m['kernel']}; "
        f"load average {m['load_avg_start']} at the start, {m['load_avg_end']} at the end.",
        f"- Versions: slimmer `{v['slimmer']}`, lief {v['lief']}, binutils `{v['binutils']}`, "
        f"harness python {v['harness python']}.",
        *env_lines,
        "",
        "## Results",
        "",
        table,
        "",
        "`*`: the runs ended with bytes that differ by more than 64 KiB. exit: the largest exit status over the runs.",
        "",
        "## Goals (issues 7, 13 and 15)",
        "",
        *(f"- **{status}** {goal}" for status, goal in goal_lines),
        "",
    ]
    if data.get("image"):
        parts += [
            "## Image row (issue 13): a one-stage torch image and three ways to slim it",
            "",
            *image_section(data["image"]),
            "",
        ]
    if data["notes"]:
        parts += ["## Notes", "", *(f"- {n}" for n in data["notes"]), ""]
    failures = [
        f"- {r['env']} {r['variant']} `{name}`: {c['error']}"
        for r in data["results"]
        for name, c in r["checks"].items()
        if c["status"] == "FAIL"
    ]
    if failures:
        parts += ["## Check failures (first line of each error)", "", *failures, ""]
    verify_failures = [
        f"- {r['env']} {r['variant']}: `{(v['log_tail'].splitlines() or ['no output'])[-1]}`"
        for r in data["results"]
        for v in r["verify"][:1]
        if v["returncode"] != 0
    ]
    if verify_failures:
        parts += ["## `slimmer verify` failures (last line of its output, first run)", "", *verify_failures, ""]
    parts += ["## Method", "", METHOD]
    return "\n".join(parts)
