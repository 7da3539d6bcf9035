"""Small blobs packed together on remote registries (artfs/packs.py): fewer requests, same
contents, same digests, every byte still verified."""

from __future__ import annotations

import gc
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import sdk
from artfs import staging
from artfs.errors import CorruptRecord, IntegrityError
from artfs.manifest import Entry, Manifest
from artfs.names import ArtifactRef
from artfs.packs import PACK_BLOB_MAX, PackBuilder, PackLoc, split
from artfs.registry import Registry, Source, init_registry
from artfs.staging import ROOT

ENTITY = "tester"
REMOTE = ["s3", "gcs"]


def small_files(n: int, salt: str = "") -> dict[str, bytes]:
    return {f"d{i % 7}/f{i}.bin": f"{salt}file {i} ".encode() * (i % 50 + 1) for i in range(n)}


def keys(reg: Registry, kind: str) -> list[str]:
    return sorted(reg.store.list(f"entities/{ENTITY}/{kind}/"))


@pytest.fixture(params=REMOTE)
def remote(request: pytest.FixtureRequest, make_store_url: Callable[[str], str],
           monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh S3 or GCS registry, set as ARTFS_REGISTRY."""
    url = make_store_url(request.param)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    init_registry(url)
    return url


def log_files(tmp_path: Path, name: str, files: dict[str, bytes]) -> sdk.Artifact:
    src = tmp_path / f"src-{name}-{len(list(tmp_path.glob('src-*')))}"
    art = sdk.Artifact(name, type="dataset")
    for path, data in files.items():
        f = src / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    art.add_dir(str(src))
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    return art


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def forget_cache(cache: Path) -> None:
    """Another machine: nothing cached. Registries nobody holds any more are collected first:
    one collected during the removal would close its SQLite connection and delete the WAL
    file under rmtree."""
    gc.collect()

    def vanished(func, path, exc_info) -> None:  # a WAL file its last connection removed
        if not issubclass(exc_info[0], FileNotFoundError):
            raise exc_info[1]

    shutil.rmtree(cache, onerror=vanished)


def test_builder_closes_packs_at_the_target_and_stores_each_digest_once() -> None:
    builder = PackBuilder(target=10)
    assert builder.add("a" * 64, b"12345") is None
    assert builder.add("a" * 64, b"12345") is None  # the same blob twice takes space once
    full = builder.add("b" * 64, b"67890")
    assert full is not None
    digest, data, offsets = full
    assert digest == hashlib.sha256(b"1234567890").hexdigest()
    assert data == b"1234567890"
    assert offsets == {"a" * 64: PackLoc(digest, 0, 5), "b" * 64: PackLoc(digest, 5, 5)}
    assert builder.flush() is None


def test_split_drops_blobs_whose_bytes_do_not_match() -> None:
    good, bad = b"good", b"bad!"
    data = good + bad
    wanted = [(hashlib.sha256(good).hexdigest(), 10, 4), ("0" * 64, 14, 4)]
    assert list(split(data, 10, wanted)) == [(hashlib.sha256(good).hexdigest(), good)]


def test_pack_location_is_not_part_of_the_artifact_digest() -> None:
    plain = Manifest([Entry("a", 3, "a" * 64)])
    packed = Manifest([Entry("a", 3, "a" * 64, pack=PackLoc("b" * 64, 7, 3))])
    assert plain.digest == packed.digest
    stored = packed.to_stored_bytes()
    assert b'"pack"' in stored and stored != packed.to_bytes()
    back = Manifest.from_bytes(stored, expect_digest=plain.digest)
    assert back["a"].pack == PackLoc("b" * 64, 7, 3)


def test_a_stored_manifest_with_changed_contents_is_refused() -> None:
    packed = Manifest([Entry("a", 3, "a" * 64, pack=PackLoc("b" * 64, 7, 3))])
    tampered = packed.to_stored_bytes().replace(b'"size":3', b'"size":4')
    with pytest.raises(CorruptRecord, match=packed.digest):
        Manifest.from_bytes(tampered, expect_digest=packed.digest)


def test_a_bad_pack_location_names_the_entry() -> None:
    raw = b'{"entries":{"x.bin":{"digest":"' + b"a" * 64 + b'","pack":["nope",1],"size":1}},' \
          b'"format":1}'
    with pytest.raises(CorruptRecord, match="x.bin"):
        Manifest.from_bytes(raw)


def test_many_small_files_go_up_as_a_few_packs_and_come_back_intact(
        remote: str, tmp_path: Path) -> None:
    url = remote
    files = small_files(300)
    art = log_files(tmp_path, "many", files)
    reg = Registry(url)
    try:
        assert keys(reg, "blobs") == []
        assert len(keys(reg, "packs")) == 1
        manifest = reg.manifest(art._version)
        assert all(e.pack is not None for e in manifest.values())
        # The digest is the one the same contents get on a local registry.
        local = Manifest(Entry(e.path, e.size, e.digest) for e in manifest.values())
        assert local.digest == art.digest
    finally:
        reg.close()
    forget_cache(tmp_path / "cache")  # another machine: nothing cached, no pack locations
    got = sdk.Api().artifact("many:latest").download(tmp_path / "out")
    assert tree(Path(got)) == files


def test_a_new_version_reuses_packed_blobs_even_from_another_machine(
        remote: str, tmp_path: Path) -> None:
    url = remote
    files = small_files(200)
    log_files(tmp_path, "ds", files)
    forget_cache(tmp_path / "cache")  # the next log runs on a machine that knows nothing
    changed = dict(files, **{"d0/f0.bin": b"changed", "new.bin": b"new"})
    art = log_files(tmp_path, "ds", changed)
    assert art.version == "v1"
    reg = Registry(url)
    try:
        assert len(keys(reg, "packs")) == 2
        new_pack = reg.manifest(art._version)["new.bin"].pack
        assert new_pack is not None
        assert len(reg.store.get(reg.pack_key(ENTITY, new_pack.pack))) == len(b"changednew")
    finally:
        reg.close()
    got = sdk.Api().artifact("ds:v1").download(tmp_path / "out")
    assert tree(Path(got)) == changed


def test_files_above_the_pack_limit_are_stored_as_their_own_blobs(
        remote: str, tmp_path: Path) -> None:
    url = remote
    big = b"x" * (PACK_BLOB_MAX + 1)
    log_files(tmp_path, "mixed", {"a.bin": b"a", "b.bin": b"b", "big.bin": big})
    reg = Registry(url)
    try:
        assert keys(reg, "blobs") == [reg.blob_key(ENTITY, hashlib.sha256(big).hexdigest())]
        assert len(keys(reg, "packs")) == 1
    finally:
        reg.close()


def test_a_corrupt_pack_fails_the_download_naming_the_entry_and_caches_nothing(
        remote: str, tmp_path: Path) -> None:
    url = remote
    log_files(tmp_path, "ds", {"a.bin": b"aaaa", "b.bin": b"bbbb"})
    reg = Registry(url)
    try:
        (pack,) = keys(reg, "packs")
        reg.store.put(pack, b"aaaaBBBB")  # b.bin's bytes flipped in the bucket
    finally:
        reg.close()
    forget_cache(tmp_path / "cache")
    with pytest.raises(IntegrityError, match="b.bin"):
        sdk.Api().artifact("ds:latest").download(tmp_path / "out")
    cached = [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in cached] == [b"aaaa"]
    assert not (tmp_path / "out" / "b.bin").exists()


def test_a_staging_commit_packs_its_small_files_and_other_machines_can_read_them(
        remote: str, tmp_path: Path) -> None:
    files = small_files(40)
    sources = []
    for path, data in files.items():
        f = tmp_path / "src" / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        sources.append(Source(path, f))
    writer = Registry(remote, cache_dir=tmp_path / "writer-cache")
    try:
        writer.log_version(ENTITY, "p", "ds", "dataset", sources)
        area = staging.open_area(writer, ENTITY, "p", "ds")
        added = {"new/a.bin": b"staged a", "new/b.bin": b"staged b"}
        folder = area.mkdir(ROOT, "new").id
        for path, data in added.items():
            area.create_file(folder, path.split("/")[1], data)  # hashed as written
        result = staging.commit(writer, area)
        assert result.created
        assert len(keys(writer, "packs")) == 2
        assert keys(writer, "blobs") == []
    finally:
        writer.close()
    reader = Registry(remote, cache_dir=tmp_path / "reader-cache")  # another machine
    try:
        v1 = reader.version(ArtifactRef(ENTITY, "p", "ds", "v1"))
        manifest = reader.manifest(v1)
        assert all(e.pack is not None for e in manifest.values())
        got = {p: reader.blob_file(ENTITY, e.digest or "").read_bytes()
               for p, e in manifest.items()}
        assert got == {**files, **added}
    finally:
        reader.close()
