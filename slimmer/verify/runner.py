"""Find an environment's interpreter, list its checks and run them, each group in its own subprocess.

Every check runs with the environment's own interpreter as `python -I -B probes/X.py ...`: isolated
from the caller's PYTHONPATH and user site, and writing no bytecode into the environment. Cheap
checks of one distribution share a subprocess and still report one result each; a crash or a
timeout is blamed on the check that was running and the rest of its group runs again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from slimmer.errors import UsageError
from slimmer.verify.checks import CheckKind, CheckResult, Status, VerifyCheck, VerifyReport

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

PROBES = Path(__file__).resolve().parent / "probes"
MARK = "@@slimmer "
PROBE_FOR = {
    CheckKind.IMPORT: "imports.py",
    CheckKind.EXTENSION: "extensions.py",
    CheckKind.OP: "ops.py",
    CheckKind.COMPILE: "compile.py",
    CheckKind.PYTHON: "snippet.py",
}
# Which checks may share one subprocess: the rest run alone.
SHARED = (CheckKind.IMPORT, CheckKind.EXTENSION)
# Long checks start first so that they overlap the many short ones.
ORDER = (CheckKind.COMPILE, CheckKind.OP, CheckKind.IMPORT, CheckKind.EXTENSION, CheckKind.PYTHON, CheckKind.COMMAND)
DEFAULT_TIMEOUT = 120.0
COMPILE_TIMEOUT = 300.0
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")


def find_python(root: Path, python: str | None = None) -> Path:
    """The interpreter that runs the checks: `python` if given, else bin/python3 or bin/python under root."""
    if python is not None:
        path = Path(python).expanduser()
        if not python.strip():
            msg = "--python is empty (an unset variable?): name the environment's interpreter"
            raise UsageError(msg)
        if not (path.is_file() and os.access(path, os.X_OK)):
            msg = f"--python {python}: {_why_not_runnable(path)}"
            raise UsageError(msg)
        return path
    for name in ("bin/python3", "bin/python"):
        path = root / name
        if path.is_file() and os.access(path, os.X_OK):
            return path
    for name in ("bin/python3", "bin/python"):
        path = root / name
        if path.is_symlink() or path.exists():  # there, but not runnable: say why, not "has no"
            msg = f"{path}: {_why_not_runnable(path)}: name a working interpreter with --python"
            raise UsageError(msg)
    msg = f"{root} has no bin/python3 or bin/python: name the environment's interpreter with --python"
    raise UsageError(msg)


def _why_not_runnable(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return (
            f"a symbolic link to {os.readlink(path)}, which does not exist (the interpreter it was made with is gone?)"
        )
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a folder, not an interpreter"
    if not path.is_file():
        return "is not a regular file"
    return "is not executable"


def _environ(root: Path, scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # An empty cache per run: a cached kernel would hide a missing header or compiler.
    env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")
    env["TRITON_CACHE_DIR"] = str(scratch / "triton")
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    return env


def probe_report(python: Path, probe: str, what: str, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Run `probes/<probe>` with the environment's interpreter and return the JSON it reports;
    a one-line UsageError saying it cannot `what` when the interpreter does not answer. On a
    timeout the probe's whole process group is killed: nothing it started lives on."""
    argv = [str(python), "-I", "-B", str(PROBES / probe)]
    try:
        rc, out, err, timed_out = _spawn(argv, None, None, timeout)
    except OSError as exc:
        msg = f"cannot run {python}: {exc.strerror or exc}"
        raise UsageError(msg) from None
    if timed_out:
        msg = f"{python} {what}: no answer in {timeout:.0f} s (raise --check-timeout if it is slow)"
        raise UsageError(msg)
    for line in out.splitlines():
        if line.startswith(MARK):
            try:
                return json.loads(line[len(MARK) :])  # type: ignore[no-any-return]
            except json.JSONDecodeError:
                break  # a garbled report: say what the interpreter printed on stderr
    last = (err.strip().splitlines() or [f"exited with {rc} and no output"])[-1]
    msg = f"{python} {what}: {last}"
    raise UsageError(msg)


