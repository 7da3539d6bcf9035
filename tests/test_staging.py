"""Staging areas without a mount: the tree, diff, discard, commit and what a crash leaves."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from artfs import staging, staging_tree
from artfs.errors import StoreError
from artfs.names import ArtifactRef
from artfs.registry import Registry, Source
from artfs.staging import INTERRUPTED_NOTE, ROOT, Node, Staging, StagingError

E, P = "tester", "uncategorized"
FILES = {"model.h5": b"weights" * 100, "images/cat.png": b"cat", "images/dog.png": b"dog"}


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(str(tmp_path / "registry"), create=True)
    yield r
    r.close()


def _log(reg: Registry, name: str, files: dict[str, bytes], tmp: Path) -> None:
    src = tmp / f"src-{name}"
    sources = []
    for path, data in files.items():
        f = src / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        sources.append(Source(path, f))
    reg.log_version(E, P, name, "model", sources)


def _write(area: Staging, parent: int, name: str, data: bytes,
           digest: str | None = None) -> Node:
    """A new file written by a writer that did not hash it (or hashed it as `digest`)."""
    node, fd, draft = area.create_open(parent, name)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    assert area.publish(node.id, draft, digest)
    published = area.node(node.id)
    assert published is not None
    return published


def _rewrite(area: Staging, node: Node, data: bytes) -> Node:
    """What a mount does for a writer of an existing file: a draft, published on close."""
    draft = area.new_draft(node.id)
    draft.write_bytes(data)
    assert area.publish(node.id, draft, None)
    published = area.node(node.id)
    assert published is not None
    return published


def _contents(reg: Registry, name: str, version: str = "latest") -> dict[str, bytes]:
    v = reg.version(ArtifactRef(E, P, name, version))
    return {p: reg.blob_file(E, e.digest).read_bytes()
            for p, e in reg.manifest(v).items() if e.digest}


def test_area_starts_as_latest_version_without_copying_bytes(reg, tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    assert sorted(area.tree()) == sorted(FILES)
    assert all(n.kind == "base" for n in area.tree().values())
    assert list(area.files.iterdir()) == []
    assert area.base_version == 0 and not area.diff()


def test_rename_of_a_folder_moves_its_subtree_in_one_step(reg, tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    images = area.child(ROOT, "images")
    assert images is not None
    area.mkdir(ROOT, "data")
    data = area.child(ROOT, "data")
    area.rename(ROOT, "images", data.id, "pics")
    assert sorted(area.tree()) == ["data/pics/cat.png", "data/pics/dog.png", "model.h5"]
    assert area.child(data.id, "pics").id == images.id  # same node: open files and inodes stay


def test_tree_operations_fail_like_posix(reg, tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    images = area.child(ROOT, "images").id
    cases = [
        (lambda: area.rmdir(ROOT, "images"), errno.ENOTEMPTY),
        (lambda: area.create_file(ROOT, "model.h5"), errno.EEXIST),
        (lambda: area.rename(ROOT, "images", images, "x"), errno.EINVAL),
        (lambda: area.rename(ROOT, "model.h5", ROOT, "images"), errno.EISDIR),
        (lambda: area.rename(images, "cat.png", images, "dog.png", replace=False),
         errno.EEXIST),
        (lambda: area.unlink(ROOT, "images"), errno.EISDIR),
        (lambda: area.unlink(ROOT, "nope"), errno.ENOENT),
    ]
    for fn, code in cases:
        with pytest.raises(OSError) as info:
            fn()
        assert info.value.errno == code


def test_diff_names_added_changed_and_removed_files(reg, tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    _write(area, ROOT, "new.txt", b"new")
    area.unlink(area.child(ROOT, "images").id, "cat.png")
    _rewrite(area, area.child(ROOT, "model.h5"), b"other weights")
    changes = area.diff()
    assert (changes.added, changes.changed, changes.removed) == (
        ["new.txt"], ["model.h5"], ["images/cat.png"])


def test_publishing_identical_bytes_is_no_change(reg, tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    _rewrite(area, area.child(ROOT, "model.h5"), FILES["model.h5"])
    assert not area.diff()


def test_commit_makes_one_version_then_none_when_unchanged(reg, tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    _write(area, ROOT, "new.txt", b"new")
    done = staging.commit(reg, area, aliases=["best"])
    assert done.created and done.version.label == "v1"
    assert _contents(reg, "m", "best") == {**FILES, "new.txt": b"new"}
    assert list(area.files.iterdir()) == []  # rebased: every file is the version's now
    assert area.base_version == 1 and not area.diff()
    again = staging.commit(reg, area)
    assert not again.created and "nothing to commit" in again.message
    assert reg.versions(E, P, "m") == [0, 1]
    runs = list(reg.runs(E, P))
    assert [r.job_type for r in runs] == ["commit"] and runs[0].outputs == ["tester/"
                                                                          "uncategorized/m:v1"]


def test_commit_stores_a_file_hashed_while_written_without_reading_it(reg, tmp_path) -> None:
    area = staging.open_area(reg, E, P, "fresh")
    data = os.urandom(100_000)
    # A deliberately false digest proves the bytes were not read again: the registry holds
    # them under the digest taken at write time.
    fake = hashlib.sha256(b"what the writer hashed").hexdigest()
    _write(area, ROOT, "blob.bin", data, fake)
    staging.commit(reg, area, type_="dataset")
    assert reg.manifest(reg.version(ArtifactRef(E, P, "fresh", "v0")))["blob.bin"].digest == fake


def test_new_artifact_needs_a_type(reg) -> None:
    area = staging.open_area(reg, E, P, "fresh")
    _write(area, ROOT, "a.txt", b"a")
    with pytest.raises(StagingError, match="--type"):
        staging.commit(reg, area)
    assert staging.commit(reg, area, type_="dataset").version.label == "v0"


def test_store_failure_leaves_no_version_and_the_staged_files(reg, tmp_path, monkeypatch) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    _write(area, ROOT, "slow.txt", b"unknown digest")  # hashed by log_version
    _write(area, ROOT, "fast.txt", b"fast", hashlib.sha256(b"fast").hexdigest())
    real = reg.store.put_if_absent

    def failing(key: str, data: bytes) -> bool:
        if "/versions/" in key:
            raise StoreError(f"injected failure writing {key}")
        return real(key, data)

    monkeypatch.setattr(reg.store, "put_if_absent", failing)
    with pytest.raises(StoreError):
        staging.commit(reg, area)
    assert reg.versions(E, P, "m") == [0]
    reopened = Staging(reg.url, E, P, "m")
    tree = reopened.tree()
    assert sorted(tree) == sorted([*FILES, "slow.txt", "fast.txt"])
    assert reopened.file(tree["fast.txt"]).read_bytes() == b"fast"  # linked, not moved
    assert reopened.file(tree["slow.txt"]).read_bytes() == b"unknown digest"
    assert not list(reopened.folder.glob("commit-*"))
    monkeypatch.undo()
    assert staging.commit(reg, reopened).created
    assert _contents(reg, "m")["fast.txt"] == b"fast"


def test_crash_of_an_older_commit_after_moving_bytes_into_the_registry_is_repaired(reg) -> None:
    """Commits before drafts moved staged bytes into the registry, then marked the rows."""
    area = staging.open_area(reg, E, P, "fresh")
    digest = hashlib.sha256(b"abc").hexdigest()
    node = _write(area, ROOT, "a.bin", b"abc", digest)
    reg.put_blob_files(E, [(digest, area.file(node))], move=True)  # then the process died
    area.close()
    repaired = staging.open_area(reg, E, P, "fresh")
    n = repaired.tree()["a.bin"]
    assert (n.kind, n.digest, n.size) == ("base", digest, 3)


def test_discard_and_empty(reg, tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    _write(area, ROOT, "new.txt", b"new")
    staging.discard(reg, area)
    assert sorted(area.tree()) == sorted(FILES) and list(area.files.iterdir()) == []
    staging.discard(reg, area, empty=True)
    assert area.tree() == {}
    assert sorted(area.diff().removed) == sorted(FILES)


def test_clean_area_follows_a_version_committed_elsewhere(reg, tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    staging.open_area(reg, E, P, "m").close()
    _log(reg, "m", {"only.txt": b"only"}, tmp_path / "b")
    area = staging.open_area(reg, E, P, "m")
    assert sorted(area.tree()) == ["only.txt"] and area.base_version == 1


def test_deferred_checkpoints_copy_the_wal_and_empty_it_past_the_cap(
        reg, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mount checkpoints on a worker thread (`checkpoint`) instead of inside a change."""
    area = Staging(reg.url, E, P, "wal")
    area.defer_checkpoints()
    wal = area.folder / "index.db-wal"
    for i in range(600):
        area.create_file(ROOT, f"f{i}")
    grown = wal.stat().st_size
    assert grown > 1100 * 4096  # by default a change checkpoints past 1,000 pages
    area.checkpoint()
    assert wal.stat().st_size == grown  # copied, kept: the next change starts it over
    monkeypatch.setattr(staging_tree, "WAL_CAP", 4096)
    area.create_file(ROOT, "last")
    area.checkpoint()
    assert wal.stat().st_size == 0
    again = Staging(reg.url, E, P, "wal")
    assert len(again.children(ROOT)) == 601
    again.close()
    area.close()


