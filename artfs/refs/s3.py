"""`s3://bucket/key` references: ETag and version id at add time, pinned reads at use time.

A reference bucket is not the registry: it is read with its own boto3 client built from the
standard AWS configuration (AWS_* variables, profiles, AWS_ENDPOINT_URL), so its credentials may
differ from the registry store's. What pins the bytes at read time:
- a version id, when the bucket is versioned: the read asks for that version, so the reference
  keeps working after the key is overwritten or deleted;
- otherwise the ETag, sent as `If-Match`: S3 answers 412 once the key was overwritten.
A plain ETag (32 hex digits, no `-N` multipart suffix) is the MD5 of the bytes unless the object
is encrypted with KMS or a customer key; a full fetch checks that MD5 and the size as well.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import AccessDenied, SourceError
from ..manifest import Entry
from ..names import check_entry_path
from .naming import COUNT_PAST_LIMIT, entry_name, split_bucket_uri, too_many
from .verify import STREAM_CHUNK, StreamCheck, changed, check_range, expected_range, vanished

#: Keys per list request; S3's own maximum. Tests lower it to exercise pagination cheaply.
LIST_PAGE_SIZE = 1000
#: Connections per client: the SDK and the filesystem read references from many threads.
MAX_POOL_CONNECTIONS = 32
#: botocore's "standard" retry mode: throttling, 5xx and connection errors, jittered backoff.
MAX_ATTEMPTS = 8

_PLAIN_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_ACCESS_DENIED = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                  "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem"}
_NOT_FOUND = {"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "NotFound", "404"}
#: The settings that choose which credentials and endpoint a client uses; a change to any of
#: them (a test pointing boto3 at another server, say) must not reuse a stale client.
_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
               "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
               "AWS_SHARED_CREDENTIALS_FILE")

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def client() -> Any:
    """The process's boto3 client for reference buckets (thread-safe, so shared)."""
    key = (os.getpid(), *(os.environ.get(k) for k in _CLIENT_ENV))
    with _clients_lock:
        c = _clients.get(key)
        if c is None:
            config = Config(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                            max_pool_connections=MAX_POOL_CONNECTIONS)
            try:
                c = boto3.session.Session().client("s3", config=config)
            except BotoCoreError as e:
                raise SourceError(f"cannot create an S3 client for references: {e}") from e
            _clients[key] = c
        return c


def parse(uri: str) -> tuple[str, str]:
    return split_bucket_uri(uri, "s3", "S3", "key")


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _denied(e: ClientError) -> bool:
    return _status(e) == 403 or _code(e) in _ACCESS_DENIED


def _not_found(e: ClientError) -> bool:
    return _status(e) == 404 or _code(e) in _NOT_FOUND


def _add_error(uri: str, e: ClientError | BotoCoreError) -> Exception:
    """The error for a failure while recording a reference; it names the URI."""
    if isinstance(e, ClientError):
        if _denied(e):
            return AccessDenied(
                f"access denied to reference {uri} with the standard AWS credentials "
                f"({_code(e)}); configure AWS_PROFILE or AWS_* variables for this bucket"
            )
        if _code(e) == "NoSuchBucket":
            return SourceError(f"reference {uri} does not exist: no such bucket")
    return SourceError(f"cannot read reference {uri}: {e}")


