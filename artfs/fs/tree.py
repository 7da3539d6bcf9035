"""What each directory level contains.

Namespace levels (entities, projects, artifacts, an artifact's versions and aliases) come from
the registry and are cached for `LISTING_TTL_S`, so another process's new version or alias move
shows up within that time plus the kernel's short entry timeout. A version's contents come from
a local SQLite index of its manifest, built once per manifest digest under the cache directory:
versions are immutable, so the index never goes stale and `ls`, `find` and `du` never touch the
registry or the file bytes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import trio

from .. import staging
from ..manifest import Manifest, walk_tree
from ..names import ArtifactRef, is_name, parse_version
from ..registry import Registry, Version
from .inodes import VIEW_ROOT_ROW, View

log = logging.getLogger(__name__)

#: Names, versions and aliases are re-listed at most this often. One second keeps `ls -R` over a
#: remote registry to one LIST per directory while staying well inside the 5 s visibility bound.
LISTING_TTL_S = 1.0
#: Rows per SQLite query when a directory is listed page by page.
READDIR_PAGE = 1000
#: Bump when the index schema changes; old files are then rebuilt under a new name.
INDEX_FORMAT = 1

T = TypeVar("T")


class Row(NamedTuple):
    """One file or directory of a version."""

    id: int
    parent: int
    name: str
    path: str
    is_dir: bool
    size: int | None
    digest: str | None
    ref: str | None
    #: JSON of a reference's checksum information (etag, version id, generation...).
    extra: str | None
    subdirs: int


_COLUMNS = "id, parent, name, path, is_dir, size, digest, ref, extra, subdirs"


class _Flight:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.ok = False
        self.value: Any = None


class TTLCache:
    """Async memo with expiry; concurrent misses of one key share one call.

    With `ttl=0` it only coalesces concurrent calls (two opens of a large file hash it once).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._values: dict[Any, tuple[float, Any]] = {}
        self._pending: dict[Any, _Flight] = {}

    async def get(self, key: Any, compute: Callable[[], Awaitable[T]]) -> T:
        hit = self._values.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        flight = self._pending.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.ok:
                return flight.value
            return await self.get(key, compute)  # it failed: try (and fail) ourselves
        flight = self._pending[key] = _Flight()
        try:
            flight.value = await compute()
            flight.ok = True
            if self.ttl > 0:
                self._values[key] = (time.monotonic() + self.ttl, flight.value)
            return flight.value
        finally:
            del self._pending[key]
            flight.done.set()

    def drop(self, key: Any) -> None:
        """Forget a value known to be stale (this process just changed it)."""
        self._values.pop(key, None)


@dataclass
class ArtifactListing:
    """Versions and aliases of one artifact at one moment."""

    versions: list[int]
    aliases: dict[str, int]


class VersionIndex:
    """Read side of one manifest's SQLite index; used only from the trio thread.

    Queries run inline rather than in a worker thread: they hit a local file in tens of
    microseconds, less than a thread hand-off costs. The file is read through once on a worker
    before it is opened here (`Tree._ensure_index`), so those queries find it in the page cache
    instead of waiting on the disk.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=True)

    def row(self, row_id: int) -> Row | None:
        r = self.db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE id=?", (row_id,)).fetchone()
        return Row(*r) if r else None

    def child(self, parent: int, name: str) -> Row | None:
        r = self.db.execute(
            f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND name=?", (parent, name)
        ).fetchone()
        return Row(*r) if r else None

    def listing(self, parent: int, after: int,
                limit: int = READDIR_PAGE) -> list[tuple[int, str, int, int | None, int]]:
        """(id, name, is_dir, size, subdirs) of children in id order: just what readdir
        replies with, as plain tuples (full `Row`s cost ~0.2 s more per 100,000 entries). Ids
        never change, so `after` is a stable readdir offset."""
        return self.db.execute(
            "SELECT id, name, is_dir, size, subdirs FROM nodes WHERE parent=? AND id>? "
            "ORDER BY id LIMIT ?", (parent, after, limit)).fetchall()

    def close(self) -> None:
        self.db.close()


def build_index(manifest: Manifest, dest: Path) -> None:
    """Write the index of `manifest` to `dest` atomically (temporary file, then rename)."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex}")
    db = sqlite3.connect(tmp)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(
            "CREATE TABLE nodes (id INTEGER PRIMARY KEY, parent INTEGER, name TEXT, path TEXT,"
            " is_dir INTEGER, size INTEGER, digest TEXT, ref TEXT, extra TEXT, subdirs INTEGER)"
        )
        ids: dict[str, int] = {"": VIEW_ROOT_ROW}
        subdirs: dict[int, int] = {VIEW_ROOT_ROW: 0}
        rows: list[tuple[Any, ...]] = [(VIEW_ROOT_ROW, 0, "", "", 1, None, None, None, None)]
        next_id = VIEW_ROOT_ROW + 1
        for path, parent, name, entry in walk_tree(manifest):
            parent_id = ids[parent]
            if entry is None:
                ids[path] = next_id
                subdirs[next_id] = 0
                subdirs[parent_id] += 1
                rows.append((next_id, parent_id, name, path, 1, None, None, None, None))
            else:
                rows.append((next_id, parent_id, name, path, 0, entry.size, entry.digest,
                             entry.ref, entry.extra_json()))
            next_id += 1
        db.executemany(
            "INSERT INTO nodes VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(*r, subdirs.get(r[0], 0)) for r in rows],
        )
        db.execute("CREATE UNIQUE INDEX by_name ON nodes (parent, name)")
        db.execute(f"PRAGMA user_version={INDEX_FORMAT}")
        db.commit()
        db.close()
        os.rename(tmp, dest)
    finally:
        db.close()  # a no-op when already closed; here for the error path
        tmp.unlink(missing_ok=True)


