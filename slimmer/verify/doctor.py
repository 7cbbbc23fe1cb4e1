"""`slimmer doctor`: what run-time compilation needs, checked, with the exact fix for what is missing.

torch.compile (Inductor) writes C++ that includes `Python.h` and torch's headers and builds it with
the C++ compiler (`CXX`, else g++); on a GPU, Triton also builds a launcher with `Python.h` and its
bundled CUDA headers. `torch.utils.cpp_extension.load` needs the same, plus nvcc for CUDA sources.
Slimmed images often lose exactly these. The fix depends on who owns the missing file: the
distribution's package manager (apt, dnf, apk), conda, pyenv or pip.

Reads the environment and the log; runs the compiler once on a one-line file; changes nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimmer import proc
from slimmer.errors import CommandError
from slimmer.verify.runner import probe_report

BREAKS_COMPILE = "torch.compile (Inductor's C++ kernels) and torch.utils.cpp_extension.load"
BREAKS_TRITON = "torch.compile on the GPU (Triton builds its launcher with these headers)"
BREAKS_NVCC = "torch.utils.cpp_extension.load / CUDAExtension builds of .cu sources"


@dataclass(frozen=True)
class Distro:
    """The operating system (from os-release) and the package manager that owns system files."""

    id: str
    like: tuple[str, ...]
    pretty: str

    @property
    def family(self) -> str:
        ids = (self.id, *self.like)
        for family, members in (
            ("debian", ("debian", "ubuntu")),
            ("fedora", ("fedora", "rhel", "centos", "rocky", "almalinux", "amzn")),
            ("alpine", ("alpine",)),
            ("suse", ("suse", "opensuse", "sles")),
            ("arch", ("arch",)),
        ):
            if any(i in members for i in ids):
                return family
        return "unknown"


@dataclass(frozen=True)
class Finding:
    need: str  # what compilation needs: "Python.h", "C++ compiler", ...
    ok: bool
    where: str  # where it was looked for, or found
    breaks: str = ""  # what fails without it
    fix: str = ""  # the exact command, for the owner detected


def detect_distro(root: Path | None = None) -> Distro:
    """The os-release of `root` (an image's file system) if it has one, else this machine's."""
    candidates = [root / "etc/os-release"] if root is not None else []
    candidates += [Path("/etc/os-release"), Path("/usr/lib/os-release")]
    for path in candidates:
        if path.is_file():
            fields = {}
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    fields[key.strip()] = value.strip().strip('"')
            like = tuple(fields.get("ID_LIKE", "").split())
            return Distro(fields.get("ID", "unknown"), like, fields.get("PRETTY_NAME", fields.get("ID", "")))
    return Distro("unknown", (), "unknown")


def _short(version: str) -> str:
    return ".".join(version.split(".")[:2])


def python_headers_fix(include: str, version: str, distro: Distro, *, conda_prefix: str | None = None) -> str:
    """The command that puts Python.h back where `include` says, for whoever owns that folder."""
    xy = _short(version)
    if conda_prefix:
        return f"conda install -p {conda_prefix} --force-reinstall python={version or xy}"
    pyenv = re.search(r"/\.pyenv/versions/([^/]+)/", include + "/")
    if pyenv:
        return f"pyenv install --force {pyenv.group(1)}"
    if include.startswith("/usr/include/"):
        family = distro.family
        fixes = {
            "debian": f"apt-get install -y python{xy}-dev",
            "fedora": f"dnf install -y python{xy}-devel",
            "alpine": "apk add python3-dev",
            "suse": f"zypper install -y python{xy.replace('.', '')}-devel",
            "arch": "pacman -S --noconfirm python",
        }
        if family in fixes:
            return fixes[family]
        return f"install the development package of Python {xy} (python{xy}-dev or python{xy}-devel)"
    prefix = include.split("/include/", 1)[0] if "/include/" in include else include
    return f"reinstall Python {version or xy} into {prefix} (its include/python{xy} folder is part of the install)"


def compiler_fix(distro: Distro, *, conda_prefix: str | None = None) -> str:
    if conda_prefix:
        return f"conda install -p {conda_prefix} -c conda-forge gxx"
    return {
        "debian": "apt-get install -y g++",
        "fedora": "dnf install -y gcc-c++",
        "alpine": "apk add g++",
        "suse": "zypper install -y gcc-c++",
        "arch": "pacman -S --noconfirm gcc",
    }.get(distro.family, "install a C++ compiler (g++) or point CXX at one")


def nvcc_fix(distro: Distro, cuda: str, *, conda_prefix: str | None = None) -> str:
    if conda_prefix:
        return f"conda install -p {conda_prefix} -c nvidia cuda-nvcc={cuda}"
    dashed = cuda.replace(".", "-")
    if distro.family == "debian":
        return (
            f"apt-get install -y cuda-nvcc-{dashed} (NVIDIA's CUDA repository), "
            f"or build FROM nvidia/cuda:{cuda}.x-devel"
        )
    if distro.family == "fedora":
        return f"dnf install -y cuda-nvcc-{dashed} (NVIDIA's CUDA repository)"
    return f"install the CUDA {cuda} toolkit's nvcc and set CUDA_HOME"


def _toolchain(python: Path) -> dict[str, Any]:
    return probe_report(python, "toolchain.py", "did not report its toolchain")


def _conda_prefix(info: dict[str, Any]) -> str | None:
    for key in ("prefix", "base_prefix"):
        if (Path(info[key]) / "conda-meta").is_dir():
            return str(info[key])
    return None


def _version_field(text: str, name: str) -> str | None:
    found = re.search(rf"^{name}\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return found.group(1) if found else None


def _find_compiler(root: Path, cxx_env: str) -> str | None:
    path = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    for name in ([cxx_env] if cxx_env else []) + ["g++", "c++"]:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def _compiles(cxx: str, include: str) -> str:
    """'' if cxx compiles a file that includes Python.h, else the compiler's first error line."""
    with tempfile.TemporaryDirectory(prefix="slimmer-doctor-") as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("#include <Python.h>\nint main() { return Py_IsInitialized(); }\n", encoding="utf-8")
        argv = [cxx, "-fsyntax-only", f"-I{include}", str(src)]
        try:
            done = proc.run(argv, timeout=120, check=False)
        except CommandError as exc:
            return exc.last_line
        if done.returncode == 0:
            return ""
        lines = [ln for ln in done.stderr.splitlines() if "error" in ln]
        return (lines or done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]


def removed_by_slimmer(root: Path, path: Path, fix: str) -> str:
    """`fix`, amended if a slimmer run on `root` removed `path` (or a folder above it)."""
    from slimmer.journal import Journal, RunState, state_dir

    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return fix
    runs = state_dir(root) / "runs"
    folders = (
        sorted((p for p in runs.iterdir() if (p / "journal.jsonl").is_file()), reverse=True) if runs.is_dir() else []
    )
    for folder in folders:
        journal = Journal(folder)
        records = journal.records()
        if not any(r["op"] == "move" and (rel == r["rel"] or rel.startswith(r["rel"] + "/")) for r in records):
            continue
        state = journal.state()
        if state is RunState.UNDONE:
            continue
        if state is RunState.OPEN:
            undo = f"slimmer undo {shlex.quote(str(root))}"
            return f"{undo}  (run {journal.run_id} removed it and is not committed; else: {fix})"
        keep = "/".join(rel.split("/")[:2]) + "/"
        return f"{fix}  (slimmer run {journal.run_id} removed it; next time slim with --keep '{keep}')"
    return fix


def _nvcc_release(nvcc: Path) -> str:
    """'12.8' from `nvcc --version`, or '' if it does not run."""
    try:
        done = proc.run([nvcc, "--version"], timeout=60, check=False)
    except CommandError:
        return ""
    found = re.search(r"release (\d+\.\d+)", done.stdout)
    return found.group(1) if done.returncode == 0 and found else ""


def diagnose(root: Path, python: Path, *, cuda: bool = False) -> list[Finding]:
    """Check what torch.compile and cpp_extension need in the environment at `root`."""
    info = _toolchain(python)
    distro = detect_distro(root)
    conda = _conda_prefix(info)
    findings: list[Finding] = []
    include, version = info["include"], info["version"]
    header = str(Path(include) / "Python.h")
    fix = ""
    if not info["python_h"]:
        fix = removed_by_slimmer(root, Path(header), python_headers_fix(include, version, distro, conda_prefix=conda))
    findings.append(Finding("Python.h", info["python_h"], header, BREAKS_COMPILE if fix else "", fix))
    cxx = _find_compiler(root, info["cxx_env"])
    findings.append(
        Finding(
            "C++ compiler",
            cxx is not None,
            cxx or (f"CXX={info['cxx_env']}, g++, c++ on PATH" if info["cxx_env"] else "g++, c++ on PATH"),
            "" if cxx else BREAKS_COMPILE,
            "" if cxx else compiler_fix(distro, conda_prefix=conda),
        )
    )
    if cxx and info["python_h"]:
        error = _compiles(cxx, include)
        findings.append(
            Finding(
                "C++ compiler builds against Python.h",
                not error,
                error or f"{Path(cxx).name} -fsyntax-only -I{include}",
                BREAKS_COMPILE if error else "",
                python_headers_fix(include, version, distro, conda_prefix=conda) if error else "",
            )
        )
    torch_dir = info["torch_dir"]
    torch_cuda = None
    if torch_dir:
        torch_version = _version_field(info["torch_version_py"], "__version__") or ""
        torch_cuda = _version_field(info["torch_version_py"], "cuda")
        needed = Path(torch_dir) / "include/torch/csrc/inductor/cpp_prefix.h"
        ok = needed.is_file() and (Path(torch_dir) / "include/ATen/ATen.h").is_file()
        pin = f"=={torch_version.split('+')[0]}" if torch_version else ""
        findings.append(
            Finding(
                "torch include folder",
                ok,
                str(Path(torch_dir) / "include"),
                "" if ok else BREAKS_COMPILE,
                ""
                if ok
                else f"{python} -m pip install --force-reinstall --no-deps torch{pin} "
                "(and slim without the 'compile-headers' rule set)",
            )
        )
    triton_dir = info["triton_dir"]
    if triton_dir:
        folder = Path(triton_dir) / "backends/nvidia/include"
        ok = (folder / "cuda.h").is_file()
        findings.append(
            Finding(
                "Triton include folder",
                ok,
                str(folder),
                "" if ok else BREAKS_TRITON,
                "" if ok else f"{python} -m pip install --force-reinstall --no-deps triton",
            )
        )
    if cuda:
        home = info["cuda_home_env"]
        candidates = [Path(home) / "bin/nvcc"] if home else []
        which = shutil.which("nvcc", path=f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        candidates += [Path(which)] if which else []
        candidates += [root / "bin/nvcc", Path("/usr/local/cuda/bin/nvcc")]
        nvcc = next((c for c in candidates if c.is_file()), None)
        want = torch_cuda or "12.x"
        release = _nvcc_release(nvcc) if nvcc else ""
        where = f"{nvcc} (CUDA {release or '?'})" if nvcc else "CUDA_HOME/bin/nvcc, PATH, /usr/local/cuda/bin/nvcc"
        problem = ""
        if nvcc is None or not release:
            problem = BREAKS_NVCC
        elif torch_cuda and release.split(".")[0] != torch_cuda.split(".")[0]:
            # cpp_extension refuses to build when the majors differ.
            problem = f"{BREAKS_NVCC}: nvcc is CUDA {release}, torch was built with CUDA {torch_cuda}"
        findings.append(
            Finding(
                "nvcc (CUDA compiler)",
                not problem,
                where,
                problem,
                nvcc_fix(distro, want, conda_prefix=conda) if problem else "",
            )
        )
    return findings


@dataclass(frozen=True)
class LogDiagnosis:
    error: str  # InductorError, CppCompileError, ...
    missing: str  # the missing header, or "C++ compiler"
    looked_in: tuple[str, ...]
    breaks: str
    fix: str


_FATAL = re.compile(r"fatal error:\s*([\w./+-]+):\s*No such file or directory")
_INCLUDE = re.compile(r"(?:^|\s)-I\s*(\S+)")
_ERRORS = ("InductorError", "CppCompileError", "InvalidCxxCompiler", "CalledProcessError", "CompileError")


def diagnose_log(text: str, *, distro: Distro, conda_prefix: str | None = None) -> LogDiagnosis | None:  # noqa: PLR0911 - one return per known build-log failure
    """Name the missing header (or compiler) in a build log and the fix; None if the log names none."""
    error = next((e for e in _ERRORS if e in text), "compile error")
    includes = tuple(dict.fromkeys(_INCLUDE.findall(text)))
    fatal = _FATAL.search(text)
    if fatal:
        header = fatal.group(1)
        name = header.rsplit("/", 1)[-1]
        if name in ("Python.h", "pyconfig.h"):
            py_dirs = [i for i in includes if re.search(r"/include/python3\.\d+", i)]
            include = py_dirs[0] if py_dirs else ""
            version = re.search(r"python(3\.\d+)", include)
            prefix = include.split("/include/", 1)[0] if include else ""
            conda = conda_prefix or (prefix if prefix and (Path(prefix) / "conda-meta").is_dir() else None)
            fix = python_headers_fix(include, version.group(1) if version else "3", distro, conda_prefix=conda)
            return LogDiagnosis(error, header, tuple(py_dirs) or includes, BREAKS_COMPILE, fix)
        if header.split("/", 1)[0] in ("ATen", "c10", "torch", "caffe2"):
            fix = "pip install --force-reinstall --no-deps torch==<your version> (and keep torch/include when slimming)"
            return LogDiagnosis(error, header, includes, BREAKS_COMPILE, fix)
        if name.startswith(("cuda", "cuComplex", "nvrtc", "cublas")):
            return LogDiagnosis(
                error,
                header,
                includes,
                BREAKS_TRITON,
                "pip install --force-reinstall --no-deps triton (its bundled CUDA headers)",
            )
        if name == "omp.h":
            return LogDiagnosis(
                error, header, includes, BREAKS_COMPILE, compiler_fix(distro, conda_prefix=conda_prefix)
            )
        return LogDiagnosis(error, header, includes, BREAKS_COMPILE, f"install the package that provides {header}")
    if "InvalidCxxCompiler" in text or "No working C++ compiler found" in text:
        return LogDiagnosis(error, "C++ compiler", (), BREAKS_COMPILE, compiler_fix(distro, conda_prefix=conda_prefix))
    return None