@contextmanager
def _adding(uri: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as e:
        raise _add_error(uri, e) from e


def _version_id(value: str | None) -> str | None:
    # "null" is the version of every object written while versioning was off: an overwrite
    # replaces it, so recording it would pin nothing.
    return value if value and value != "null" else None


def _extra(etag: str | None, version_id: str | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if etag:
        extra["etag"] = etag
    if _version_id(version_id):
        extra["version_id"] = version_id
    return extra


def _object_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def expand(uri: str, name: str | None, checksum: bool, max_objects: int) -> list[Entry]:
    """One entry for an object, or one per object below a prefix (naming table of the spec).

    `s3://b/model.h5` may be an object or a "folder": a HEAD settles the common case (an object)
    in one request and, when both `model.h5` and `model.h5/...` exist, picks the object the URI
    names exactly. Only when it is absent is `key + '/'` listed, with the slash so that
    `s3://b/images` never picks up `images2/...`.
    """
    bucket, key = parse(uri)
    s3 = client()
    if key and not key.endswith("/"):
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if not _not_found(e) or _code(e) == "NoSuchBucket":
                raise _add_error(uri, e) from e
        except BotoCoreError as e:
            raise _add_error(uri, e) from e
        else:
            path = check_entry_path(entry_name(key, name, None))
            if not checksum:
                return [Entry(path, None, None, uri)]
            return [Entry(path, int(head["ContentLength"]), None, uri,
                          _extra(head.get("ETag"), head.get("VersionId")))]
    prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
    entries: list[Entry] = []
    with _adding(uri):
        for obj_key, size, etag, version_id in _list(s3, uri, bucket, prefix, max_objects):
            rel = obj_key[len(prefix):]
            path = check_entry_path(entry_name(key, name, rel))
            ref = _object_uri(bucket, obj_key)
            if checksum:
                entries.append(Entry(path, size, None, ref, _extra(etag, version_id)))
            else:
                entries.append(Entry(path, None, None, ref))
    if not entries:
        raise SourceError(f"reference {uri} does not exist: no object {key!r} and no objects "
                          f"below {prefix!r} in bucket {bucket!r}")
    return entries


def _list(s3: Any, uri: str, bucket: str, prefix: str, max_objects: int
          ) -> Iterator[tuple[str, int, str | None, str | None]]:
    """(key, size, etag, version id) of the current objects below `prefix`, up to the limit.

    Version ids only come from ListObjectVersions (one listing gives them all, instead of a
    HEAD per object), which is also slower than ListObjectsV2 (on moto by ~25%), so it is used
    only where versions can exist: a bucket whose versioning was ever turned on, or whose
    status these credentials may not read. Credentials allowed ListBucket but not
    ListBucketVersions fall back to ListObjectsV2; reads are then pinned by ETag alone.
    Keys ending in `/` are "folder" placeholders made by consoles, not files.
    """
    rows: Iterator[tuple[str, int, str | None, str | None]] | None = None
    if _may_hold_versions(s3, bucket):
        try:
            pages = s3.get_paginator("list_object_versions").paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE})
            versions = _rows_of_versions(pages)
            first = next(versions, None)
            rows = itertools.chain([first] if first else [], versions)
        except ClientError as e:
            if not _denied(e):
                raise
    if rows is None:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE})
        rows = ((o["Key"], int(o["Size"]), o.get("ETag"), None)
                for page in pages for o in page.get("Contents", ()))
    count = 0
    for row in rows:
        if row[0].endswith("/"):
            continue
        count += 1
        if count > max_objects:
            for row in rows:
                count += 0 if row[0].endswith("/") else 1
                if count > max_objects + COUNT_PAST_LIMIT:
                    raise too_many(uri, max_objects + COUNT_PAST_LIMIT, max_objects, False)
            raise too_many(uri, count, max_objects, True)
        yield row


def _may_hold_versions(s3: Any, bucket: str) -> bool:
    """False only for a bucket whose versioning was never turned on (no Status at all)."""
    try:
        return bool(s3.get_bucket_versioning(Bucket=bucket).get("Status"))
    except ClientError as e:
        if _denied(e):
            return True
        raise


def _rows_of_versions(pages: Any) -> Iterator[tuple[str, int, str | None, str | None]]:
    # A key whose latest version is a delete marker has no `IsLatest` version: it is deleted.
    for page in pages:
        for v in page.get("Versions", ()):
            if v.get("IsLatest"):
                yield v["Key"], int(v["Size"]), v.get("ETag"), v.get("VersionId")


