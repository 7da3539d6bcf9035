"""Packs: many small blobs stored as one object in a remote registry.

A request to S3 or GCS costs the same CPU and round trip for 4 KiB as for 4 MiB, so logging
10,000 small files as 10,000 objects is bound by request overhead (FACTS.md: moto takes ~130
PUT/s; botocore ~1.5 ms of CPU per request). Small blobs of one log are concatenated into packs
of about PACK_TARGET bytes, named by the SHA-256 of their bytes like blobs are. Each manifest
entry records where its bytes live (pack digest and offset); that location is not part of the
artifact digest, so packing never changes which version a set of contents is. Every blob read
out of a pack is still checked against its own digest.

A local registry never packs: a file per blob is what lets the mount serve its bytes in place.
This machine remembers locations it has seen (packs.db in the cache folder) so a later log
reuses packed blobs instead of uploading them again, and a remount finds them without
re-reading manifests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .sqlite import SharedDB

#: Files up to this size are packed. Larger ones are few per log and cost a request each anyway.
PACK_BLOB_MAX = 256 * 1024
#: A pack is closed once it holds this many bytes: one request moves ~8 MiB, and GCS keeps
#: simple (non-resumable) uploads up to this size.
PACK_TARGET = 8 * 1024 * 1024


@dataclass(frozen=True)
class PackLoc:
    """Where a blob's bytes live inside a pack: `size` bytes from `offset`."""

    pack: str
    offset: int
    size: int


class PackBuilder:
    """Collects (digest, bytes) and yields full packs as (pack digest, bytes, {digest: loc})."""

    def __init__(self, target: int = PACK_TARGET) -> None:
        self.target = target
        self._parts: list[bytes] = []
        self._offsets: dict[str, tuple[int, int]] = {}
        self._size = 0

    def add(self, digest: str, data: bytes) -> tuple[str, bytes, dict[str, PackLoc]] | None:
        """Add one blob (once per digest); returns a pack when this one filled it."""
        if digest in self._offsets:
            return None
        self._offsets[digest] = (self._size, len(data))
        self._parts.append(data)
        self._size += len(data)
        return self.flush() if self._size >= self.target else None

    def flush(self) -> tuple[str, bytes, dict[str, PackLoc]] | None:
        """The pack collected so far, if any blob is in it."""
        if not self._offsets:
            return None
        data = b"".join(self._parts)
        name = hashlib.sha256(data).hexdigest()
        pack = (name, data, {d: PackLoc(name, off, n) for d, (off, n) in self._offsets.items()})
        self._parts, self._offsets, self._size = [], {}, 0
        return pack


def split(data: bytes, start: int, wanted: Iterable[tuple[str, int, int]]
          ) -> Iterator[tuple[str, bytes]]:
    """(digest, bytes) of each (digest, offset, size) in `wanted` out of pack bytes read from
    `start`, skipping (for the caller's per-blob fetch to report) any whose bytes do not match."""
    for digest, offset, size in wanted:
        blob = data[offset - start : offset - start + size]
        if len(blob) == size and hashlib.sha256(blob).hexdigest() == digest:
            yield digest, blob


class PackIndex:
    """SQLite table (registry, entity, digest) → pack location, shared by this user's processes."""

    def __init__(self, db_path: Path) -> None:
        self._db = SharedDB(db_path, "CREATE TABLE IF NOT EXISTS locs (registry TEXT, entity TEXT,"
                            " digest TEXT, pack TEXT, offset INTEGER, size INTEGER,"
                            " PRIMARY KEY (registry, entity, digest));"
                            " CREATE INDEX IF NOT EXISTS locs_by_pack ON locs"
                            " (registry, entity, pack);"
                            " CREATE TABLE IF NOT EXISTS gc_epochs (registry TEXT, entity TEXT,"
                            " epoch INTEGER, PRIMARY KEY (registry, entity))")

    def record(self, registry: str, entity: str, locs: Iterable[tuple[str, PackLoc]], *,
               replace: bool = False) -> None:
        """Remember locations; `replace` when they come from a live version's manifest, which
        is right even where an older row names a pack a gc has since removed."""
        verb = "REPLACE" if replace else "IGNORE"
        self._db.write_many(f"INSERT OR {verb} INTO locs VALUES (?,?,?,?,?,?)",
                            [(registry, entity, d, loc.pack, loc.offset, loc.size)
                             for d, loc in locs])

    def note_gc_epoch(self, registry: str, entity: str, epoch: int) -> None:
        """Forget the entity's locations if a gc began since they were learnt: a gc removes
        packs no live version needs, and a location must not make a commit skip an upload."""
        rows = list(self._db.execute("SELECT epoch FROM gc_epochs WHERE registry=? AND"
                                     " entity=?", (registry, entity)))
        if rows and rows[0][0] == epoch:
            return
        if rows or epoch:
            self.forget(registry, entity)
        self._db.write_many("INSERT OR REPLACE INTO gc_epochs VALUES (?,?,?)",
                            [(registry, entity, epoch)])

    def forget(self, registry: str, entity: str) -> None:
        self._db.write_many("DELETE FROM locs WHERE registry=? AND entity=?", [(registry, entity)])

    def members(self, registry: str, entity: str, pack: str) -> dict[str, PackLoc]:
        """Every blob this machine knows to live in `pack`."""
        rows = self._db.execute("SELECT digest, offset, size FROM locs WHERE registry=? AND"
                                " entity=? AND pack=?", (registry, entity, pack))
        return {d: PackLoc(pack, o, n) for d, o, n in rows}

    def lookup(self, registry: str, entity: str, digests: Iterable[str]) -> dict[str, PackLoc]:
        wanted = list(dict.fromkeys(digests))
        found: dict[str, PackLoc] = {}
        for i in range(0, len(wanted), 500):
            batch = wanted[i : i + 500]
            rows = self._db.execute(
                "SELECT digest, pack, offset, size FROM locs WHERE registry=? AND entity=?"
                f" AND digest IN ({','.join('?' * len(batch))})", (registry, entity, *batch))
            found.update((d, PackLoc(p, o, n)) for d, p, o, n in rows)
        return found
