"""Checking fetched reference bytes against the checksum information recorded at add time.

Remote references (http, s3, gs) carry no SHA-256 of their own: hashing them at add time would
mean downloading every object, which is what a reference exists to avoid. What the source
itself reports (size, ETag, MD5, CRC32C, version id, generation) is the checksum instead. The
version id / generation / `If-Match` pins *which* object is fetched; the digests below catch bytes
that were damaged on the way. They are computed while the bytes are written, so verification
costs no second pass over the file.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from pathlib import Path

import google_crc32c

from ..errors import ReferenceChanged
from ..manifest import Entry

#: Chunk of a streamed download: big enough that per-chunk Python overhead vanishes against
#: the network, small enough to stay in cache while it is hashed.
STREAM_CHUNK = 1024 * 1024


def changed(entry: Entry, detail: str) -> ReferenceChanged:
    """The error for a source that no longer holds what was recorded."""
    return ReferenceChanged(
        f"reference {entry.ref} (entry {entry.path}) changed since it was added: {detail}"
    )


def vanished(entry: Entry, detail: str = "") -> ReferenceChanged:
    """The error for a source that no longer exists."""
    tail = f": {detail}" if detail else ""
    return ReferenceChanged(f"reference {entry.ref} (entry {entry.path}) has vanished{tail}")


class StreamCheck:
    """Size and digests of bytes as they stream past, compared with the recorded values.

    `md5_hex` / `md5_b64` / `crc32c_b64` are what the source reported at add time (None when it
    reported nothing, or when the value is not a digest of the bytes, such as a multipart ETag).
    """

    def __init__(
        self,
        entry: Entry,
        *,
        md5_hex: str | None = None,
        md5_b64: str | None = None,
        crc32c_b64: str | None = None,
    ) -> None:
        self.entry = entry
        self.size = 0
        self._md5_hex = md5_hex.lower() if md5_hex else None
        self._md5_b64 = md5_b64
        self._crc32c_b64 = crc32c_b64
        self._md5 = hashlib.md5(usedforsecurity=False) if (md5_hex or md5_b64) else None
        self._crc = google_crc32c.Checksum() if crc32c_b64 else None

    def update(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self._md5 is not None:
            self._md5.update(chunk)
        if self._crc is not None:
            self._crc.update(chunk)

    def check(self) -> None:
        """Raise ReferenceChanged naming URI and entry unless every recorded value matches."""
        entry = self.entry
        if entry.size is not None and self.size != entry.size:
            raise changed(entry, f"recorded {entry.size} bytes, fetched {self.size}")
        if self._md5 is not None:
            digest = self._md5.digest()
            if self._md5_hex is not None and digest.hex() != self._md5_hex:
                raise changed(entry, f"md5 {digest.hex()} differs from recorded {self._md5_hex}")
            got = base64.b64encode(digest).decode()
            if self._md5_b64 is not None and got != self._md5_b64:
                raise changed(entry, f"md5 {got} differs from recorded {self._md5_b64}")
        if self._crc is not None:
            got = base64.b64encode(self._crc.digest()).decode()
            if got != self._crc32c_b64:
                raise changed(entry, f"crc32c {got} differs from recorded {self._crc32c_b64}")


def write_checked(chunks: Iterable[bytes], dest: Path, check: StreamCheck) -> None:
    """Write `chunks` to `dest` while `check` sees them, then verify."""
    with open(dest, "wb") as f:
        for chunk in chunks:
            if chunk:
                check.update(chunk)
                f.write(chunk)
    check.check()


class CheckingWriter:
    """A file-like sink for client libraries that write into a file object themselves."""

    def __init__(self, f, check: StreamCheck) -> None:  # noqa: ANN001 - any binary file
        self._f = f
        self._check = check

    def write(self, data: bytes) -> int:
        self._check.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def expected_range(entry: Entry, offset: int, length: int) -> int | None:
    """How many bytes a ranged read at `offset` must return, or None when the size is unknown."""
    if offset < 0 or length < 0:
        raise ValueError(f"invalid range offset={offset} length={length} for {entry.ref}")
    if entry.size is None:
        return None
    return max(0, min(length, entry.size - offset))


def check_range(entry: Entry, offset: int, expected: int | None, data: bytes) -> bytes:
    if expected is not None and len(data) != expected:
        raise changed(
            entry, f"a read of {expected} bytes at offset {offset} returned {len(data)} bytes"
        )
    return data
