"""Staging folders: the writable next version of an artifact, kept on local disk.

A staging area starts as a copy of the latest version's *manifest*, not of its bytes: each file
is a `base` node that still names its blob in the registry. A file becomes `local` when a writer
that changed it closes it (is *published*): its bytes are then the file `files/<content>` the
row names, and that file never changes again. Writers write *drafts* (`files/<id>~<n>`, one
per write session, see `artfs.fs.staged`); publishing a draft is one row update that points the
node at it. So a commit that reads the tree once (`snapshot`) sees, for every path, bytes some
writer finished, and those bytes stay put while it stores them, whatever writers do meanwhile.
Committing turns that snapshot into one `Registry.log_version` call — base files as ready-made
entries, local files as sources — and then rebases the nodes still showing what it stored.

Layout, one folder per registry (slug = first 16 hex of SHA-256 of its URL)::

    <state dir>/staging/<slug>/registry.txt                the registry URL, for people
    <state dir>/staging/<slug>/<entity>/<project>/         pending namespaces (mkdir in a mount)
    <state dir>/staging/<slug>/<e>/<p>/<name>/index.db     the tree (SQLite)
    <state dir>/staging/<slug>/<e>/<p>/<name>/files/<id>~<n>  bytes of local files and drafts

Every change of the tree is one SQLite transaction, and file bytes are complete before the row
that names them is committed, so a crash at any moment leaves a consistent area; `_repair`
removes orphans and publishes the drafts a crash cut short, flagged `interrupted`.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import config, progress
from .errors import ArtfsError
from .hashing import CHUNK, stat_key
from .manifest import Entry, Manifest, walk_tree
from .names import LATEST, ArtifactRef, check_name, is_name
from .registry import CommitResult, Registry, RunRecord, Source, Version

#: Row id of the staging folder itself, as in a version index.
ROOT = 1
#: SQLite rows per readdir page.
PAGE = 1000
#: Folders of staged copies no longer needed, being deleted in the background.
TRASH_PREFIX = "trash-"
#: Size a staging index's WAL file is cut back to when it starts over (see defer_checkpoints),
#: and the size past which a checkpoint empties it even while changes keep coming (which holds
#: changes up for ~80 ms at 32 MiB, ~180 ms at 128 MiB on the test machines).
WAL_KEEP = 16 * 1024 * 1024
WAL_CAP = 32 * 1024 * 1024
FILE_MODE = 0o644
DIR_MODE = 0o755
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
#: What `artfs diff` adds to a file published from a draft that a crash cut short.
INTERRUPTED_NOTE = "(was being written when the mount stopped)"


class StagingError(ArtfsError):
    """A staging operation that cannot be done; the message names the artifact and files."""


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
class Diff:
    """Paths added, changed and removed relative to the base version."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: Added or changed paths published from a draft a crash cut short.
    interrupted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def lines(self) -> list[str]:
        cut = set(self.interrupted)

        def line(mark: str, path: str) -> str:
            return f"{mark}! {path}  {INTERRUPTED_NOTE}" if path in cut else f"{mark} {path}"

        return sorted([line("A", p) for p in self.added] + [line("M", p) for p in self.changed]
                      + [f"D {p}" for p in self.removed], key=lambda s: s.split(" ", 1)[1])


@dataclass
class Snapshot:
    """The tree as one read saw it: what a commit stores. Files some writer is still writing
    for the first time are absent; a file being rewritten shows its last published bytes."""

    tree: dict[str, Node]
    base: dict[str, Entry]
    base_version: int | None


@dataclass
class Committed:
    """What `commit` did: a new version, an existing one with the same contents, or nothing."""

    version: Version | None
    created: bool
    message: str


def registry_root(registry_url: str) -> Path:
    slug = hashlib.sha256(registry_url.encode()).hexdigest()[:16]
    root = config.state_dir() / "staging" / slug
    if not (root / "registry.txt").exists():
        root.mkdir(parents=True, exist_ok=True)
        (root / "registry.txt").write_text(registry_url + "\n")
    return root


