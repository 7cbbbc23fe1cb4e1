"""The Docker engine, through the docker SDK: connect, run steps in a container, build small images, sizes.

Imports `docker` lazily (so `slimmer --help` stays instant) and honours DOCKER_HOST. Every step's
output goes to one log file; a failed step raises `BuildError` with its last lines and the log's path.
Containers are always force-removed.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tarfile
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from slimmer.errors import BuildError, EngineError, ImageMissingError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

START_HINT = (
    "start one with `sudo dockerd &` (or `make docker`, which runs fixtures/docker_setup.sh), "
    "or point DOCKER_HOST at a running engine"
)


def connect(timeout: float = 600) -> Any:
    """A docker client that answered a ping; EngineError (one line, how to start one) otherwise."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # pragma: no cover - docker is a dependency
        raise EngineError("the 'docker' Python package is missing: pip install docker") from exc
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if where.startswith("unix://") and not _unix_socket_answers(where[len("unix://") :]):
        # Checked here first: docker-py leaks its socket when the connect in its constructor fails.
        raise EngineError(f"no Docker engine answers at {where}: {START_HINT}")
    client = None
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except DockerException as exc:
        if client is not None:
            client.close()
        raise EngineError(f"no Docker engine answers at {where}: {START_HINT}") from exc
    return client


def _unix_socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def split_tag(name: str) -> tuple[str, str]:
    """(repository, tag) of an image name; "latest" when it names no tag (the ":" of "host:5000/img" is
    a registry port, not a tag)."""
    if ":" in name.rsplit("/", 1)[-1]:
        repo, _, tag = name.rpartition(":")
        return repo, tag
    return name, "latest"


def engine_resources(client: Any) -> tuple[int, int]:
    """(CPUs, bytes of memory) of the engine's machine, which builds the extensions."""
    info = client.info()
    return int(info.get("NCPU") or os.cpu_count() or 1), int(info.get("MemTotal") or 0)


def max_jobs_for(cpus: int, mem_bytes: int, per_job: int = 3 << 30) -> int:
    """Parallel compile jobs: one per CPU, but at most one per 3 GiB so cc1plus is not killed."""
    by_memory = mem_bytes // per_job if mem_bytes else cpus
    return max(1, min(cpus, by_memory))


