"""The handful of operations a registry needs from any storage.

Everything above this module talks to a `Store` and never learns which kind it is. Keys are
'/'-separated relative paths. Conditional writes are how concurrent writers on many machines
stay correct without a server of ours: `put_if_absent` allocates names (version numbers,
claims) and `put_if_match` is compare-and-swap on an opaque version token.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import FileChangedError, StoreError
from ..hashing import hash_file, stat_key

#: Parallel transfers to a remote store; it keeps this many connections open.
TRANSFER_WORKERS = 8


def split_bucket_url(url: str, scheme: str, store: str) -> tuple[str, str, str]:
    """(url without a trailing '/', bucket, key prefix ending in '/' or empty) of a registry
    URL `<scheme>://bucket/prefix`; StoreError naming the URL otherwise."""
    url = url.rstrip("/")
    bucket, _, prefix = url[len(scheme) + 3:].partition("/")
    if not url.startswith(f"{scheme}://") or not bucket:
        raise StoreError(f"not {store} registry URI: {url!r} (expected {scheme}://bucket/prefix)")
    return url, bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one key without reading it."""

    key: str
    size: int
    token: str
    #: When the store last wrote the object, in seconds since the epoch by the STORE's clock
    #: (S3: whole seconds). Garbage collection compares these, never a machine's own clock.
    mtime: float = 0.0


class Store(ABC):
    """A flat key → bytes namespace with conditional writes."""

    #: The URI the user gave for this store (`/path`, `s3://b/p`, `gs://b/p`); used in messages.
    url: str
    #: Threads worth using to move many objects at once: network latency wants many.
    transfer_workers: int = TRANSFER_WORKERS
    #: Whether a request costs a network round trip, as much as moving a few hundred KiB: then
    #: small objects are worth packing together and independent checks worth running at once.
    small_objects_costly: bool = True

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Whole object; raises KeyNotFound."""

    @abstractmethod
    def get_with_token(self, key: str) -> tuple[bytes, str]:
        """Whole object and the token that `put_if_match` compares against."""

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (fewer at the end of the object); raises KeyNotFound."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size and token of a key, or None when absent."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write unconditionally (content-addressed or single-writer keys only)."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` only if it does not exist; False when it already did."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, token: str) -> bool:
        """Replace `key` only if its token is still `token`; False when it changed or vanished."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (possibly large, possibly in parallel parts) unconditionally."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download a whole object into `path` (created or truncated); raises KeyNotFound."""

    def get_file_hashed(self, key: str, path: Path) -> str:
        """Download like `get_file` and return the SHA-256 of the bytes written.

        Stores that fetch in parallel parts override this to hash each part as soon as every
        part before it has arrived, so verifying a download costs no pass of its own.
        """
        self.get_file(key, path)
        return hash_file(path)[0]

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Every key that starts with `prefix`, in lexicographic order, across all pages."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a key; absent keys are not an error."""

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        """`list`, with each key's size and time: stores whose listing carries them override
        this (one request a page rather than one a key)."""
        for key in self.list(prefix):
            info = self.head(key)
            if info is not None:
                yield info

    def delete_many(self, keys: list[str]) -> None:
        """Remove many keys; stores with a batch delete send one request per batch."""
        for key in keys:
            self.delete(key)

    def stale_uploads(self, before: float) -> list[str]:
        """Leftovers of writes that never finished (S3: incomplete multipart uploads; a local
        folder: temporary files) begun before `before` (store time); `abort_uploads` removes
        them. Stores whose writes leave nothing behind have none."""
        return []

    def abort_uploads(self, uploads: list[str]) -> None:  # noqa: B027 - none to abort by default
        """Remove what `stale_uploads` returned."""

    def put_content(self, key: str, data: bytes) -> None:
        """Write content-addressed bytes (verified on every read, so no fsync is owed).

        Rewriting them is harmless, and where a request is a round trip a HEAD first costs what
        the PUT does: HEAD-then-PUT doubled the requests (bench_s3: 10,000 x 4 KiB took 2x a
        boto3 put_object loop).
        """
        self.put(key, data)

    def put_fast(self, key: str, data: bytes) -> None:
        """Write atomically, maybe not durably yet: for records rewritten at every step of a run,
        where an fsync each would dominate and a power cut loses only the last update."""
        self.put(key, data)

    def put_content_file(
        self, file: Path, key_for: Callable[[str], str]
    ) -> tuple[str, os.stat_result]:
        """Store a file under the key its SHA-256 names (`key_for(digest)`), unless present.

        Returns the digest and the file's stat as it was read. A file that changes while it is
        uploaded is not left stored under a digest its bytes no longer have.
        """
        digest, st = hash_file(file)
        key = key_for(digest)
        if self.head(key) is None:
            self.put_file(key, file)
            if stat_key(os.stat(file)) != stat_key(st):
                self.delete(key)
                raise FileChangedError(f"source file {file} changed while it was being uploaded")
        return digest, st

    def adopt_file(self, key: str, path: Path, *, move: bool) -> None:
        """Store a finished local file under `key`; with `move` the store may take the file
        itself (then it is gone afterwards) instead of copying it."""
        self.put_file(key, path)

    def foreign_content(self) -> str | None:
        """What other than a registry occupies the location ("a file"), for an error message;
        None when it is empty or cannot be told cheaply (a bucket prefix)."""
        return None

    def sweep_temp(self) -> int:
        """Delete temporary files abandoned by dead writers; returns how many."""
        return 0

    def temp_path(self) -> Path | None:
        """A fresh temporary file name on the disk of the store's keys, where a file can be
        written and later renamed under a key; None where keys are not local files."""
        return None

    def local_path(self, key: str) -> Path | None:
        """A file holding the key's bytes on this machine, when the store is a local directory.

        Lets readers use registry blobs in place instead of copying them into a second cache.
        """
        return None

    def pin(self, key: str) -> Path | None:
        """A file with the key's bytes that outlives the key, for a store whose keys are local
        files (a hard link: no copy); None elsewhere, or when the key is gone. A source captured
        into the store keeps its bytes even if a gc removes the unreferenced blob before the log."""
        return None

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate 'subfolders' below `prefix` (which ends with '/').

        The default walks every key; stores with a delimiter listing override it.
        """
        names: set[str] = set()
        for key in self.list(prefix):
            rest = key[len(prefix):]
            if "/" in rest:
                names.add(rest.split("/", 1)[0])
        return sorted(names)

    def cancel_transfers(self) -> None:  # noqa: B027 - a no-op where nothing runs in the back
        """Stop uploads and downloads in flight (the command is interrupted): a multipart
        upload is aborted, never completed nor left behind. The store is closed afterwards."""

    def flush(self) -> None:  # noqa: B027 - a no-op is right for most stores
        """Make every earlier write durable (a no-op where each write already is)."""

    def close(self) -> None:  # noqa: B027 - a no-op is right for most stores
        """Release connections and threads."""
