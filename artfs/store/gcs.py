"""A registry in a Google Cloud Storage bucket, on google-cloud-storage.

Concurrent writers stay correct through generation preconditions: `if_generation_match=0`
creates an object only if absent, `if_generation_match=<generation>` replaces it only if
unchanged; the server answers 412 when the condition fails. The object's generation is the
token. STORAGE_EMULATOR_HOST (honoured by the client) points the store at an emulator, with
anonymous credentials; otherwise application default credentials are used.

Conditional writes are always *simple* (single-request) uploads: the client switches to a
resumable upload above 8 MiB or when a chunk size is set, and fake-gcs-server ignores
preconditions on resumable uploads, so a conditional write that took that path could silently
overwrite. Records written conditionally are small, so this costs nothing; `_check_simple`
refuses anything that would not fit.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import google.auth
import requests
import urllib3
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError, TransportError
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY

from ..errors import AccessDenied, IntegrityError, KeyNotFound, StoreError
from .base import ObjectInfo, Store, split_bucket_url

MiB = 1024 * 1024

#: Largest upload the client sends as one request (its `_MAX_MULTIPART_SIZE`); conditional
#: writes must stay at or below it (see the module docstring).
SIMPLE_UPLOAD_LIMIT = 8 * MiB
#: Chunk of a resumable upload in `put_file`: a failed chunk is resent alone, and memory per
#: upload stays bounded. GCS requires a multiple of 256 KiB.
RESUMABLE_CHUNK_SIZE = 16 * MiB
#: HTTP connections per store; requests' default of 10 would make threads beyond the tenth
#: drop and re-open connections.
MAX_POOL_CONNECTIONS = 32
#: Project used with an emulator, which ignores it.
EMULATOR_PROJECT = "test"
#: google-cloud-storage reads an error response's body (a 404 or 412) outside its retry loop
#: (`Blob._raise_from_invalid_response`), so such a body cut off by the network escapes as
#: ChunkedEncodingError although the request is safe to re-issue: reads are idempotent and a
#: resent conditional write is recognised by its write id. Seen under tests/faultproxy.py.
CUT_OFF_ERRORS = (
    requests.exceptions.ChunkedEncodingError,
    requests.ConnectionError,
    urllib3.exceptions.ProtocolError,
)
#: Times a request whose response was cut off that way is issued before giving up.
CUT_OFF_ATTEMPTS = 5

T = TypeVar("T")

#: Metadata key holding a per-write id, to recognise our own write behind a 412 (see below).
WRITE_ID_META = "artfs-write-id"


def _make_client() -> storage.Client:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        credentials, project = AnonymousCredentials(), EMULATOR_PROJECT
    else:
        credentials, project = google.auth.default(scopes=storage.Client.SCOPE)
    session = AuthorizedSession(credentials)
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=MAX_POOL_CONNECTIONS, pool_maxsize=MAX_POOL_CONNECTIONS
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # `_http` is the client's documented hook for supplying the session (and so the pool size).
    return storage.Client(project=project, credentials=credentials, _http=session)


def _info(key: str, blob: storage.Blob) -> ObjectInfo:
    updated = blob.updated or blob.time_created
    return ObjectInfo(key, int(blob.size or 0), str(blob.generation),
                      updated.timestamp() if updated is not None else 0.0)


def _check_simple(data: bytes) -> None:
    if len(data) > SIMPLE_UPLOAD_LIMIT:
        raise StoreError(
            f"conditional write of {len(data)} bytes exceeds {SIMPLE_UPLOAD_LIMIT} bytes, "
            "above which the upload would be resumable and preconditions are not honoured "
            "by every server"
        )


class GCSStore(Store):
    """Keys live below `prefix/` in one bucket; one client (thread-safe) per store."""

    def __init__(self, url: str) -> None:
        self.url, bucket, self._prefix = split_bucket_url(url, "gs", "a GCS")
        try:
            self._client = _make_client()
        except GoogleAuthError as e:
            raise StoreError(f"no Google Cloud credentials for registry {self.url}: {e}") from e
        self._bucket = self._client.bucket(bucket)

    # -- helpers -----------------------------------------------------------------------------
    def _blob(self, key: str, chunk_size: int | None = None) -> storage.Blob:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid store key {key!r} in {self.url}")
        return self._bucket.blob(self._prefix + key, chunk_size=chunk_size)

    @staticmethod
    def _again(call: Callable[[], T]) -> T:
        """`call()`, re-issued when its response was cut off outside the client's retries."""
        for attempt in range(CUT_OFF_ATTEMPTS):
            try:
                return call()
            except CUT_OFF_ERRORS:
                if attempt == CUT_OFF_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def _translate(self, action: str, key: str) -> Iterator[None]:
        """Turn the client's exceptions (raised after its retries) into artfs errors."""
        try:
            yield
        except (gexc.Forbidden, gexc.Unauthorized) as e:
            raise AccessDenied(f"access denied {action} {key!r} in registry {self.url}") from e
        except gexc.NotFound as e:
            if action != "reading":  # only a read can miss the key; anything else, the bucket
                raise StoreError(
                    f"bucket {self._bucket.name!r} of registry {self.url} does not exist "
                    f"({action} {key!r})"
                ) from e
            raise KeyNotFound(f"{key!r} not found in registry {self.url}") from e
        except DataCorruption as e:
            raise IntegrityError(
                f"{key!r} in registry {self.url} arrived with a wrong checksum: {e}"
            ) from e
        except (
            gexc.GoogleAPIError,
            InvalidResponse,
            requests.RequestException,
            TransportError,
        ) as e:
            raise StoreError(f"error {action} {key!r} in registry {self.url}: {e}") from e
        except GoogleAuthError as e:
            raise AccessDenied(
                f"cannot authenticate {action} {key!r} in registry {self.url}: {e}"
            ) from e

    def _put_conditional(self, key: str, data: bytes, generation: int) -> bool:
        """One conditional simple upload: True if written, False if the precondition failed.

        DEFAULT_RETRY resends a write whose response was lost; the resent write then fails its
        own precondition, and the id stored with each write tells that 412 from a real conflict.
        """
        _check_simple(data)
        write_id = uuid.uuid4().hex
        blob = self._blob(key)
        blob.metadata = {WRITE_ID_META: write_id}
        with self._translate("writing", key):
            try:
                self._again(lambda: blob.upload_from_string(
                    data, if_generation_match=generation, retry=DEFAULT_RETRY, checksum="crc32c"
                ))
                return True
            except gexc.PreconditionFailed:
                current = self._again(
                    lambda: self._bucket.get_blob(blob.name, retry=DEFAULT_RETRY)
                )
        return current is not None and (current.metadata or {}).get(WRITE_ID_META) == write_id

    # -- Store -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        return self.get_with_token(key)[0]

    def get_with_token(self, key: str) -> tuple[bytes, str]:
        blob = self._blob(key)
        with self._translate("reading", key):
            data = self._again(
                lambda: blob.download_as_bytes(checksum="crc32c", retry=DEFAULT_RETRY)
            )
        # The generation comes from the same response's headers, so it belongs to these bytes.
        return data, str(blob.generation)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            if self.head(key) is None:
                raise KeyNotFound(f"{key!r} not found in registry {self.url}")
            return b""
        blob = self._blob(key)
        with self._translate("reading", key):
            try:
                # A partial response cannot be checked against the whole object's checksum.
                return self._again(lambda: blob.download_as_bytes(
                    start=start, end=start + length - 1, checksum=None, retry=DEFAULT_RETRY
                ))
            except gexc.RequestRangeNotSatisfiable:  # starts at or past the end of the object
                return b""

    def head(self, key: str) -> ObjectInfo | None:
        name = self._blob(key).name
        with self._translate("reading", key):
            blob = self._again(lambda: self._bucket.get_blob(name, retry=DEFAULT_RETRY))
        if blob is None:
            return None
        return _info(key, blob)

    def put(self, key: str, data: bytes) -> None:
        blob = self._blob(key)
        # Unconditional writes are idempotent, so retrying them is safe (the client's default
        # retries only writes that carry a precondition).
        with self._translate("writing", key):
            self._again(
                lambda: blob.upload_from_string(data, retry=DEFAULT_RETRY, checksum="crc32c")
            )

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._put_conditional(key, data, 0)

    def put_if_match(self, key: str, data: bytes, token: str) -> bool:
        try:
            generation = int(token)
        except ValueError as e:
            raise StoreError(f"invalid GCS generation token {token!r} for {key!r}") from e
        return self._put_conditional(key, data, generation)

    def put_file(self, key: str, path: Path) -> None:
        blob = self._blob(key, chunk_size=RESUMABLE_CHUNK_SIZE)
        with self._translate("writing", key):
            try:
                self._again(lambda: blob.upload_from_filename(
                    str(path), retry=DEFAULT_RETRY, checksum="crc32c"
                ))
            except FileNotFoundError as e:
                raise StoreError(f"cannot upload {path}: file not found") from e

    def get_file(self, key: str, path: Path) -> None:
        blob = self._blob(key)
        with self._translate("reading", key):
            self._again(lambda: blob.download_to_filename(
                str(path), checksum="crc32c", retry=DEFAULT_RETRY
            ))

    def list(self, prefix: str) -> Iterator[str]:
        return (info.key for info in self.list_info(prefix))

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        strip = len(self._prefix)
        blobs = self._client.list_blobs(
            self._bucket, prefix=self._prefix + prefix, retry=DEFAULT_RETRY
        )
        with self._translate("listing", prefix):
            for blob in blobs:
                yield _info(blob.name[strip:], blob)

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._prefix + prefix
        pages = self._client.list_blobs(
            self._bucket, prefix=full, delimiter="/", retry=DEFAULT_RETRY
        )
        with self._translate("listing", prefix):
            for _ in pages:  # `prefixes` fills in as the pages are read
                pass
        return sorted(p[len(full) :].rstrip("/") for p in pages.prefixes)

    def delete(self, key: str) -> None:
        blob = self._blob(key)
        with self._translate("deleting", key):
            try:
                blob.delete(retry=DEFAULT_RETRY)
            except gexc.NotFound:
                pass

    def close(self) -> None:
        self._client.close()
