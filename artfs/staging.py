"""Staging folders: the writable next version of an artifact, kept on local disk.

A staging area starts as a copy of the latest version's *manifest*, not of its bytes: each file
is a `base` node that still names its blob in the registry. A file becomes `local` when a writer
that changed it closes it (is *published*): its bytes are then the file `files/<content>` the
row names, and that file never changes again. Writers write *drafts* (`files/<id>~<n>`, one
per write session, see `artfs.fs.drafts`); publishing a draft is one row update that points the
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
import os
import shutil
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import progress
from .errors import ArtfsError
from .hashing import CHUNK, stat_key
from .manifest import Entry, Manifest, walk_tree
from .names import LATEST, ArtifactRef, check_name, is_name
from .registry import CommitResult, Registry, RunRecord, Source, Version
from .staging_tree import (
    DIR_PERMS,
    FILE_PERMS,
    ROOT,
    Node,
    Snapshot,
    StagingTree,
    now_ns,
    registry_root,
)

#: Folders of staged copies no longer needed, being deleted in the background.
TRASH_PREFIX = "trash-"
#: What `artfs diff` adds to a file published from a draft that a crash cut short.
INTERRUPTED_NOTE = "(was being written when the mount stopped)"


class StagingError(ArtfsError):
    """A staging operation that cannot be done; the message names the artifact and files."""


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
class Committed:
    """What `commit` did: a new version, an existing one with the same contents, or nothing."""

    version: Version | None
    created: bool
    message: str



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


class Staging(StagingTree):
    """One artifact's staging area: its tree and the changes of it. Not thread-safe: use one
    object per thread."""

    def __init__(self, registry_url: str, entity: str, project: str, name: str, *,
                 repair: bool = False) -> None:
        """`repair` (`_repair`) only for the area's owner as it starts using it (`open_area`):
        anyone else, such as `artfs diff` beside a mount copying files in, would take the
        draft of a file being written for one a crash left and publish it."""
        super().__init__(registry_url, entity, project, name)
        if repair:
            self._repair()

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
        now = now_ns()
        self.db.executemany("UPDATE nodes SET mtime_ns=?, ctime_ns=? WHERE id=?",
                            [(now, now, d) for d in set(dirs)])

    def create_file(self, parent: int, name: str, data: bytes = b"",
                    mode: int = FILE_PERMS) -> Node:
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
                    mode: int = FILE_PERMS) -> tuple[Node, int, Path]:
        """A new file, its first draft and a read-write descriptor of it. The file is not part
        of the tree a commit takes until its writer closes it (`publish`).

        Few SQLite statements (`cp -r` of small files is bound by per-file costs): the
        parent's existence and the name's uniqueness are checked by the insert itself."""
        now, mode = now_ns(), mode & 0o7777
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
                (draft.name, s.st_size, digest, s.st_mtime_ns, now_ns(), node_id))
            self._touch()
        if old[0] == "local" and old[1] and old[1] != draft.name:
            self._delete(self.files / old[1])
        return True

    def mkdir(self, parent: int, name: str, mode: int = DIR_PERMS) -> Node:
        with self.transaction():
            self._free(parent, name)
            cur = self.db.execute(
                "INSERT INTO nodes (parent, name, kind, mtime_ns, mode) VALUES (?,?,?,?,?)",
                (parent, name, "dir", now_ns(), mode & 0o7777))
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
                            (new_parent, new_name, now_ns(), node.id))
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
            self.db.execute("UPDATE nodes SET ctime_ns=? WHERE id=?", (now_ns(), node_id))
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
        now = mtime_ns or now_ns()
        for path, parent, name, entry in walk_tree(manifest):
            if entry is None:
                ids[path] = self.db.execute(
                    "INSERT INTO nodes (parent, name, kind, mtime_ns, mode) VALUES (?,?,?,?,?)",
                    (ids[parent], name, "dir", now, DIR_PERMS)).lastrowid
                continue
            self.db.execute(
                "INSERT INTO nodes (parent, name, kind, size, mtime_ns, mode, digest, ref, extra)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (ids[parent], name, "base", entry.size, now, FILE_PERMS, entry.digest,
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
    # One lease from the first upload to the version record: a gc meanwhile spares these blobs.
    with registry.lease(e):
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
