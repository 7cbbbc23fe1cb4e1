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
import sys
import time
import traceback
import warnings


def report(target, ok, seconds, error="", detail=""):
    line = {"target": target, "ok": ok, "seconds": round(seconds, 3), "error": error, "detail": detail}
    sys.stdout.write("@@slimmer " + json.dumps(line) + "\n")
    sys.stdout.flush()


def describe(exc):
    first = (str(exc).strip().splitlines() or [""])[0]
    return "%s: %s" % (type(exc).__name__, first) if first else type(exc).__name__


def load(fullname, path):
    parent = fullname.rpartition(".")[0]
    if parent:
        importlib.import_module(parent)
    if fullname in sys.modules:
        return "loaded by its package"
    loader = importlib.machinery.ExtensionFileLoader(fullname, path)
    spec = importlib.util.spec_from_file_location(fullname, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
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
