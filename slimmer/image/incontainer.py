"""Run slimmer's checks inside a container, with the environment's own interpreter.

The container runs the environment's interpreter as its only process (so the image needs no
shell and no `sleep`), with no network. slimmer's check runner and probes (standard library only)
are copied into it with `put_archive`, and each request runs them as
`python -I -B -c BOOT REQUEST`, which prints one JSON line back. A work copy of an environment can
be mounted over its path (read-only), so the culprit search can try subsets of a plan without
building an image per trial.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimmer.errors import ContainerError, SlimmerError
from slimmer.verify.checks import CheckResult, Status

if TYPE_CHECKING:
    from collections.abc import Sequence

    from slimmer.verify.checks import VerifyCheck

SRC = "/.slimmer-verify"
MARK = "@@slimmer-image "
_PACKAGE = Path(__file__).resolve().parents[1]
_FILES = ("__init__.py", "errors.py", "verify/__init__.py", "verify/checks.py", "verify/runner.py")
BOOT = f"""
import json, sys
sys.path.insert(0, {SRC!r})
from pathlib import Path
from slimmer.verify import runner
from slimmer.verify.checks import CheckKind, VerifyCheck
req = json.loads(sys.argv[1])
python = Path(req["python"])
try:
    if req["what"] == "inventory":
        out = {{"ok": runner.inventory(python)}}
    else:
        checks = [VerifyCheck(CheckKind(k), t, g, o, s) for k, t, g, o, s in req["checks"]]
        res = runner.run_checks(Path(req["root"]), python, checks)
        out = {{"ok": [[r.status.value, r.seconds, r.error, r.detail] for r in res]}}
except Exception as exc:
    out = {{"error": str(exc)}}
print({MARK!r} + json.dumps(out), flush=True)
"""


def _sources() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        names = [*_FILES, *(f"verify/probes/{p.name}" for p in sorted((_PACKAGE / "verify" / "probes").glob("*.py")))]
        for name in names:
            data = (_PACKAGE / name).read_bytes()
            info = tarfile.TarInfo(f"{SRC.lstrip('/')}/slimmer/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class CheckBox:
    """A container of `image` that runs checks for the environment at `env` (an image path)."""

    def __init__(
        self, client: Any, image: str, env: str, python: str, *, mount: Path | None = None, gpus: bool = False
    ) -> None:
        self.client = client
        self.image = image
        self.env = "/" + env.strip("/")
        self.python = python
        self.mount = mount
        self.gpus = gpus
        self.container: Any = None

    def __enter__(self) -> CheckBox:
        from slimmer.pipeline.engine import gpu_request

        kwargs = gpu_request(self.gpus) or {"network_disabled": True}
        if self.mount is not None:
            kwargs["volumes"] = {str(self.mount): {"bind": self.env, "mode": "ro"}}
        from docker.errors import DockerException

        try:
            self.container = self.client.containers.run(
                self.image,
                entrypoint=[self.python, "-c", "import time\nwhile True: time.sleep(3600)"],
                command=[],
                user="0",
                detach=True,
                **kwargs,
            )
            self.container.put_archive("/", _sources())
        except DockerException as exc:
            self.__exit__()
            msg = f"cannot start a check container of {self.image[:19]}: {' '.join(str(exc).split())[:300]}"
            raise ContainerError(msg) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):  # best effort: the engine reaps what is left
                self.container.remove(force=True)
            self.container = None

    def _ask(self, request: dict[str, Any]) -> Any:
        request = {**request, "python": self.python, "root": self.env}
        code, out = self.container.exec_run([self.python, "-I", "-B", "-c", BOOT, json.dumps(request)], user="0")
        text = out.decode("utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith(MARK):
                reply = json.loads(line[len(MARK) :])
                if "error" in reply:
                    raise ContainerError(f"in {self.image[:19]}: {reply['error']}")
                return reply["ok"]
        last = (text.strip().splitlines() or ["no output"])[-1]
        msg = f"{self.python} in {self.image[:19]} did not run slimmer's checks (exit {code}): {last}"
        raise ContainerError(msg)

    def inventory(self) -> dict[str, Any]:
        return dict(self._ask({"what": "inventory"}))

    def run(self, checks: Sequence[VerifyCheck]) -> list[CheckResult]:
        wire = [[c.kind.value, c.target, c.group, c.timeout, c.skip_reason] for c in checks]
        results = self._ask({"what": "checks", "checks": wire})
        return [
            CheckResult(check, Status(status), float(seconds), error, detail)
            for check, (status, seconds, error, detail) in zip(checks, results)
        ]


def python_of(tree_has: Any, env: str) -> str:
    """The interpreter of the environment at `env`: bin/python3, else bin/python (an image path)."""
    for name in ("bin/python3", "bin/python"):
        if tree_has(f"{env}/{name}"):
            return f"/{env}/{name}"
    msg = f"/{env} has no bin/python3 or bin/python: cannot run its checks (use --no-verify)"
    raise SlimmerError(msg)
