"""The local blob cache: verified fills, LRU eviction under ARTFS_CACHE_SIZE, no partial files.

The cache serves registries that are not local directories (a local registry's blobs are read
in place), so besides `BlobCache` itself these tests use a store that hides that it is local.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import sdk
from artfs.cache import BlobCache
from artfs.errors import IntegrityError
from artfs.registry import Registry
from artfs.store.base import ObjectInfo, Store
from artfs.store.local import LocalStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def writer(data: bytes):
    return lambda tmp: tmp.write_bytes(data)


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "blobcache", limit=250)


class RemoteLikeStore(Store):
    """A local directory behind the plain `Store` interface, so the registry uses its cache."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalStore(root)
        self.url = f"remote-like:{root}"
        self.fetched: list[str] = []
        self.fail_fetch_after: int | None = None

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_with_token(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_with_token(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.inner.get_range(key, start, length)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(key, data)

    def put_if_match(self, key: str, data: bytes, token: str) -> bool:
        return self.inner.put_if_match(key, data, token)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def get_file(self, key: str, path: Path) -> None:
        self.fetched.append(key)
        if self.fail_fetch_after is not None:
            data = self.inner.get(key)
            path.write_bytes(data[: self.fail_fetch_after])
            raise ConnectionResetError(f"connection lost while fetching {key}")
        self.inner.get_file(key, path)

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


@pytest.fixture
def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("ARTFS_CACHE_SIZE", "250")
    return Registry(store=RemoteLikeStore(tmp_path / "remote"), create=True)


def log(reg: Registry, files: dict[str, bytes]) -> sdk.Artifact:
    art = sdk.Artifact("ds", type="dataset")
    for path, data in files.items():
        with art.new_file(path, mode="wb") as f:
            f.write(data)
    with sdk.init(job_type="test", registry=reg) as run:
        run.log_artifact(art)
    return art


# -- BlobCache ----------------------------------------------------------------------------------
def test_fill_stores_the_verified_blob_under_its_digest(cache: BlobCache) -> None:
    path = cache.fill(sha(b"abc"), writer(b"abc"))
    assert path == cache.path(sha(b"abc")) and path.read_bytes() == b"abc"
    assert cache.get(sha(b"abc")) == path and cache.usage() == (1, 3)


def test_fill_of_a_cached_blob_does_not_fetch(cache: BlobCache) -> None:
    cache.fill(sha(b"abc"), writer(b"abc"))

    def refuse(tmp: Path) -> None:
        raise AssertionError("fetched a blob that was cached")

    assert cache.fill(sha(b"abc"), refuse).read_bytes() == b"abc"


def test_interrupted_fill_leaves_no_blob_and_no_temp_file(cache: BlobCache) -> None:
    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"ab")
        raise ConnectionResetError("connection lost")

    with pytest.raises(ConnectionResetError):
        cache.fill(sha(b"abcd"), half_then_fail)
    assert cache.get(sha(b"abcd")) is None
    assert not cache.path(sha(b"abcd")).exists()
    assert os.listdir(cache.root / "tmp") == []


def test_fill_with_wrong_bytes_raises_and_caches_nothing(cache: BlobCache) -> None:
    with pytest.raises(IntegrityError, match=sha(b"abc")):
        cache.fill(sha(b"abc"), writer(b"xyz"))
    assert cache.get(sha(b"abc")) is None and cache.usage() == (0, 0)
    assert os.listdir(cache.root / "tmp") == []


def test_least_recently_used_blob_is_evicted_first(cache: BlobCache) -> None:
    a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
    cache.fill(sha(a), writer(a))
    cache.fill(sha(b), writer(b))
    assert cache.get(sha(a)) is not None  # a is now more recent than b
    cache.fill(sha(c), writer(c))
    assert cache.get(sha(b)) is None
    assert cache.get(sha(a)) is not None and cache.get(sha(c)) is not None
    assert cache.usage() == (2, 200)


def test_blob_larger_than_the_limit_is_still_returned(cache: BlobCache) -> None:
    big = b"x" * 1000
    path = cache.fill(sha(big), writer(big))
    assert path.read_bytes() == big


def test_clean_empties_the_cache(cache: BlobCache) -> None:
    cache.fill(sha(b"abc"), writer(b"abc"))
    assert cache.clean() == 3
    assert cache.usage() == (0, 0) and cache.get(sha(b"abc")) is None


def test_cache_index_survives_reopening(cache: BlobCache) -> None:
    cache.fill(sha(b"abc"), writer(b"abc"))
    again = BlobCache(cache.root, limit=250)
    assert again.usage() == (1, 3) and again.get(sha(b"abc")) is not None


# -- through a registry on a non-local store ----------------------------------------------------
def test_download_from_a_remote_store_fills_the_cache_once(
    remote: Registry, tmp_path: Path
) -> None:
    art = log(remote, {"a.bin": b"a" * 100})
    art.download(tmp_path / "one")
    art.download(tmp_path / "two")
    assert len(remote.store.fetched) == 1
    assert remote.cache.get(sha(b"a" * 100)) is not None
    assert (tmp_path / "two" / "a.bin").read_bytes() == b"a" * 100


def test_cache_stays_within_ARTFS_CACHE_SIZE(remote: Registry, tmp_path: Path) -> None:
    arts = [log(remote, {"f.bin": bytes([i]) * 100}) for i in range(3)]
    for i, art in enumerate(arts):
        art.download(tmp_path / f"out{i}")
    assert remote.cache.limit == 250
    assert remote.cache.usage() == (2, 200)
    assert remote.cache.get(sha(bytes([0]) * 100)) is None  # the least recently used


def test_interrupted_remote_download_leaves_nothing_that_looks_complete(
    remote: Registry, tmp_path: Path
) -> None:
    art = log(remote, {"a.bin": b"a" * 100})
    remote.store.fail_fetch_after = 40
    out = tmp_path / "out"
    with pytest.raises(ConnectionResetError):
        art.download(out)
    assert not out.exists() or list(out.iterdir()) == []
    assert remote.cache.get(sha(b"a" * 100)) is None
    assert os.listdir(remote.cache.root / "tmp") == []