def inventory(python: Path, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """What the environment holds, as its interpreter sees it (see probes/inventory.py)."""
    return probe_report(python, "inventory.py", "cannot list its distributions", timeout=timeout)


def discover(
    inv: dict[str, Any],
    *,
    compile_check: bool = True,
    extra: Iterable[VerifyCheck] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> list[VerifyCheck]:
    """The checks for an inventory: imports, extensions, op checks, torch.compile, then `extra`."""
    checks: list[VerifyCheck] = []
    has_torch = False
    imported: set[str] = set()  # a namespace package (nvidia, say) that many distributions share: once
    for dist in inv["dists"]:
        group = dist["name"]
        for module in dist["modules"]:
            if module not in imported:
                imported.add(module)
                checks.append(VerifyCheck(CheckKind.IMPORT, module, group, timeout))
        checks.extend(VerifyCheck(CheckKind.IMPORT, m, group, skip_reason=why) for m, why in dist["skipped"].items())
        checks.extend(
            VerifyCheck(CheckKind.EXTENSION, f"{e['module']}={e['path']}", group, timeout) for e in dist["extensions"]
        )
        if dist["op_library"]:
            checks.append(VerifyCheck(CheckKind.OP, dist["op_library"], dist["op_library"], timeout))
            has_torch = has_torch or dist["op_library"] == "torch"
    if compile_check and has_torch:
        checks.append(VerifyCheck(CheckKind.COMPILE, "torch.compile", "compile", max(timeout, COMPILE_TIMEOUT)))
    checks.extend(extra)
    return checks


def _groups(checks: Sequence[VerifyCheck]) -> list[list[VerifyCheck]]:
    shared: dict[tuple[CheckKind, str], list[VerifyCheck]] = {}
    alone: list[list[VerifyCheck]] = []
    for check in checks:
        if check.skip_reason:
            continue
        if check.kind in SHARED:
            shared.setdefault((check.kind, check.group), []).append(check)
        else:
            alone.append([check])
    groups = list(shared.values()) + alone
    return sorted(groups, key=lambda g: ORDER.index(g[0].kind))


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")


def _last_line(text: str) -> str:
    return next((ln.strip() for ln in reversed(text.strip().splitlines()) if ln.strip()), "")


def _died(proc_rc: int | None, stderr: str, timeout: float | None) -> str:
    if timeout is not None:
        return f"timed out after {timeout:.0f} s"
    if proc_rc is not None and proc_rc < 0:
        try:
            name = signal.Signals(-proc_rc).name
        except ValueError:
            name = f"signal {-proc_rc}"
        why = f"crashed ({name})"
    else:
        why = f"exited with {proc_rc} before reporting"
    last = _last_line(stderr)
    return f"{why}: {last}" if last else why


# What a check's output may cost: the report lines (MARK) are kept, of the rest only the tail.
OUTPUT_TAIL = 64 << 10
_MAX_REPORT_LINE = 16 << 20


class _Capture:
    """Reads a pipe to its end in a thread, keeping report lines and the last OUTPUT_TAIL bytes of
    the rest, so a check that prints 600 MB costs this process 64 KiB, not 600 MB."""

    def __init__(self, pipe: IO[bytes], *, keep_reports: bool) -> None:
        self._pipe = pipe
        self._keep = keep_reports
        self.reports: list[bytes] = []
        self._tail = bytearray()
        self._line = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        mark = MARK.encode()
        while chunk := self._pipe.read1(1 << 16):  # type: ignore[attr-defined]
            self._tail += chunk
            if len(self._tail) > 2 * OUTPUT_TAIL:
                del self._tail[:-OUTPUT_TAIL]
            if not self._keep:
                continue
            *done, rest = chunk.split(b"\n")
            for piece in done:
                self._line += piece
                if self._line.startswith(mark):
                    self.reports.append(bytes(self._line))
                self._line.clear()
            self._line += rest
            if len(self._line) > _MAX_REPORT_LINE:  # no report is this long: drop it
                self._line = bytearray(b"x")
        if self._line.startswith(mark):
            self.reports.append(bytes(self._line))
        self._pipe.close()

    def tail(self) -> str:
        self._thread.join()
        return bytes(self._tail[-OUTPUT_TAIL:]).decode("utf-8", "replace")


def _spawn(
    argv: list[str], env: dict[str, str] | None, cwd: Path | None, timeout: float
) -> tuple[int | None, str, str, bool]:
    """Run argv in its own process group; kill the whole group on timeout and when it ends, so no
    child it started lives on. Returns (rc, stdout, stderr tail, timed out): stdout holds the
    report lines of a probe, or the tail of a command's output (`-c` of /bin/sh)."""
    probe = argv[0] != "/bin/sh"
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = _Capture(proc.stdout, keep_reports=probe)
    err = _Capture(proc.stderr, keep_reports=False)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group: what the check left running goes too
        proc.wait()
    stdout = "\n".join(r.decode("utf-8", "replace") for r in _joined(out)) if probe else out.tail()
    return proc.returncode, stdout, err.tail(), timed_out


def _joined(capture: _Capture) -> list[bytes]:
    capture.tail()  # waits for the reader
    return capture.reports


def _run_command(check: VerifyCheck, env: dict[str, str], cwd: Path) -> CheckResult:
    start = time.monotonic()
    rc, out, err, timed_out = _spawn(["/bin/sh", "-c", check.target], env, cwd, check.timeout)
    seconds = time.monotonic() - start
    if timed_out:
        return CheckResult(check, Status.FAIL, seconds, f"timed out after {check.timeout:.0f} s", err[-4000:])
    if rc != 0:
        error = f"exit {rc}: {_last_line(err) or _last_line(out)}".rstrip(": ")
        return CheckResult(check, Status.FAIL, seconds, error, (out + err)[-4000:])
    return CheckResult(check, Status.PASS, seconds)


def _run_group(python: Path, group: list[VerifyCheck], env: dict[str, str], cwd: Path) -> list[CheckResult]:
    if group[0].kind is CheckKind.COMMAND:
        return [_run_command(group[0], env, cwd)]
    results: dict[str, CheckResult] = {}
    pending = list(group)
    while pending:
        timeout = max(c.timeout for c in pending)
        argv = [str(python), "-I", "-B", str(PROBES / PROBE_FOR[pending[0].kind]), *(c.target for c in pending)]
        start = time.monotonic()
        rc, out, err, timed_out = _spawn(argv, env, cwd, timeout)
        by_target = {c.target: c for c in pending}
        for line in out.splitlines():
            if not line.startswith(MARK):
                continue
            try:
                data = json.loads(line[len(MARK) :])
            except json.JSONDecodeError:
                continue  # a garbled line: the check it was for is blamed below like a crash
            check = by_target.get(data["target"])
            if check is not None:
                status = Status.PASS if data["ok"] else Status.FAIL
                results[check.target] = CheckResult(check, status, data["seconds"], data["error"], data["detail"])
        pending = [c for c in pending if c.target not in results]
        if pending:  # the process died in the middle of pending[0]
            blamed = pending.pop(0)
            error = _died(rc, err, timeout if timed_out else None)
            results[blamed.target] = CheckResult(blamed, Status.FAIL, time.monotonic() - start, error, err[-4000:])
    return [results[c.target] for c in group]


def run_checks(root: Path, python: Path, checks: Sequence[VerifyCheck], *, jobs: int = 0) -> list[CheckResult]:
    """Run `checks` in parallel subprocesses; one result per check, in the order given."""
    jobs = jobs or min(4, os.cpu_count() or 1)
    by_check: dict[VerifyCheck, CheckResult] = {
        c: CheckResult(c, Status.SKIP, 0.0, c.skip_reason) for c in checks if c.skip_reason
    }
    with tempfile.TemporaryDirectory(prefix="slimmer-verify-") as scratch_dir:
        scratch = Path(scratch_dir)
        env = _environ(root, scratch)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for results in pool.map(lambda g: _run_group(python, g, env, scratch), _groups(checks)):
                by_check.update((r.check, r) for r in results)
    return [by_check[c] for c in checks]


def verify(
    root: Path,
    *,
    python: str | None = None,
    compile_check: bool = True,
    extra: Iterable[VerifyCheck] = (),
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = 0,
) -> VerifyReport:
    """List and run every check for the environment at `root`."""
    start = time.monotonic()
    interpreter = find_python(root, python)
    inv = inventory(interpreter, timeout=timeout)
    checks = discover(inv, compile_check=compile_check, extra=extra, timeout=timeout)
    results = optional_dependencies(inv, run_checks(root, interpreter, checks, jobs=jobs), root)
    return VerifyReport(str(interpreter), inv["version"], tuple(results), time.monotonic() - start)


_NO_MODULE = re.compile(r"^ModuleNotFoundError: No module named '([A-Za-z_][A-Za-z0-9_]*)")


def optional_dependencies(inv: dict[str, Any], results: list[CheckResult], root: Path) -> list[CheckResult]:
    """An import that fails only because it needs a module that no installed distribution provides
    and that is not in the standard library (cuda.bindings' extensions need numpy, an optional
    dependency) is a skip, not a failure: slimming did not cause it and cannot fix it. So is one
    that needs a standard-library module the interpreter was built or packaged without (Debian's
    python3 without python3-tk has no tkinter, which pillow's _imagingtk imports), when that
    standard library lies outside ROOT (a venv's base interpreter), where slimming never reaches.
    A module that some distribution of the inventory still claims (its files removed) stays a
    failure, and so does a standard-library module of an interpreter inside ROOT (a conda prefix)."""
    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib is None:  # Python 3.9: no list of the standard library, so no way to tell
        return results
    stdlib_dir = str(inv.get("stdlib") or "")
    stdlib_outside = bool(stdlib_dir) and not _inside(Path(stdlib_dir), root)
    provided = {
        name.split(".", 1)[0]
        for d in inv["dists"]
        for name in [*d["modules"], *d["skipped"], *(e["module"] for e in d["extensions"])]
    }
    out = []
    for r in results:
        missing = _NO_MODULE.match(r.error) if r.status is Status.FAIL else None
        kinds = (CheckKind.IMPORT, CheckKind.EXTENSION)
        if not missing or r.check.kind not in kinds or missing[1] in provided:
            out.append(r)
        elif missing[1] not in stdlib:
            why = f"needs {missing[1]}, which no installed distribution provides (an optional dependency)"
            out.append(CheckResult(r.check, Status.SKIP, r.seconds, why, r.detail))
        elif stdlib_outside:
            why = f"needs {missing[1]}, which this interpreter's standard library ({stdlib_dir}, outside ROOT) lacks"
            out.append(CheckResult(r.check, Status.SKIP, r.seconds, why, r.detail))
        else:
            out.append(r)
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (OSError, ValueError):
        return False
    return True
