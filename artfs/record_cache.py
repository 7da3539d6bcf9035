"""This machine's copies of a remote registry's small records, so that listing and filtering
10,000 versions again costs the listings, not 10,000 reads.

A copy is kept with the token its key had in the listing it was read after (S3's ETag, GCS's
generation) and used only while a new listing shows the same token: a record rewritten since
(a version deleted, metadata edited) has another token, so a copy is never served stale. The
table is bounded (a sixteenth of ARTFS_CACHE_SIZE by default), least recently used first out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path

from .sqlite import SharedDB

#: Share of the cache budget (ARTFS_CACHE_SIZE) the record copies may take.
SHARE = 16
#: Keys per query: below SQLite's limit of bound parameters.
BATCH = 500

_open: dict[Path, RecordCache] = {}
_open_lock = threading.Lock()


class RecordCache:
    """(registry URL, key, token) → bytes, at most `limit` bytes of them."""

    def __init__(self, path: Path, limit: int) -> None:
        self.limit = limit
        self._db = SharedDB(path, "CREATE TABLE IF NOT EXISTS records (url TEXT, key TEXT,"
                            " token TEXT, body BLOB, size INTEGER, used REAL,"
                            " PRIMARY KEY (url, key))")

    @classmethod
    def beside(cls, cache_root: Path, cache_size: int) -> RecordCache:
        """The one table of a cache folder, opened once per process."""
        path = cache_root / "records.db"
        with _open_lock:
            found = _open.get(path)
            if found is None:
                found = _open[path] = cls(path, cache_size // SHARE)
            return found

    def get(self, url: str, wanted: dict[str, str]) -> dict[str, bytes]:
        """The bytes of each key of `wanted` (key → listed token) held under that token."""
        found: dict[str, bytes] = {}
        keys = list(wanted)
        for i in range(0, len(keys), BATCH):
            part = keys[i:i + BATCH]
            rows = self._db.execute(
                "SELECT key, token, body FROM records WHERE url=? AND key IN"
                f" ({','.join('?' * len(part))})", (url, *part))
            found.update((k, bytes(b)) for k, t, b in rows if wanted.get(k) == t)
        if found:
            now = time.time()
            self._db.write_many("UPDATE records SET used=? WHERE url=? AND key=?",
                                [(now, url, k) for k in found])
        return found

    def put(self, url: str, items: Iterable[tuple[str, str, bytes]]) -> None:
        """Keep (key, token, bytes) copies, then drop the least recently used over the limit."""
        now = time.time()
        rows = [(url, k, t, b, len(b), now) for k, t, b in items if len(b) <= self.limit]
        if not rows:
            return
        self._db.write_many("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?)", rows)
        self._evict()

    def size(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM records").fetchone()[0])

    def _evict(self) -> None:
        excess = self.size() - self.limit
        if excess <= 0:
            return
        drop: list[tuple[str, str]] = []
        for url, key, size in self._db.execute(
                "SELECT url, key, size FROM records ORDER BY used").fetchall():
            drop.append((url, key))
            excess -= size
            if excess <= 0:
                break
        self._db.write_many("DELETE FROM records WHERE url=? AND key=?", drop)
