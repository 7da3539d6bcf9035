"""References (issue 4, `sdk/__init__.py`): http(s), s3, gs and file URIs against real servers.

Sources live on nginx, moto (versioned and unversioned buckets) and fake-gcs-server; the
registry is the default local one unless the test is about the registry (`registry_url`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

import sdk
from artfs import refs
from artfs.errors import (
    AccessDenied,
    ReferenceChanged,
    SourceError,
    TooManyObjects,
    UnsupportedScheme,
)
from artfs.manifest import Entry
from artfs.refs import gs as refs_gs
from artfs.refs import s3 as refs_s3
from tests.http_server import HttpServer
from tests.servers import IamS3, identity_env

#: W&B's documented example project, as objects (plus a sibling prefix that must never match).
EXAMPLE = {
    "images/cat.png": b"cat-bytes",
    "images/dog.png": b"dog-bytes",
    "images2/cow.png": b"cow-bytes",
    "checkpoints/model.h5": b"checkpoint-model",
    "model.h5": b"model",
}
NAMING_TABLE = [
    ("model.h5", None, ["model.h5"]),
    ("checkpoints/model.h5", None, ["model.h5"]),
    ("model.h5", "models/mymodel.h5", ["models/mymodel.h5"]),
    ("images", None, ["cat.png", "dog.png"]),
    ("images", "images", ["images/cat.png", "images/dog.png"]),
]
_names = itertools.count()


# -- sources --------------------------------------------------------------------------------------
class Source:
    """A place to put, overwrite and delete objects, addressed by URI."""

    scheme: str

    def put(self, key: str, data: bytes) -> str:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError


class S3Source(Source):
    scheme = "s3"

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.client = boto3.client("s3")

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)


class GCSSource(Source):
    scheme = "gs"

    def __init__(self, bucket: str) -> None:
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        self.bucket = client.bucket(bucket)

    def put(self, key: str, data: bytes) -> str:
        self.bucket.blob(key).upload_from_string(data)
        return f"gs://{self.bucket.name}/{key}"

    def delete(self, key: str) -> None:
        self.bucket.blob(key).delete()


class HTTPSource(Source):
    scheme = "http"

    def __init__(self, server: HttpServer, folder: str, etag: bool = True) -> None:
        self.server, self.folder, self.etag = server, folder, etag
        self._mtime = itertools.count(1_600_000_000, 1000)

    def put(self, key: str, data: bytes) -> str:
        f = self.server.root / self.folder / key
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        # nginx's ETag is mtime-size: give every write its own mtime, as a later write would.
        t = next(self._mtime)
        os.utime(f, (t, t))
        return self.server.url(f"{self.folder}/{key}", etag=self.etag)

    def delete(self, key: str) -> None:
        (self.server.root / self.folder / key).unlink()


class FileSource(Source):
    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: bytes) -> str:
        f = self.root / key
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        return f.as_uri()

    def delete(self, key: str) -> None:
        (self.root / key).unlink()


@pytest.fixture
def s3_source(make_bucket: Callable[..., str]) -> S3Source:
    return S3Source(make_bucket("s3"))


@pytest.fixture
def s3_versioned(make_bucket: Callable[..., str]) -> S3Source:
    return S3Source(make_bucket("s3", versioned=True))


@pytest.fixture
def gcs_source(make_bucket: Callable[..., str]) -> GCSSource:
    return GCSSource(make_bucket("gcs"))


@pytest.fixture
def gcs_versioned(make_bucket: Callable[..., str]) -> GCSSource:
    return GCSSource(make_bucket("gcs", versioned=True))


@pytest.fixture
def http_source(http_server: HttpServer) -> HTTPSource:
    return HTTPSource(http_server, f"t{next(_names)}-{os.getpid()}")


@pytest.fixture
def file_source(tmp_path: Path) -> FileSource:
    return FileSource(tmp_path / "files")


@pytest.fixture(params=["s3", "gs", "http", "file"])
def any_source(request: pytest.FixtureRequest) -> Source:
    fixture = {"s3": "s3_source", "gs": "gcs_source", "http": "http_source",
               "file": "file_source"}[request.param]
    return request.getfixturevalue(fixture)


# -- helpers --------------------------------------------------------------------------------------
def log_refs(*refs_: tuple[str, dict[str, Any]], name: str = "refs") -> sdk.Artifact:
    art = sdk.Artifact(name, type="dataset")
    for uri, kwargs in refs_:
        art.add_reference(uri, **kwargs)
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    return art


def log_ref(uri: str, **kwargs: Any) -> sdk.Artifact:
    return log_refs((uri, kwargs))


def entries_of(art: sdk.Artifact) -> dict[str, Entry]:
    return dict(art.manifest)


def download_one(art: sdk.Artifact, path: str, root: Path) -> bytes:
    return Path(art.get_path(path).download(root)).read_bytes()


# -- the spec's naming table ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def example_buckets(make_bucket: Callable[..., str]) -> dict[str, str]:
    """The example project in one S3 and one GCS bucket, shared by the naming tests."""
    s3, gcs = S3Source(make_bucket("s3")), GCSSource(make_bucket("gcs"))
    for key, data in EXAMPLE.items():
        s3.put(key, data)
        gcs.put(key, data)
    return {"s3": s3.bucket, "gs": gcs.bucket.name}


@pytest.mark.parametrize("scheme", ["s3", "gs"])
@pytest.mark.parametrize(("target", "name", "expected"), NAMING_TABLE)
def test_bucket_reference_naming(example_buckets, scheme, target, name, expected) -> None:
    art = log_ref(f"{scheme}://{example_buckets[scheme]}/{target}", name=name)
    assert sorted(e.path for e in art.files()) == expected


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_prefix_with_trailing_slash_is_the_same_prefix(example_buckets, scheme) -> None:
    art = log_ref(f"{scheme}://{example_buckets[scheme]}/images/")
    assert sorted(e.path for e in art.files()) == ["cat.png", "dog.png"]


@pytest.mark.parametrize(("name", "expected"), [(None, "model.h5"),
                                                ("models/mymodel.h5", "models/mymodel.h5")])
def test_http_reference_naming(http_source: HTTPSource, name, expected) -> None:
    uri = http_source.put("checkpoints/model.h5", b"model")
    assert [e.path for e in log_ref(uri, name=name).files()] == [expected]


# -- what is recorded ----------------------------------------------------------------------------
def test_s3_records_etag_and_size(s3_source: S3Source) -> None:
    uri = s3_source.put("a.bin", b"abc")
    (entry,) = entries_of(log_ref(uri)).values()
    assert (entry.ref, entry.size, entry.digest) == (uri, 3, None)
    assert entry.extra == {"etag": '"900150983cd24fb0d6963f7d28e17f72"'}  # md5 of "abc"


def test_s3_records_version_id_in_a_versioned_bucket(s3_versioned: S3Source) -> None:
    uri = s3_versioned.put("a.bin", b"abc")
    version_id = s3_versioned.client.head_object(Bucket=s3_versioned.bucket,
                                                 Key="a.bin")["VersionId"]
    (entry,) = entries_of(log_ref(uri)).values()
    assert entry.extra["version_id"] == version_id


def test_s3_prefix_records_version_ids(s3_versioned: S3Source) -> None:
    s3_versioned.put("d/a", b"old")
    s3_versioned.put("d/a", b"new")
    s3_versioned.put("d/gone", b"x")
    s3_versioned.delete("d/gone")  # only a delete marker is current: not an entry
    (entry,) = entries_of(log_ref(f"s3://{s3_versioned.bucket}/d")).values()
    head = s3_versioned.client.head_object(Bucket=s3_versioned.bucket, Key="d/a")
    assert (entry.path, entry.size, entry.extra["version_id"]) == ("a", 3, head["VersionId"])


def test_gs_records_generation_md5_and_crc32c(gcs_source: GCSSource) -> None:
    uri = gcs_source.put("a.bin", b"abc")
    blob = gcs_source.bucket.get_blob("a.bin")
    (entry,) = entries_of(log_ref(uri)).values()
    assert entry.size == 3
    assert entry.extra == {"generation": blob.generation, "md5": blob.md5_hash,
                           "crc32c": blob.crc32c}


def test_http_records_etag_and_content_length(http_source: HTTPSource) -> None:
    uri = http_source.put("a.bin", b"abcd")
    (entry,) = entries_of(log_ref(uri)).values()
    assert entry.size == 4
    assert entry.extra["etag"].startswith('"')


def test_file_records_size_and_sha256(file_source: FileSource) -> None:
    uri = file_source.put("a.bin", b"abc")
    (entry,) = entries_of(log_ref(uri)).values()
    assert (entry.size, entry.digest) == (
        3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_checksum_false_keeps_only_the_uri(any_source: Source) -> None:
    uri = any_source.put("a.bin", b"abc")
    (entry,) = entries_of(log_ref(uri, checksum=False)).values()
    assert (entry.ref, entry.size, entry.digest, dict(entry.extra)) == (uri, None, None, {})


# -- round trip on every registry kind ------------------------------------------------------------
def test_reference_logs_and_downloads_on_every_registry(registry_url: str, any_source: Source,
                                                        tmp_path: Path) -> None:
    uri_a = any_source.put("d/a.bin", b"alpha")
    uri_b = any_source.put("d/sub/b.bin", b"beta" * 1000)
    art = log_refs((uri_a, {}), (uri_b, {"name": "sub/b.bin"}))
    again = sdk.Api().artifact("refs:latest")
    assert again.get_path("a.bin").ref == uri_a
    root = Path(again.download(tmp_path / "dl"))
    assert (root / "a.bin").read_bytes() == b"alpha"
    assert (root / "sub" / "b.bin").read_bytes() == b"beta" * 1000
    assert art.version == log_refs((uri_a, {}), (uri_b, {"name": "sub/b.bin"})).version


# -- a changed or vanished source -----------------------------------------------------------------
def test_overwritten_source_is_refused_on_download(any_source: Source, tmp_path: Path) -> None:
    uri = any_source.put("a.bin", b"original")
    art = log_ref(uri)
    any_source.put("a.bin", b"overwritten!")
    with pytest.raises(ReferenceChanged, match="changed") as e:
        download_one(art, "a.bin", tmp_path / "dl")
    assert uri in str(e.value) and "a.bin" in str(e.value)
    assert not (tmp_path / "dl" / "a.bin").exists()


def test_deleted_source_is_refused_on_download(any_source: Source, tmp_path: Path) -> None:
    uri = any_source.put("a.bin", b"original")
    art = log_ref(uri)
    any_source.delete("a.bin")
    with pytest.raises(ReferenceChanged, match="vanished") as e:
        download_one(art, "a.bin", tmp_path / "dl")
    assert uri in str(e.value)


@pytest.mark.parametrize("versioned", ["s3_versioned", "gcs_versioned"])
def test_versioned_bucket_serves_the_recorded_version_after_overwrite_and_delete(
        request: pytest.FixtureRequest, versioned: str, tmp_path: Path) -> None:
    source: S3Source | GCSSource = request.getfixturevalue(versioned)
    uri = source.put("a.bin", b"original")
    art = log_ref(uri)
    source.put("a.bin", b"overwritten!")
    assert download_one(art, "a.bin", tmp_path / "one") == b"original"
    source.delete("a.bin")
    assert download_one(art, "a.bin", tmp_path / "two") == b"original"


def test_checksum_false_downloads_whatever_is_there_now(any_source: Source,
                                                        tmp_path: Path) -> None:
    uri = any_source.put("a.bin", b"original")
    art = log_ref(uri, checksum=False)
    any_source.put("a.bin", b"overwritten!")
    assert download_one(art, "a.bin", tmp_path / "dl") == b"overwritten!"


# -- errors at add time ---------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["s3", "gs", "http", "file"])
def test_missing_source_is_refused_at_add_time(request: pytest.FixtureRequest,
                                               scheme: str) -> None:
    source: Source = request.getfixturevalue(
        {"s3": "s3_source", "gs": "gcs_source", "http": "http_source", "file": "file_source"}[
            scheme])
    uri = source.put("present.bin", b"x").replace("present.bin", "missing.bin")
    with pytest.raises(SourceError, match="does not exist") as e:
        sdk.Artifact("refs", type="dataset").add_reference(uri)
    assert uri in str(e.value)


def test_missing_bucket_is_refused_at_add_time(s3_server) -> None:
    with pytest.raises(SourceError, match="s3://no-such-bucket-artfs/x"):
        sdk.Artifact("refs", type="dataset").add_reference("s3://no-such-bucket-artfs/x")


def test_unknown_scheme_is_refused_naming_it() -> None:
    with pytest.raises(UnsupportedScheme, match=r"ftp://host/x.*known schemes are"):
        sdk.Artifact("refs", type="dataset").add_reference("ftp://host/x")


def test_http_access_denied_names_the_uri(http_server: HttpServer) -> None:
    uri = f"{http_server.base}/denied/x.bin"
    with pytest.raises(AccessDenied, match=uri):
        sdk.Artifact("refs", type="dataset").add_reference(uri)


# -- a server without ETag ------------------------------------------------------------------------
def test_server_without_etag_records_length_and_checks_it(http_server: HttpServer,
                                                         tmp_path: Path) -> None:
    source = HTTPSource(http_server, f"noetag{next(_names)}", etag=False)
    uri = source.put("a.bin", b"abcd")
    art = log_ref(uri)
    (entry,) = entries_of(art).values()
    assert (entry.size, dict(entry.extra)) == (4, {})
    assert download_one(art, "a.bin", tmp_path / "one") == b"abcd"
    source.put("a.bin", b"abcde")
    with pytest.raises(ReferenceChanged, match="recorded 4 bytes"):
        download_one(art, "a.bin", tmp_path / "two")


# -- prefixes: pagination and the object limit ----------------------------------------------------
@pytest.mark.parametrize("source_fixture", ["s3_source", "s3_versioned", "gcs_source"])
def test_prefix_listing_follows_pagination(request: pytest.FixtureRequest,
                                           monkeypatch: pytest.MonkeyPatch,
                                           source_fixture: str) -> None:
    source: Source = request.getfixturevalue(source_fixture)
    monkeypatch.setattr(refs_s3, "LIST_PAGE_SIZE", 2)
    monkeypatch.setattr(refs_gs, "LIST_PAGE_SIZE", 2)
    for i in range(7):
        uri = source.put(f"p/{i}.bin", b"x")
    entries = refs.expand(uri.rsplit("/", 1)[0], None, True, 100)
    assert sorted(e.path for e in entries) == [f"{i}.bin" for i in range(7)]


@pytest.mark.parametrize("scheme", ["s3", "gs", "file"])
def test_prefix_over_the_limit_is_a_clear_error(request: pytest.FixtureRequest,
                                                monkeypatch: pytest.MonkeyPatch,
                                                scheme: str) -> None:
    source: Source = request.getfixturevalue(
        {"s3": "s3_source", "gs": "gcs_source", "file": "file_source"}[scheme])
    for i in range(5):
        uri = source.put(f"p/{i}.bin", b"x")
    prefix = uri.rsplit("/", 1)[0]
    art = sdk.Artifact("refs", type="dataset")
    with pytest.raises(TooManyObjects, match="matches 5 objects.*limit of 3.*max_objects=5"):
        art.add_reference(prefix, max_objects=3)
    monkeypatch.setenv("ARTFS_MAX_OBJECTS", "4")
    with pytest.raises(TooManyObjects, match="ARTFS_MAX_OBJECTS=5"):
        art.add_reference(prefix)
    art.add_reference(prefix, max_objects=5)
    assert len(art._contents.refs) == 5


def test_count_past_the_limit_is_bounded(s3_source: S3Source,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refs_s3, "COUNT_PAST_LIMIT", 2)
    for i in range(6):
        s3_source.put(f"p/{i}", b"x")
    with pytest.raises(TooManyObjects, match="matches more than 3 objects"):
        refs.expand(f"s3://{s3_source.bucket}/p", None, True, 1)


def test_file_symlinks_are_not_followed_out_of_the_tree(file_source: FileSource,
                                                       tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"secret")
    file_source.put("d/a.bin", b"a")
    (file_source.root / "d" / "leak.txt").symlink_to(outside)
    (file_source.root / "d" / "inside.txt").symlink_to(file_source.root / "d" / "a.bin")
    entries = refs.expand((file_source.root / "d").as_uri(), None, True, 100)
    assert sorted(e.path for e in entries) == ["a.bin", "inside.txt"]


# -- lazy reads -----------------------------------------------------------------------------------
def test_entry_download_fetches_only_that_object(s3_source: S3Source, tmp_path: Path) -> None:
    s3_source.put("d/a.bin", b"a")
    s3_source.put("d/b.bin", b"b")
    art = log_ref(f"s3://{s3_source.bucket}/d")
    calls: list[str] = []
    events = refs_s3.client().meta.events

    def count(request: Any, **_: Any) -> None:
        calls.append(f"{request.method} {request.url}")

    events.register("before-send.s3", count)
    try:
        assert download_one(art, "b.bin", tmp_path / "dl") == b"b"
    finally:
        events.unregister("before-send.s3", count)
    assert len(calls) == 1 and calls[0].startswith("GET") and "d/b.bin" in calls[0]
    assert not (tmp_path / "dl" / "a.bin").exists()


def test_read_range_returns_slices_of_every_scheme(any_source: Source) -> None:
    data = bytes(range(256)) * 40
    uri = any_source.put("a.bin", data)
    (entry,) = refs.expand(uri, None, True, 10)
    assert refs.read_range(entry, 0, 10) == data[:10]
    assert refs.read_range(entry, 5000, 1000) == data[5000:6000]
    assert refs.read_range(entry, len(data) - 4, 100) == data[-4:]
    assert refs.read_range(entry, len(data), 10) == b""


def test_read_range_without_checksum_reads_to_the_end(any_source: Source) -> None:
    uri = any_source.put("a.bin", b"0123456789")
    (entry,) = refs.expand(uri, None, False, 10)
    assert refs.read_range(entry, 8, 100) == b"89"
    assert refs.read_range(entry, 10, 5) == b""


@pytest.mark.parametrize("source_fixture", ["s3_source", "gcs_source", "http_source"])
def test_read_range_of_a_changed_source_is_refused(request: pytest.FixtureRequest,
                                                   source_fixture: str) -> None:
    source: Source = request.getfixturevalue(source_fixture)
    uri = source.put("a.bin", b"0123456789")
    (entry,) = refs.expand(uri, None, True, 10)
    source.put("a.bin", b"abcdefghijkl")
    with pytest.raises(ReferenceChanged, match="a.bin"):
        refs.read_range(entry, 0, 4)


@pytest.mark.parametrize("source_fixture", ["s3_versioned", "gcs_versioned"])
def test_read_range_of_a_versioned_source_reads_the_recorded_version(
        request: pytest.FixtureRequest, source_fixture: str) -> None:
    source: S3Source | GCSSource = request.getfixturevalue(source_fixture)
    uri = source.put("a.bin", b"0123456789")
    (entry,) = refs.expand(uri, None, True, 10)
    source.put("a.bin", b"abcdefghijkl")
    assert refs.read_range(entry, 2, 4) == b"2345"


# -- credentials ----------------------------------------------------------------------------------
def iam_bucket(iam_s3: IamS3, objects: dict[str, bytes], versioned: bool = False) -> str:
    """A bucket on the IAM-enforcing server holding `objects`, set up by its admin."""
    bucket = f"private-{os.urandom(6).hex()}"
    admin = iam_s3.client("s3")
    admin.create_bucket(Bucket=bucket)
    if versioned:
        admin.put_bucket_versioning(Bucket=bucket,
                                    VersioningConfiguration={"Status": "Enabled"})
    for key, data in objects.items():
        admin.put_object(Bucket=bucket, Key=key, Body=data)
    return bucket


def allow(bucket: str, *actions: str) -> dict[str, object]:
    """A policy allowing only `actions` on `bucket` and its objects."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": list(actions),
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}


