"""Every store behaves the same: one conformance suite over a local dir, moto S3 and fake GCS."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from artfs.errors import AccessDenied, KeyNotFound, StoreError
from artfs.store import Store, open_store
from tests.faultproxy import FaultProxy
from tests.servers import IamS3, identity_env

KINDS = ["local", "s3", "gcs"]
MiB = 1024 * 1024
#: Above every store's multipart / resumable threshold, so the parallel-part paths run.
LARGE_FILE_SIZE = 20 * MiB
#: More than one listing page (1,000 keys on S3 and GCS).
MANY_KEYS = 1_100


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]) -> Iterator[Store]:
    s = open_store(make_store_url(request.param))
    yield s
    s.close()


@pytest.fixture(scope="module", params=KINDS)
def listed_store(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    make_bucket: Callable[..., str],
) -> Iterator[Store]:
    """A store holding MANY_KEYS keys, filled once per kind because filling is the slow part."""
    kind = request.param
    if kind == "local":
        url = str(tmp_path_factory.mktemp("listed"))
    else:
        url = f"{'s3' if kind == 's3' else 'gs'}://{make_bucket(kind)}/reg"
    s = open_store(url)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s.put(k, k.encode()), _many_keys()))
    s.put("other/x", b"x")
    s.put("runs-outside-prefix", b"y")
    yield s
    s.close()


def _many_keys() -> list[str]:
    # Two 'folders' so that prefix filtering and list_dirs have something to separate.
    return [f"blobs/{'ab' if i % 2 else 'cd'}/{i:05d}" for i in range(MANY_KEYS)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


# -- reads -------------------------------------------------------------------------------------
def test_get_returns_the_bytes_put(store: Store) -> None:
    store.put("a/b.bin", b"\x00hello\xff")
    assert store.get("a/b.bin") == b"\x00hello\xff"


def test_put_overwrites(store: Store) -> None:
    store.put("k", b"one")
    store.put("k", b"two")
    assert store.get("k") == b"two"


def test_get_with_token_returns_the_token_head_reports(store: Store) -> None:
    store.put("k", b"data")
    data, token = store.get_with_token("k")
    info = store.head("k")
    assert data == b"data"
    assert info is not None and info.token == token and info.size == 4


def test_token_changes_when_the_object_is_rewritten(store: Store) -> None:
    store.put("k", b"one")
    _, first = store.get_with_token("k")
    store.put("k", b"two!")
    _, second = store.get_with_token("k")
    assert first != second


def test_head_of_absent_key_is_none(store: Store) -> None:
    assert store.head("missing") is None


def test_get_range_returns_the_slice(store: Store) -> None:
    data = bytes(range(256)) * 4
    store.put("r", data)
    assert store.get_range("r", 0, 1) == data[:1]
    assert store.get_range("r", 10, 20) == data[10:30]


def test_get_range_is_short_at_and_empty_past_the_end(store: Store) -> None:
    data = bytes(range(256)) * 4
    store.put("r", data)
    assert store.get_range("r", 1000, 100) == data[1000:]
    assert store.get_range("r", 1024, 10) == b""
    assert store.get_range("r", 5000, 10) == b""


@pytest.mark.parametrize("op", ["get", "get_with_token", "get_range", "get_file"])
def test_missing_key_raises_key_not_found_naming_key_and_store(
    store: Store, op: str, tmp_path: Path
) -> None:
    calls = {
        "get": lambda: store.get("no/such-key"),
        "get_with_token": lambda: store.get_with_token("no/such-key"),
        "get_range": lambda: store.get_range("no/such-key", 0, 10),
        "get_file": lambda: store.get_file("no/such-key", tmp_path / "out"),
    }
    with pytest.raises(KeyNotFound) as exc:
        calls[op]()
    assert "no/such-key" in str(exc.value)
    assert store.url in str(exc.value)


# -- conditional writes --------------------------------------------------------------------------
def test_put_if_absent_creates_once_and_keeps_the_first_content(store: Store) -> None:
    assert store.put_if_absent("claim", b"first") is True
    assert store.put_if_absent("claim", b"second") is False
    assert store.get("claim") == b"first"


def test_put_if_match_with_current_token_replaces(store: Store) -> None:
    store.put("rec", b"v1")
    _, token = store.get_with_token("rec")
    assert store.put_if_match("rec", b"v2", token) is True
    assert store.get("rec") == b"v2"


def test_put_if_match_with_stale_token_changes_nothing(store: Store) -> None:
    store.put("rec", b"v1")
    _, stale = store.get_with_token("rec")
    store.put("rec", b"v2")
    assert store.put_if_match("rec", b"v3", stale) is False
    assert store.get("rec") == b"v2"


def test_put_if_match_on_a_vanished_key_is_false(store: Store) -> None:
    store.put("rec", b"v1")
    _, token = store.get_with_token("rec")
    store.delete("rec")
    assert store.put_if_match("rec", b"v2", token) is False
    assert store.head("rec") is None


def test_concurrent_put_if_absent_has_exactly_one_winner(store: Store) -> None:
    barrier = threading.Barrier(8)

    def claim(i: int) -> bool:
        barrier.wait()
        return store.put_if_absent("race", f"writer-{i}".encode())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim, range(8)))
    assert results.count(True) == 1
    assert store.get("race") == f"writer-{results.index(True)}".encode()


def test_concurrent_put_if_match_has_exactly_one_winner(store: Store) -> None:
    store.put("cas", b"base")
    _, token = store.get_with_token("cas")
    barrier = threading.Barrier(8)

    def swap(i: int) -> bool:
        barrier.wait()
        return store.put_if_match("cas", f"writer-{i}".encode(), token)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(swap, range(8)))
    assert results.count(True) == 1
    assert store.get("cas") == f"writer-{results.index(True)}".encode()


# -- files ---------------------------------------------------------------------------------------
def test_get_file_hashed_returns_the_digest_of_the_bytes_written(store: Store,
                                                                  tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(LARGE_FILE_SIZE))
    store.put_file("blobs/big", src)
    store.put("empty", b"")
    dest = tmp_path / "copy.bin"
    assert store.get_file_hashed("blobs/big", dest) == _sha256(src)
    assert dest.read_bytes() == src.read_bytes()
    assert store.get_file_hashed("empty", dest) == hashlib.sha256(b"").hexdigest()
    assert dest.read_bytes() == b""
    with pytest.raises(KeyNotFound):
        store.get_file_hashed("missing", dest)


def test_put_file_get_file_round_trip_a_large_file(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(LARGE_FILE_SIZE))
    store.put_file("blobs/big", src)
    dest = tmp_path / "copy.bin"
    dest.write_bytes(b"stale content longer than nothing")  # must be truncated
    store.get_file("blobs/big", dest)
    assert dest.stat().st_size == LARGE_FILE_SIZE
    assert _sha256(dest) == _sha256(src)
    info = store.head("blobs/big")
    assert info is not None and info.size == LARGE_FILE_SIZE
    # A range across the 16 MiB part boundary of the multipart upload.
    with open(src, "rb") as f:
        f.seek(16 * MiB - 5)
        assert store.get_range("blobs/big", 16 * MiB - 5, 10) == f.read(10)


# -- listing -------------------------------------------------------------------------------------
def test_list_returns_every_key_in_order_across_pages(listed_store: Store) -> None:
    keys = list(listed_store.list("blobs/"))
    assert keys == sorted(_many_keys())


def test_list_filters_by_prefix(listed_store: Store) -> None:
    keys = list(listed_store.list("blobs/ab/"))
    assert keys == sorted(k for k in _many_keys() if k.startswith("blobs/ab/"))
    assert list(listed_store.list("blobs/ab/0000")) == [
        "blobs/ab/00001",
        "blobs/ab/00003",
        "blobs/ab/00005",
        "blobs/ab/00007",
        "blobs/ab/00009",
    ]
    assert list(listed_store.list("runs")) == ["runs-outside-prefix"]
    assert list(listed_store.list("nothing/")) == []


def test_list_dirs_names_immediate_subfolders(listed_store: Store) -> None:
    assert listed_store.list_dirs("blobs/") == ["ab", "cd"]
    assert listed_store.list_dirs("") == ["blobs", "other"]
    assert listed_store.list_dirs("nothing/") == []


# -- delete --------------------------------------------------------------------------------------
def test_delete_removes_the_key_and_ignores_absent_keys(store: Store) -> None:
    store.put("d/k", b"x")
    store.delete("d/k")
    assert store.head("d/k") is None
    assert list(store.list("d/")) == []
    store.delete("d/k")  # absent: no error


# -- backend specifics ---------------------------------------------------------------------------
@pytest.fixture
def s3_store(make_store_url: Callable[[str], str]) -> Iterator[Store]:
    s = open_store(make_store_url("s3"))
    yield s
    s.close()


@pytest.fixture
def gcs_store(make_store_url: Callable[[str], str]) -> Iterator[Store]:
    s = open_store(make_store_url("gcs"))
    yield s
    s.close()


def _s3_head(store: Store, key: str) -> dict:
    import boto3

    bucket, prefix = store.url[len("s3://") :].split("/", 1)
    return boto3.client("s3").head_object(
        Bucket=bucket, Key=f"{prefix}/{key}", ChecksumMode="ENABLED"
    )


def test_s3_every_put_is_server_side_encrypted(
    make_store_url: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ARTFS_S3_SSE", "AES256")
    store = open_store(make_store_url("s3"))
    src = tmp_path / "f"
    src.write_bytes(b"file")
    store.put("a", b"a")
    assert store.put_if_absent("b", b"b")
    assert store.put_if_match("a", b"a2", store.get_with_token("a")[1])
    store.put_file("c", src)
    for key in ("a", "b", "c"):
        assert _s3_head(store, key).get("ServerSideEncryption") == "AES256", key


def test_s3_uploads_carry_a_sha256_checksum(s3_store: Store, tmp_path: Path) -> None:
    s3_store.put("a", b"payload")
    expected = hashlib.sha256(b"payload").digest()
    assert _s3_head(s3_store, "a")["ChecksumSHA256"] == base64.b64encode(expected).decode()


def test_s3_file_uploads_carry_a_crc32_per_part(s3_store: Store, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"file bytes")
    s3_store.put_file("f", src)
    expected = zlib.crc32(b"file bytes").to_bytes(4, "big")
    assert _s3_head(s3_store, "f")["ChecksumCRC32"] == base64.b64encode(expected).decode()


@pytest.fixture
def proxied(request: pytest.FixtureRequest, make_bucket: Callable[..., str],
            monkeypatch: pytest.MonkeyPatch) -> Callable[[str], tuple[Store, FaultProxy]]:
    """`proxied(kind)`: a store on a fresh bucket reached through a fault proxy (no faults
    unless the test aims one)."""
    proxies: list[FaultProxy] = []
    stores: list[Store] = []

    def make(kind: str) -> tuple[Store, FaultProxy]:
        bucket = make_bucket(kind)
        server = request.getfixturevalue(f"{kind}_server")
        proxy = FaultProxy(server.endpoint, rate=0.0, seed=1).start()
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL" if kind == "s3" else "STORAGE_EMULATOR_HOST",
                           proxy.endpoint)
        store = open_store(f"{'s3' if kind == 's3' else 'gs'}://{bucket}/reg")
        stores.append(store)
        return store, proxy

    yield make
    for s in stores:
        s.close()
    for p in proxies:
        p.stop()


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_a_resent_conditional_write_that_had_landed_still_counts_as_won(
    proxied: Callable[[str], tuple[Store, FaultProxy]], kind: str
) -> None:
    """The write reaches the server, the connection drops before its response; the client's
    retry then fails its own precondition (412), which must still count as won."""
    store, proxy = proxied(kind)
    # S3 names the key in the path; GCS in the body of its single upload request.
    proxy.inject("drop_after", lambda r: r.method in ("PUT", "POST")
                 and ("claim" in r.path or "/upload/" in r.path))
    assert store.put_if_absent("claim", b"mine") is True
    assert proxy.counts["drop_after"] == 1
    assert store.put_if_absent("claim", b"theirs") is False
    assert store.get("claim") == b"mine"


def test_s3_access_denied_names_key_and_registry(iam_s3: IamS3) -> None:
    bucket = f"denied-{uuid.uuid4().hex[:12]}"
    iam_s3.client("s3").create_bucket(Bucket=bucket)
    read_only = iam_s3.identity({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]})
    with identity_env(read_only):
        store = open_store(f"s3://{bucket}/reg")
        try:
            with pytest.raises(AccessDenied) as exc:
                store.put("secret/key", b"x")
            assert list(store.list("")) == []  # reading is allowed, and nothing was written
        finally:
            store.close()
    assert "access denied writing 'secret/key'" in str(exc.value)
    assert f"s3://{bucket}/reg" in str(exc.value)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_missing_bucket_is_a_store_error_naming_the_bucket(
    kind: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(f"{kind}_server")
    scheme = "s3" if kind == "s3" else "gs"
    store = open_store(f"{scheme}://artfs-no-such-bucket/reg")
    for write in (lambda: store.put("k", b"x"), lambda: store.put_if_absent("k", b"x")):
        with pytest.raises(StoreError) as exc:
            write()
        assert not isinstance(exc.value, KeyNotFound)
        assert "artfs-no-such-bucket" in str(exc.value) and "'k'" in str(exc.value)
    with pytest.raises(StoreError, match="artfs-no-such-bucket"):
        list(store.list("x/"))


def test_gcs_conditional_writes_refuse_sizes_that_would_be_resumable(gcs_store: Store) -> None:
    with pytest.raises(StoreError, match="conditional write"):
        gcs_store.put_if_absent("big", b"x" * (8 * MiB + 1))
    assert gcs_store.head("big") is None


def test_gcs_access_denied_names_key_and_registry(
    gcs_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in: fake-gcs-server has no IAM, so no request to it is ever refused; the
    # client's Forbidden is raised where the upload would have received it.
    from google.api_core.exceptions import Forbidden
    from google.cloud.storage import Blob

    def forbidden(*_: object, **__: object) -> None:
        raise Forbidden("denied")

    monkeypatch.setattr(Blob, "upload_from_string", forbidden)
    with pytest.raises(AccessDenied) as exc:
        gcs_store.put("secret/key", b"x")
    assert "access denied writing 'secret/key'" in str(exc.value)
    assert gcs_store.url in str(exc.value)