def test_commit_stores_its_snapshot_while_writers_go_on(reg, tmp_path, monkeypatch) -> None:
    """Changes made while a commit stores what it read (here: inside `log_version`) are not
    in the version, survive it, and show as changes against the new version afterwards."""
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    kept = _write(area, ROOT, "kept.txt", b"kept")
    moved = _write(area, ROOT, "moved.txt", b"moved")
    _, fd, unfinished = area.create_open(ROOT, "unfinished.txt")  # its writer goes on
    os.write(fd, b"half")
    os.close(fd)
    writer = Staging(reg.url, E, P, "m")  # the mount's connection, which holds deletions
    writer.hold_deletes = []  # while a commit runs: it reads the bytes replaced or removed
    real = reg.log_version

    def log_while_writing(*args, **kwargs):
        _rewrite(writer, writer.child(ROOT, "kept.txt"), b"kept, then changed")
        writer.rename(ROOT, "moved.txt", ROOT, "renamed.txt")
        writer.unlink(area.child(ROOT, "images").id, "cat.png")
        return real(*args, **kwargs)

    monkeypatch.setattr(reg, "log_version", log_while_writing)
    assert staging.commit(reg, area).created
    writer.held_deletions()
    assert _contents(reg, "m", "v1") == {**FILES, "kept.txt": b"kept", "moved.txt": b"moved"}
    after = {p: (area.file(n).read_bytes() if n.kind == "local" else n.digest)
             for p, n in area.tree().items()}
    assert after["kept.txt"] == b"kept, then changed"
    renamed = area.child(ROOT, "renamed.txt")
    assert (renamed.id, renamed.kind) == (moved.id, "base")  # the bytes it stored
    assert area.child(ROOT, "kept.txt").id == kept.id
    changes = area.diff()
    assert (changes.added, changes.changed, changes.removed) == (
        ["renamed.txt"], ["kept.txt"], ["images/cat.png", "moved.txt"])
    assert area.dirty and area.base_version == 1
    named = {n.content for n in area.tree().values() if n.kind == "local"}
    assert {f.name for f in area.files.iterdir()} == named | {unfinished.name}  # no more
    writer.close()