class Tree:
    """The directory levels above and inside versions, for one registry."""

    def __init__(self, registry: Registry, limiter: trio.CapacityLimiter) -> None:
        self.registry = registry
        self.limiter = limiter
        self._listings = TTLCache(LISTING_TTL_S)
        #: Version records: digest, size and created_at never change, so they are kept forever;
        #: description, metadata and aliases are re-read through `_details` for xattrs.
        self._records = TTLCache(float("inf"))
        self._details = TTLCache(LISTING_TTL_S)
        self._building = TTLCache(float("inf"))
        self._open: dict[str, VersionIndex] = {}
        self._users: dict[str, set[int]] = {}

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a registry or disk call on a worker thread so the FUSE loop keeps serving."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter,
                                             abandon_on_cancel=True)

    # -- namespace levels --------------------------------------------------------------------
    async def entities(self) -> list[str]:
        return await self._listings.get(("e",), lambda: self.blocking(self.registry.entities))

    async def projects(self, entity: str) -> list[str]:
        return await self._listings.get(
            ("p", entity), lambda: self.blocking(self.registry.projects, entity))

    async def artifacts(self, entity: str, project: str) -> list[str]:
        return await self._listings.get(
            ("a", entity, project),
            lambda: self.blocking(self.registry.artifacts, entity, project))

    async def artifact(self, entity: str, project: str, name: str) -> ArtifactListing:
        def fetch() -> ArtifactListing:
            return ArtifactListing(self.registry.versions(entity, project, name),
                                   self.registry.aliases(entity, project, name))

        return await self._listings.get(("v", entity, project, name),
                                        lambda: self.blocking(fetch))

    async def children(self, parts: tuple[str, ...]) -> list[str]:
        """Names inside a namespace directory, sorted; valid names only."""
        if len(parts) == 0:
            names = await self.entities()
        elif len(parts) == 1:
            names = await self.projects(parts[0])
        elif len(parts) == 2:
            names = await self.artifacts(*parts)
        else:
            listing = await self.artifact(*parts)
            return [f"v{n}" for n in listing.versions] + sorted(listing.aliases)
        # Entities, projects and artifacts made with `mkdir` and not committed yet.
        pending = staging.pending_names(self.registry.url, parts)
        return sorted({n for n in names if is_name(n)} | set(pending))

    async def resolve_label(self, entity: str, project: str, name: str, label: str) -> int | None:
        """The version `label` (vN or an alias) names right now, or None."""
        listing = await self.artifact(entity, project, name)
        number = parse_version(label)
        if number is not None:
            return number if number in listing.versions else None
        return listing.aliases.get(label)

    async def record(self, view: View) -> Version:
        """The version's immutable record (digest, size, created_at, type, logged_by)."""
        ref = ArtifactRef(view.entity, view.project, view.name, f"v{view.version}")
        return await self._records.get(
            ref, lambda: self.blocking(lambda: self.registry.version(ref, with_aliases=False)))

    async def details(self, view: View) -> Version:
        """The version with its current description, metadata and aliases (short TTL)."""
        ref = ArtifactRef(view.entity, view.project, view.name, f"v{view.version}")
        return await self._details.get(ref, lambda: self.blocking(self.registry.version, ref))

    def forget_artifact(self, entity: str, project: str, name: str) -> None:
        """After a commit by this mount: list its versions, aliases and names afresh."""
        for key in (("e",), ("p", entity), ("a", entity, project),
                    ("v", entity, project, name)):
            self._listings.drop(key)

    # -- inside a version --------------------------------------------------------------------
    async def index(self, view: View) -> VersionIndex:
        """The open index of the view's version, building it on first use."""
        record = await self.record(view)
        self._users.setdefault(record.digest, set()).add(view.slot)
        idx = self._open.get(record.digest)
        if idx is None:
            path = await self._building.get(record.digest, lambda: self.blocking(
                self._ensure_index, record))
            idx = self._open.get(record.digest)
            if idx is None:
                idx = self._open[record.digest] = VersionIndex(path)
        return idx

    def _ensure_index(self, record: Version) -> Path:
        cache = self.registry.local_cache
        path = cache.index_path(record.digest, INDEX_FORMAT)
        if path.exists():
            cache.blobs.touch_file(path)
        else:
            started = time.monotonic()
            manifest = self.registry.manifest(record)
            path.parent.mkdir(parents=True, exist_ok=True)
            build_index(manifest, path)
            cache.blobs.add_file(path)
            log.info("indexed %s (%d files) in %.2f s", record.qualified, len(manifest),
                     time.monotonic() - started)
        _read_through(path)
        return path

    def release(self, slot: int, still_referenced: Callable[[int], bool]) -> None:
        """Close an index once no view of its version is referenced by the kernel any more."""
        for digest, slots in list(self._users.items()):
            if slot in slots:
                slots.discard(slot)
                if not any(still_referenced(s) for s in slots):
                    idx = self._open.pop(digest, None)
                    if idx is not None:
                        idx.close()
                    del self._users[digest]


def _read_through(path: Path) -> None:
    """Bring a file into the page cache (an index of 100,000 files is ~15 MB: a few ms)."""
    with open(path, "rb", buffering=0) as f:
        while f.read(4 * 1024 * 1024):
            pass

