"""Run a user's Python snippet: `snippet.py CODE`. Reports one `@@slimmer` line."""

# Runs on the checked environment's own Python (3.8 and later), so: no annotations, %-formatting.
# ruff: noqa: ANN001, ANN201, UP031

from __future__ import annotations

import json
import sys
import time
import traceback


def report(target, ok, seconds, error="", detail=""):
    line = {"target": target, "ok": ok, "seconds": round(seconds, 3), "error": error, "detail": detail}
    sys.stdout.write("\n@@slimmer " + json.dumps(line) + "\n")
    sys.stdout.flush()


def main(code):
    start = time.monotonic()
    try:
        exec(compile(code, "<check>", "exec"), {"__name__": "__main__"})
    except BaseException as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        error = "%s: %s" % (type(exc).__name__, first) if first else type(exc).__name__
        report(code, False, time.monotonic() - start, error, traceback.format_exc()[-4000:])
    else:
        report(code, True, time.monotonic() - start)


if __name__ == "__main__":
    main(sys.argv[1])
