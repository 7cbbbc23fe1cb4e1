"""The pipeline configuration: `[tool.slimmer]` in pyproject.toml or a `slimmer.toml`, overridden by CLI options.

Reads and validates; never touches the engine. Every key is also a CLI option of `build-and-slim`
and `dockerfile` (dashes and underscores are the same).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimmer.config_file import find_config, load_toml, read_section
from slimmer.errors import UsageError

if TYPE_CHECKING:
    from slimmer.verify.checks import VerifyCheck

PYG_NAMES = frozenset({"torch_scatter", "torch_sparse", "torch_cluster", "torch_spline_conv", "pyg_lib"})


def default_cache() -> Path:
    return Path(os.environ.get("SLIMMER_CACHE") or Path.home() / ".cache" / "slimmer")


@dataclass(frozen=True)
class Extension:
    """One thing to provide in the environment: a pip requirement or a local source folder."""

    name: str  # the distribution name, normalised with underscores
    source: str  # the requirement string, or the local folder (absolute)
    local: bool = False

    @classmethod
    def parse(cls, spec: str, base: Path) -> Extension:
        path = (base / spec).resolve() if not Path(spec).is_absolute() else Path(spec)
        if spec.startswith((".", "/", "~")) or (path.is_dir() and os.sep in spec):
            path = path.expanduser()
            if not path.is_dir():
                raise UsageError(f"extension {spec!r}: {path} is not a folder")
            return cls(name=_local_name(path), source=str(path), local=True)
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if not match:
            raise UsageError(f"extension {spec!r} is not a pip requirement or a folder")
        return cls(name=normalise(match.group(1)), source=spec.strip())


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _local_name(path: Path) -> str:
    """The project name from pyproject.toml or setup.py, else the folder name."""
    pyproject = path / "pyproject.toml"
    if pyproject.is_file():
        name = load_toml(pyproject).get("project", {}).get("name")
        if isinstance(name, str):
            return normalise(name)
    setup = path / "setup.py"
    if setup.is_file():
        match = re.search(r"""\bname\s*=\s*["']([^"']+)["']""", setup.read_text(encoding="utf-8", errors="replace"))
        if match:
            return normalise(match.group(1))
    return normalise(path.name)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything `build-and-slim` and `dockerfile` need; see `slimmer build-and-slim --help`."""

    devel_image: str = "slimmer-base:bookworm"
    runtime_image: str = "slimmer-base:bookworm"
    tag: str = "slimmer-runtime:latest"
    env_path: str = "/opt/venv"
    python: str = "python3"
    devel_packages: tuple[str, ...] = ("python3", "python3-venv", "python3-dev", "g++", "ccache", "ninja-build")
    runtime_packages: tuple[str, ...] = ("python3",)
    torch_version: str = ""
    torch_index: str = ""
    cuda: str = "cpu"
    extensions: tuple[Extension, ...] = ()
    find_links: tuple[str, ...] = ()
    index_urls: tuple[str, ...] = ()
    wheelhouse: Path = field(default_factory=lambda: default_cache() / "wheelhouse")
    torch_cuda_arch_list: str = ""
    max_jobs: int = 0  # 0: from the engine's memory, 3 GiB per job
    rules: tuple[str, ...] = ("default",)
    profile: str = ""
    gpu_archs: tuple[str, ...] = ()  # `apply --gpu-arch`: prune device code to these GPUs
    checks: tuple[VerifyCheck, ...] = ()  # the forms `slimmer verify` reads (slimmer.verify.config)
    gpus: str = "auto"  # auto | all | none
    compile_check: bool = True  # torch.compile in the devel stage's verify (the runtime image has no compiler)
    pip_timeout: float = 15.0
    pip_cert: str = ""  # a CA bundle on the host, mounted for pip inside the containers
    ccache_dir: Path = field(default_factory=lambda: default_cache() / "ccache")
    log_dir: Path = field(default_factory=lambda: default_cache() / "logs")

    @property
    def torch_requirement(self) -> str:
        return f"torch=={self.torch_version}" if self.torch_version else "torch"

    def wheel_sources(self, ext: Extension) -> tuple[str, ...]:
        """Remote places to look for a prebuilt wheel of EXT, in order (the wheelhouse is tried first)."""
        sources = list(self.find_links)
        if ext.name in PYG_NAMES and self.torch_version:
            sources.append(f"https://data.pyg.org/whl/torch-{self.torch_version}+{self.cuda}.html")
        return (*sources, *self.index_urls)


