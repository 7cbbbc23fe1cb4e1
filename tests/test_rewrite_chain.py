"""The rewriter contract on real trees: each rewriter returns a frozen `RewriteOutcome`, apply folds
it into `ApplyResult`, and what a rewriter put in place reaches the later ones only through
`RewriteInput.prior` (the RECORD rewriter trusts a digest from there only while the file it
describes is still in place)."""

from __future__ import annotations

import dataclasses
import io
import os
from types import MappingProxyType
from typing import TYPE_CHECKING

import pytest

from slimmer.apply import apply_plan, undo
from slimmer.dists import record_hash
from slimmer.model.apply import Digest, NewVersion, RewriteInput, RewriteOutcome, Rewritten
from slimmer.plan import make_plan
from slimmer.rewriters import default_rewriters
from slimmer.rules import RuleSet
from tests.helpers import make_tree, snapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Mapping
    from pathlib import Path

    from slimmer.model.plan import Plan

SP = "lib/python3.11/site-packages"
LIB = f"{SP}/pkg/lib.so"
RECORD = f"{SP}/pkg-1.0.dist-info/RECORD"
LIB_BYTES = b"\x7fELF original library bytes" * 64


class Replace:
    """Writes `content` as the new version of each of `rels` and returns `digest_for(rel, inode)`."""

    def __init__(
        self,
        name: str,
        rels: tuple[str, ...],
        content: bytes,
        digest_for: Callable[[str, int], Digest] | None = None,
        skip: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.name = name
        self.rels = rels
        self.content = content
        self.digest_for = digest_for
        self.skip = skip
        self.seen: Mapping[str, NewVersion] | None = None

    def rewrite(self, given: RewriteInput) -> Generator[str, None, RewriteOutcome]:
        self.seen = given.prior
        digests = {}
        for rel in self.rels:
            tmp = given.tmp_for(rel)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, self.content)
            inode = os.fstat(fd).st_ino
            os.close(fd)
            if self.digest_for is not None:
                digests[rel] = self.digest_for(rel, inode)
            yield rel
        return RewriteOutcome(self.skip, MappingProxyType(digests))


@pytest.fixture
def env(tmp_path: Path) -> Path:
    digest, size = record_hash_of(LIB_BYTES)
    return make_tree(
        tmp_path / "env",
        {
            f"{SP}/pkg/__init__.py": "",
            LIB: LIB_BYTES,
            f"{SP}/pkg/README.md": "readme",
            f"{SP}/pkg-1.0.dist-info/METADATA": "Name: pkg\nVersion: 1.0\n",
            RECORD: (
                f"pkg/__init__.py,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0\n"
                f"pkg/lib.so,{digest},{size}\npkg/README.md,,\npkg-1.0.dist-info/RECORD,,\n"
            ),
        },
    )


def record_hash_of(data: bytes) -> tuple[str, int]:
    return record_hash(io.BytesIO(data))


def _plan(root: Path, tmp_path: Path) -> Plan:
    rules = tmp_path / "t.rules"
    rules.write_text("# @relative-to site-packages\n*.md\n")
    return make_plan(root, RuleSet.load([str(rules)]))


def _rows(root: Path) -> dict[str, list[str]]:
    return {row.split(",")[0]: row.split(",")[1:] for row in (root / RECORD).read_text().splitlines()}


