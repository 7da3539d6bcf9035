"""W&B's add_file/add_dir policies and incremental drafts (issue 12, items 1 and 2)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import artfs.capture
import artfs.hashing
import sdk
from artfs.errors import DuplicateEntry, FileChangedError
from artfs.registry import Registry

ENTITY, PROJECT = "tester", "uncategorized"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def contents(root: str | Path) -> dict[str, bytes]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def log(art: sdk.Artifact, **kwargs) -> sdk.Artifact:
    with sdk.init(job_type="test", **kwargs) as run:
        run.log_artifact(art)
    return art


# -- item 1: content as of add time -------------------------------------------------------------
def test_seed_loop_rewriting_one_file_logs_ten_versions(registry_url: str, tmp_path: Path) -> None:
    """The seed's loop, written the natural way: one file name rewritten every iteration."""
    model = tmp_path / "model.h5"
    with sdk.init(job_type="train") as run:
        for i in range(10):
            model.write_bytes(f"weights of iteration {i}".encode())
            a = sdk.Artifact("race", type="dataset", metadata={"index": i})
            a.add_file(model)
            run.log_artifact(a)  # not waited for: the next iteration rewrites the file at once
    for i in range(10):
        got = sdk.Api().artifact(f"race:v{i}")
        assert got.metadata == {"index": i}
        assert contents(got.download(tmp_path / f"out{i}")) == {
            "model.h5": f"weights of iteration {i}".encode()}


def test_file_changed_between_add_and_log_logs_the_content_at_add_time(
        registry_url: str, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("as added")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src)
    src.write_text("changed afterwards, and longer")
    log(art)
    assert contents(art.download(tmp_path / "out")) == {"a.txt": b"as added"}


def test_add_dir_captures_every_file_at_add_time(registry_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    art = sdk.Artifact("ds", type="dataset")
    art.add_dir(folder, name="data")
    (folder / "a.txt").write_text("A changed")
    (folder / "sub" / "b.txt").unlink()
    log(art)
    assert contents(art.download(tmp_path / "out")) == {"data/a.txt": b"a", "data/sub/b.txt": b"b"}


@pytest.mark.parametrize("how", ["changed", "deleted"])
def test_immutable_file_changed_before_upload_fails_naming_it_and_logs_nothing(
        registry_url: str, tmp_path: Path, how: str) -> None:
    src = tmp_path / "weights.bin"
    src.write_bytes(b"one")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src, policy="immutable")
    if how == "changed":
        src.write_bytes(b"two!")
    else:
        src.unlink()
    with pytest.raises(artfs.errors.SourceError, match="weights.bin"):
        log(art)
    assert not sdk.Api().artifact_exists("ds")
    assert Registry(registry_url).artifacts(ENTITY, PROJECT) == []


def test_immutable_file_left_alone_is_logged(registry_url: str, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("stable")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src, policy="immutable")
    log(art)
    assert contents(art.download(tmp_path / "out")) == {"a.txt": b"stable"}


def test_unknown_policy_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    art = sdk.Artifact("ds", type="dataset")
    with pytest.raises(ValueError, match="'sometimes'"):
        art.add_file(tmp_path / "a.txt", policy="sometimes")  # type: ignore[arg-type]
    assert art._contents.sources == {}


BIG = 5 * 1024 * 1024  # above the small-file limit: copied by the kernel, hashed in the back


def bytes_on_disk(*roots: Path) -> int:
    """Bytes of the files of at least 64 KiB below `roots`: copies of what was added, not the
    records and tables beside them."""
    return sum(p.stat().st_size for r in roots if r.exists() for p in r.rglob("*")
               if p.is_file() and p.stat().st_size >= 64 * 1024)


def artfs_disk(registry_url: str, tmp_path: Path) -> int:
    """What artfs holds on this machine: the cache, and a local registry's folder."""
    roots = [tmp_path / "cache"]
    if not registry_url.startswith(("s3:", "gs:")):
        roots.append(Path(registry_url))
    return bytes_on_disk(*roots)


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_capture_on_a_local_registry_keeps_one_copy_which_becomes_the_blob(
        registry_url: str, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = b"x" * BIG
    src.write_bytes(data)
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src)
    src.write_bytes(b"y" * BIG)
    assert artfs_disk(registry_url, tmp_path) == BIG  # one copy, in the registry's own disk
    log(art)
    blob = Path(registry_url) / Registry(registry_url).blob_key(ENTITY, sha(data))
    assert list(Path(registry_url).rglob("blobs/*/*")) == [blob]
    assert blob.read_bytes() == data
    assert artfs_disk(registry_url, tmp_path) == BIG  # renamed into the blob store: no copy


