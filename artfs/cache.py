"""The local content-addressed cache of blobs fetched from a remote registry or reference.

Layout, readable with `ls`: `blobs/<2 hex>/<sha256>` holds whole verified blobs, `tmp/` holds
fills in progress (a partial download never has a final name), `index.db` records sizes and
last use for least-recently-used eviction down to the configured size.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import IntegrityError
from .hashing import hash_file
from .sqlite import SharedDB

#: Touching a blob's last-use time at most this often keeps hot reads off SQLite.
TOUCH_INTERVAL_S = 60.0


class BlobCache:
    """Verified whole blobs by SHA-256, bounded by `limit` bytes."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        self._db = SharedDB(root / "index.db", "CREATE TABLE IF NOT EXISTS blobs"
                            " (digest TEXT PRIMARY KEY, size INTEGER, last_used REAL)")
        self._touched: dict[str, float] = {}

    def path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def temp_path(self) -> Path:
        return self.root / "tmp" / f"{os.getpid()}-{uuid.uuid4().hex}"

    def get(self, digest: str) -> Path | None:
        """The cached blob's path, or None; marks it as recently used."""
        p = self.path(digest)
        if not p.exists():
            return None
        now = time.time()
        if now - self._touched.get(digest, 0.0) > TOUCH_INTERVAL_S:
            self._touched[digest] = now
            self._db.execute("UPDATE blobs SET last_used=? WHERE digest=?", (now, digest))
        return p

    def fill(self, digest: str, fetch: Callable[[Path], None]) -> Path:
        """Fetch a blob into a temporary file, verify it, then give it its final name."""
        existing = self.get(digest)
        if existing is not None:
            return existing
        tmp = self.temp_path()
        try:
            fetch(tmp)
            actual, st = hash_file(tmp)
            if actual != digest:
                raise IntegrityError(f"fetched bytes of blob {digest} hash to {actual}")
            final = self.path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        self._db.execute(
            "INSERT OR REPLACE INTO blobs VALUES (?,?,?)", (digest, st.st_size, time.time())
        )
        self.evict(keep=digest)
        return final

    def fill_hashed(self, digest: str, fetch: Callable[[Path], str]) -> Path:
        """Like `fill`, for a `fetch` that returns the SHA-256 of what it wrote (it hashed the
        bytes as they arrived), so they are not read again."""
        existing = self.get(digest)
        if existing is not None:
            return existing
        tmp = self.temp_path()
        try:
            actual = fetch(tmp)
            if actual != digest:
                raise IntegrityError(f"fetched bytes of blob {digest} hash to {actual}")
            return self.adopt_hashed(digest, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def adopt_hashed(self, digest: str, path: Path) -> Path:
        """Move in a file the caller has already hashed to `digest`, without hashing it again.

        For readers that hashed a blob's bytes as they arrived (the mount's streaming reads):
        re-reading 1 GiB only to repeat that hash would cost ~0.7 s of a core (FACTS.md).
        """
        existing = self.get(digest)
        if existing is not None:
            path.unlink(missing_ok=True)
            return existing
        size = path.stat().st_size
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, final)
        self._db.execute("INSERT OR REPLACE INTO blobs VALUES (?,?,?)", (digest, size, time.time()))
        self.evict(keep=digest)
        return final

    def add_verified(self, blobs: Iterable[tuple[str, bytes]]) -> None:
        """Store blobs the caller has already checked against their digests, with one index
        write for all of them: for the many small blobs that one pack read brings in."""
        rows = []
        for digest, data in blobs:
            final = self.path(digest)
            if final.exists():
                continue
            tmp = self.temp_path()
            tmp.write_bytes(data)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
            rows.append((digest, len(data), time.time()))
        if rows:
            self._db.write_many("INSERT OR REPLACE INTO blobs VALUES (?,?,?)", rows)
            self.evict()

    def usage(self) -> tuple[int, int]:
        """(number of blobs, bytes) currently recorded."""
        n, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size),0) FROM blobs").fetchone()
        return n, total

    def evict(self, limit: int | None = None, keep: str | None = None) -> int:
        """Drop least-recently-used blobs until the cache fits `limit`; returns bytes freed.

        `keep` is the blob a caller is about to read: it stays even when it alone is over the
        limit, since deleting it would fail the read that just fetched it.
        """
        limit = self.limit if limit is None else limit
        _, total = self.usage()
        freed = 0
        if total <= limit:
            return 0
        rows = self._db.execute("SELECT digest, size FROM blobs ORDER BY last_used").fetchall()
        for digest, size in rows:
            if total - freed <= limit:
                break
            if digest == keep:
                continue
            self.path(digest).unlink(missing_ok=True)
            self._db.execute("DELETE FROM blobs WHERE digest=?", (digest,))
            freed += size
        return freed

    def clean(self) -> int:
        """Empty the cache; returns bytes freed."""
        freed = self.evict(0)
        for p in (self.root / "tmp").iterdir():
            p.unlink(missing_ok=True)
        return freed
