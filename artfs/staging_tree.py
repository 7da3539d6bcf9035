"""The tree of a staging area as its SQLite file holds it: the schema, reading it, one
consistent snapshot for a commit, and keeping its write-ahead log short.

`artfs.staging.Staging` adds the changes (files, folders, commits, rebases) on top; see there
for the layout of an area and why every change is one transaction.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from . import config
from .manifest import Entry

#: Row id of the staging folder itself, as in a version index.
ROOT = 1
#: SQLite rows per readdir page.
PAGE = 1000
#: Size a staging index's WAL file is cut back to when it starts over (see defer_checkpoints),
#: and the size past which a checkpoint empties it even while changes keep coming (which holds
#: changes up for ~80 ms at 32 MiB, ~180 ms at 128 MiB on the test machines).
WAL_KEEP = 16 * 1024 * 1024
WAL_CAP = 32 * 1024 * 1024
#: Permission bits of new files and folders (the file type is added by `stat_mode`).
FILE_PERMS = 0o644
DIR_PERMS = 0o755
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    digest TEXT,
    ref TEXT,
    extra TEXT,
    content TEXT,
    atime_ns INTEGER,
    ctime_ns INTEGER,
    interrupted INTEGER,
    UNIQUE (parent, name));
CREATE TABLE IF NOT EXISTS base (path TEXT PRIMARY KEY, size INTEGER, digest TEXT, ref TEXT,
                                 extra TEXT);
"""
#: Columns added since the first areas were made on users' machines (added on open).
_ADDED = {"content": "TEXT", "atime_ns": "INTEGER", "ctime_ns": "INTEGER",
          "interrupted": "INTEGER"}
_COLUMNS = ("id, parent, name, kind, size, mtime_ns, mode, digest, ref, extra, content, "
            "atime_ns, ctime_ns, interrupted")
#: Draft names: `<node id>~<n>`, n growing through a process's life and across restarts.
_DRAFTS = itertools.count(time.time_ns())


class Node(NamedTuple):
    """One file or folder of a staging area.

    kind: `dir`; `base` (bytes are the registry's: digest/ref/extra are the manifest entry's);
    `local` (bytes in files/<content>, size and mtime are theirs, digest is their SHA-256 when
    known, else None; content is None while a new file's first writer has not closed it).
    atime_ns/ctime_ns: None means "as mtime". interrupted: published from a draft a crash cut
    short (the file may be incomplete).
    """

    id: int
    parent: int
    name: str
    kind: str
    size: int | None
    mtime_ns: int
    mode: int
    digest: str | None
    ref: str | None
    extra: str | None
    content: str | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    interrupted: int | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def published(self) -> bool:
        """A file whose bytes some writer finished (or a base file): what a commit takes."""
        return self.kind == "base" or (self.kind == "local" and self.content is not None)

    def entry(self, path: str) -> Entry:
        return Entry.from_index(path, self.size, self.digest, self.ref, self.extra)



@dataclass
class Snapshot:
    """The tree as one read saw it: what a commit stores. Files some writer is still writing
    for the first time are absent; a file being rewritten shows its last published bytes."""

    tree: dict[str, Node]
    base: dict[str, Entry]
    base_version: int | None



def registry_root(registry_url: str) -> Path:
    slug = hashlib.sha256(registry_url.encode()).hexdigest()[:16]
    root = config.state_dir() / "staging" / slug
    if not (root / "registry.txt").exists():
        root.mkdir(parents=True, exist_ok=True)
        (root / "registry.txt").write_text(registry_url + "\n")
    return root


def now_ns() -> int:
    return time.time_ns()


def published_files(nodes: list[Node]) -> dict[str, Node]:
    """path → node of every published file among `nodes` (a whole tree's rows)."""
    by_id = {n.id: n for n in nodes}
    paths: dict[int, str] = {ROOT: ""}

    def path_of(n: Node) -> str:
        p = paths.get(n.id)
        if p is None:
            parent = by_id.get(n.parent)
            head = path_of(parent) if parent is not None else ""
            p = paths[n.id] = f"{head}/{n.name}" if head else n.name
        return p

    return {path_of(n): n for n in nodes if n.published}