def pending_names(registry_url: str, parts: tuple[str, ...]) -> list[str]:
    """Entities, projects or artifacts created by `mkdir` in a mount and not yet committed
    (or with a staging area): subfolders of the registry's staging root at that level."""
    folder = registry_root(registry_url).joinpath(*parts)
    if len(parts) == 2:
        return sorted(d.name for d in _subdirs(folder) if (d / "index.db").exists())
    return sorted(d.name for d in _subdirs(folder))


def _subdirs(folder: Path) -> Iterator[Path]:
    try:
        with os.scandir(folder) as it:
            for d in it:
                if d.is_dir() and is_name(d.name):
                    yield Path(d.path)
    except FileNotFoundError:
        return



def add_pending(registry_url: str, parts: tuple[str, ...]) -> None:
    """Record a new entity or project (`mkdir` in a mount) so it survives a remount."""
    for p in parts:
        check_name(p, "name")
    registry_root(registry_url).joinpath(*parts).mkdir(parents=True, exist_ok=True)


def remove_pending(registry_url: str, parts: tuple[str, ...]) -> None:
    """Undo the `mkdir` of a never-committed entity, project or artifact (the caller checked
    the registry): ENOTEMPTY while an entity or project holds pending names, or an artifact's
    staging area holds any file or folder. An artifact's area is renamed to a name no artifact
    can have before it is deleted, so a crash midway leaves no half area behind."""
    folder = registry_root(registry_url).joinpath(*parts)
    if len(parts) < 3:
        for trash in folder.glob(f"@{TRASH_PREFIX}*"):  # an artifact's removal cut short
            shutil.rmtree(trash, ignore_errors=True)
        os.rmdir(folder)  # ENOENT, or ENOTEMPTY while it holds pending names
        return
    if not (folder / "index.db").is_file():
        raise OSError(errno.ENOENT, f"{'/'.join(parts)} is not a new artifact of this machine")
    area = Staging(registry_url, *parts)
    try:
        if area.children(ROOT, limit=1):
            raise OSError(errno.ENOTEMPTY, f"the staging folder of {area.what} is not empty")
    finally:
        area.close()
    trash = folder.with_name(f"@{TRASH_PREFIX}{uuid.uuid4().hex}")
    os.rename(folder, trash)
    shutil.rmtree(trash)


def _delete_in_background(folder: Path) -> None:
    threading.Thread(target=shutil.rmtree, args=(folder, True), daemon=True,
                     name="artfs-staging-trash").start()


def _now() -> int:
    return time.time_ns()


