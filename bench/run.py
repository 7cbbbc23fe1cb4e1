"""`make bench`: slimmer against the seed recipe on real environments.

For each environment and each variant (the untouched copy, the seed recipe run exactly as it is,
`slimmer apply --rules default`, and `... --profile runtime` when slimmer has profiles), on a fresh
byte copy each run: bytes and files before and after, wall time and peak memory of the
slimming command alone, then the same checks (fixtures/smoke.py, one subprocess per check, with the
environment's own interpreter). Runs are interleaved (variant by variant within each repeat) so that
a change of load on the machine hits every variant alike. Writes RESULTS.md and results.json.

Never changes the environments it measures: it works on copies in a scratch folder and deletes each
copy right after its run, so at most one copy exists at a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.images import ImageBench, bench_images
from bench.measure import TIME, Check, TreeCount, check_result, count_tree, largest_elf, say, timed_run
from bench.report import SLIMMER_VARIANTS, image_section, render_markdown, render_table

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "fixtures" / "smoke.py"
SEED_RECIPE = REPO.parent / "shared" / "bench" / "seed_recipe.sh"
VARIANTS = ("original", "seed", "default", "runtime", "default+sm_90")
CHECK_TIMEOUT = 900


@dataclass(frozen=True)
class Env:
    name: str
    path: str
    python: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)  # the smoke checks that apply (their package is installed)
    count: TreeCount | None = None
    largest_elf: tuple[str, int] = ("", 0)
    skipped: str = ""  # why it was not measured
    plan_alone: list[float] = field(default_factory=list)  # `slimmer plan --rules default` on the cached env, s
    cuda: bool = False  # torch's CUDA library is there (device code to prune)


@dataclass(frozen=True)
class Run:
    returncode: int
    wall_s: float
    max_rss_kb: int
    tree_peak_kb: int
    before: TreeCount
    after: TreeCount
    log_tail: str = ""
    plan_s: float = 0.0  # slimmer's own split of the wall time ("Took ... (plan X s, apply Y s)")
    apply_s: float = 0.0


@dataclass
class Result:
    env: str
    variant: str
    command: list[str]
    runs: list[Run] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)
    verify: list[Run] = field(default_factory=list)  # `slimmer verify` after the apply, timed on its own


_TOOK = re.compile(r"Took [\d.]+ s \(plan ([\d.]+) s, apply ([\d.]+) s\)")


def _split(log: Path) -> tuple[float, float]:
    """(plan s, apply s) as slimmer's apply reports them at its end; (0, 0) for other commands."""
    found = _TOOK.findall(log.read_text(errors="replace"))
    return (float(found[-1][0]), float(found[-1][1])) if found else (0.0, 0.0)