def test_a_draft_cut_short_by_a_crash_is_flagged_and_commit_asks_for_force(reg,
                                                                          tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    _, fd, _ = area.create_open(ROOT, "big.bin")
    os.write(fd, b"first part")
    os.close(fd)
    area.new_draft(area.child(ROOT, "model.h5").id).write_bytes(b"cut")
    area.close()  # the mount died with both open
    area = staging.open_area(reg, E, P, "m")
    assert area.diff().lines() == [f"A! big.bin  {INTERRUPTED_NOTE}",
                                   f"M! model.h5  {INTERRUPTED_NOTE}"]
    assert area.file(area.child(ROOT, "big.bin")).read_bytes() == b"first part"
    before = (area.tree(), sorted(f.name for f in area.files.iterdir()))
    with pytest.raises(StagingError, match=r"2 file\(s\).*big.bin, model.h5.*--force"):
        staging.commit(reg, area)
    assert reg.versions(E, P, "m") == [0]
    assert (area.tree(), sorted(f.name for f in area.files.iterdir())) == before
    assert staging.commit(reg, area, force=True).created
    assert _contents(reg, "m")["big.bin"] == b"first part"
    assert not area.diff()


def test_a_new_file_never_closed_is_not_committed(reg, tmp_path) -> None:
    _log(reg, "m", FILES, tmp_path)
    area = staging.open_area(reg, E, P, "m")
    node, fd, draft = area.create_open(ROOT, "writing.bin")
    os.write(fd, b"so far")
    os.close(fd)
    assert "writing.bin" not in area.tree()
    done = staging.commit(reg, area)
    assert not done.created and "nothing to commit" in done.message
    assert area.publish(node.id, draft, None)  # its writer closes it
    assert area.diff().added == ["writing.bin"]
