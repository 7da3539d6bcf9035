"""The local blob cache: verified fills, LRU eviction under ARTFS_CACHE_SIZE, no partial files.

The cache serves registries that are not local directories (a local registry's blobs are read
in place), so besides `BlobCache` itself these tests use a registry on the S3 test server,
reached through a fault proxy whose request list shows what was fetched.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import sdk
from artfs.cache import BlobCache
from artfs.errors import ArtfsError, IntegrityError
from artfs.registry import Registry
from tests.faultproxy import FaultProxy


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def writer(data: bytes):
    return lambda tmp: tmp.write_bytes(data)


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "blobcache", limit=250)


@dataclass
class Remote:
    registry: Registry
    proxy: FaultProxy

    def blob_gets(self) -> int:
        """GETs of file bytes (blobs, or packs of small blobs) the registry has made."""
        return sum(1 for r in self.proxy.seen
                   if r.method == "GET" and ("/blobs/" in r.path or "/packs/" in r.path))


@pytest.fixture
def remote(request: pytest.FixtureRequest, make_bucket: Callable[..., str],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    """A registry on the S3 test server, through a proxy, with a 250-byte cache."""
    bucket = make_bucket("s3")
    proxy = FaultProxy(request.getfixturevalue("s3_server").endpoint, rate=0.0, seed=1).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("ARTFS_CACHE_SIZE", "250")
    reg = Registry(f"s3://{bucket}/reg", create=True)
    try:
        yield Remote(reg, proxy)
    finally:
        reg.close()
        proxy.stop()


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


# -- through a registry on a remote store ------------------------------------------------------
def test_download_from_a_remote_store_fills_the_cache_once(
    remote: Remote, tmp_path: Path
) -> None:
    art = log(remote.registry, {"a.bin": b"a" * 100})
    before = remote.blob_gets()
    art.download(tmp_path / "one")
    fetched = remote.blob_gets() - before
    art.download(tmp_path / "two")
    assert fetched >= 1 and remote.blob_gets() - before == fetched
    assert remote.registry.cache.get(sha(b"a" * 100)) is not None
    assert (tmp_path / "two" / "a.bin").read_bytes() == b"a" * 100


def test_cache_stays_within_ARTFS_CACHE_SIZE(remote: Remote, tmp_path: Path) -> None:
    arts = [log(remote.registry, {"f.bin": bytes([i]) * 100}) for i in range(3)]
    for i, art in enumerate(arts):
        art.download(tmp_path / f"out{i}")
    cache = remote.registry.cache
    assert cache.limit == 250
    assert cache.usage() == (2, 200)
    assert cache.get(sha(bytes([0]) * 100)) is None  # the least recently used


def test_interrupted_remote_download_leaves_nothing_that_looks_complete(
    remote: Remote, tmp_path: Path
) -> None:
    art = log(remote.registry, {"a.bin": b"a" * 100})
    # Every response with file bytes is cut off halfway, retries included.
    remote.proxy.inject("truncate", lambda r: r.method == "GET" and (
        "/blobs/" in r.path or "/packs/" in r.path), times=1000)
    out = tmp_path / "out"
    with pytest.raises(ArtfsError, match=remote.registry.url):
        art.download(out)
    assert remote.proxy.counts["truncate"] > 1  # the first cut was retried, then gave up
    assert not out.exists() or list(out.iterdir()) == []
    assert remote.registry.cache.get(sha(b"a" * 100)) is None
    assert os.listdir(remote.registry.cache.root / "tmp") == []