@pytest.mark.parametrize("registry_url", ["local", "s3"], indirect=True)
def test_a_draft_digest_asked_before_the_log_is_the_content_at_add_time(
        registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[str] = []
    real = artfs.capture.hash_file
    monkeypatch.setattr(artfs.capture, "hash_file", lambda p: hashed.append(p) or real(p))
    big, small = tmp_path / "big.bin", tmp_path / "small.txt"
    big.write_bytes(b"b" * BIG)
    small.write_text("small as added")
    art = sdk.Artifact("ds", type="dataset")
    entry = art.add_file(big)
    art.add_file(small)
    big.write_bytes(b"B" * BIG)
    small.write_text("changed")
    assert entry.digest == sha(b"b" * BIG)
    assert art.manifest.entries["big.bin"].digest == sha(b"b" * BIG)
    assert art.get_entry("small.txt").digest == sha(b"small as added")
    asked = len(hashed)
    assert asked >= 1  # big.bin's (read whole with the small one at add time)
    log(art)
    assert len(hashed) == asked  # computed once: the log hashed nothing again
    assert art.get_entry("big.bin").digest == sha(b"b" * BIG)
    assert contents(art.download(tmp_path / "out")) == {"big.bin": b"b" * BIG,
                                                        "small.txt": b"small as added"}


@pytest.mark.parametrize("registry_url", ["local", "s3"], indirect=True)
def test_copies_of_removed_replaced_and_dropped_entries_leave_nothing_behind(
        registry_url: str, tmp_path: Path) -> None:
    import gc

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"a" * BIG)
    b.write_bytes(b"b" * BIG)
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(a, name="model.bin")
    art.add_file(b, name="other.bin")
    assert artfs_disk(registry_url, tmp_path) == 2 * BIG
    art.remove("other.bin")
    assert artfs_disk(registry_url, tmp_path) == BIG
    art.add_file(b, name="model.bin", overwrite=True)
    assert artfs_disk(registry_url, tmp_path) == BIG
    with pytest.raises(DuplicateEntry, match="model.bin"):
        art.add_file(a, name="model.bin")
    assert artfs_disk(registry_url, tmp_path) == BIG  # the refused copy is gone too
    del art
    gc.collect()
    assert artfs_disk(registry_url, tmp_path) == 0
    assert Registry(registry_url).artifacts(ENTITY, PROJECT) == []


@pytest.mark.parametrize("registry_url", ["s3"], indirect=True)
def test_capture_on_a_remote_registry_is_spooled_then_becomes_evictable_cache(
        registry_url: str, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"remote bytes")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src)
    digest = sha(b"remote bytes")
    assert [p.read_bytes() for p in (tmp_path / "cache").rglob("spool/*/*")] == [b"remote bytes"]
    log(art)
    assert not list((tmp_path / "cache").rglob("spool/*/*"))
    cache = Registry(registry_url).cache
    assert cache.get(digest) is not None and cache.usage() == (1, len(b"remote bytes"))
    assert cache.evict(0) == len(b"remote bytes")  # counted and evictable like any cached blob


@pytest.mark.parametrize("registry_url", ["s3"], indirect=True)
def test_skip_cache_leaves_nothing_in_the_cache_after_upload(
        registry_url: str, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"not for the cache")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src, skip_cache=True)
    log(art)
    assert Registry(registry_url).cache.usage() == (0, 0)
    assert not list((tmp_path / "cache").rglob("spool/*/*"))


