"""Report what run-time compilation would use in this environment: `python -I -B toolchain.py`.

Reads sysconfig and package locations only; imports neither torch nor triton (a broken torch must
not hide a missing header). Prints one `@@slimmer` line.
"""

# Runs on the checked environment's own Python (3.8 and later), so: no annotations, %-formatting.
# ruff: noqa: ANN001, ANN201, UP031, RUF015

from __future__ import annotations

import importlib.util
import json
import os
import sys
import sysconfig


def package_dir(name):
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def read(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def main():
    include = sysconfig.get_paths().get("include") or ""
    torch_dir = package_dir("torch")
    triton_dir = package_dir("triton")
    info = {
        "python": sys.executable,
        "version": "%d.%d.%d" % sys.version_info[:3],
        "prefix": sys.prefix,
        "base_prefix": getattr(sys, "base_prefix", sys.prefix),
        "include": include,
        "python_h": os.path.isfile(os.path.join(include, "Python.h")),
        "torch_dir": torch_dir,
        "torch_version_py": read(os.path.join(torch_dir, "version.py")) if torch_dir else "",
        "triton_dir": triton_dir,
        "cxx_env": os.environ.get("CXX", ""),
        "cuda_home_env": os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "",
    }
    sys.stdout.write("\n@@slimmer " + json.dumps(info) + "\n")


if __name__ == "__main__":
    main()
