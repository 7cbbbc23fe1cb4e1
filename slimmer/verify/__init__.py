"""Verify an environment: run checks with its own interpreter, undo what broke them, diagnose compilation.

- `runner`: find the interpreter, list the checks (imports, extension modules, op checks,
  torch.compile, user checks) and run them in subprocesses with timeouts.
- `rollback`: `apply --verify`, checks before and after the staged changes, the culprit search.
- `doctor`: what run-time compilation needs, and the fix for what is missing.
- `probes/`: the scripts the environment's interpreter runs.
"""
