"""The handful of operations a registry needs from any storage.

Everything above this module talks to a `Store` and never learns which kind it is. Keys are
'/'-separated relative paths. Conditional writes are how concurrent writers on many machines
stay correct without a server of ours: `put_if_absent` allocates names (version numbers,
claims) and `put_if_match` is compare-and-swap on an opaque version token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..hashing import hash_file


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one key without reading it."""

    key: str
    size: int
    token: str


class Store(ABC):
    """A flat key → bytes namespace with conditional writes."""

    #: The URI the user gave for this store (`/path`, `s3://b/p`, `gs://b/p`); used in messages.
    url: str

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

    def local_path(self, key: str) -> Path | None:
        """A file holding the key's bytes on this machine, when the store is a local directory.

        Lets readers use registry blobs in place instead of copying them into a second cache.
        """
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

    def flush(self) -> None:  # noqa: B027 - a no-op is right for most stores
        """Make every earlier write durable (a no-op where each write already is)."""

    def close(self) -> None:  # noqa: B027 - a no-op is right for most stores
        """Release connections and threads."""