def test_each_rewriter_gets_what_the_earlier_ones_put_in_place_and_apply_folds_the_outcomes(env, tmp_path):
    first = Replace("first", (LIB, f"{SP}/pkg/gone.so"), b"new", lambda rel, ino: Digest("sha256=x", 3, ino))
    first.skip = ((f"{SP}/pkg/other.so", "not for me"),)
    second = Replace("second", (f"{SP}/pkg/__init__.py",), b"# new\n")
    third = Replace("third", (), b"")
    result = apply_plan(_plan(env, tmp_path), commit=False, rewriters=(first, second, third))

    assert first.seen == {}
    new_lib = os.lstat(env / LIB)
    # the swap of gone.so failed (no original): a failure, not a new version a later rewriter sees
    assert second.seen == {LIB: NewVersion("first", Digest("sha256=x", 3, new_lib.st_ino))}
    assert dict(third.seen or {}) == {
        LIB: NewVersion("first", Digest("sha256=x", 3, new_lib.st_ino)),
        f"{SP}/pkg/__init__.py": NewVersion("second", None),
    }
    with pytest.raises(TypeError):
        third.seen[LIB] = NewVersion("third")  # type: ignore[index]
    assert result.rewritten["first"] == [Rewritten(LIB, len(LIB_BYTES), 3)]
    assert result.rewritten["second"] == [Rewritten(f"{SP}/pkg/__init__.py", 0, 6)]
    assert result.rewritten["third"] == []
    assert result.skipped["first"] == [(f"{SP}/pkg/other.so", "not for me")]
    assert [rel for rel, _ in result.failures] == [f"{SP}/pkg/gone.so"]
    assert result.failures[0][1].startswith("first: ")
    assert not hasattr(result, "digests")
    with pytest.raises(dataclasses.FrozenInstanceError):
        RewriteOutcome().skipped = ()  # type: ignore[misc]


def test_the_record_rewriter_takes_the_digest_from_prior_while_that_version_is_in_place(env, tmp_path):
    before = snapshot(env)
    fake = Replace("strip", (LIB,), b"stripped", lambda rel, ino: Digest("sha256=FROM-PRIOR", 8, ino))
    apply_plan(_plan(env, tmp_path), commit=False, rewriters=(fake, *default_rewriters()[1:]))
    rows = _rows(env)
    assert rows["pkg/lib.so"] == ["sha256=FROM-PRIOR", "8"]  # trusted, not read again
    assert "pkg/README.md" not in rows  # removed by the rule: its row goes
    undo(env)
    assert snapshot(env) == before


def test_the_record_rewriter_reads_the_file_again_when_the_prior_digest_is_stale(env, tmp_path):
    stale = Replace("strip", (LIB,), b"stripped", lambda rel, ino: Digest("sha256=STALE", 8, ino + 1))
    apply_plan(_plan(env, tmp_path), commit=False, rewriters=(stale, *default_rewriters()[1:]))
    assert _rows(env)["pkg/lib.so"] == list(map(str, record_hash_of(b"stripped")))


def test_a_file_no_earlier_rewriter_replaced_keeps_its_record_row(env, tmp_path):
    """Only `prior` says what changed: a RECORD row of a file nobody rewrote is not re-hashed."""
    (env / LIB).write_bytes(b"changed behind slimmer's back")
    old = _rows(env)["pkg/lib.so"]
    apply_plan(_plan(env, tmp_path), commit=False, rewriters=default_rewriters()[1:])
    assert _rows(env)["pkg/lib.so"] == old


class Dies:
    """Replaces `__init__.py`, then writes a second new version and dies before yielding it (as a
    killed run would leave it: journaled temporary file on disk, never swapped in)."""

    name = "dies"

    def rewrite(self, given: RewriteInput) -> Generator[str, None, RewriteOutcome]:
        for rel, last in ((f"{SP}/pkg/__init__.py", False), (LIB, True)):
            given.tmp_for(rel).write_bytes(b"half-written")
            if last:
                raise RuntimeError("killed")
            yield rel
        return RewriteOutcome()


def test_undo_after_a_rewriter_died_restores_every_original_and_deletes_the_orphan(env, tmp_path):
    before = snapshot(env)
    with pytest.raises(RuntimeError, match="killed"):
        apply_plan(_plan(env, tmp_path), commit=False, rewriters=(Dies(),))
    assert (env / f"{SP}/pkg/__init__.py").read_bytes() == b"half-written"  # swapped in
    assert not (env / f"{SP}/pkg/README.md").exists()  # staged
    assert any(p.name.endswith(".slimmer-tmp") for p in (env / SP / "pkg").iterdir())  # the orphan
    _, restored, problems = undo(env)
    assert problems == []
    assert restored == 2  # README.md and the original __init__.py
    assert snapshot(env) == before