def gpu_request(gpus: bool) -> dict[str, Any]:
    """The `containers.run` arguments that pass every GPU through (none when `gpus` is false)."""
    if not gpus:
        return {}
    from docker.types import DeviceRequest

    return {"device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])]}


def has_gpus(client: Any) -> bool:
    """The engine knows the nvidia runtime (so `--gpus` works there)."""
    runtimes = client.info().get("Runtimes") or {}
    return "nvidia" in runtimes


def image_id(client: Any, name: str) -> str | None:
    from docker.errors import ImageNotFound

    try:
        return str(client.images.get(name).id)
    except ImageNotFound:
        return None


def require_image(client: Any, name: str, role: str) -> str:
    found = image_id(client, name)
    if found is None:
        raise ImageMissingError(
            f"the {role} base image {name!r} is not on the engine: no registry is used; "
            "make it with `make docker` (debootstrap + docker import) or `docker pull`/`docker import` it"
        )
    return found


def image_size(client: Any, name: str) -> int:
    return int(client.images.get(name).attrs["Size"])


class StepLog:
    """Writes every line to the log file; on a terminal shows one live status line per step."""

    def __init__(self, path: Path, stream: TextIO | None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8", errors="replace")
        self.stream = stream
        self.tty = bool(stream and stream.isatty())
        self._label = ""
        self._last_draw = 0.0
        self.tail: deque[str] = deque(maxlen=25)

    def step(self, label: str) -> None:
        self._label = label
        self.tail.clear()
        self._fh.write(f"\n==== {time.strftime('%H:%M:%S')} {label}\n")
        self._fh.flush()
        if self.stream:
            self.stream.write(f"\r\x1b[K{label}\n" if self.tty else f"{label}\n")
            self.stream.flush()

    def line(self, text: str) -> None:
        text = text.rstrip("\r\n")
        self._fh.write(text + "\n")
        self.tail.append(text)
        if self.tty and self.stream:
            now = time.monotonic()
            if now - self._last_draw > 0.1:
                self._last_draw = now
                short = text.replace("\r", " ")[-100:]
                self.stream.write(f"\r\x1b[K  | {short}")
                self.stream.flush()

    def end_step(self) -> None:
        self._fh.flush()
        if self.tty and self.stream:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        self.end_step()
        self._fh.close()

    def failure(self, what: str) -> BuildError:
        last = " | ".join(line.strip() for line in list(self.tail)[-5:] if line.strip())
        return BuildError(f"{what} failed: {last or 'no output'} (full log: {self.path})")


@dataclass(frozen=True)
class Mount:
    host: str
    target: str
    read_only: bool = False


class Container:
    """A long-lived container (`sleep infinity`) that runs steps with `call()`; removed on exit."""

    def __init__(
        self,
        client: Any,
        image: str,
        log: StepLog,
        *,
        mounts: Sequence[Mount] = (),
        environment: Mapping[str, str] | None = None,
        gpus: bool = False,
    ) -> None:
        self.client = client
        self.image = image
        self.log = log
        self.mounts = mounts
        self.environment = dict(environment or {})
        self.gpus = gpus
        self.container: Any = None

    def __enter__(self) -> Container:
        # The low-level API, binds in the host config only: `containers.run(volumes=...)` also declares
        # each target as a VOLUME in the container's config, which `commit` then bakes into the image
        # (every later container of it gets anonymous volumes, and a later build that writes a file
        # there fails with "cannot mount volume over existing file").
        api = self.client.api
        host_config = api.create_host_config(
            binds={m.host: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in self.mounts},
            **gpu_request(self.gpus),
        )
        created = api.create_container(
            self.image, ["sleep", "infinity"], environment=self.environment, host_config=host_config, detach=True
        )
        self.container = self.client.containers.get(created["Id"])
        try:
            self.container.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except Exception:
                self.log.line(f"could not remove container {self.container.id[:12]}")

    def call(self, script: str, *, label: str, env: Mapping[str, str] | None = None, check: bool = True) -> int:
        """Run SCRIPT with bash -e; stream its output to the log; BuildError on failure when CHECK."""
        api = self.client.api
        exec_id = api.exec_create(
            self.container.id, ["bash", "-ec", script], environment=dict(env or {}), stdout=True, stderr=True
        )["Id"]
        self.log.step(label)
        output = api.exec_start(exec_id, stream=True)
        try:
            for line in _lines(output):
                self.log.line(line)
        finally:
            _close_stream(output)
        code = int(api.exec_inspect(exec_id)["ExitCode"] or 0)
        self.log.end_step()
        if code and check:
            raise self.log.failure(label)
        return code

    def commit(self, name: str, changes: Sequence[str] = ()) -> str:
        repo, tag = split_tag(name)
        image = self.container.commit(repository=repo, tag=tag, changes=list(changes))
        return str(image.id)


def _close_stream(stream: Any) -> None:
    """Close an exec stream and the socket file under it (docker-py's close() leaves that one open)."""
    raw = None
    with contextlib.suppress(AttributeError):
        raw = stream._response.raw._fp.fp.raw
    stream.close()
    if raw is not None:
        raw.close()


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def build_image(
    client: Any,
    dockerfile: str,
    tag: str,
    log: StepLog,
    *,
    label: str,
    context: Path | None = None,
    nocache: bool = False,
) -> str:
    """Build DOCKERFILE (with the classic builder, which the SDK speaks) as TAG; return the image id."""
    from docker.errors import APIError
    from docker.errors import BuildError as DockerBuildError

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if context is not None:
            tar.add(str(context), arcname=".")
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile.slimmer")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    log.step(label)
    try:
        stream = client.api.build(
            fileobj=buf,
            custom_context=True,
            dockerfile="Dockerfile.slimmer",
            tag=tag,
            rm=True,
            forcerm=True,
            nocache=nocache,
            decode=True,
        )
        for item in stream:
            if "stream" in item:
                for line in str(item["stream"]).splitlines():
                    log.line(line)
            if "error" in item:
                log.line(str(item["error"]))
                raise log.failure(label)
    except (APIError, DockerBuildError) as exc:
        log.line(str(exc))
        raise log.failure(label) from exc
    log.end_step()
    return str(client.images.get(tag).id)


def run_once(client: Any, image: str, command: Sequence[str], *, gpus: bool = False) -> tuple[int, str]:
    """Run COMMAND in a fresh container of IMAGE; (exit code, output). The container is removed."""
    container = client.containers.run(image, list(command), detach=True, **gpu_request(gpus))
    try:
        code = int(container.wait()["StatusCode"])
        return code, container.logs(stdout=True, stderr=True).decode("utf-8", errors="replace")
    finally:
        container.remove(force=True)
