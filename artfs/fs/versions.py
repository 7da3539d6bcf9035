"""Version and alias folders (`name/v3/…`, `name/latest/…`): a committed version's files,
read-only, listed from the mount's index of its manifest (`tree.py`), read through `reader.py`."""

from __future__ import annotations

import errno
import json
import logging
import os
from datetime import datetime
from typing import Any

import pyfuse3

from ..names import parse_version
from ..registry import Registry
from .attribution import Attribution
from .attrs import DIR_MODE, FILE_MODE, IMMUTABLE_TTL_S, NAMESPACE_TTL_S, Attributes
from .errnos import eio, erofs, registry_call
from .inodes import VIEW_ROOT_ROW, InodeTable, View
from .kinds import NodeKind
from .protocol import STAGING_NAME
from .reader import Handle, Reader, Unreadable
from .tree import READDIR_PAGE, Row, Tree, VersionIndex

log = logging.getLogger(__name__)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT


def _iso_ns(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp() * 1e9)


class VersionViews(NodeKind):
    """Requests on nodes (view, row id) inside a version or alias folder."""

    def __init__(self, registry: Registry, tree: Tree, reader: Reader, inodes: InodeTable,
                 attrs: Attributes, attribution: Attribution) -> None:
        super().__init__(registry, tree, inodes, attrs)
        self.reader = reader
        self.attribution = attribution
        self._mtimes: dict[int, int] = {}
        #: Artifacts whose read-only versions a write was refused in; logged once each.
        self._hinted: set[tuple[str, str, str]] = set()

    def read_only(self, view: View) -> pyfuse3.FUSEError:
        """EROFS for a write into a version or alias folder; the first one per artifact is
        logged with where such writes go instead."""
        if (view.entity, view.project, view.name) not in self._hinted:
            self._hinted.add((view.entity, view.project, view.name))
            artifact = f"{view.entity}/{view.project}/{view.name}"
            log.warning("EROFS: %s/%s is a committed version, read-only; to change it, write "
                        "into %s/%s and run `artfs commit`", artifact,
                        view.alias or f"v{view.version}", artifact, STAGING_NAME)
        return erofs()

    async def mtime(self, view: View) -> int:
        mtime = self._mtimes.get(view.file_slot)
        if mtime is None:
            record = await registry_call(self.tree.record(view))
            mtime = self._mtimes[view.file_slot] = _iso_ns(record.created_at)
        return mtime

    async def view_attrs(self, view: View) -> pyfuse3.EntryAttributes:
        inode = self.inodes.content_inode(view, VIEW_ROOT_ROW, is_dir=True)
        # The alias *name* must be re-resolved soon; what the resolved inode holds never changes.
        entry_ttl = NAMESPACE_TTL_S if view.alias else IMMUTABLE_TTL_S
        return self.make_attrs(inode, DIR_MODE, 0, await self.mtime(view), IMMUTABLE_TTL_S,
                          entry_ttl)

    async def _row_attrs(self, view: View, row: Row) -> pyfuse3.EntryAttributes:
        if row.id == VIEW_ROOT_ROW:
            return await self.view_attrs(view)
        inode = self.inodes.content_inode(view, row.id, row.is_dir)
        mtime = await self.mtime(view)
        if row.is_dir:
            return self.make_attrs(inode, DIR_MODE, 0, mtime, IMMUTABLE_TTL_S,
                              nlink=2 + row.subdirs)
        # An unchecksummed reference has no recorded size: 0, read with direct I/O to EOF.
        return self.make_attrs(inode, FILE_MODE, row.size or 0, mtime, IMMUTABLE_TTL_S)

    async def _row(self, view: View, row_id: int) -> Row:
        idx = await registry_call(self.tree.index(view))
        row = idx.row(row_id)
        if row is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return row

    async def resolve(self, parts: tuple[str, ...], label: str) -> View:
        """The view a version or alias folder of an artifact shows; ENOENT for no such label."""
        entity, project, name = parts
        number = await registry_call(self.tree.resolve_label(entity, project, name, label))
        if number is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        alias = None if parse_version(label) is not None else label
        return self.inodes.view(entity, project, name, number, alias)

    # -- lookups and listings ----------------------------------------------------------------
    async def lookup(self, view: View, row_id: int, name: str) -> pyfuse3.EntryAttributes:
        idx = await registry_call(self.tree.index(view))
        child = idx.child(row_id, name)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self._row_attrs(view, child)

    async def getattr(self, view: View, row_id: int) -> pyfuse3.EntryAttributes:
        if row_id == VIEW_ROOT_ROW:
            return await self.view_attrs(view)
        return await self._row_attrs(view, await self._row(view, row_id))

    async def opendir(self, view: View, row_id: int) -> None:
        await registry_call(self.tree.index(view))

    async def readdir(self, view: View, row_id: int, start: int, token: pyfuse3.ReaddirToken,
                      listing: None) -> None:
        """The same attributes as `_row_attrs`, without its per-entry costs: `find` and `ls -lR`
        over 100,000 files spend most of their mount time here. One `EntryAttributes` serves
        every entry (readdir_reply copies it) and kernel references are counted once per call."""
        idx: VersionIndex = await registry_call(self.tree.index(view))
        attrs = self.make_attrs(0, FILE_MODE, 0, await self.mtime(view), IMMUTABLE_TTL_S)
        file_inodes = self.inodes.content_inode(view, 0, is_dir=False)
        dir_inodes = self.inodes.content_inode(view, 0, is_dir=True)
        files = dirs = 0
        try:
            while True:
                rows = idx.listing(row_id, start)
                for rid, name, is_dir, size, subdirs in rows:
                    if is_dir:
                        attrs.st_ino = dir_inodes | rid
                        attrs.st_mode = DIR_MODE
                        attrs.st_nlink = 2 + subdirs
                        attrs.st_size = attrs.st_blocks = 0
                    else:
                        attrs.st_ino = file_inodes | rid
                        attrs.st_mode = FILE_MODE
                        attrs.st_nlink = 1
                        attrs.st_size = size or 0
                        attrs.st_blocks = -(-(size or 0) // 512)
                    if not pyfuse3.readdir_reply(token, name.encode("utf-8", "surrogateescape"),
                                                 attrs, rid):
                        return
                    if is_dir:
                        dirs += 1
                    else:
                        files += 1
                if len(rows) < READDIR_PAGE:
                    return
                start = rows[-1][0]
        finally:
            if files:
                self.inodes.remember(file_inodes, files)
            if dirs:
                self.inodes.remember(dir_inodes, dirs)

    # -- files -------------------------------------------------------------------------------
    async def open(self, view: View, row_id: int, flags: int,
                   pid: int) -> tuple[Handle, pyfuse3.FileInfo]:
        if flags & WRITE_FLAGS:
            raise self.read_only(view)
        row = await self._row(view, row_id)
        if row.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self.attribution.opened(pid, view)
        what = f"sha256 {row.digest}" if row.digest else "no recorded digest"
        where = f"{view.qualified} path {row.path!r} ({row.ref or 'stored'}, {what})"
        try:
            handle = await self.reader.open(view.entity, row, where)
        except Unreadable as e:
            raise eio(where, e) from None
        # Committed bytes never change, so the kernel keeps cached pages across opens.
        return handle, pyfuse3.FileInfo(keep_cache=True, direct_io=row.size is None)

    async def read(self, handle: Handle, off: int, size: int) -> memoryview | bytes:
        try:
            return await handle.read(off, size)
        except Unreadable as e:
            raise eio(handle.where, e) from None
        except OSError as e:
            raise eio(f"{handle.where}: reading {size} bytes at {off}", e) from None

    async def create(self, view: View, row_id: int, name: str, mode: int,
                     flags: int) -> tuple[Any, pyfuse3.EntryAttributes]:
        raise self.read_only(view)

    async def setattr(self, view: View, row_id: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields) -> pyfuse3.EntryAttributes:
        raise self.read_only(view)

    async def unlink(self, view: View, row_id: int, name: str) -> None:
        raise self.read_only(view)

    # -- facts -------------------------------------------------------------------------------
    async def facts(self, view: View, row_id: int) -> dict[str, Any]:
        out: dict[str, Any] = {"registry": self.registry.url}
        out["artifact"] = f"{view.entity}/{view.project}/{view.name}"
        out["version"] = f"v{view.version}"
        if view.alias:
            out["alias"] = view.alias
        if row_id == VIEW_ROOT_ROW:
            out.update((await registry_call(self.tree.details(view))).facts())
            return out
        row = await self._row(view, row_id)
        out["path"] = row.path
        if not row.is_dir:
            out["size"] = row.size
            if row.digest:
                out["digest"] = row.digest
            if row.ref:
                out["ref"] = row.ref
                if row.extra:
                    out["checksum"] = json.loads(row.extra)
        return out
