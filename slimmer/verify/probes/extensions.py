"""Load Python extension modules directly: `python -I -B extensions.py MODULE=PATH...`.

Each module's parent package is imported first (torch's `_C`, say, needs the libraries `torch`
preloads). An extension its package already loaded counts as loaded; any other is loaded with
`importlib.machinery.ExtensionFileLoader`, which is what catches an optional extension whose
package swallows its import error. One `@@slimmer` line per module, as it goes.
"""

# Runs on the checked environment's own Python (3.8 and later), so: no annotations, %-formatting.
# ruff: noqa: ANN001, ANN201, UP031

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import time
import traceback
import warnings


def report(target, ok, seconds, error="", detail=""):
    line = {"target": target, "ok": ok, "seconds": round(seconds, 3), "error": error, "detail": detail}
    sys.stdout.write("\n@@slimmer " + json.dumps(line) + "\n")
    sys.stdout.flush()


def describe(exc):
    first = (str(exc).strip().splitlines() or [""])[0]
    return "%s: %s" % (type(exc).__name__, first) if first else type(exc).__name__


def mapped(path):
    """Whether the process already mapped `path` (a package that loads its extension under another
    name, as cv2 loads cv2/cv2.abi3.so as `cv2`); False where /proc cannot tell."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as fh:
            return any(line.rstrip("\n").endswith(" " + real) for line in fh)
    except OSError:
        return False


def circular_importer(exc, fullname):
    """The module that imports back from `fullname` while `fullname` initialises (scipy's
    _matfuncs_sqrtm_triu runs `_matfuncs_sqrtm`, which imports from it): only that module can
    load it first. None if `exc` is not such a circular import."""
    if getattr(exc, "name", None) != fullname:
        return None
    found = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        name = frame.f_globals.get("__name__", "")
        python_file = frame.f_code.co_filename.endswith(".py")
        if python_file and name not in ("", "__main__", fullname) and not name.startswith("importlib"):
            found = name
        tb = tb.tb_next
    return found


def load_direct(fullname, path):
    loader = importlib.machinery.ExtensionFileLoader(fullname, path)
    spec = importlib.util.spec_from_file_location(fullname, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)


def load(fullname, path):
    parent = fullname.rpartition(".")[0]
    if parent:
        importlib.import_module(parent)
    if fullname in sys.modules or mapped(path):
        return "loaded by its package"
    try:
        load_direct(fullname, path)
    except ImportError as exc:
        importer = circular_importer(exc, fullname)
        if importer is None:
            raise
        sys.modules.pop(importer, None)
        sys.modules.pop(fullname, None)
        importlib.import_module(importer)
        if fullname not in sys.modules:
            raise
        return "loaded through %s (they import each other)" % importer
    return "loaded directly"


def main(args):
    warnings.simplefilter("ignore")
    for arg in args:
        fullname, _, path = arg.partition("=")
        start = time.monotonic()
        try:
            how = load(fullname, path)
        except BaseException as exc:
            report(arg, False, time.monotonic() - start, describe(exc), traceback.format_exc()[-4000:])
        else:
            report(arg, True, time.monotonic() - start, detail=how)


if __name__ == "__main__":
    main(sys.argv[1:])
