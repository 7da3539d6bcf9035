"""`gs://bucket/name` references: generation, MD5 and CRC32C at add time, pinned reads later.

A reference bucket is read with its own client from the standard Google configuration
(application default credentials; STORAGE_EMULATOR_HOST for an emulator), not the registry's;
without any credentials the client is anonymous, which reads public buckets. Every write of a
GCS object makes a new generation, so reading the recorded generation returns exactly the
recorded bytes (from a noncurrent version in a versioned bucket) or fails with 404 once it is
gone. The bytes are read raw (as stored, no gzip decoding) because that is what the recorded
size and checksums describe; a full fetch checks CRC32C, MD5 (absent on composite objects) and
size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import google.auth
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
from google.cloud import storage
from google.cloud.storage.exceptions import InvalidResponse

from ..errors import AccessDenied, SourceError
from ..manifest import Entry
from ..names import check_entry_path
from .naming import COUNT_PAST_LIMIT, entry_name, split_bucket_uri, too_many
from .verify import CheckingWriter, StreamCheck, changed, check_range, expected_range, vanished

#: Objects per list request; the JSON API's maximum. Tests lower it to exercise pagination.
LIST_PAGE_SIZE = 1000
#: Only what an entry records: a smaller listing response to parse for large prefixes.
LIST_FIELDS = "items(name,size,md5Hash,crc32c,generation),nextPageToken"
#: Project passed with an emulator or anonymous access, where none is needed.
ANONYMOUS_PROJECT = "anonymous"

_clients: dict[tuple[Any, ...], storage.Client] = {}
_clients_lock = threading.Lock()
_TRANSPORT_ERRORS = (gexc.GoogleAPIError, InvalidResponse, requests.RequestException,
                     GoogleAuthError)


def client() -> storage.Client:
    """The process's client for reference buckets, shared by threads."""
    key = (os.getpid(), os.environ.get("STORAGE_EMULATOR_HOST"),
           os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"))
    with _clients_lock:
        c = _clients.get(key)
        if c is None:
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                c = storage.Client(project=ANONYMOUS_PROJECT, credentials=AnonymousCredentials())
            else:
                try:
                    credentials, project = google.auth.default(scopes=storage.Client.SCOPE)
                    c = storage.Client(project=project or ANONYMOUS_PROJECT,
                                       credentials=credentials)
                except DefaultCredentialsError:
                    c = storage.Client.create_anonymous_client()
            _clients[key] = c
        return c


def parse(uri: str) -> tuple[str, str]:
    return split_bucket_uri(uri, "gs", "GCS", "name")


def _add_error(uri: str, e: Exception) -> Exception:
    """The error for a failure while recording a reference; it names the URI."""
    if isinstance(e, (gexc.Forbidden, gexc.Unauthorized)):
        return AccessDenied(
            f"access denied to reference {uri} with the standard Google credentials; "
            "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`"
        )
    if isinstance(e, gexc.NotFound):
        return SourceError(f"reference {uri} does not exist: no such bucket")
    return SourceError(f"cannot read reference {uri}: {e}")


def _extra(blob: storage.Blob) -> dict[str, Any]:
    extra: dict[str, Any] = {"generation": int(blob.generation)}
    if blob.md5_hash:
        extra["md5"] = blob.md5_hash
    if blob.crc32c:
        extra["crc32c"] = blob.crc32c
    return extra


def expand(uri: str, name: str | None, checksum: bool, max_objects: int) -> list[Entry]:
    """One entry for an object, or one per object below a prefix (the naming table).

    As for S3: the exact object is looked up first (one request, and it wins when both
    `model.h5` and `model.h5/...` exist), then `name + '/'` is listed.
    """
    bucket_name, key = parse(uri)
    gcs = client()
    bucket = gcs.bucket(bucket_name)
    try:
        blob = bucket.get_blob(key) if key and not key.endswith("/") else None
    except _TRANSPORT_ERRORS as e:
        raise _add_error(uri, e) from e
    if blob is not None:
        path = check_entry_path(entry_name(key, name, None))
        if not checksum:
            return [Entry(path, None, None, uri)]
        return [Entry(path, int(blob.size or 0), None, uri, _extra(blob))]
    prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
    entries: list[Entry] = []
    count = 0
    try:
        blobs = iter(gcs.list_blobs(bucket_name, prefix=prefix, page_size=LIST_PAGE_SIZE,
                                    fields=LIST_FIELDS))
        for b in blobs:
            if b.name.endswith("/"):  # a "folder" placeholder, not a file
                continue
            count += 1
            if count > max_objects:
                for b in blobs:
                    count += 0 if b.name.endswith("/") else 1
                    if count > max_objects + COUNT_PAST_LIMIT:
                        raise too_many(uri, max_objects + COUNT_PAST_LIMIT, max_objects, False)
                raise too_many(uri, count, max_objects, True)
            path = check_entry_path(entry_name(key, name, b.name[len(prefix):]))
            ref = f"gs://{bucket_name}/{b.name}"
            if checksum:
                entries.append(Entry(path, int(b.size or 0), None, ref, _extra(b)))
            else:
                entries.append(Entry(path, None, None, ref))
    except _TRANSPORT_ERRORS as e:
        raise _add_error(uri, e) from e
    if not entries:
        raise SourceError(f"reference {uri} does not exist: no object {key!r} and no objects "
                          f"below {prefix!r} in bucket {bucket_name!r}")
    return entries


# -- reading ------------------------------------------------------------------------------------
def _pinned_blob(entry: Entry) -> tuple[storage.Blob, str, str]:
    assert entry.ref is not None
    bucket_name, key = parse(entry.ref)
    generation = entry.extra.get("generation")
    blob = client().bucket(bucket_name).blob(key, generation=generation)
    return blob, bucket_name, key


@contextmanager
def _reading(entry: Entry, bucket_name: str, key: str) -> Iterator[None]:
    """Errors while reading a recorded reference: changed, vanished or denied, naming it."""
    try:
        yield
    except (gexc.Forbidden, gexc.Unauthorized) as e:
        raise AccessDenied(f"access denied reading reference {entry.ref} (entry {entry.path}) "
                           "with the standard Google credentials") from e
    except gexc.NotFound as e:
        raise _gone(entry, bucket_name, key) from e
    except _TRANSPORT_ERRORS as e:
        raise SourceError(f"cannot read reference {entry.ref} (entry {entry.path}): {e}") from e


def _gone(entry: Entry, bucket_name: str, key: str) -> Exception:
    """Vanished, or (the recorded generation gone while the name exists) changed."""
    generation = entry.extra.get("generation")
    if generation is not None:
        try:
            live = client().bucket(bucket_name).get_blob(key)
        except _TRANSPORT_ERRORS:
            live = None
        if live is not None:
            return changed(entry, f"generation {generation} no longer exists; the object is "
                                  f"now generation {live.generation}")
    return vanished(entry)


def fetch(entry: Entry, dest: Path) -> None:
    """Download the recorded generation to `dest`, verified; without a checksum, the object's
    current generation."""
    blob, bucket_name, key = _pinned_blob(entry)
    check = StreamCheck(entry, md5_b64=entry.extra.get("md5"),
                        crc32c_b64=entry.extra.get("crc32c"))
    with _reading(entry, bucket_name, key), open(dest, "wb") as f:
        # checksum=None: the client would check the response against its own headers; the
        # check that matters is against what was recorded, done by StreamCheck.
        blob.download_to_file(CheckingWriter(f, check), raw_download=True, checksum=None)
    check.check()


def read_range(entry: Entry, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` of the recorded generation (fewer at its end)."""
    expected = expected_range(entry, offset, length)
    if expected == 0 or length == 0:
        return b""
    blob, bucket_name, key = _pinned_blob(entry)
    end = offset + (expected if expected is not None else length) - 1
    with _reading(entry, bucket_name, key):
        try:
            data = blob.download_as_bytes(start=offset, end=end, raw_download=True,
                                          checksum=None)
        except gexc.RequestRangeNotSatisfiable:
            if expected is not None:
                raise
            return b""  # past the end of an object whose size was not recorded
    return check_range(entry, offset, expected, data)
