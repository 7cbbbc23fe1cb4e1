"""The pieces both ways of building share: `build-and-slim` (pipeline/build.py, live on the engine) and
`slimmer dockerfile` (pipeline/dockerfile.py, text for someone else's builder).

Pure: takes a PipelineConfig, returns argument lists and shell lines. Every value that reaches a shell
line goes through `shlex.quote` (package names, the interpreter, the environment's path), so a path
with a space or a quote stays one word.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from slimmer.pipeline.config import PipelineConfig
    from slimmer.verify.checks import VerifyCheck

TOOL_ENV = "/opt/slimmer-tool"  # slimmer's own venv in the devel stage: it adds nothing to the slimmed one
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SLIMMER = f"{TOOL_ENV}/bin/slimmer"


def path_with(env_path: str) -> str:
    """PATH with the environment's bin/ first (the value of the images' `ENV PATH=`)."""
    return f"{env_path}/bin:{SYSTEM_PATH}"


def check_argv(checks: Sequence[VerifyCheck]) -> list[str]:
    """The user checks as `slimmer verify` / `apply --verify` options. The command line has one timeout
    for every check, so the longest a check asks for is passed when any asks for other than the default."""
    from slimmer.verify.checks import CheckKind
    from slimmer.verify.runner import DEFAULT_TIMEOUT

    argv: list[str] = []
    for check in checks:
        argv += ["--check" if check.kind is CheckKind.PYTHON else "--check-cmd", check.target]
    if any(c.timeout != DEFAULT_TIMEOUT for c in checks):
        argv += ["--check-timeout", f"{max(c.timeout for c in checks):g}"]
    return argv


def slim_argv(cfg: PipelineConfig, *, verify: bool = True) -> list[str]:
    """`slimmer apply` on the environment with the config's rules, GPU targets, profile and, when VERIFY,
    its checks: the one command both build paths run (the slimmer there is a wheel of this very source,
    so every option exists)."""
    argv = [SLIMMER, "apply"]
    for rules in cfg.rules:
        argv += ["--rules", rules]
    for arch in cfg.gpu_archs:
        argv += ["--gpu-arch", arch]
    if cfg.profile:
        argv += ["--profile", cfg.profile]
    if verify:
        argv += ["--verify", *check_argv(cfg.checks)]
        if not cfg.compile_check:
            argv.append("--no-compile-check")
    return [*argv, cfg.env_path]


def verify_argv(cfg: PipelineConfig, *, compile_check: bool) -> list[str]:
    """`slimmer verify` of the environment inside the final image (no compiler there: COMPILE_CHECK off)."""
    argv = [f"{TOOL_ENV}/bin/slimmer", "verify"]
    if cfg.profile:
        argv += ["--profile", cfg.profile]
    if not compile_check:
        argv.append("--no-compile-check")
    return [*argv, *check_argv(cfg.checks), cfg.env_path]


def apt_install(packages: Iterable[str], *, clean: bool = False) -> str:
    """apt-get install PACKAGES without recommends, the lists removed after (and the cache when CLEAN)."""
    names = " ".join(shlex.quote(p) for p in packages)
    tail = " && apt-get clean" if clean else ""
    install = f"apt-get install -y -qq --no-install-recommends {names}"
    return f"apt-get update -qq && {install}{tail} && rm -rf /var/lib/apt/lists/*"


def make_venv(python: str, path: str) -> str:
    """Create a venv at PATH with the interpreter PYTHON (a name on PATH or a path)."""
    return f"{shlex.quote(python)} -m venv {shlex.quote(path)}"