class StagingTree:
    """The SQLite tree of one artifact's staging area. Not thread-safe: one object per thread."""

    def __init__(self, registry_url: str, entity: str, project: str, name: str) -> None:
        self.entity, self.project, self.name = entity, project, name
        self.what = f"{entity}/{project}/{name}"
        self.folder = registry_root(registry_url) / entity / project / name
        self.files = self.folder / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        #: Transactions committed through this object (a mount checkpoints areas that changed).
        self.changes = 0
        #: While a list, files this object would delete are collected in it instead: a mount
        #: holds deletions while a commit may still be reading the bytes (`held_deletions`).
        self.hold_deletes: list[Path] | None = None
        self.db = sqlite3.connect(self.folder / "index.db", isolation_level=None,
                                  check_same_thread=False, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a transaction survives a crash of this process (the point of staging), only
        # a power cut may lose the last ones; FULL would fsync on every create of `cp -r`.
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self.transaction():
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)
            self._add_columns()
            if self.node(ROOT) is None:
                self.db.execute("INSERT INTO nodes (id, parent, name, kind, mtime_ns, mode)"
                                " VALUES (?,?,?,?,?,?)", (ROOT, 0, "", "dir", now_ns(), DIR_PERMS))


    def _add_columns(self) -> None:
        """Areas made before drafts named a local file's bytes `files/<id>`."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(nodes)")}
        for column, kind in _ADDED.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE nodes ADD COLUMN {column} {kind}")
                if column == "content":
                    self.db.execute("UPDATE nodes SET content=CAST(id AS TEXT)"
                                    " WHERE kind='local'")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self.changes += 1

    def defer_checkpoints(self) -> None:
        """Leave WAL checkpoints to `checkpoint`, which a mount runs on a worker thread: an
        automatic one fsyncs the WAL and the database inside whichever change crosses its
        threshold (every ~250 new files), on the mount's request loop. Measured during `cp -r`
        of 10,000 files, the 99th percentile wait of another request fell from ~12 ms to
        ~1.6 ms (the longest: ~80 ms at WAL_CAP, from ~20 ms; under load, inline checkpoints
        stalled the loop for up to 0.6 s).

        A checkpoint beside a stream of changes cannot catch up with the last of them, so the
        WAL only starts over once the stream pauses: it grows by ~17 KiB per new file during
        a `cp -r`, up to WAL_CAP (see `checkpoint`), and is cut back to WAL_KEEP afterwards."""
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.execute(f"PRAGMA journal_size_limit={WAL_KEEP}")

    def checkpoint(self) -> None:
        """Copy the WAL into the database through a connection of its own, so that it can run
        on another thread while this object's connection keeps changing the tree. Past WAL_CAP
        it then empties the WAL, which holds up changes while it runs (the copy just made
        leaves it little to copy; truncating the file and syncing take the time)."""
        wal = self.folder / "index.db-wal"
        # mode=rw: an area removed meanwhile (rmdir of a new artifact) must not be re-created.
        # A short timeout: a reader of another process keeping an old snapshot (which blocks
        # TRUNCATE) must not hold up this mount's changes for long; the next round tries again.
        db = sqlite3.connect(f"{(self.folder / 'index.db').as_uri()}?mode=rw", uri=True,
                             isolation_level=None, timeout=1)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if wal.exists() and wal.stat().st_size > WAL_CAP:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def sync_tree(self) -> None:
        """Make every committed change of the tree durable (changes are not synced one by one:
        see `defer_checkpoints`), for a user's fsync. Any thread: no SQLite call."""
        try:
            fd = os.open(self.folder / "index.db-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: everything is in the database, which checkpoints synced
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- metadata ----------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    @property
    def base_version(self) -> int | None:
        v = self.meta("base_version")
        return int(v) if v is not None else None

    @property
    def is_new(self) -> bool:
        """Never filled from a version: neither `reset` nor a commit has run yet."""
        return self.meta("initialized") is None

    def _touch(self) -> None:
        """Mark the area as changed by the user (kept clean areas can follow `latest`). One
        statement that writes nothing when the mark is already there."""
        self.db.execute("INSERT INTO meta VALUES ('dirty', '1') ON CONFLICT (key) DO UPDATE"
                        " SET value='1' WHERE value IS NOT '1'")

    @property
    def dirty(self) -> bool:
        # 'snap': changed, and a commit has taken a snapshot since (see `snapshot`).
        return self.meta("dirty") in ("1", "snap")

    # -- reading the tree --------------------------------------------------------------------
    def node(self, node_id: int) -> Node | None:
        r = self.db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE id=?", (node_id,)).fetchone()
        return Node(*r) if r else None

    def child(self, parent: int, name: str) -> Node | None:
        r = self.db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND name=?",
                            (parent, name)).fetchone()
        return Node(*r) if r else None

    def children(self, parent: int, after: int = 0, limit: int = PAGE) -> list[Node]:
        """In id order: a node keeps its id through renames, so `after` is a stable offset."""
        return [Node(*r) for r in self.db.execute(
            f"SELECT {_COLUMNS} FROM nodes WHERE parent=? AND id>? ORDER BY id LIMIT ?",
            (parent, after, limit))]

    def subdir_count(self, node_id: int) -> int:
        return self.db.execute("SELECT count(*) FROM nodes WHERE parent=? AND kind='dir'",
                               (node_id,)).fetchone()[0]

    def _all(self) -> list[Node]:
        return [Node(*r) for r in self.db.execute(f"SELECT {_COLUMNS} FROM nodes")]

    def path(self, node_id: int) -> str:
        parts = []
        while node_id != ROOT:
            n = self.node(node_id)
            if n is None:
                break
            parts.append(n.name)
            node_id = n.parent
        return "/".join(reversed(parts))

    def file(self, node: Node) -> Path:
        """Where a published local file's bytes are (they never change there)."""
        assert node.content is not None, node
        return self.files / node.content

    def new_draft(self, node_id: int) -> Path:
        """A name for a new draft of the node: never used before in this area."""
        return self.files / f"{node_id}~{next(_DRAFTS)}"

    def tree(self) -> dict[str, Node]:
        """path → node of every published file (folders are implied by paths, as in a
        manifest): new files whose first writer has not closed them are left out."""
        return published_files(self._all())

    def base(self) -> dict[str, Entry]:
        return {r[0]: Entry.from_index(*r)
                for r in self.db.execute("SELECT path, size, digest, ref, extra FROM base")}

    def snapshot(self) -> Snapshot:
        """The tree and its base as of one moment, for a commit. Changes made afterwards mark
        the area changed again (`_touch` overwrites 'snap'), so `rebase` knows whether the
        area is clean once the commit is done."""
        with self.transaction():
            snap = Snapshot(published_files(self._all()), self.base(), self.base_version)
            self.db.execute("UPDATE meta SET value='snap' WHERE key='dirty' AND value='1'")
        return snap
