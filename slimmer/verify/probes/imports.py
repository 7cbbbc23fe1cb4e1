"""Import each module named on the command line and report each one: `python -I -B imports.py MOD...`.

Prints one `@@slimmer {"target": MOD, "ok": ..., "error": ...}` line per module, as it goes, so a
crash names the module that caused it.
"""

# Runs on the checked environment's own Python (3.8 and later), so: no annotations, %-formatting.
# ruff: noqa: ANN001, ANN201, UP031

from __future__ import annotations

import importlib
import json
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


def main(names):
    warnings.simplefilter("ignore")
    for name in names:
        start = time.monotonic()
        try:
            importlib.import_module(name)
        except BaseException as exc:  # SystemExit from a module counts as a failure too
            report(name, False, time.monotonic() - start, describe(exc), traceback.format_exc()[-4000:])
        else:
            report(name, True, time.monotonic() - start)


if __name__ == "__main__":
    main(sys.argv[1:])
