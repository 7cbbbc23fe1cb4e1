"""Compile a small function with `torch.compile` and compare it with eager mode: `compile.py`.

This is what run-time compilation needs end to end: Inductor generates C++ (or Triton on a GPU),
includes `Python.h` and torch's headers, and calls the C++ compiler. The caller points
TORCHINDUCTOR_CACHE_DIR at an empty folder, so nothing cached hides a missing header.
"""

# Runs on the checked environment's own Python (3.8 and later), so: no annotations, %-formatting.
# ruff: noqa: ANN001, ANN201, ANN202, UP031

from __future__ import annotations

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
    text = str(exc).strip()
    lines = text.splitlines() or [""]
    # Inductor's message starts with a generic line; the compiler's own error says what is missing.
    fatal = [ln.strip() for ln in lines if "fatal error:" in ln or ("error:" in ln.lower() and ".h" in ln)]
    first = fatal[0] if fatal else lines[0]
    return "%s: %s" % (type(exc).__name__, first) if first else type(exc).__name__


def main():
    warnings.simplefilter("ignore")
    start = time.monotonic()
    device = "cpu"
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

        def f(a):
            return torch.sin(a) * 2 + a

        x = torch.linspace(0, 1, 64, device=device)
        got = torch.compile(f)(x)
        if not torch.allclose(got, f(x), atol=1e-6):
            raise AssertionError("torch.compile result differs from eager mode")
    except BaseException as exc:
        detail = "device %s\n%s" % (device, traceback.format_exc()[-6000:])
        report("torch.compile", False, time.monotonic() - start, describe(exc), detail)
    else:
        report("torch.compile", True, time.monotonic() - start, detail="device %s" % device)


if __name__ == "__main__":
    main()
