"""`slimmer image slim --from-archive --to-archive`, no engine: layer tars built here, member by member.

The image: a base layer (a folder of its own, a device file, a FIFO, a file with an xattr), then a
venv layer (bytecode the default rules remove, a hard-linked pair, a symlink, files later layers
hide), then a layer that deletes a folder (whiteout), empties another (opaque) and overwrites a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import TYPE_CHECKING

import pytest

from slimmer.cli import main

if TYPE_CHECKING:
    from pathlib import Path

SITE = "opt/venv/lib/python3.11/site-packages"
BIG = b"x" * (3 << 20)


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 1_700_000_000
    info.uid = info.gid = 0
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def _dir(tar: tarfile.TarFile, name: str, **attrs: object) -> None:
    _add(tar, name, type=tarfile.DIRTYPE, mode=0o755, **attrs)


def _layer(build) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return buf.getvalue()


def base(tar: tarfile.TarFile) -> None:
    _dir(tar, "etc")
    _add(tar, "etc/motd", b"hello\n")
    _add(tar, "etc/config", b"v1\n", uid=1000, gid=1000, mode=0o600, pax_headers={"SCHILY.xattr.user.tag": "kept"})
    _dir(tar, "dev")
    _add(tar, "dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
    _add(tar, "dev/pipe", type=tarfile.FIFOTYPE)


def venv(tar: tarfile.TarFile) -> None:
    for folder in ("opt", "opt/venv", "opt/venv/bin", "opt/venv/lib", "opt/venv/lib/python3.11", SITE):
        _dir(tar, folder)
    _add(tar, "opt/venv/pyvenv.cfg", b"home = /usr/bin\n")
    _add(tar, "opt/venv/bin/python3", type=tarfile.SYMTYPE, linkname="/usr/bin/python3")
    _dir(tar, f"{SITE}/pkg")
    _add(tar, f"{SITE}/pkg/__init__.py", b"VALUE = 1\n")
    _dir(tar, f"{SITE}/pkg/__pycache__")
    _add(tar, f"{SITE}/pkg/__pycache__/__init__.cpython-311.pyc", b"\0" * 4096)
    _add(tar, f"{SITE}/pkg/data.bin", BIG, mode=0o640, uid=1000, gid=100)
    _add(tar, f"{SITE}/pkg/data-link.bin", type=tarfile.LNKTYPE, linkname=f"{SITE}/pkg/data.bin")
    _dir(tar, f"{SITE}/pkg/bulky")
    _add(tar, f"{SITE}/pkg/bulky/a.bin", BIG)
    _dir(tar, f"{SITE}/pkg/cache")
    _add(tar, f"{SITE}/pkg/cache/old.bin", BIG)
    _add(tar, f"{SITE}/pkg/version.txt", b"1\n" * 100_000)
    _add(tar, f"{SITE}/pkg/orig.bin", b"o" * 5000, mode=0o600)
    _add(tar, f"{SITE}/pkg/alias.bin", type=tarfile.LNKTYPE, linkname=f"{SITE}/pkg/orig.bin")
    _add(tar, f"{SITE}/pkg/alias2.bin", type=tarfile.LNKTYPE, linkname=f"{SITE}/pkg/orig.bin")
    _add(tar, "etc/motd", b"hello from the venv layer\n")  # hides the base layer's copy


def cleanup(tar: tarfile.TarFile) -> None:
    _dir(tar, f"{SITE}/pkg")
    _add(tar, f"{SITE}/pkg/.wh.bulky")  # rm -rf pkg/bulky
    _dir(tar, f"{SITE}/pkg/cache")
    _add(tar, f"{SITE}/pkg/cache/.wh..wh..opq")  # rm -rf pkg/cache/* (then a new file)
    _add(tar, f"{SITE}/pkg/cache/new.bin", b"new\n")
    _add(tar, f"{SITE}/pkg/version.txt", b"2\n")  # overwritten
    _add(tar, f"{SITE}/pkg/.wh.orig.bin")  # the target of two hard links goes; the links stay


def _archive(path: Path, layers: list[bytes]) -> list[str]:
    diff_ids = [f"sha256:{hashlib.sha256(data).hexdigest()}" for data in layers]
    history = [{"created_by": f"RUN step {i}"} for i in range(len(layers))]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }
    ).encode()
    with tarfile.open(path, mode="w") as tar:
        names = []
        for digest, data in zip(diff_ids, layers):
            name = f"{digest[7:]}/layer.tar"
            _add(tar, name, data)
            names.append(name)
        _add(tar, "config.json", config)
        _add(
            tar, "manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["t:1"], "Layers": names}]).encode()
        )
    return diff_ids


def _slim(source: Path, out: Path, *extra: str) -> int:
    return main(["image", "slim", "--from-archive", str(source), "--to-archive", str(out), *extra])


def _read(path: Path) -> tuple[list[str], list[list[tarfile.TarInfo]], list[bytes]]:
    with tarfile.open(path) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config = json.load(outer.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        raws = [outer.extractfile(name).read() for name in manifest["Layers"]]  # type: ignore[union-attr]
    members = []
    for raw in raws:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            members.append(tar.getmembers())
    return config["rootfs"]["diff_ids"], members, raws


@pytest.fixture
def slimmed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, list[str], Path]:
    layers = [_layer(base), _layer(venv), _layer(cleanup)]
    source = tmp_path / "in.tar"
    diff_ids = _archive(source, layers)
    out = tmp_path / "out.tar"
    code = _slim(source, out, "--rules", "default", "--min-gain", "1MiB", "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), diff_ids, out


def test_removed_and_hidden_copies_leave_every_layer_and_the_rest_comes_through_intact(slimmed) -> None:
    report, diff_ids, out = slimmed
    new_ids, members, raws = _read(out)
    by_name = [{m.name: m for m in layer} for layer in members]
    every = {name for layer in by_name for name in layer}
    # the base layer loses nothing: byte for byte, same digest
    assert new_ids[0] == diff_ids[0]
    assert report["layers"][0]["rewritten"] is False
    # the cleanup layer still carries its whiteouts; the copies they hide are gone from the venv layer
    assert f"{SITE}/pkg/.wh.bulky" in by_name[2]
    assert not any(n.startswith(f"{SITE}/pkg/bulky/") for n in every)
    assert f"{SITE}/pkg/cache/old.bin" not in every and f"{SITE}/pkg/cache/new.bin" in by_name[2]
    assert f"{SITE}/pkg/version.txt" not in by_name[1] and "etc/motd" in by_name[1]
    # the default rules removed bytecode from every layer
    assert not any("__pycache__" in n for n in every)
    # what stays keeps owner, mode, link, xattr, device numbers
    data = by_name[1][f"{SITE}/pkg/data.bin"]
    assert (data.uid, data.gid, data.mode, data.size) == (1000, 100, 0o640, len(BIG))
    link = by_name[1][f"{SITE}/pkg/data-link.bin"]
    assert link.islnk() and link.linkname == f"{SITE}/pkg/data.bin"
    assert by_name[1]["opt/venv/bin/python3"].linkname == "/usr/bin/python3"
    assert (by_name[0]["dev/null"].devmajor, by_name[0]["dev/null"].devminor) == (1, 3)
    assert by_name[0]["dev/pipe"].isfifo()
    assert by_name[0]["etc/config"].pax_headers.get("SCHILY.xattr.user.tag") == "kept"
    # a hard link whose target a later layer deletes becomes the file; the next link points at it
    alias, alias2 = by_name[1][f"{SITE}/pkg/alias.bin"], by_name[1][f"{SITE}/pkg/alias2.bin"]
    assert alias.isreg() and alias.size == 5000 and alias.mode == 0o600
    assert alias2.islnk() and alias2.linkname == f"{SITE}/pkg/alias.bin"
    assert f"{SITE}/pkg/orig.bin" not in by_name[1]
    with tarfile.open(fileobj=io.BytesIO(raws[1])) as tar:
        assert tar.extractfile(f"{SITE}/pkg/alias.bin").read() == b"o" * 5000  # type: ignore[union-attr]
    # each new diff id is the digest of the layer written
    assert new_ids == [f"sha256:{hashlib.sha256(raw).hexdigest()}" for raw in raws]
    assert report["layers"][1]["hidden"]["bytes"] >= 2 * len(BIG)
    assert report["bytes_after"] < report["bytes_before"] - 2 * len(BIG)


def test_a_small_gain_keeps_a_layer_and_a_large_one_rewrites_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.tar"
    diff_ids = _archive(source, [_layer(base), _layer(venv), _layer(cleanup)])
    out = tmp_path / "out.tar"
    # the base layer's only loss is etc/motd (6 bytes), hidden by the venv layer: below any min gain
    assert _slim(source, out, "--min-gain", "0", "--json", "--no-pushed-size") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"][0]["rewritten"] is True and report["layers"][0]["hidden"]["members"] == 1
    new_ids, _, _ = _read(out)
    assert new_ids[0] != diff_ids[0]


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    assert main(["image", "slim", "--from-archive", str(junk), "--to-archive", str(tmp_path / "o.tar")]) == 2
    assert "not a `docker save` archive" in capsys.readouterr().err
    assert main(["image", "slim", "--from-archive", str(junk)]) == 2
    assert "--tag NEW" in capsys.readouterr().err
    assert main(["image", "slim", "--from-archive", str(junk), "--to-archive", "/no/such/dir/o.tar"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "slimmer.toml"
    bad.write_text("checks = 5\n")
    args = ["image", "slim", "--from-archive", str(junk), "--to-archive", str(tmp_path / "o.tar"), "--config", str(bad)]
    assert main(args) == 2
    assert "'checks' must be a list" in capsys.readouterr().err
    layers = [_layer(base)]
    _archive(tmp_path / "nopython.tar", layers)
    assert (
        main(
            ["image", "slim", "--from-archive", str(tmp_path / "nopython.tar"), "--to-archive", str(tmp_path / "o.tar")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no Python environment" in err and "Traceback" not in err
    assert not (tmp_path / "o.tar").exists()
