"""`slimmer image slim` on a real Docker engine, with images built from the debootstrapped base.

The one-stage image is what users have: Debian + python3, a venv with torch 2.13 CPU and
torch_scatter (the wheel `make scatter-env` built), then a final `RUN rm -rf` of a folder, which
frees nothing. It is cached on the engine under a tag keyed by its inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from slimmer.cli import main
from slimmer.pipeline.engine import StepLog, build_image, image_id, run_once

BASE = os.environ.get("SLIMMER_DOCKER_BASE", "slimmer-base:bookworm")
TORCH_WHEELS = Path("/opt/wheels")
CACHE = Path(os.environ.get("SLIMMER_CACHE", str(Path.home() / ".cache" / "slimmer-dev")))
SCATTER_WHEELS = CACHE / "wheels" / "torch-2.13.0"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CHECK = "import torch, torch_scatter; print(torch_scatter.scatter_max(torch.ones(4), torch.tensor([0, 0, 1, 1]))[0])"
REMOVED = "/opt/venv/lib/python3.11/site-packages/torch/include"

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ONE_STAGE = """FROM {base}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
    python3 python3-venv && rm -rf /var/lib/apt/lists/*
COPY wheels/ /wheels/
COPY ca.pem /etc/slimmer-ca.pem
RUN python3 -m venv {env} && PIP_CERT=/etc/slimmer-ca.pem {env}/bin/pip install -q --find-links /wheels \\
    torch==2.13.0 torch_scatter && rm -rf /wheels /etc/slimmer-ca.pem
RUN rm -rf {removed}
"""


def _wheels() -> list[Path]:
    torch = sorted(TORCH_WHEELS.glob("torch-2.13.0*.whl"))
    scatter = sorted(SCATTER_WHEELS.glob("torch_scatter-*.whl"))
    if not torch or not scatter:
        pytest.fail(f"need the torch 2.13.0 wheel in {TORCH_WHEELS} and torch_scatter's in {SCATTER_WHEELS}")
    return [torch[-1], scatter[-1]]


def _build(client: object, tmp: Path, dockerfile: str, name: str, extra: dict[str, Path]) -> str:
    """Build (once per set of inputs) and return the tag."""
    key = hashlib.sha256(
        (dockerfile + "".join(f"{p.name}:{p.stat().st_size}" for p in extra.values())).encode()
    ).hexdigest()[:12]  # the script's size stands for its text
    tag = f"slimmer-test-image:{name}-{key}"
    if image_id(client, tag):
        return tag
    context = tmp / f"context-{name}"
    (context / "wheels").mkdir(parents=True)
    for dest, src in extra.items():
        try:  # a hard link where it can be made; a read-only bind mount of the same device refuses it (EXDEV)
            os.link(src, context / dest)
        except OSError:
            shutil.copy(src, context / dest)
    log = StepLog(tmp / f"build-{name}.log", None)
    build_image(client, dockerfile, tag, log, label=f"test image {tag}", context=context)
    log.close()
    return tag


@pytest.fixture(scope="module")
def one_stage(docker_engine: object, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("image-slim")
    extra = {f"wheels/{w.name}": w for w in _wheels()}
    extra["ca.pem"] = HOST_CA
    dockerfile = ONE_STAGE.format(base=BASE, env="/opt/venv", removed=REMOVED)
    return _build(docker_engine, tmp, dockerfile, "one-stage", extra)


# A conda-style prefix without conda (no registry here serves conda packages): Debian's interpreter and
# standard library copied into /opt/conda/envs/py (sys.prefix is then the prefix, as with conda's
# python), packages in its lib/python3.11/site-packages, and a conda-meta record per distribution
# made from its RECORD the way conda writes them (files, paths_data with sha256 and size). No
# pyvenv.cfg: it is found as a conda prefix. Debian's site module reads lib/python3/dist-packages
# of a prefix, so one .pth there puts the prefix's site-packages on sys.path.
CONDA_ENV = "/opt/conda/envs/py"
CONDA_META = """import csv, hashlib, json, os, sys
prefix = sys.argv[1]
sp = os.path.join(prefix, "lib/python3.11/site-packages")
def record(name, version, files):
    paths = []
    for rel in files:
        with open(os.path.join(prefix, rel), "rb") as f:
            data = f.read()
        paths.append({"_path": rel, "path_type": "hardlink", "sha256": hashlib.sha256(data).hexdigest(),
                      "size_in_bytes": len(data)})
    meta = {"build": "0", "build_number": 0, "channel": "https://conda.anaconda.org/conda-forge/linux-64",
            "depends": [], "files": files, "fn": f"{name}-{version}-0.conda", "name": name,
            "paths_data": {"paths": paths, "paths_version": 1}, "version": version,
            "url": f"https://conda.anaconda.org/conda-forge/linux-64/{name}-{version}-0.conda"}
    with open(os.path.join(prefix, "conda-meta", f"{name}-{version}-0.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
record("python", "3.11", ["bin/python3.11"])
for info in sorted(os.listdir(sp)):
    if not info.endswith(".dist-info"):
        continue
    name, _, version = info[: -len(".dist-info")].rpartition("-")
    with open(os.path.join(sp, info, "RECORD"), newline="") as f:
        rows = [os.path.normpath(os.path.join("lib/python3.11/site-packages", r[0])) for r in csv.reader(f) if r]
    record(name.lower().replace("_", "-"), version, sorted(r for r in rows if os.path.isfile(os.path.join(prefix, r))))
"""
CONDA_STAGE = """FROM {base}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
    python3 python3-venv && rm -rf /var/lib/apt/lists/*
COPY wheels/ /wheels/
COPY ca.pem /etc/slimmer-ca.pem
COPY conda_meta.py /tmp/conda_meta.py
RUN P={env} && mkdir -p $P/bin $P/conda-meta $P/lib/python3/dist-packages \\
    && cp /usr/bin/python3.11 $P/bin/python3.11 && ln -s python3.11 $P/bin/python && ln -s python3.11 $P/bin/python3 \\
    && cp -a /usr/lib/python3.11 $P/lib/python3.11 && mkdir -p $P/lib/python3.11/site-packages \\
    && echo $P/lib/python3.11/site-packages > $P/lib/python3/dist-packages/conda-site.pth \\
    && python3 -m venv /tmp/pip && PIP_CERT=/etc/slimmer-ca.pem /tmp/pip/bin/pip install -q --no-compile \\
       --find-links /wheels --target $P/lib/python3.11/site-packages torch==2.13.0 torch_scatter \\
    && /tmp/pip/bin/python /tmp/conda_meta.py $P && rm -rf /tmp/pip /tmp/conda_meta.py /wheels /etc/slimmer-ca.pem
"""
CONDA_CHECK = f"""import glob, hashlib, json, os
prefix = "{CONDA_ENV}"
listed = 0
for meta in glob.glob(prefix + "/conda-meta/*.json"):
    record = json.load(open(meta))
    assert sorted(record["files"]) == sorted(p["_path"] for p in record["paths_data"]["paths"]), meta
    for p in record["paths_data"]["paths"]:
        data = open(os.path.join(prefix, p["_path"]), "rb").read()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (p["sha256"], p["size_in_bytes"]), p["_path"]
        listed += 1
print("records agree", listed)
"""


@pytest.fixture(scope="module")
def conda_image(docker_engine: object, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("image-conda")
    script = tmp / "conda_meta.py"
    script.write_text(CONDA_META)
    extra = {f"wheels/{w.name}": w for w in _wheels()}
    extra["ca.pem"] = HOST_CA
    extra["conda_meta.py"] = script
    dockerfile = CONDA_STAGE.format(base=BASE, env=CONDA_ENV)
    return _build(docker_engine, tmp, dockerfile, "conda-prefix", extra)


def _layers(client: object, tag: str) -> list[str]:
    return list(client.images.get(tag).attrs["RootFS"]["Layers"])  # type: ignore[attr-defined]


def _size(client: object, tag: str) -> int:
    return int(client.images.get(tag).attrs["Size"])  # type: ignore[attr-defined]


def _remove(client: object, *tags: str) -> None:
    for tag in tags:
        if image_id(client, tag):
            client.images.remove(tag, force=True)  # type: ignore[attr-defined]


def test_one_stage_image_slims_below_itself_keeps_the_base_and_passes_the_checks(
    docker_engine: object, one_stage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = "slimmer-test-image:slim-none"
    _remove(docker_engine, new)
    start = time.monotonic()
    # no rule at all: only the copies hidden by the final rm (and by later layers) go
    code = main(["image", "slim", one_stage, "--tag", new, "--rules", "bytecode", "--check", CHECK, "--json"])
    seconds = time.monotonic() - start
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    report = json.loads(out.out)
    try:
        before, after = _size(docker_engine, one_stage), _size(docker_engine, new)
        assert after < before - 50 * 2**20, (before, after)  # torch/include, hidden under the rm, is gone
        base = _layers(docker_engine, BASE)
        assert _layers(docker_engine, new)[: len(base)] == base  # the base layers keep their digests
        assert report["layers"][0]["rewritten"] is False
        assert any(layer["hidden"]["bytes"] > 30 * 2**20 for layer in report["layers"])
        env = report["envs"][0]
        assert env["path"] == "/opt/venv"
        assert any(c["check"].startswith("python import torch, torch_scatter") for c in env["checks_after"])
        assert all(c["status"] != "fail" for c in env["checks_after"]), env["checks_after"]
        code, output = run_once(docker_engine, new, ["/opt/venv/bin/python", "-c", CHECK])
        assert code == 0, output
        code, output = run_once(docker_engine, new, ["sh", "-c", f"test ! -e {REMOVED} && ls /opt/venv/bin/python"])
        assert code == 0, output
        print(f"one-stage: {before} -> {after} bytes in {seconds:.0f} s")
    finally:
        _remove(docker_engine, new)


def test_default_rules_then_a_round_trip_through_archives_without_an_engine(
    docker_engine: object,
    one_stage: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    new = "slimmer-test-image:slim-default"
    _remove(docker_engine, new)
    code = main(["image", "slim", one_stage, "--tag", new, "--rules", "default", "--no-compile-check", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    report = json.loads(out.out)
    try:
        env = report["envs"][0]
        assert env["removed"] > 100 * 2**20 and env["stripped"] > 0
        assert report["bytes_after"] < report["bytes_before"]
        assert report["gzip_after"] < report["gzip_before"]
        code, output = run_once(docker_engine, new, ["/opt/venv/bin/python", "-c", CHECK])
        assert code == 0, output

        # the same from an archive to an archive, with no engine at all
        saved = tmp_path / "in.tar"
        with saved.open("wb") as fh:
            for chunk in docker_engine.images.get(one_stage).save(chunk_size=1 << 20):  # type: ignore[attr-defined]
                fh.write(chunk)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
        archive = tmp_path / "out.tar"
        code = main(["image", "slim", "--from-archive", str(saved), "--to-archive", str(archive), "--json"])
        out = capsys.readouterr()
        assert code == 0, out.err[-2000:]
        offline = json.loads(out.out)
        assert offline["verified"].startswith("not verified")
        # the same rules on the same layers give the same bytes: the archive's layers are the engine run's
        assert [layer["diff_id"] for layer in offline["layers"]] == [layer["diff_id"] for layer in report["layers"]]
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert len(manifest[0]["Layers"]) == len(report["layers"])
        assert not list(tmp_path.glob(".out.tar.*"))  # no partial archive left
        monkeypatch.delenv("DOCKER_HOST")
        with archive.open("rb") as fh:
            (loaded,) = docker_engine.images.load(fh)  # type: ignore[attr-defined]
        try:
            code, output = run_once(docker_engine, loaded.id, ["/opt/venv/bin/python", "-c", CHECK])
            assert code == 0, output
        finally:
            docker_engine.images.remove(loaded.id, force=True)  # type: ignore[attr-defined]
    finally:
        _remove(docker_engine, new)


BROKEN_RULES = """# @relative-to site-packages
torch_scatter/_scatter_cpu.so
"""


def test_a_check_that_breaks_leaves_no_image_and_names_the_rule(
    docker_engine: object, one_stage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "breaks.rules"
    rules.write_text(BROKEN_RULES, encoding="utf-8")
    new = "slimmer-test-image:slim-broken"
    _remove(docker_engine, new)
    images_before = {i.id for i in docker_engine.images.list(all=True)}  # type: ignore[attr-defined]
    code = main(["image", "slim", one_stage, "--tag", new, "--rules", str(rules), "--no-pushed-size"])
    out = capsys.readouterr()
    assert code == 5, out.err[-2000:]
    assert "breaks.rules:2" in out.err and "_scatter_cpu.so" in out.err
    assert image_id(docker_engine, new) is None
    assert {i.id for i in docker_engine.images.list(all=True)} == images_before  # type: ignore[attr-defined]
    leftover = docker_engine.containers.list(all=True, filters={"ancestor": one_stage})  # type: ignore[attr-defined]
    assert not leftover


def test_a_missing_image_and_a_full_disk_are_one_line_errors(
    docker_engine: object, one_stage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["image", "slim", "slimmer-test-image:no-such-image", "--tag", "x:y"]) == 6
    err = capsys.readouterr().err
    assert "is not on the engine" in err and "Traceback" not in err
    small = tmp_path / "small"
    small.mkdir()
    if os.system(f"mount -t tmpfs -o size=64m tmpfs {small} 2>/dev/null") != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        code = main(["image", "slim", one_stage, "--tag", "slimmer-test-image:never", "--work-dir", str(small)])
        err = capsys.readouterr().err
        assert code == 8, err
        assert "--work-dir" in err and "Traceback" not in err
        assert list(small.iterdir()) == []  # nothing left behind
        assert image_id(docker_engine, "slimmer-test-image:never") is None
    finally:
        os.system(f"umount {small}")


def test_a_conda_prefix_is_found_slimmed_and_its_records_agree_with_the_disk(
    docker_engine: object,
    conda_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A conda-style prefix under /opt/conda/envs/py, found by itself (no --env): --rules default
    removes and strips in it, the checks pass in the new image with the prefix's own interpreter,
    and every conda-meta record lists only files that are there, with their new hash and size."""
    new = "slimmer-test-image:slim-conda"
    _remove(docker_engine, new)
    # a check from [tool.slimmer] in the current folder's pyproject.toml runs in both images too
    (tmp_path / "pyproject.toml").write_text(
        '[tool.slimmer]\nchecks = ["import torch_scatter, sys; print(sys.prefix)"]\n'
    )
    monkeypatch.chdir(tmp_path)
    code = main(["image", "slim", conda_image, "--tag", new, "--rules", "default", "--no-compile-check", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    report = json.loads(out.out)
    try:
        [env] = report["envs"]
        assert (env["path"], env["kind"]) == (CONDA_ENV, "conda")
        assert env["removed"] > 100 * 2**20 and env["stripped"] > 0
        assert all(c["status"] != "fail" for c in env["checks_after"]), env["checks_after"]
        from_config = [c for c in env["checks_after"] if "import torch_scatter, sys" in c["check"]]
        assert [c["status"] for c in from_config] == ["pass"], env["checks_after"]
        assert _size(docker_engine, new) < _size(docker_engine, conda_image) - 200 * 2**20
        code, output = run_once(docker_engine, new, [f"{CONDA_ENV}/bin/python", "-c", CHECK])
        assert code == 0, output
        code, output = run_once(docker_engine, new, [f"{CONDA_ENV}/bin/python", "-c", CONDA_CHECK])
        assert code == 0, output
        assert "records agree" in output
        # the input image is untouched: its records still agree with its own files
        code, output = run_once(docker_engine, conda_image, [f"{CONDA_ENV}/bin/python", "-c", CONDA_CHECK])
        assert code == 0, output
        print(f"conda prefix: {_size(docker_engine, conda_image)} -> {_size(docker_engine, new)} bytes")
    finally:
        _remove(docker_engine, new)