def test_s3_access_denied_at_add_time_names_the_uri(iam_s3: IamS3) -> None:
    bucket = iam_bucket(iam_s3, {"model.h5": b"weights"})
    uri = f"s3://{bucket}/model.h5"
    with identity_env(iam_s3.identity(allow(bucket, "s3:GetBucketLocation"))):
        with pytest.raises(AccessDenied, match=f"access denied to reference {uri}"):
            sdk.Artifact("refs", type="dataset").add_reference(uri)


def test_s3_access_denied_at_download_names_uri_and_entry(iam_s3: IamS3,
                                                          tmp_path: Path) -> None:
    bucket = iam_bucket(iam_s3, {"a.bin": b"abc"})
    uri = f"s3://{bucket}/a.bin"
    with identity_env(iam_s3.identity(allow(bucket, "s3:GetObject", "s3:ListBucket"))):
        art = log_ref(uri)
    with identity_env(iam_s3.identity(allow(bucket, "s3:ListBucket"))):
        with pytest.raises(AccessDenied, match=f"reference {uri} \\(entry a.bin\\)"):
            download_one(art, "a.bin", tmp_path / "dl")
    assert not (tmp_path / "dl" / "a.bin").exists()


def test_s3_prefix_without_list_versions_permission_falls_back_to_etags(iam_s3: IamS3) -> None:
    bucket = iam_bucket(iam_s3, {"d/a.bin": b"abc"}, versioned=True)
    etag = iam_s3.client("s3").head_object(Bucket=bucket, Key="d/a.bin")["ETag"]
    # Reading and listing allowed; s3:GetBucketVersioning and s3:ListBucketVersions not.
    with identity_env(iam_s3.identity(allow(bucket, "s3:GetObject", "s3:ListBucket"))):
        (entry,) = refs.expand(f"s3://{bucket}/d", None, True, 10)
    assert (entry.path, entry.size, dict(entry.extra)) == ("a.bin", 3, {"etag": etag})


def test_gs_access_denied_names_the_uri(gcs_server, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in: fake-gcs-server has no IAM, so no request to it is ever refused; the
    # client's Forbidden is raised where the bucket lookup would have received it.
    from google.api_core.exceptions import Forbidden

    def forbidden(*_: object, **__: object) -> None:
        raise Forbidden("denied")

    monkeypatch.setattr(storage.Bucket, "get_blob", forbidden)
    uri = "gs://private-bucket/model.h5"
    with pytest.raises(AccessDenied, match=f"access denied to reference {uri}"):
        sdk.Artifact("refs", type="dataset").add_reference(uri)
