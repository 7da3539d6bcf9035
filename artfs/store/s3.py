"""A registry in an S3 bucket (AWS or any S3-compatible server), on boto3.

Concurrent writers stay correct through S3's conditional writes: `If-None-Match: *` creates a
key only if absent, `If-Match: <etag>` replaces it only if unchanged; the server answers 412
when the condition fails. Endpoint, credentials and region come only from boto3's standard
configuration (AWS_ENDPOINT_URL, AWS_* variables, profiles), so artfs never needs its own
settings for them. Retries are botocore's; transfers of large files are s3transfer's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError
from s3transfer.exceptions import RetriesExceededError
from s3transfer.subscribers import BaseSubscriber
from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS

from .. import progress
from ..errors import AccessDenied, IntegrityError, KeyNotFound, StoreError
from .base import ObjectInfo, Store, split_bucket_url

log = logging.getLogger(__name__)

MiB = 1024 * 1024

#: Above this size a file goes up (and comes down) in parallel parts. Each request to S3 costs
#: tens of ms and each ranged GET on moto ~230 ms, so parts smaller than this buy little.
MULTIPART_THRESHOLD = 16 * MiB
#: Part size: at 16 MiB a part takes ~0.2 s at typical per-connection S3 bandwidth, short enough
#: that a retried part wastes little; s3transfer raises it for objects past 10,000 parts.
#: Downloads use the same size for their ranged GETs. Measured on moto (bench_s3, 256 MiB):
#: 16 MiB ranges 3.2 s, 64 MiB ranges 1.6 s, one single-stream GET 0.36 s, boto3's default
#: download_file (8 MiB) 5.7 s: moto copies the whole object for every ranged GET (~230 ms
#: each), so there fewer, bigger ranges win. On real S3 a single connection tops out near
#: 100 MB/s and each range is served independently, so parallel ~16 MiB ranges (AWS's own
#: guidance, 8-16 MiB) are what fill a fast link; we keep 16 MiB and accept moto's penalty.
MULTIPART_CHUNKSIZE = 16 * MiB
#: Parts in flight per store, shared by every transfer: enough to fill a ~1 GB/s link at
#: ~60 MB/s per connection, while leaving pool connections for small metadata requests.
MAX_CONCURRENCY = 16
#: HTTP connections per store. boto3 clients are thread-safe; a pool smaller than the number of
#: threads using the client would make urllib3 drop and re-open connections.
MAX_POOL_CONNECTIONS = 32
#: botocore's "standard" mode retries throttling, 5xx and connection errors with jittered
#: exponential backoff; 8 attempts ride out a ~20 s outage before a StoreError reaches the user.
MAX_ATTEMPTS = 8
#: Checksum the server verifies on every upload (and stores, so reads can be checked too).
UPLOAD_CHECKSUM = "SHA256"
#: Checksum of each part of a file upload. The registry has just hashed the file with SHA-256
#: (its content address, checked again on every read); a second SHA-256 per part cost ~0.6 s of
#: CPU per GiB on top, against a CRC32 at a fraction of that, which still lets the server catch
#: a part damaged on the way.
FILE_UPLOAD_CHECKSUM = "CRC32"
#: AWS answers 409 ConditionalRequestConflict when a conditional write races another write to the
#: same key and asks the client to resend; botocore does not retry 409, so we do, this often.
CONFLICT_ATTEMPTS = 5

#: botocore retries a request until its response headers arrive; a body cut off after that
#: (connection reset, short read) surfaces while reading it and is not retried by botocore.
#: Whole-object and ranged reads are idempotent, so they are re-issued this many times. Under
#: tests/faultproxy.py, 1 read in ~40 was cut off and failed a log before this retry existed.
READ_ATTEMPTS = 5

#: Metadata key holding a per-write id, to recognise our own write behind a 412 (see below).
WRITE_ID_META = "artfs-write-id"

_ACCESS_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}


def _sse_args_from_env() -> dict[str, str]:
    """Server-side encryption arguments for every put, from ARTFS_S3_SSE(_KMS_KEY_ID)."""
    mode = os.environ.get("ARTFS_S3_SSE", "").strip()
    key_id = os.environ.get("ARTFS_S3_SSE_KMS_KEY_ID", "").strip()
    if mode not in ("", "AES256", "aws:kms"):
        raise StoreError(f"ARTFS_S3_SSE={mode!r} is not one of 'AES256', 'aws:kms'")
    if key_id and mode != "aws:kms":
        raise StoreError("ARTFS_S3_SSE_KMS_KEY_ID is set but ARTFS_S3_SSE is not 'aws:kms'")
    args = {"ServerSideEncryption": mode} if mode else {}
    if key_id:
        args["SSEKMSKeyId"] = key_id
    return args


class _ReportProgress(BaseSubscriber):
    """Feeds the bytes of a multipart upload to the progress bar as its parts go out."""

    def on_progress(self, future: object, bytes_transferred: int, **kwargs: Any) -> None:
        progress.add(bytes_transferred)


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3Store(Store):
    """Keys live below `prefix/` in one bucket; one client and one transfer pool per store."""

    def __init__(self, url: str) -> None:
        self.url, self.bucket, self._prefix = split_bucket_url(url, "s3", "an S3")
        self._sse = _sse_args_from_env()
        self._checksum: str | None = UPLOAD_CHECKSUM
        config = Config(
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
            max_pool_connections=MAX_POOL_CONNECTIONS,
        )
        try:
            self._client = boto3.session.Session().client("s3", config=config)
        except BotoCoreError as e:
            raise StoreError(f"cannot create an S3 client for registry {self.url}: {e}") from e
        self._transfer = create_transfer_manager(
            self._client,
            TransferConfig(
                multipart_threshold=MULTIPART_THRESHOLD,
                multipart_chunksize=MULTIPART_CHUNKSIZE,
                max_concurrency=MAX_CONCURRENCY,
            ),
        )

    # -- helpers -----------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid store key {key!r} in {self.url}")
        return self._prefix + key

    def _error(self, e: ClientError, action: str, key: str) -> StoreError:
        code, status = _code(e), _status(e)
        if status == 403 or code in _ACCESS_DENIED_CODES:
            return AccessDenied(f"access denied {action} {key!r} in registry {self.url} ({code})")
        if code == "NoSuchBucket":
            return StoreError(
                f"bucket {self.bucket!r} of registry {self.url} does not exist ({action} {key!r})"
            )
        if status == 404 or code in _NOT_FOUND_CODES:
            return KeyNotFound(f"{key!r} not found in registry {self.url}")
        return StoreError(f"error {action} {key!r} in registry {self.url}: {e}")

    @contextmanager
    def _translate(self, action: str, key: str) -> Iterator[None]:
        """Turn botocore's exceptions (raised after its retries) into artfs errors."""
        try:
            yield
        except ClientError as e:
            raise self._error(e, action, key) from e
        except FlexibleChecksumError as e:
            raise IntegrityError(
                f"{key!r} in registry {self.url} arrived with a wrong checksum: {e}"
            ) from e
        except (BotoCoreError, RetriesExceededError) as e:  # the latter: s3transfer's downloads
            raise StoreError(f"error {action} {key!r} in registry {self.url}: {e}") from e

    def _put_args(self, key: str, data: bytes, **extra: Any) -> dict[str, Any]:
        args = {"Bucket": self.bucket, "Key": self._key(key), "Body": data, **self._sse, **extra}
        if self._checksum:
            args["ChecksumAlgorithm"] = self._checksum
        return args

    def _put_object(self, key: str, data: bytes, **extra: Any) -> None:
        """put_object, dropping the explicit checksum once if the server refuses it."""
        try:
            self._client.put_object(**self._put_args(key, data, **extra))
        except ClientError as e:
            if not (self._checksum and _status(e) in (400, 501) and "checksum" in str(e).lower()):
                raise
            log.warning(
                "%s rejects %s upload checksums; using the client default", self.url, self._checksum
            )
            self._checksum = None
            self._client.put_object(**self._put_args(key, data, **extra))

    def _put_conditional(self, key: str, data: bytes, **condition: str) -> bool:
        """One conditional put: True if written, False if the condition failed.

        A write whose response was lost is resent by botocore and then fails its own condition;
        the id stored with each conditional write tells that 412 apart from a real conflict.
        """
        write_id = uuid.uuid4().hex
        for _ in range(CONFLICT_ATTEMPTS):
            with self._translate("writing", key):
                try:
                    self._put_object(key, data, Metadata={WRITE_ID_META: write_id}, **condition)
                    return True
                except ClientError as e:
                    status = _status(e)
                    # Some servers answer If-Match on a missing key with 404 instead of 412.
                    if status == 412 or (status == 404 and _code(e) != "NoSuchBucket"):
                        return self._written_by(key, write_id)
                    if status != 409:
                        raise
        raise StoreError(
            f"error writing {key!r} in registry {self.url}: conflicting concurrent writes "
            f"persisted through {CONFLICT_ATTEMPTS} attempts"
        )

    def _written_by(self, key: str, write_id: str) -> bool:
        meta = self._head(key)
        return meta is not None and meta.get("Metadata", {}).get(WRITE_ID_META) == write_id

    def _head(self, key: str) -> dict[str, Any] | None:
        with self._translate("reading", key):
            try:
                return self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                if _status(e) == 404:
                    return None
                raise

    # -- Store -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        return self.get_with_token(key)[0]

    def _read(self, key: str, **args: Any) -> tuple[bytes, str]:
        """One GET of a whole object or a range, re-issued when its body is cut off."""
        for attempt in range(READ_ATTEMPTS):
            with self._translate("reading", key):
                resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key), **args)
                try:
                    return resp["Body"].read(), resp["ETag"]
                except S3_RETRYABLE_DOWNLOAD_ERRORS:
                    if attempt == READ_ATTEMPTS - 1:
                        raise
                    log.debug("%s: body of %r cut off; reading it again", self.url, key)
        raise AssertionError("unreachable")

    def get_with_token(self, key: str) -> tuple[bytes, str]:
        # botocore asks for and checks the stored checksum on whole-object reads by default.
        return self._read(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            if self.head(key) is None:
                raise KeyNotFound(f"{key!r} not found in registry {self.url}")
            return b""
        try:
            return self._read(key, Range=f"bytes={start}-{start + length - 1}")[0]
        except StoreError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and _status(cause) == 416:
                return b""  # the range starts at or past the end of the object
            raise

    def head(self, key: str) -> ObjectInfo | None:
        resp = self._head(key)
        return None if resp is None else ObjectInfo(key, int(resp["ContentLength"]), resp["ETag"],
                                                    resp["LastModified"].timestamp())

    def put(self, key: str, data: bytes) -> None:
        with self._translate("writing", key):
            self._put_object(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._put_conditional(key, data, IfNoneMatch="*")

    def put_if_match(self, key: str, data: bytes, token: str) -> bool:
        return self._put_conditional(key, data, IfMatch=token)

    def put_file(self, key: str, path: Path) -> None:
        extra = dict(self._sse)
        if self._checksum:
            extra["ChecksumAlgorithm"] = FILE_UPLOAD_CHECKSUM
        with self._translate("writing", key):
            try:
                self._transfer.upload(str(path), self.bucket, self._key(key), extra,
                                      subscribers=[_ReportProgress()]).result()
            except FileNotFoundError as e:
                raise StoreError(f"cannot upload {path}: file not found") from e

    def get_file(self, key: str, path: Path) -> None:
        self.get_file_hashed(key, path)

    def get_file_hashed(self, key: str, path: Path) -> str:
        """Ranged GETs of MULTIPART_CHUNKSIZE in parallel, hashed in order as they arrive.

        The first GET asks for one part and its Content-Range gives the size, so there is no
        HEAD (s3transfer's HEAD first doubled the requests for 10,000 small blobs). Hashing
        part i while later parts download takes the verification off the critical path: with
        s3transfer then a hash, a 256 MiB download cost ~1.9x a boto3 download_file.
        A failed download may leave `path` partial: callers download into temporary names.
        """
        part = MULTIPART_CHUNKSIZE
        with self._translate("reading", key):
            try:
                resp = self._client.get_object(
                    Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{part - 1}")
            except ClientError as e:
                if _status(e) != 416:  # 416: an empty object (no byte 0 to range over)
                    raise
                path.write_bytes(b"")
                return hashlib.sha256().hexdigest()
            total = int(resp.get("ContentRange", "/0").rsplit("/", 1)[1] or 0)
            try:
                first = resp["Body"].read()
            except S3_RETRYABLE_DOWNLOAD_ERRORS:
                first = self._read(key, Range=f"bytes=0-{part - 1}")[0]  # cut off: again
        digest = hashlib.sha256(first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, first, 0)
            progress.add(len(first))

            def fetch(offset: int) -> bytes:
                n = min(part, total - offset)
                data = self._read(key, Range=f"bytes={offset}-{offset + n - 1}")[0]
                if len(data) != n:
                    raise StoreError(f"{key!r} in registry {self.url} changed size while read")
                os.pwrite(fd, data, offset)
                progress.add(n)
                return data

            offsets = iter(range(len(first), total, part))
            with ThreadPoolExecutor(MAX_CONCURRENCY) as pool:
                window = deque(pool.submit(fetch, o) for o in islice(offsets, 2 * MAX_CONCURRENCY))
                try:
                    while window:
                        digest.update(window.popleft().result())  # hashlib releases the GIL
                        window.extend(pool.submit(fetch, o) for o in islice(offsets, 1))
                except BaseException:
                    for f in window:
                        f.cancel()
                    raise
        finally:
            os.close(fd)
        return digest.hexdigest()

    def list(self, prefix: str) -> Iterator[str]:
        return (info.key for info in self.list_info(prefix))

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._prefix + prefix
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full, Delimiter="/"
        )
        names: list[str] = []
        with self._translate("listing", prefix):
            for page in pages:
                names.extend(
                    p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                )
        return sorted(names)

    def delete(self, key: str) -> None:
        with self._translate("deleting", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        strip = len(self._prefix)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._prefix + prefix
        )
        with self._translate("listing", prefix):
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][strip:], int(obj["Size"]), obj["ETag"],
                                     obj["LastModified"].timestamp())

    def delete_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = keys[i : i + 1000]
            with self._translate("deleting", batch[0]):
                resp = self._client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True})
            if resp.get("Errors"):
                err = resp["Errors"][0]
                raise StoreError(f"deleting {err.get('Key')!r} from {self.url} failed: "
                                 f"{err.get('Code')} {err.get('Message')}")

    def stale_uploads(self, before: float) -> list[str]:
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._prefix)
        found = []
        with self._translate("listing uploads of", ""):
            for page in pages:
                for up in page.get("Uploads", []):
                    if up["Initiated"].timestamp() < before:
                        found.append(f"{up['UploadId']} {up['Key']}")
        return found

    def abort_uploads(self, uploads: list[str]) -> None:
        for up in uploads:
            upload_id, key = up.split(" ", 1)
            with self._translate("aborting the upload of", key):
                try:
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                        UploadId=upload_id)
                except ClientError as e:
                    if _status(e) != 404:
                        raise

    def cancel_transfers(self) -> None:
        # s3transfer aborts the multipart upload of every transfer it cancels. Its
        # `shutdown(cancel=True)` passes its arguments on in the wrong order (0.19: the message
        # becomes the exception type); leaving its context as after Ctrl-C cancels properly.
        self._transfer.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)

    def close(self) -> None:
        self._transfer.shutdown()
        self._client.close()
