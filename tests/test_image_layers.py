"""`slimmer image`: bytes of a layer that later layers delete (whiteouts) or overwrite still ship."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from slimmer.cli import main
from slimmer.pipeline.layers import analyse_archive


def _tar(entries: dict[str, bytes | None]) -> bytes:
    """A layer tar: bytes for a file, None for a folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _save(layers: list[dict[str, bytes | None]], created_by: list[str]) -> io.BytesIO:
    """A `docker save` archive with these layers (the format the engine writes)."""
    files = {f"l{i}/layer.tar": _tar(layer) for i, layer in enumerate(layers)}
    config = {"history": [{"created_by": c} for c in created_by]}
    files["cfg.json"] = json.dumps(config).encode()
    files["manifest.json"] = json.dumps(
        [{"Config": "cfg.json", "RepoTags": ["t:1"], "Layers": [f"l{i}/layer.tar" for i in range(len(layers))]}]
    ).encode()
    return io.BytesIO(_tar(files))


def test_deleted_overwritten_and_opaque_folders_are_counted_against_the_layer_that_shipped_them() -> None:
    archive = _save(
        [
            {
                "opt/": None,
                "opt/env/": None,
                "opt/env/big.so": b"x" * 1000,
                "opt/env/keep.py": b"k" * 10,
                "cache/": None,
                "cache/a": b"a" * 300,
                "cache/sub/": None,
                "cache/sub/b": b"b" * 200,
            },
            {"./opt/env/.wh.big.so": b"", "./etc/": None, "./etc/conf": b"c" * 50},
            {"etc/conf": b"C" * 60, "cache/.wh..wh..opq": b"", "cache/new": b"n" * 5},
        ],
        ["RUN pip install", "RUN rm big.so", "RUN chmod etc/conf && rm -rf /cache/*"],
    )
    report = analyse_archive(archive, "t:1")
    first, second, third = report.layers
    assert first.size == 1510 and second.size == 50 and third.size == 65
    assert first.wasted == 1500  # big.so (hidden by layer 1) + cache/a and cache/sub/b (opaque in layer 2)
    assert {(p, n, later) for p, n, later in first.top_waste} == {
        ("/opt/env/big.so", 1000, 1),
        ("/cache/a", 300, 2),
        ("/cache/sub/b", 200, 2),
    }
    assert second.wasted == 50 and second.top_waste == (("/etc/conf", 50, 2),)
    assert third.wasted == 0
    assert second.whiteouts == 1
    assert report.wasted == 1550 and report.total == 1625
    assert any("layer 1 (RUN rm big.so) hides files" in a and "COPY --from" in a for a in report.advice)


def test_an_image_without_waste_says_so() -> None:
    report = analyse_archive(_save([{"a": b"1"}, {"b": b"2"}], ["ADD a", "ADD b"]))
    assert report.wasted == 0
    assert report.advice == ("no layer hides bytes of an earlier one: nothing to gain by squashing",)


@pytest.mark.docker
def test_slimmer_image_on_a_real_image_finds_the_bytes_a_later_rm_did_not_free(
    docker_engine: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from slimmer.pipeline.engine import StepLog, build_image
    from tests.test_pipeline_docker import BASE

    tag = "slimmer-test:wasted-layers"
    dockerfile = (
        f"FROM {BASE}\n"
        "RUN head -c 3000000 /dev/urandom > /blob && head -c 1000 /dev/urandom > /small\n"
        "RUN rm /blob\n"
        "RUN chmod 600 /small\n"
    )
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        log = StepLog(Path(tmp) / "log", None)
        build_image(docker_engine, dockerfile, tag, log, label="wasted-layers image")
        log.close()
    try:
        assert main(["image", tag, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        layers = data["layers"]
        blob_layer = next(layer for layer in layers if "urandom" in layer["created_by"])
        assert blob_layer["wasted"] == 3000000 + 1000  # /blob deleted later, /small rewritten by chmod
        assert {w["path"] for w in blob_layer["wasted_by"]} == {"/blob", "/small"}
        assert any("hides files of earlier layers" in a for a in data["advice"])
        assert any("rewrites files of earlier layers" in a for a in data["advice"])
        assert main(["image", tag]) == 0
        text = capsys.readouterr().out
        assert "Wasted: 2.9 MiB" in text and "/blob" in text
    finally:
        docker_engine.images.remove(tag, force=True)  # type: ignore[attr-defined]


@pytest.mark.docker
def test_image_of_a_missing_image_is_one_line(docker_engine: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "slimmer-test:no-such-image"]) == 6
    assert "is not on the engine" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("archive", "why"),
    [
        (io.BytesIO(b"not a tar at all"), "not a readable `docker save` archive"),
        (io.BytesIO(_tar({"manifest.json": b"{broken"})), "Expecting property name"),
        (io.BytesIO(_tar({"manifest.json": b"[{}]"})), "missing 'Config'"),
        (io.BytesIO(_tar({"manifest.json": b'[{"Config": "d", "Layers": []}]', "d/": None})), "is not a file"),
    ],
)
def test_a_damaged_archive_is_a_one_line_usage_error_not_a_traceback(archive: io.BytesIO, why: str) -> None:
    from slimmer.errors import UsageError

    with pytest.raises(UsageError, match=why) as info:
        analyse_archive(archive, "t:1")
    assert str(info.value).startswith("t:1: not a readable `docker save` archive") and "\n" not in str(info.value)