class Staging:
    """One artifact's staging area. Not thread-safe: use one object per thread."""

    def __init__(self, registry_url: str, entity: str, project: str, name: str, *,
                 repair: bool = False) -> None:
        """`repair` (`_repair`) only for the area's owner as it starts using it (`open_area`):
        anyone else, such as `artfs diff` beside a mount copying files in, would take the
        draft of a file being written for one a crash left and publish it."""
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
                                " VALUES (?,?,?,?,?,?)", (ROOT, 0, "", "dir", _now(), DIR_MODE))
        if repair:
            self._repair()

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

    def _repair(self) -> None:
        """Undo what a crash can leave: files no row names; drafts of writers cut short (the
        newest of a file is published, flagged `interrupted`, so that the bytes written are
        kept but a commit asks first); a row whose bytes an older version's commit moved into
        the registry (its digest is known, so it becomes a base file of that blob)."""
        for trash in [*self.folder.glob(f"{TRASH_PREFIX}*"), *self.folder.glob("commit-*")]:
            _delete_in_background(trash)  # a deletion or a commit cut short by a crash
        nodes = {n.id: n for n in self._all()}
        named = {n.content for n in nodes.values() if n.kind == "local" and n.content}
        cut: dict[int, tuple[int, Path]] = {}
        for f in self.files.iterdir():
            if f.name in named:
                continue
            node_id, _, seq = f.name.partition("~")
            node = nodes.get(int(node_id)) if node_id.isdigit() else None
            if node is None or node.is_dir or not seq.isdigit():
                f.unlink(missing_ok=True)
                continue
            older = cut.get(node.id)
            if older is not None and older[0] > int(seq):
                f.unlink(missing_ok=True)
                continue
            if older is not None:
                older[1].unlink(missing_ok=True)
            cut[node.id] = (int(seq), f)
        with self.transaction():
            for node_id, (_, draft) in cut.items():
                s = os.stat(draft)
                self.db.execute(
                    "UPDATE nodes SET kind='local', content=?, size=?, digest=NULL, ref=NULL,"
                    " extra=NULL, mtime_ns=?, ctime_ns=?, interrupted=1 WHERE id=?",
                    (draft.name, s.st_size, s.st_mtime_ns, s.st_ctime_ns, node_id))
                self._touch()
            for n in nodes.values():
                if n.kind != "local" or n.id in cut:
                    continue
                if n.content is None:  # created, and the draft is gone: nothing was kept
                    self.db.execute("DELETE FROM nodes WHERE id=?", (n.id,))
                elif not self.file(n).exists():
                    if n.digest is None:
                        raise StagingError(f"staging of {self.what}: the bytes of node {n.id} "
                                           f"({self.path(n.id)}) are missing from {self.files}")
                    self.db.execute("UPDATE nodes SET kind='base', content=NULL WHERE id=?",
                                    (n.id,))

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
        return _files(self._all())

    def base(self) -> dict[str, Entry]:
        return {r[0]: Entry.from_index(*r)
                for r in self.db.execute("SELECT path, size, digest, ref, extra FROM base")}

    def snapshot(self) -> Snapshot:
        """The tree and its base as of one moment, for a commit. Changes made afterwards mark
        the area changed again (`_touch` overwrites 'snap'), so `rebase` knows whether the
        area is clean once the commit is done."""
        with self.transaction():
            snap = Snapshot(_files(self._all()), self.base(), self.base_version)
            self.db.execute("UPDATE meta SET value='snap' WHERE key='dirty' AND value='1'")
        return snap

    # -- changing the tree -------------------------------------------------------------------
    def _delete(self, path: Path) -> None:
        if self.hold_deletes is not None:
            self.hold_deletes.append(path)
        else:
            path.unlink(missing_ok=True)

    def held_deletions(self) -> None:
        """Stop holding deletions and make the held ones."""
        held, self.hold_deletes = self.hold_deletes or [], None
        for path in held:
            path.unlink(missing_ok=True)

    def _free(self, parent: int, name: str) -> None:
        parent_node = self.node(parent)
        if parent_node is None or not parent_node.is_dir:
            raise OSError(errno.ENOENT, f"staging of {self.what}: folder {parent} is gone")
        if self.child(parent, name) is not None:
            raise OSError(errno.EEXIST, f"{self.what}/{self.path(parent)}/{name} exists")

    def _dir_changed(self, *dirs: int) -> None:
        """An entry was added to or removed from these folders: their mtime and ctime."""
        now = _now()
        self.db.executemany("UPDATE nodes SET mtime_ns=?, ctime_ns=? WHERE id=?",
                            [(now, now, d) for d in set(dirs)])

    def create_file(self, parent: int, name: str, data: bytes = b"",
                    mode: int = FILE_MODE) -> Node:
        """A new local file holding `data`, published at once (for callers without a mount)."""
        node, fd, draft = self.create_open(parent, name, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.publish(node.id, draft, hashlib.sha256(data).hexdigest())
        published = self.node(node.id)
        assert published is not None
        return published

    def create_open(self, parent: int, name: str,
                    mode: int = FILE_MODE) -> tuple[Node, int, Path]:
        """A new file, its first draft and a read-write descriptor of it. The file is not part
        of the tree a commit takes until its writer closes it (`publish`).

        Few SQLite statements (`cp -r` of small files is bound by per-file costs): the
        parent's existence and the name's uniqueness are checked by the insert itself."""
        now, mode = _now(), mode & 0o7777
        fd = -1
        try:
            with self.transaction():
                try:
                    cur = self.db.execute(
                        "INSERT INTO nodes (parent, name, kind, size, mtime_ns, mode)"
                        " SELECT ?, ?, 'local', 0, ?, ? WHERE EXISTS"
                        " (SELECT 1 FROM nodes WHERE id=? AND kind='dir')",
                        (parent, name, now, mode, parent))
                except sqlite3.IntegrityError:
                    raise OSError(errno.EEXIST, f"{self.what}/{self.path(parent)}/{name} "
                                  "exists") from None
                if cur.rowcount == 0:
                    raise OSError(errno.ENOENT, f"staging of {self.what}: cannot create "
                                  f"{name!r}: its folder (node {parent}) was removed")
                node_id = cur.lastrowid
                assert node_id is not None
                draft = self.new_draft(node_id)
                fd = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                self._dir_changed(parent)
                self._touch()
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return Node(node_id, parent, name, "local", 0, now, mode, None, None, None), fd, draft

    def publish(self, node_id: int, draft: Path, digest: str | None) -> bool:
        """Make a finished draft the node's bytes (one row update; the draft file is not
        moved). False when the node is gone meanwhile: the caller deletes the draft."""
        s = os.stat(draft)
        with self.transaction():
            old = self.db.execute("SELECT kind, content FROM nodes WHERE id=?",
                                  (node_id,)).fetchone()
            if old is None or old[0] == "dir":
                return False
            self.db.execute(
                "UPDATE nodes SET kind='local', content=?, size=?, digest=?, ref=NULL,"
                " extra=NULL, mtime_ns=?, ctime_ns=?, interrupted=NULL WHERE id=?",
                (draft.name, s.st_size, digest, s.st_mtime_ns, _now(), node_id))
            self._touch()
        if old[0] == "local" and old[1] and old[1] != draft.name:
            self._delete(self.files / old[1])
        return True

    def mkdir(self, parent: int, name: str, mode: int = DIR_MODE) -> Node:
        with self.transaction():
            self._free(parent, name)
            cur = self.db.execute(
                "INSERT INTO nodes (parent, name, kind, mtime_ns, mode) VALUES (?,?,?,?,?)",
                (parent, name, "dir", _now(), mode & 0o7777))
            self._dir_changed(parent)
            self._touch()
        node = self.node(cur.lastrowid or 0)
        assert node is not None
        return node

    def unlink(self, parent: int, name: str) -> Node:
        """Remove a file; its bytes file is deleted (open descriptors keep working)."""
        node = self._remove(parent, name, folder=False)
        if node.kind == "local" and node.content:
            self._delete(self.file(node))
        return node

    def rmdir(self, parent: int, name: str) -> Node:
        return self._remove(parent, name, folder=True)

    def _remove(self, parent: int, name: str, *, folder: bool) -> Node:
        """Delete the row of an empty folder (`folder`) or of a file, as rmdir and unlink."""
        with self.transaction():
            node = self.child(parent, name)
            if node is None:
                raise OSError(errno.ENOENT, f"{self.what}: no {name!r} in folder {parent}")
            if node.is_dir and not folder:
                raise OSError(errno.EISDIR, f"{self.what}: {name!r} is a folder")
            if folder and not node.is_dir:
                raise OSError(errno.ENOTDIR, f"{self.what}: {name!r} is not a folder")
            if folder and self.children(node.id, limit=1):
                raise OSError(errno.ENOTEMPTY, f"{self.what}/{self.path(node.id)} is not empty")
            self.db.execute("DELETE FROM nodes WHERE id=?", (node.id,))
            self._dir_changed(parent)
            self._touch()
        return node

    def rename(self, parent: int, name: str, new_parent: int, new_name: str,
               *, replace: bool = True) -> Node | None:
        """Move a file or a whole folder (one row update); returns the node it replaced."""
        with self.transaction():
            node = self.child(parent, name)
            if node is None:
                raise OSError(errno.ENOENT, f"{self.what}: no {name!r} in folder {parent}")
            dest_dir = self.node(new_parent)
            if dest_dir is None or not dest_dir.is_dir:
                raise OSError(errno.ENOENT, f"{self.what}: target folder {new_parent} is gone")
            if node.is_dir:
                ancestor: int = new_parent
                while ancestor != ROOT:
                    if ancestor == node.id:
                        raise OSError(errno.EINVAL, f"{self.what}: cannot move "
                                      f"{self.path(node.id)} into itself")
                    ancestor = self.node(ancestor).parent  # type: ignore[union-attr]
            old = self.child(new_parent, new_name)
            if old is not None and old.id == node.id:
                return None
            if old is not None:
                if not replace:
                    raise OSError(errno.EEXIST, f"{self.what}/{self.path(old.id)} exists")
                if old.is_dir and not node.is_dir:
                    raise OSError(errno.EISDIR, f"{self.what}/{self.path(old.id)} is a folder")
                if node.is_dir and not old.is_dir:
                    raise OSError(errno.ENOTDIR, f"{self.what}/{self.path(old.id)} is a file")
                if old.is_dir and self.children(old.id, limit=1):
                    raise OSError(errno.ENOTEMPTY, f"{self.what}/{self.path(old.id)} is not "
                                  "empty")
                self.db.execute("DELETE FROM nodes WHERE id=?", (old.id,))
            self.db.execute("UPDATE nodes SET parent=?, name=?, ctime_ns=? WHERE id=?",
                            (new_parent, new_name, _now(), node.id))
            self._dir_changed(parent, new_parent)
            self._touch()
        if old is not None and old.kind == "local" and old.content:
            self._delete(self.file(old))
        return old

    def set_attrs(self, node_id: int, *, mode: int | None = None, mtime_ns: int | None = None,
                  atime_ns: int | None = None) -> None:
        """chmod and utime: kept while staged, not committed. The change time moves too."""
        with self.transaction():
            if mode is not None:
                self.db.execute("UPDATE nodes SET mode=? WHERE id=?", (mode & 0o7777, node_id))
            if mtime_ns is not None:
                self.db.execute("UPDATE nodes SET mtime_ns=? WHERE id=?", (mtime_ns, node_id))
            if atime_ns is not None:
                self.db.execute("UPDATE nodes SET atime_ns=? WHERE id=?", (atime_ns, node_id))
            self.db.execute("UPDATE nodes SET ctime_ns=? WHERE id=?", (_now(), node_id))
            self._touch()

    # -- whole-area operations ---------------------------------------------------------------
    def reset(self, manifest: Manifest | None, base_version: int | None, *,
              keep_base: bool = False) -> None:
        """Make the area show `manifest` (None: empty) with no local bytes. `keep_base` keeps
        the base version for `diff` (an area emptied by `artfs stage --empty`). Only with no
        draft being written: every file of files/ goes."""
        with self.transaction():
            self.db.execute("DELETE FROM nodes WHERE id<>?", (ROOT,))
            if manifest is not None:
                self._insert_manifest(manifest)
            if not keep_base:
                self._set_base(manifest, base_version)
            self._dir_changed(ROOT)
            self.set_meta("initialized", "1")
            self.set_meta("dirty", "1" if keep_base else "0")
        # Swap in an empty folder and delete the old one in the background: unlinking 10,000
        # staged copies took seconds on the test machines' disks, and nobody needs to wait.
        trash = self.folder / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        os.rename(self.files, trash)
        self.files.mkdir()
        _delete_in_background(trash)

    def _insert_manifest(self, manifest: Manifest, mtime_ns: int | None = None) -> None:
        ids: dict[str, int] = {"": ROOT}
        now = mtime_ns or _now()
        for path, parent, name, entry in walk_tree(manifest):
            if entry is None:
                ids[path] = self.db.execute(
                    "INSERT INTO nodes (parent, name, kind, mtime_ns, mode) VALUES (?,?,?,?,?)",
                    (ids[parent], name, "dir", now, DIR_MODE)).lastrowid
                continue
            self.db.execute(
                "INSERT INTO nodes (parent, name, kind, size, mtime_ns, mode, digest, ref, extra)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (ids[parent], name, "base", entry.size, now, FILE_MODE, entry.digest,
                 entry.ref, entry.extra_json()))

    def _set_base(self, manifest: Manifest | None, base_version: int | None) -> None:
        self.db.execute("DELETE FROM base")
        if manifest is not None:
            self.db.executemany("INSERT INTO base VALUES (?,?,?,?,?)", [
                (e.path, e.size, e.digest, e.ref, e.extra_json()) for e in manifest.values()])
        self.set_meta("base_version", None if base_version is None else str(base_version))

    def rebase(self, snap: Snapshot, version: Version, manifest: Manifest) -> None:
        """After a commit of `snap`: every local file still showing the bytes the commit stored
        becomes a base file of the new version (same node id, so open files and inode numbers
        survive). Files changed, created or removed since the snapshot stay as they are, now
        compared with the new version."""
        freed: list[Path] = []
        with self.transaction():
            for path, node in snap.tree.items():
                entry = manifest.get(path)
                if node.kind != "local" or entry is None or entry.digest is None:
                    continue
                cur = self.db.execute(
                    "UPDATE nodes SET kind='base', size=?, digest=?, content=NULL, ref=NULL,"
                    " extra=NULL, interrupted=NULL WHERE id=? AND kind='local' AND content=?",
                    (entry.size, entry.digest, node.id, node.content))
                if cur.rowcount:
                    freed.append(self.file(node))
            self._set_base(manifest, version.version)
            self.set_meta("initialized", "1")
            self.db.execute("UPDATE meta SET value='0' WHERE key='dirty' AND value IS NOT '1'")
        if len(freed) > BACKGROUND_DELETES:
            threading.Thread(target=_unlink_all, args=(freed,), daemon=True,
                             name="artfs-staging-trash").start()
        else:
            _unlink_all(freed)

    # -- comparing ---------------------------------------------------------------------------
    def current_digest(self, node: Node) -> str | None:
        """A local file's SHA-256, hashing it when it was not written sequentially."""
        if node.kind != "local" or node.digest is not None:
            return node.digest
        h = hashlib.sha256()
        with open(self.file(node), "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def diff(self, snap: Snapshot | None = None) -> Diff:
        """Published files against the base version (of `snap`, or of the area now)."""
        if snap is None:
            snap = Snapshot(self.tree(), self.base(), self.base_version)
        out = Diff()
        for path, node in sorted(snap.tree.items()):
            old = snap.base.get(path)
            if old is None:
                out.added.append(path)
            elif node.kind == "base":
                if (node.digest, node.ref, node.extra) != (old.digest, old.ref, old.extra_json()):
                    out.changed.append(path)
            elif old.ref is not None or node.size != old.size or \
                    self.current_digest(node) != old.digest:
                out.changed.append(path)
            else:
                continue
            if node.interrupted:
                out.interrupted.append(path)
        out.removed = sorted(set(snap.base) - set(snap.tree))
        return out


#: Past this many files, a rebase deletes the committed copies on a thread of its own.
BACKGROUND_DELETES = 1000


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _files(nodes: list[Node]) -> dict[str, Node]:
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


def open_area(registry: Registry, entity: str, project: str, name: str) -> Staging:
    """The artifact's staging area, filled from its latest version the first time (and again
    whenever it was left clean while another writer committed a newer version)."""
    area = Staging(registry.url, entity, project, name, repair=True)
    try:
        latest = latest_version(registry, entity, project, name)
        if area.is_new or (not area.dirty and latest is not None
                           and area.base_version != latest.version):
            area.reset(registry.manifest(latest) if latest else None,
                       latest.version if latest else None)
    except BaseException:
        area.close()
        raise
    return area


def latest_version(registry: Registry, entity: str, project: str, name: str) -> Version | None:
    if not registry.versions(entity, project, name):
        return None
    return registry.version(ArtifactRef(entity, project, name, LATEST), with_aliases=False)


def commit(
    registry: Registry,
    area: Staging,
    *,
    aliases: Iterable[str] = (),
    type_: str | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    before_commit: Callable[[], None] | None = None,
    run: RunRecord | None = None,
    job_type: str = "commit",
    inputs: Iterable[Version] = (),
) -> Committed:
    """Turn the area's published files, as one `snapshot` saw them, into one new version (or
    none when nothing changed), then rebase it. Writers may go on meanwhile: what they publish
    later is compared with the new version afterwards.

    The version is logged by `run` (the `artfs run` the command came from), else by a run of
    its own of `job_type`; `inputs` are recorded as that run's inputs.

    Files hashed while they were written are stored by digest without being read (on a local
    registry on the same disk they are hard-linked into the blob store); the others are passed
    to `log_version` as sources, which hashes and uploads them. Whatever fails, the staged
    contents stay. Files flagged `interrupted` are refused unless `force`.
    """
    e, p, n = area.entity, area.project, area.name
    existing_type = registry.artifact_type(e, p, n)
    kind = type_ or existing_type
    if kind is None:
        raise StagingError(f"artifact {area.what} is new: give its type with "
                           "`artfs commit --type TYPE PATH` (e.g. model, dataset)")
    aliases = list(aliases)
    latest = latest_version(registry, e, p, n)
    snap = area.snapshot()
    changes = area.diff(snap)
    if changes.interrupted and not force:
        named = ", ".join(changes.interrupted[:20]) + (" …" if len(changes.interrupted) > 20
                                                       else "")
        raise StagingError(
            f"staging of {area.what} holds {len(changes.interrupted)} file(s) that were being "
            f"written when the mount stopped and may be cut short: {named}; check them "
            "(`artfs diff`), write them again, or commit them as they are with --force")
    if not changes and latest is not None and snap.base_version == latest.version:
        for alias in aliases:
            registry.set_alias(ArtifactRef(e, p, n, latest.label), alias)
        area.rebase(snap, latest, registry.manifest(latest))
        moved = f"; moved {', '.join(aliases)} to it" if aliases else ""
        return Committed(latest, False, f"nothing to commit: staging of {area.what} equals "
                                        f"{latest.label}{moved}")
    if not snap.tree and latest is None:
        raise StagingError(f"nothing to commit: staging of {area.what} is empty")

    sources: list[Source] = []
    references: list[Entry] = []
    links = area.folder / f"commit-{uuid.uuid4().hex}"
    links.mkdir()
    try:
        hashed: list[tuple[str, Path]] = []
        for path, node in sorted(snap.tree.items()):
            if node.kind == "local" and node.digest is not None:
                # A link, not the file: the staging folder keeps showing it until the rebase.
                link = links / node.content  # type: ignore[operator]
                os.link(area.file(node), link)
                hashed.append((node.digest, link))
                node = node._replace(kind="base")
            if node.kind == "base":
                references.append(node.entry(path))
            else:
                file = area.file(node)
                sources.append(Source(path, file, stat_key(os.stat(file))))
        progress.expect(sum(os.stat(f).st_size for _, f in hashed)
                        + sum(os.stat(s.file).st_size for s in sources))
        registry.put_blob_files(e, hashed, move=True)
    finally:
        shutil.rmtree(links, ignore_errors=True)
    own_run = run is None
    if run is None:
        run = registry.start_run(e, p, job_type)
    for used in inputs:
        registry.record_use(used, run)
    try:  # `before_commit` may cancel: the last moment at which nothing is committed yet
        result: CommitResult = registry.log_version(
            e, p, n, kind, sources, references, aliases=aliases, description=description,
            metadata=metadata, run=run, before_commit=before_commit)
    except BaseException:
        if own_run:
            registry.finish_run(run, failed=True)
        raise
    if own_run:
        registry.finish_run(run)
    area.rebase(snap, result.version, registry.manifest(result.version))
    v = result.version
    if result.created:
        return Committed(v, True, f"committed {v.qualified} ({len(changes.added)} added, "
                                  f"{len(changes.changed)} changed, {len(changes.removed)} "
                                  f"removed); aliases: {', '.join(v.aliases)}")
    return Committed(v, False, f"unchanged: staging of {area.what} has the contents of "
                               f"{v.qualified}; no new version; aliases: {', '.join(v.aliases)}")


def discard(registry: Registry, area: Staging, *, empty: bool = False) -> None:
    """Drop staged changes: back to the latest version, or to nothing with `empty`."""
    latest = latest_version(registry, area.entity, area.project, area.name)
    if empty:
        area.reset(None, latest.version if latest else None, keep_base=True)
    else:
        area.reset(registry.manifest(latest) if latest else None,
                   latest.version if latest else None)


def stat_mode(node: Node) -> int:
    return (stat.S_IFDIR if node.is_dir else stat.S_IFREG) | node.mode
