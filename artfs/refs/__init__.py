"""Reference schemes: checksum information at add time, verified bytes at use time.

Each scheme module offers `expand(uri, name, checksum, max_objects) -> list[Entry]`,
`fetch(entry, dest)` and `read_range(entry, offset, length) -> bytes`, and is registered in
`SCHEMES`; nothing else knows which schemes exist. Modules are imported on first use, so that
importing artfs (the CLI, a mount) does not pay for boto3 and google-cloud-storage.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

from ..errors import ReferenceChanged, UnsupportedScheme
from ..hashing import copy_and_hash
from ..manifest import Entry
from .naming import entry_name, leaf_name

__all__ = ["SCHEMES", "entry_name", "expand", "fetch", "fetch_verified", "leaf_name",
           "read_range", "scheme_module"]

#: URI scheme → module below artfs.refs that handles it.
SCHEMES: dict[str, str] = {
    "file": "file",
    "http": "http",
    "https": "http",
    "s3": "s3",
    "gs": "gs",
}


def scheme_module(uri: str) -> ModuleType:
    scheme = urlparse(uri).scheme if "://" in uri else ""
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise UnsupportedScheme(f"unsupported reference URI {uri!r}: known schemes are {known}")
    return importlib.import_module(f"{__name__}.{SCHEMES[scheme]}")


def expand(uri: str, name: str | None, checksum: bool, max_objects: int) -> list[Entry]:
    """The entries a reference adds, named as the spec's naming table says.

    With `checksum`, each entry records what its source reports (size, ETag, version id,
    generation, MD5/CRC32C, or a SHA-256 for files); without, only the URI. A prefix past
    `max_objects` raises TooManyObjects; nothing is ever silently truncated.
    """
    if max_objects < 0:
        raise ValueError(f"max_objects must be >= 0, not {max_objects}")
    return scheme_module(uri).expand(uri, name, checksum, max_objects)


def fetch(entry: Entry, dest: Path) -> None:
    """Write the referenced bytes to `dest`, verified against what was recorded.

    Raises ReferenceChanged (naming URI and entry) when the source changed or vanished. An
    entry with a SHA-256 `digest` is additionally hashed by the caller, which owns that check.
    """
    assert entry.ref is not None, f"entry {entry.path} is not a reference"
    scheme_module(entry.ref).fetch(entry, dest)


def fetch_verified(entry: Entry, dest: Path, what: str) -> None:
    """`fetch`, then the SHA-256 check it leaves to the caller when the entry records one.

    `what` (e.g. "entry x of e/p/n:v1") goes into the ReferenceChanged message.
    """
    fetch(entry, dest)
    if entry.digest is not None:
        digest, _ = copy_and_hash(dest, None)
        if digest != entry.digest:
            raise ReferenceChanged(f"reference {entry.ref} ({what}) changed: expected sha256 "
                                   f"{entry.digest}, found {digest}")


def read_range(entry: Entry, offset: int, length: int) -> bytes:
    """`length` bytes of the referenced object at `offset` (fewer only at its end).

    Each read is pinned to the recorded object (version id, generation, If-Match) where the
    source allows, so a filesystem reading a file piecewise never mixes two versions of it;
    a mismatch raises ReferenceChanged.
    """
    assert entry.ref is not None, f"entry {entry.path} is not a reference"
    return scheme_module(entry.ref).read_range(entry, offset, length)