# -- reading ------------------------------------------------------------------------------------
def _pin(entry: Entry) -> dict[str, str]:
    """GET arguments that make S3 return the recorded object or refuse."""
    version_id = entry.extra.get("version_id")
    if version_id:
        return {"VersionId": version_id}
    etag = entry.extra.get("etag")
    return {"IfMatch": etag} if etag else {}


@contextmanager
def _reading(entry: Entry, bucket: str, key: str) -> Iterator[None]:
    """Errors while reading a recorded reference: changed, vanished or denied, naming it."""
    try:
        yield
    except ClientError as e:
        if _denied(e):
            raise AccessDenied(
                f"access denied reading reference {entry.ref} (entry {entry.path}) with the "
                f"standard AWS credentials ({_code(e)})"
            ) from e
        if _status(e) == 412 or _code(e) == "PreconditionFailed":
            raise changed(entry, f"its ETag is no longer {entry.extra.get('etag')}") from e
        if _not_found(e):
            raise _gone(entry, bucket, key) from e
        raise SourceError(f"cannot read reference {entry.ref} (entry {entry.path}): {e}") from e
    except BotoCoreError as e:
        raise SourceError(f"cannot read reference {entry.ref} (entry {entry.path}): {e}") from e


def _gone(entry: Entry, bucket: str, key: str) -> Exception:
    """Vanished, or (a pinned version missing while the key exists) changed: say which."""
    if entry.extra.get("version_id"):
        try:
            head = client().head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError):
            pass
        else:
            return changed(entry, f"version {entry.extra['version_id']} no longer exists; "
                                  f"the key now holds version {head.get('VersionId')}")
    return vanished(entry)


def _check_etag(entry: Entry, response: dict[str, Any]) -> None:
    recorded, got = entry.extra.get("etag"), response.get("ETag")
    if recorded and got and recorded != got:
        raise changed(entry, f"ETag {got} differs from recorded {recorded}")


def _md5_of_etag(entry: Entry, response: dict[str, Any]) -> str | None:
    """The MD5 an ETag stands for, or None where the ETag is not one (multipart, KMS, SSE-C)."""
    m = _PLAIN_MD5_ETAG.match(entry.extra.get("etag") or "")
    if not m or response.get("SSECustomerAlgorithm"):
        return None
    if str(response.get("ServerSideEncryption", "")).startswith("aws:kms"):
        return None
    return m.group(1)


def fetch(entry: Entry, dest: Path) -> None:
    """Download the recorded object (version) to `dest`, verified; without a checksum, the
    key's current object."""
    assert entry.ref is not None
    bucket, key = parse(entry.ref)
    with _reading(entry, bucket, key):
        response = client().get_object(Bucket=bucket, Key=key, **_pin(entry))
        _check_etag(entry, response)
        check = StreamCheck(entry, md5_hex=_md5_of_etag(entry, response))
        body = response["Body"]
        try:
            with open(dest, "wb") as f:
                for chunk in body.iter_chunks(STREAM_CHUNK):
                    check.update(chunk)
                    f.write(chunk)
        finally:
            body.close()
    check.check()


def read_range(entry: Entry, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` of the recorded object (fewer at its end), by ranged GET."""
    assert entry.ref is not None
    expected = expected_range(entry, offset, length)
    if expected == 0 or length == 0:
        return b""
    bucket, key = parse(entry.ref)
    end = offset + (expected if expected is not None else length) - 1
    with _reading(entry, bucket, key):
        try:
            response = client().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{end}",
                                            **_pin(entry))
        except ClientError as e:
            if expected is None and (_status(e) == 416 or _code(e) == "InvalidRange"):
                return b""  # past the end of an object whose size was not recorded
            raise
        _check_etag(entry, response)
        body = response["Body"]
        try:
            data = body.read()
        finally:
            body.close()
    return check_range(entry, offset, expected, data)
