"""This machine's cache folder (`ARTFS_CACHE_DIR`), shared by every registry and process.

Everything in it can be fetched or rebuilt again; `LocalCache` is the one place that knows its
layout, readable with `ls`:

    blobs/<2 hex>/<sha256>        whole verified blobs, from a remote registry or a reference
    tmp/                          fills in progress (a partial download never has a final name)
    index.db                      size and last use of every blob and version index (LRU)
    fs-index/<2 hex>/<digest>.v<format>.db   a mount's index of one version's manifest
    fs-work/<pid>/                a mount's partial reads of large remote blobs (swept when the
                                  mount process is gone)
    spool/<pid>-<id>/<sha256>     files an SDK draft captured when they were added (W&B's
                                  `policy="mutable"`), waiting for their upload; they then
                                  join blobs/ (swept when the process is gone)
    hashes.db                     path → (stat, sha256) of files this user hashed (hashing.py)
    packs.db                      where blobs this machine saw live inside packs (packs.py)

Blobs and version indexes share one least-recently-used budget (`ARTFS_CACHE_SIZE`); the two
tables, a mount's partial reads and spooled files are counted but not evicted: they are small,
or in use.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import config
from .errors import IntegrityError
from .hashing import hash_file
from .procs import pid_alive
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
                            " (digest TEXT PRIMARY KEY, size INTEGER, last_used REAL);"
                            "CREATE TABLE IF NOT EXISTS files"
                            " (path TEXT PRIMARY KEY, size INTEGER, last_used REAL)")
        self._touched: dict[str, float] = {}
        self._sweep_spools()

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

    def add_file(self, path: Path, last_used: float | None = None) -> None:
        """Count a rebuildable file below `root` (a version index) in the LRU budget."""
        rel = str(path.relative_to(self.root))
        self._db.execute("INSERT OR REPLACE INTO files VALUES (?,?,?)",
                         (rel, path.stat().st_size, last_used or time.time()))
        self.evict(keep=rel)

    def touch_file(self, path: Path) -> None:
        self._db.execute("UPDATE files SET last_used=? WHERE path=?",
                         (time.time(), str(path.relative_to(self.root))))

    # -- spools: captured files waiting for their upload ---------------------------------------
    @property
    def spool_root(self) -> Path:
        return self.root / "spool"

    def new_spool(self) -> Path:
        spool = self.spool_root / f"{os.getpid()}-{uuid.uuid4().hex}"
        spool.mkdir(parents=True)
        return spool

    def adopt_spool(self, spool: Path, *, keep: bool = True) -> None:
        """Once uploaded, spooled blobs become ordinary cache entries (a rename each), or are
        dropped when `keep` is false (W&B's `skip_cache`)."""
        if not spool.is_dir():
            return
        rows = []
        now = time.time()
        for name in os.listdir(spool):
            path = spool / name
            final = self.path(name)
            if not keep or name.startswith(".") or final.exists():
                path.unlink(missing_ok=True)
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            rows.append((name, path.stat().st_size, now))
            os.rename(path, final)
        spool.rmdir()
        if rows:
            self._db.write_many("INSERT OR REPLACE INTO blobs VALUES (?,?,?)", rows)
            self.evict()

    @staticmethod
    def drop_spool(spool: Path) -> None:
        shutil.rmtree(spool, ignore_errors=True)

    def _sweep_spools(self) -> None:
        """Spools of processes that died before their upload are nobody's any more."""
        try:
            names = os.listdir(self.spool_root)
        except FileNotFoundError:
            return
        for name in names:
            pid = name.split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(self.spool_root / name, ignore_errors=True)

    def usage(self) -> tuple[int, int]:
        """(number of blobs, bytes) currently recorded."""
        n, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size),0) FROM blobs").fetchone()
        return n, total

    def files_usage(self) -> tuple[int, int]:
        """(number of other files, bytes) currently recorded."""
        n, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size),0) FROM files").fetchone()
        return n, total

    def tracked_files(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT path FROM files")}

    def evict(self, limit: int | None = None, keep: str | None = None) -> int:
        """Drop least-recently-used blobs until the cache fits `limit`; returns bytes freed.

        `keep` is the blob a caller is about to read: it stays even when it alone is over the
        limit, since deleting it would fail the read that just fetched it.
        """
        limit = self.limit if limit is None else limit
        total = self._db.execute("SELECT (SELECT COALESCE(SUM(size),0) FROM blobs)"
                                 " + (SELECT COALESCE(SUM(size),0) FROM files)").fetchone()[0]
        freed = 0
        if total <= limit:
            return 0
        rows = self._db.execute("SELECT 1, digest, size, last_used FROM blobs UNION ALL"
                                " SELECT 0, path, size, last_used FROM files"
                                " ORDER BY last_used").fetchall()
        for is_blob, name, size, _ in rows:
            if total - freed <= limit:
                break
            if name == keep:
                continue
            if is_blob:
                self.path(name).unlink(missing_ok=True)
                self._db.execute("DELETE FROM blobs WHERE digest=?", (name,))
            else:
                # A mount reading this index keeps its open file; the next open rebuilds it.
                (self.root / name).unlink(missing_ok=True)
                self._db.execute("DELETE FROM files WHERE path=?", (name,))
            freed += size
        return freed

    def clean(self) -> int:
        """Empty the cache; returns bytes freed."""
        freed = self.evict(0)
        for p in (self.root / "tmp").iterdir():
            p.unlink(missing_ok=True)
        return freed


@dataclass(frozen=True)
class Usage:
    """What the cache folder holds, by kind: (count, bytes) each."""

    blobs: tuple[int, int]
    indexes: tuple[int, int]
    other: tuple[int, int]

    @property
    def bytes(self) -> int:
        return self.blobs[1] + self.indexes[1] + self.other[1]


class LocalCache:
    """The cache folder as a whole: where each kind of file lives, and its one budget."""

    def __init__(self, root: Path | None = None, limit: int | None = None) -> None:
        self.root = root or config.cache_dir()
        self.blobs = BlobCache(self.root, config.cache_size() if limit is None else limit)
        self.hashes_db = self.root / "hashes.db"
        self.packs_db = self.root / "packs.db"
        self.index_dir = self.root / "fs-index"
        self.work_root = self.root / "fs-work"

    def index_path(self, digest: str, fmt: int) -> Path:
        return self.index_dir / digest[:2] / f"{digest}.v{fmt}.db"

    def work_dir(self) -> Path:
        """This process's folder for partial reads; those of dead processes are swept first."""
        self.sweep_work()
        path = self.work_root / str(os.getpid())
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sweep_work(self) -> None:
        """Remove partial reads of mount processes that are gone."""
        if not self.work_root.is_dir():
            return
        for d in self.work_root.iterdir():
            if d.name.isdigit() and not pid_alive(int(d.name)):
                shutil.rmtree(d, ignore_errors=True)

    def _index_files(self) -> Iterator[Path]:
        if self.index_dir.is_dir():
            yield from (p for p in self.index_dir.glob("*/*.db") if p.is_file())

    def _count_untracked_indexes(self) -> None:
        """Indexes built before they were counted (older versions of artfs) join the budget."""
        tracked = self.blobs.tracked_files()
        for p in self._index_files():
            if str(p.relative_to(self.root)) not in tracked:
                self.blobs.add_file(p, last_used=p.stat().st_mtime)

    def usage(self) -> Usage:
        self._count_untracked_indexes()
        other = [p for p in (self.hashes_db, self.packs_db) if p.exists()]
        for pinned in (self.work_root, self.blobs.spool_root):
            if pinned.is_dir():
                other += [p for p in pinned.rglob("*") if p.is_file()]
        sizes = [p.stat().st_blocks * 512 for p in other]
        return Usage(self.blobs.usage(), self.blobs.files_usage(), (len(sizes), sum(sizes)))

    def clean(self) -> int:
        """Drop every blob and version index, and dead mounts' partial reads; returns bytes."""
        self._count_untracked_indexes()
        self.sweep_work()
        return self.blobs.clean()