@pytest.mark.parametrize("registry_url", ["local", "s3"], indirect=True)
def test_a_file_known_to_the_hash_table_is_not_read_again_at_add(
        registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(5):
        (folder / f"f{i}.txt").write_text(str(i))
    log(sdk.Artifact.from_dir(folder, "ds", type="dataset"))

    def refuse(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(artfs.hashing, "open_source", refuse)
    again = sdk.Artifact.from_dir(folder, "ds", type="dataset")
    log(again)
    assert again.version == "v0"


def test_a_draft_dropped_unlogged_leaves_no_spool(registry_url: str, tmp_path: Path) -> None:
    import gc

    (tmp_path / "a.txt").write_text("a")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(tmp_path / "a.txt")
    del art
    gc.collect()
    assert not list((tmp_path / "cache").rglob("spool/*"))


# -- overwrite and duplicates -------------------------------------------------------------------
def test_overwrite_replaces_an_entry_of_the_same_name(registry_url: str, tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("one")
    (tmp_path / "two.txt").write_text("two")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(tmp_path / "one.txt", name="model.txt")
    art.add_file(tmp_path / "two.txt", name="model.txt", overwrite=True)
    log(art)
    assert contents(art.download(tmp_path / "out")) == {"model.txt": b"two"}


def test_a_duplicate_name_without_overwrite_is_refused_and_changes_nothing(
        registry_url: str, tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("one")
    (tmp_path / "two.txt").write_text("two")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(tmp_path / "one.txt", name="model.txt")
    with pytest.raises(DuplicateEntry, match=r"model.txt.*two.txt.*overwrite=True"):
        art.add_file(tmp_path / "two.txt", name="model.txt")
    with pytest.raises(ValueError):  # W&B raises ValueError; DuplicateEntry is one
        art.add_file(tmp_path / "two.txt", name="model.txt")
    log(art)
    assert contents(art.download(tmp_path / "out")) == {"model.txt": b"one"}


def test_the_same_bytes_under_one_name_from_two_files_are_accepted(
        registry_url: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("same")
    (tmp_path / "b" / "x.txt").write_text("same")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(tmp_path / "a" / "x.txt")
    art.add_file(tmp_path / "b" / "x.txt")
    assert list(art.manifest.entries) == ["x.txt"]


def test_add_dir_merge_replaces_files_added_before(registry_url: str, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("new")
    (tmp_path / "x.txt").write_text("old")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(tmp_path / "x.txt")
    with pytest.raises(DuplicateEntry, match="x.txt"):
        art.add_dir(tmp_path / "d")
    art.add_dir(tmp_path / "d", merge=True)
    log(art)
    assert contents(art.download(tmp_path / "out")) == {"x.txt": b"new"}


# -- item 2: incremental drafts -----------------------------------------------------------------
@pytest.fixture
def dataset_v0(registry_url: str, tmp_path: Path) -> sdk.Artifact:
    folder = tmp_path / "v0"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "cat.png").write_bytes(b"cat" * 1000)
    (folder / "images" / "dog.png").write_bytes(b"dog" * 1000)
    (folder / "labels.csv").write_bytes(b"cat,dog\n")
    (folder / "big.bin").write_bytes(b"B" * (5 * 1024 * 1024))
    art = sdk.Artifact("ds", type="dataset", metadata={"n": 2})
    art.add_dir(folder)
    return log(art)


def test_new_draft_holds_the_version_and_logs_the_next_one(
        dataset_v0: sdk.Artifact, tmp_path: Path) -> None:
    draft = sdk.Api().artifact("ds:latest").new_draft()
    assert draft.is_draft() and draft.metadata == {"n": 2}
    assert sorted(draft.manifest.entries) == ["big.bin", "images/cat.png", "images/dog.png",
                                              "labels.csv"]
    draft.remove("images")
    (tmp_path / "notes.txt").write_text("no images any more")
    draft.add_file(tmp_path / "notes.txt")
    log(draft)
    assert draft.version == "v1"
    assert contents(draft.download(tmp_path / "out")) == {
        "big.bin": b"B" * (5 * 1024 * 1024), "labels.csv": b"cat,dog\n",
        "notes.txt": b"no images any more"}
    assert sdk.Api().artifact("ds:v0").file_count == 4  # the base version is untouched


def test_an_unchanged_draft_makes_no_new_version(dataset_v0: sdk.Artifact) -> None:
    draft = dataset_v0.new_draft()
    log(draft)
    assert draft.version == "v0"


def test_new_draft_is_logged_to_its_own_project(dataset_v0: sdk.Artifact, tmp_path: Path) -> None:
    draft = dataset_v0.new_draft()
    draft.remove("labels.csv")
    log(draft, project="elsewhere")
    assert draft.qualified_name == f"{ENTITY}/{PROJECT}/ds:v1"


def test_remove_of_a_path_the_draft_lacks_names_it_and_changes_nothing(
        dataset_v0: sdk.Artifact) -> None:
    draft = dataset_v0.new_draft()
    with pytest.raises(FileNotFoundError, match="imag"):
        draft.remove("imag")  # a prefix of a folder name is not that folder
    assert len(draft.manifest.entries) == 4


def test_remove_on_a_logged_version_is_refused(dataset_v0: sdk.Artifact) -> None:
    with pytest.raises(sdk.ArtifactStateError, match="new_draft"):
        dataset_v0.remove("labels.csv")


@pytest.fixture
def s3_requests(registry_url: str) -> Iterator[tuple[Registry, Counter]]:
    """The registry with a botocore hook counting (operation, kind of key) of every request."""
    reg = Registry(registry_url)
    seen: Counter = Counter()

    def count(params, model, **_):
        key = params.get("Key", "")
        kind = next((k for k in ("blobs", "packs", "manifests", "versions", "aliases",
                                 "digests", "runs") if f"/{k}/" in key), "other")
        seen[(model.name, kind)] += 1

    reg.store._client.meta.events.register("before-parameter-build.s3", count)
    yield reg, seen
    reg.close()


@pytest.mark.parametrize("registry_url", ["s3"], indirect=True)
def test_a_draft_uploads_only_the_changed_bytes(
        registry_url: str, tmp_path: Path, s3_requests: tuple[Registry, Counter]) -> None:
    reg, seen = s3_requests
    folder = tmp_path / "v0"
    (folder / "images").mkdir(parents=True)
    for i in range(20):
        (folder / "images" / f"{i}.png").write_bytes(f"image {i}".encode() * 100)
    (folder / "big.bin").write_bytes(b"B" * (5 * 1024 * 1024))
    base = sdk.Artifact("ds", type="dataset")
    base.add_dir(folder)
    with sdk.init(job_type="test", registry=reg) as run:
        run.log_artifact(base)
    (tmp_path / "notes.txt").write_text("new file")
    draft = sdk.Api(registry=reg).artifact("ds:v0").new_draft()
    draft.remove("images")
    draft.add_file(tmp_path / "notes.txt")
    seen.clear()
    with sdk.init(job_type="test", registry=reg) as run:
        run.log_artifact(draft)
    assert draft.version == "v1"
    uploads = {kind: n for (op, kind), n in seen.items()
               if op in ("PutObject", "CreateMultipartUpload", "UploadPart") and
               kind in ("blobs", "packs")}
    assert uploads == {"blobs": 1}  # notes.txt alone; big.bin and the images untouched
    reads = {kind: n for (op, kind), n in seen.items()
             if op == "GetObject" and kind in ("blobs", "packs")}
    assert reads == {}
    assert seen[("PutObject", "manifests")] == 1


def test_changing_a_draft_file_after_adding_it_changes_nothing(
        dataset_v0: sdk.Artifact, tmp_path: Path) -> None:
    src = tmp_path / "labels.csv"
    src.write_bytes(b"cat,dog,bike\n")
    draft = dataset_v0.new_draft()
    with pytest.raises(DuplicateEntry, match="labels.csv"):
        draft.add_file(src)
    draft.add_file(src, overwrite=True)
    src.write_bytes(b"changed after add")
    log(draft)
    assert Path(draft.get_entry("labels.csv").download(tmp_path / "o")).read_bytes() == \
        b"cat,dog,bike\n"


def test_a_changed_immutable_source_still_fails_the_log(registry_url: str, tmp_path: Path,
                                                        ) -> None:
    src = tmp_path / "a.txt"
    src.write_text("one")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src, policy="immutable")
    src.write_text("two, longer")
    with pytest.raises(FileChangedError, match="a.txt"):
        log(art)