_LISTS = {
    "devel_packages",
    "runtime_packages",
    "extensions",
    "find_links",
    "index_urls",
    "rules",
    "gpu_archs",
}
_PATHS = {"wheelhouse", "ccache_dir", "log_dir"}
KEYS = tuple(f.name for f in dataclasses.fields(PipelineConfig))


def make_config(values: dict[str, Any], *, base: Path, origin: str = "option") -> PipelineConfig:
    """Validate raw VALUES (from a file or the command line) into a PipelineConfig."""
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in KEYS:
            raise UsageError(f"{origin}: unknown key {raw_key!r} (known: {', '.join(KEYS)})")
        kwargs[key] = _coerce(key, value, base=base, origin=origin)
    return PipelineConfig(**kwargs)


def load_config(
    config_file: Path | None, overrides: dict[str, Any], *, cwd: Path
) -> tuple[PipelineConfig, Path | None]:
    """The file's values (CONFIG_FILE, or the one found in CWD) overridden by OVERRIDES (None = not given)."""
    path = config_file or find_config(cwd)
    merged: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise UsageError(f"config file {path} does not exist")
        file_values = read_section(path)
        make_config(file_values, base=path.parent, origin=str(path))  # report bad keys with the file's name
        merged.update({k.replace("-", "_"): v for k, v in file_values.items()})
    base = path.parent if path is not None else cwd
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}
    file_cfg = make_config(merged, base=base, origin=str(path) if path else "config")
    if not given:
        return file_cfg, path
    override_cfg = make_config(given, base=cwd)
    return dataclasses.replace(file_cfg, **{k: getattr(override_cfg, k) for k in given}), path


def _coerce(key: str, value: Any, *, base: Path, origin: str) -> Any:  # noqa: PLR0912, PLR0911 - one branch per config value type, each with its own error
    def bad(expected: str) -> UsageError:
        return UsageError(f"{origin}: {key} must be {expected}, got {value!r}")

    if key in _LISTS:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        if key == "extensions":
            try:
                return tuple(Extension.parse(v, base) for v in value)
            except UsageError as exc:
                raise UsageError(f"{origin}: {exc}") from exc
        if key == "gpu_archs":
            from slimmer.elf.gpuarch import GpuArchError, parse_targets

            try:
                return tuple(str(t) for t in parse_targets(value))
            except GpuArchError as exc:
                raise UsageError(f"{origin}: gpu_archs: {exc}") from exc
        return tuple(value)
    if key == "checks":
        from slimmer.verify.config import parse_checks

        return parse_checks(origin, value)
    if key in _PATHS:
        if not isinstance(value, (str, Path)) or not str(value):
            raise bad("a path")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    if key == "max_jobs":
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad("a whole number >= 0 (0: from memory)")
        return value
    if key == "pip_timeout":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise bad("a number of seconds > 0")
        return float(value)
    if key == "compile_check":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key == "gpus":
        if value not in ("auto", "all", "none"):
            raise bad("one of auto, all, none")
        return value
    if key == "env_path":
        if not isinstance(value, str) or not value.startswith("/") or value.rstrip("/") == "":
            raise bad("an absolute path inside the image, not /")
        return value.rstrip("/")
    if key == "pip_cert" and value:
        path = Path(str(value)).expanduser()
        path = path if path.is_absolute() else (base / path).resolve()
        if not path.is_file():
            raise bad("an existing CA bundle file")
        return str(path)
    if not isinstance(value, str):
        raise bad("a string")
    return value