def plan_alone(env: Env, slimmer: list[str], repeat: int, scratch: Path) -> list[float]:
    """Wall times of `slimmer plan --rules default` on the cached environment (plan only reads): one
    untimed run first, so the page cache is warm as in every apply run."""
    cmd = [*slimmer, "plan", "--rules", "default", env.path]
    log = scratch / "plan.log"
    walls = []
    for n in range(repeat + 1):
        timed = timed_run(cmd, log=log, cwd=scratch)
        if timed.returncode != 0:
            say(f"[{env.name}] plan alone failed (exit {timed.returncode}): {_tail(log, 3)}")
            return []
        if n:
            walls.append(round(timed.wall_s, 3))
    say(f"[{env.name}] plan alone: {', '.join(f'{w:.1f}' for w in walls)} s")
    return walls


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _clean_env(scratch: Path) -> dict[str, str]:
    """The environment for checks: nothing leaks in from the caller, and every compile cache is new,
    so a torch.compile check compiles for real instead of loading an earlier variant's result."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        PYTHONNOUSERSITE="1",
        TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"),
        TRITON_CACHE_DIR=str(scratch / "triton"),
        XDG_CACHE_HOME=str(scratch / "xdg"),
    )
    return env


def env_info(name: str, path: Path, scratch: Path) -> Env:
    python = path / "bin" / "python"
    if not python.exists():
        return Env(name=name, path=str(path), skipped=f"{path} has no bin/python")
    env = _clean_env(scratch) | {"PYTHONDONTWRITEBYTECODE": "1"}  # the cached env is never written to
    proc = subprocess.run(
        [str(python), str(SMOKE), "--info"], capture_output=True, text=True, env=env, cwd=scratch, check=False
    )
    if proc.returncode != 0:
        return Env(name=name, path=str(path), skipped=f"smoke.py --info failed: {proc.stderr.strip()[-300:]}")
    info = json.loads(proc.stdout)
    return Env(
        name=name,
        path=str(path),
        python=info["python"],
        versions=info["versions"],
        checks=info["checks"],
        count=count_tree(path),
        largest_elf=largest_elf(path),
        cuda=any(path.glob("lib/python3*/site-packages/torch/lib/libtorch_cuda.so")),
    )


def run_checks(copy: Path, env: Env, all_checks: list[str], scratch: Path) -> dict[str, Check]:
    out = {}
    for i, name in enumerate(all_checks):
        if name not in env.checks:
            out[name] = Check("n/a")
            continue
        cache = scratch / f"cache-{i}"
        cache.mkdir()
        try:
            proc = subprocess.run(
                [str(copy / "bin" / "python"), str(SMOKE), name],
                capture_output=True,
                text=True,
                env=_clean_env(cache),
                cwd=cache,
                timeout=CHECK_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            out[name] = Check("FAIL", CHECK_TIMEOUT, f"timed out after {CHECK_TIMEOUT} s")
            continue
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        out[name] = check_result(name, proc.returncode, proc.stdout, proc.stderr)
    return out


def _slimmer_help(slimmer: list[str], *args: str) -> str:
    proc = subprocess.run([*slimmer, *args, "--help"], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def _has_option(help_text: str, option: str) -> bool:
    """Whether a click --help text lists option as an option (not only mentions it in a description)."""
    return re.search(rf"^ {{1,6}}(-\w, )?{re.escape(option)}\b", help_text, re.MULTILINE) is not None


def _verify_command(variant: str, copy: Path, slimmer: list[str], *, profile: bool) -> list[str]:
    # the runtime profile does not promise torch.compile, and verify skips that check when told the profile
    return [*slimmer, "verify", *(["--profile", "runtime"] if profile and variant == "runtime" else []), str(copy)]


def _command(variant: str, copy: Path, slimmer: list[str], seed: Path) -> list[str]:
    if variant == "seed":
        return [str(seed), str(copy)]  # the file itself, exactly as it is
    if variant == "default":
        return [*slimmer, "apply", "--rules", "default", str(copy)]
    if variant == "runtime":
        return [*slimmer, "apply", "--rules", "default", "--profile", "runtime", str(copy)]
    if variant == "default+sm_90":  # device code pruned to H100s (a no-op without CUDA libraries)
        return [*slimmer, "apply", "--rules", "default", "--gpu-arch", "sm_90", str(copy)]
    return []


def _copy(src: Path, dest: Path) -> None:
    # Bytes, not hard links or reflinks: stripping must pay for what it rewrites. cp -a keeps the
    # hard links inside the environment, modes and symlinks as they are.
    subprocess.run(["cp", "-a", "--reflink=never", str(src), str(dest)], check=True)


def bench_env(
    env: Env,
    variants: list[str],
    repeat: int,
    slimmer: list[str],
    seed: Path,
    work: Path,
    *,
    verify: bool,
    verify_profile: bool,
    all_checks: list[str],
) -> list[Result]:
    src = Path(env.path)
    if not any(src.glob("lib/python3*/site-packages/torch/lib/libtorch_cuda.so")):
        variants = [v for v in variants if v != "default+sm_90"]  # no device code to prune
    results = {v: Result(env.name, v, _command(v, Path("ENV"), slimmer, seed)) for v in variants}
    for r in range(repeat):
        for variant in variants:
            result = results[variant]
            copy = work / "env"
            scratch = work / "scratch"
            scratch.mkdir()
            try:
                _copy(src, copy)
                before = count_tree(copy)
                cmd = _command(variant, copy, slimmer, seed)
                if cmd:
                    log = scratch / "command.log"
                    timed = timed_run(cmd, log=log, cwd=scratch)
                    tail = _tail(log) if timed.returncode != 0 else ""
                    plan_s, apply_s = _split(log)
                    run = Run(
                        timed.returncode,
                        timed.wall_s,
                        timed.max_rss_kb,
                        timed.tree_peak_kb,
                        before,
                        count_tree(copy),
                        tail,
                        plan_s,
                        apply_s,
                    )
                else:
                    run = Run(0, 0.0, 0, 0, before, before)
                result.runs.append(run)
                say(
                    f"[{env.name}] run {r + 1}/{repeat} {variant}: {run.wall_s:.1f} s, "
                    f"removed {(before.bytes - run.after.bytes) / 1e6:.1f} MB, exit {run.returncode}"
                )
                # timed on every run after slimmer, and once elsewhere to show what already failed
                if verify and (variant in SLIMMER_VARIANTS or r == 0):
                    log = scratch / "verify.log"
                    cmd = _verify_command(variant, copy, slimmer, profile=verify_profile)
                    v = timed_run(cmd, log=log, cwd=scratch, env=_clean_env(scratch))
                    result.verify.append(
                        Run(
                            v.returncode,
                            v.wall_s,
                            v.max_rss_kb,
                            v.tree_peak_kb,
                            run.after,
                            count_tree(copy),
                            _tail(log) if v.returncode else "",
                        )
                    )
                if r == 0:  # the same checks for every variant, on the first run's copy
                    result.checks = run_checks(copy, env, all_checks, scratch)
                    say(
                        f"[{env.name}] checks {variant}: "
                        + ", ".join(f"{k} {c.status}" for k, c in result.checks.items())
                    )
            finally:
                shutil.rmtree(copy, ignore_errors=True)
                shutil.rmtree(scratch, ignore_errors=True)
    return list(results.values())


def known_envs(cache: Path) -> dict[str, tuple[Path | None, str]]:
    """Name: (path, why it is missing). The Makefile builds these (make bench-envs)."""
    scatter = os.environ.get("SLIMMER_SCATTER_ENV")
    family = os.environ.get("SLIMMER_FAMILY_ENV")
    return {
        "torch-2.13.0": (cache / "envs" / "torch-2.13.0", "run 'make envs'"),
        "torch-2.14.1": (cache / "envs" / "torch-2.14.1", "run 'make bench-envs'"),
        "torch-2.13.0+scatter": (
            Path(scatter) if scatter else None,
            "run 'make scatter-env'" if scatter else "SLIMMER_SCATTER_ENV is not set: run through 'make bench'",
        ),
        "torch-2.13.0+pyg-family": (
            Path(family) if family else None,
            "run 'make family-env'" if family else "SLIMMER_FAMILY_ENV is not set: run through 'make bench'",
        ),
    }


def machine() -> dict[str, object]:
    model = ""
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    with open("/proc/meminfo") as f:
        mem_kb = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal")))
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "cpu": model,
        "kernel": platform.release(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions(slimmer: list[str]) -> dict[str, str]:
    from importlib import metadata

    def first_line(cmd: list[str]) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            return f"missing ({exc.strerror})"
        return (proc.stdout.strip().splitlines() or ["?"])[0]

    try:
        lief = metadata.version("lief")
    except metadata.PackageNotFoundError:
        lief = "not installed"
    return {
        "slimmer": first_line([*slimmer, "--version"]),
        "lief": lief,
        "binutils": first_line(["strip", "--version"]),
        "harness python": platform.python_version(),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    cache = Path(os.environ.get("SLIMMER_CACHE", Path.home() / ".cache" / "slimmer-dev"))
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--envs",
        default=",".join(known_envs(cache)),
        help="comma-separated names (%(default)s) or paths to environments (default: all)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per variant; times are medians (default 3)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of %(default)s")
    p.add_argument("--out", type=Path, default=REPO / "bench", help="folder for RESULTS.md and results.json")
    p.add_argument("--work", type=Path, help="scratch folder for the copies (default: a new one under $TMPDIR)")
    p.add_argument("--seed-recipe", type=Path, default=SEED_RECIPE, help="default: %(default)s")
    p.add_argument("--slimmer", default=str(Path(sys.executable).with_name("slimmer")), help="the slimmer command")
    p.add_argument("--no-verify", action="store_true", help="do not time 'slimmer verify' even if it exists")
    p.add_argument("--no-images", action="store_true", help="leave out the image row (bench/images.py)")
    p.add_argument("--image-repeat", type=int, help="runs per image variant (default: --repeat)")
    p.add_argument("--note", action="append", default=[], help="a line for the notes of RESULTS.md (repeatable)")
    args = p.parse_args(argv)
    args.cache = cache
    return args


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, PLR0915 - the harness reads top to bottom: arguments, environments, variants, output
    args = parse_args(sys.argv[1:] if argv is None else argv)
    notes = list(args.note)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.repeat < 1:
        say(f"bench: unknown variants {unknown} (known: {', '.join(VARIANTS)}) or --repeat < 1")
        return 2
    slimmer = (
        [args.slimmer]
        if Path(args.slimmer).exists() or shutil.which(args.slimmer)
        else [sys.executable, "-m", "slimmer"]
    )
    if not os.access(TIME, os.X_OK):
        say(f"bench: {TIME} is missing: install the 'time' package ('make bench-tools' does)")
        return 2
    seed = args.seed_recipe.resolve()
    if "seed" in variants and not seed.is_file():
        say(f"bench: the seed recipe is not at {seed} (shared/ must lie beside the repository; or --seed-recipe)")
        return 2
    if "runtime" in variants and not _has_option(_slimmer_help(slimmer, "apply"), "--profile"):
        variants.remove("runtime")
        notes.append("runtime profile not measured: `slimmer apply --help` lists no --profile yet.")
    verify_help = "" if args.no_verify else _slimmer_help(slimmer, "verify")
    verify = bool(verify_help)
    if not verify:
        notes.append("`slimmer verify` not timed: " + ("--no-verify." if args.no_verify else "no such command yet."))
    if args.repeat < 3:
        notes.append(f"{args.repeat} run(s) per variant: fewer than the 3 the benchmark asks for medians.")

    known = known_envs(args.cache)
    chosen: list[tuple[str, Path | None, str]] = []
    for item in (x.strip() for x in args.envs.split(",") if x.strip()):
        if item in known:
            path, why = known[item]
            chosen.append((item, path, why))
        elif Path(item).is_dir():
            chosen.append((Path(item).resolve().name, Path(item).resolve(), ""))
        else:
            say(f"bench: {item!r} is neither a known environment ({', '.join(known)}) nor a folder")
            return 2

    work = args.work or Path(tempfile.mkdtemp(prefix="slimmer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    mach = machine()
    envs: list[Env] = []
    results: list[Result] = []
    all_checks: list[str] = []
    image: ImageBench | None = None
    try:
        infos = []
        for name, path, why in chosen:
            if path is None or not path.is_dir():
                infos.append(Env(name=name, path=str(path or ""), skipped=f"missing: {why}"))
                continue
            scratch = work / "info"
            scratch.mkdir(exist_ok=True)
            infos.append(env_info(name, path, scratch))
            shutil.rmtree(scratch)
        all_checks = list(dict.fromkeys(c for e in infos for c in e.checks)) or ["import torch"]
        for env in infos:
            envs.append(env)
            if env.skipped:
                notes.append(f"{env.name} not measured: {env.skipped}.")
                say(f"bench: skipping {env.name}: {env.skipped}")
                continue
            assert env.count is not None
            free = shutil.disk_usage(work).free
            if free < env.count.disk_bytes * 1.3 + 2**30:
                say(
                    f"bench: {work} has {free / 1e9:.1f} GB free; a copy of {env.name} needs about "
                    f"{env.count.disk_bytes * 1.3 / 1e9:.1f} GB"
                )
                return 1
            if any(v in SLIMMER_VARIANTS for v in variants):
                scratch = work / "plan"
                scratch.mkdir(exist_ok=True)
                envs[-1] = replace(env, plan_alone=plan_alone(env, slimmer, args.repeat, scratch))
                shutil.rmtree(scratch, ignore_errors=True)
            results += bench_env(
                envs[-1],
                variants,
                args.repeat,
                slimmer,
                seed,
                work,
                verify=verify,
                verify_profile=_has_option(verify_help, "--profile"),
                all_checks=all_checks,
            )
        if not args.no_images:
            image = bench_images(
                slimmer,
                seed,
                work / "image",
                args.cache,
                SMOKE,
                args.image_repeat or args.repeat,
                os.environ.get("SLIMMER_DOCKER_BASE", "slimmer-base:bookworm"),
            )
            if image.skipped:
                notes.append(f"image row not measured: {image.skipped}.")
                say(f"bench: image row not measured: {image.skipped}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    mach["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    data = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()),
        "machine": mach,
        "versions": versions(slimmer),
        "repeat": args.repeat,
        "seed_recipe": str(seed),
        "checks": all_checks,
        "envs": [asdict(e) for e in envs],
        "results": [asdict(r) for r in results],
        "image": asdict(image) if image else None,
        "notes": notes,
    }
    table, goals = render_table(data)
    data["goals"] = [{"status": s, "goal": g} for s, g in goals]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(data, indent=2) + "\n"), ("RESULTS.md", render_markdown(data))):
        tmp = args.out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(args.out / name)
    print(table)
    print()
    if image:
        print("\n".join(image_section(data["image"])))
        print()
    for status, goal in goals:
        print(f"{status}  {goal}")
    for note in notes:
        print(f"note: {note}")
    print(f"\nwrote {args.out / 'RESULTS.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
