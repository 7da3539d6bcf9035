"""The `pyfuse3.Operations` of an artfs mount: the registry as a read-only directory tree.

This module only translates FUSE requests; what a directory contains lives in `tree`, where
bytes come from in `reader`, and inode numbering in `inodes`. Writes anywhere fail with EROFS
(the staging folder of a later issue will be the one writable place, so the mount itself is not
mounted `ro`).
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyfuse3
import trio

from ..errors import ArtifactNotFound
from ..names import parse_version
from ..registry import Registry, Version
from .inodes import VIEW_ROOT_ROW, InodeTable, Namespace, View
from .reader import Handle, Reader, Unreadable
from .tree import STAGING_NAME, Row, Tree

log = logging.getLogger(__name__)

#: Names inside a committed version never change: the kernel may keep entries and attributes
#: for an hour (and pages for as long as it likes, see keep_cache in `open`).
IMMUTABLE_TTL_S = 3600.0
#: Entities, projects, artifacts, version and alias names: short, so a version or alias move
#: made elsewhere is seen within LISTING_TTL_S + this (well under the 5 s promised).
NAMESPACE_TTL_S = 1.0
#: Hints `cp` and friends to read in 1 MiB chunks, the largest FUSE read request.
BLKSIZE = 1024 * 1024
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT
XATTR_PREFIX = "user.artfs."
DIR_MODE = stat.S_IFDIR | 0o755
FILE_MODE = stat.S_IFREG | 0o644


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


def _iso_ns(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp() * 1e9)


@dataclass
class DirHandle:
    """An open directory: namespace listings are a snapshot taken at opendir, so paging through
    them stays consistent while versions are being committed; version folders are immutable."""

    inode: int
    names: list[str] | None = None


class Operations(pyfuse3.Operations):
    """Read-only registry tree; every blocking call happens in `tree` or `reader` threads."""

    def __init__(self, registry: Registry, tree: Tree, reader: Reader) -> None:
        super().__init__()
        self.registry = registry
        self.tree = tree
        self.reader = reader
        self.inodes = InodeTable()
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started_ns = time.time_ns()
        self._fh = itertools.count(1)
        self._files: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._mtimes: dict[int, int] = {}

    # -- helpers -----------------------------------------------------------------------------
    def _node(self, inode: int) -> Namespace | tuple[View, int]:
        try:
            return self.inodes.decode(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def _guard(self, coro: Any) -> Any:
        """Await a registry call; missing names are ENOENT, any other failure EIO and a log."""
        try:
            return await coro
        except ArtifactNotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:  # noqa: BLE001 - the mount must stay up whatever the registry does
            log.exception("registry request failed")
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _attrs(self, inode: int, mode: int, size: int, mtime_ns: int, ttl: float,
               entry_ttl: float | None = None, nlink: int = 1) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = mode
        a.st_nlink = nlink
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_size = size
        a.st_blksize = BLKSIZE
        a.st_blocks = -(-size // 512)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime_ns
        a.attr_timeout = ttl
        a.entry_timeout = ttl if entry_ttl is None else entry_ttl
        return a

    def _namespace_attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        # nlink 1 means "subdirectories not counted" (as on btrfs); find and du accept it.
        return self._attrs(inode, DIR_MODE, 0, self.started_ns, NAMESPACE_TTL_S)

    async def _mtime(self, view: View) -> int:
        mtime = self._mtimes.get(view.file_slot)
        if mtime is None:
            record = await self._guard(self.tree.record(view))
            mtime = self._mtimes[view.file_slot] = _iso_ns(record.created_at)
        return mtime

    async def _view_attrs(self, view: View) -> pyfuse3.EntryAttributes:
        inode = self.inodes.content_inode(view, VIEW_ROOT_ROW, is_dir=True)
        # The alias *name* must be re-resolved soon; what the resolved inode holds never changes.
        entry_ttl = NAMESPACE_TTL_S if view.alias else IMMUTABLE_TTL_S
        return self._attrs(inode, DIR_MODE, 0, await self._mtime(view), IMMUTABLE_TTL_S,
                           entry_ttl)

    async def _row_attrs(self, view: View, row: Row) -> pyfuse3.EntryAttributes:
        if row.id == VIEW_ROOT_ROW:
            return await self._view_attrs(view)
        inode = self.inodes.content_inode(view, row.id, row.is_dir)
        mtime = await self._mtime(view)
        if row.is_dir:
            return self._attrs(inode, DIR_MODE, 0, mtime, IMMUTABLE_TTL_S,
                               nlink=2 + row.subdirs)
        # An unchecksummed reference has no recorded size: 0, read with direct I/O to EOF.
        return self._attrs(inode, FILE_MODE, row.size or 0, mtime, IMMUTABLE_TTL_S)

    async def _row(self, view: View, row_id: int) -> Row:
        idx = await self._guard(self.tree.index(view))
        row = idx.row(row_id)
        if row is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return row

    async def _resolve_view(self, parts: tuple[str, ...], label: str) -> View:
        entity, project, name = parts
        number = await self._guard(self.tree.resolve_label(entity, project, name, label))
        if number is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        alias = None if parse_version(label) is not None else label
        return self.inodes.view(entity, project, name, number, alias)

    # -- lookups and attributes --------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        attrs = await self._lookup(parent_inode, os.fsdecode(name))
        self.inodes.remember(attrs.st_ino)
        return attrs

    async def _lookup(self, parent_inode: int, name: str) -> pyfuse3.EntryAttributes:
        node = self._node(parent_inode)
        if isinstance(node, Namespace):
            if node.level == "artifact":
                if name == STAGING_NAME:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                return await self._view_attrs(await self._resolve_view(node.parts, name))
            if name not in await self._guard(self.tree.children(node.parts)):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._namespace_attrs(self.inodes.namespace((*node.parts, name)))
        view, row_id = node
        idx = await self._guard(self.tree.index(view))
        child = idx.child(row_id, name)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self._row_attrs(view, child)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if isinstance(node, Namespace):
            return self._namespace_attrs(inode)
        view, row_id = node
        if row_id == VIEW_ROOT_ROW:
            return await self._view_attrs(view)
        return await self._row_attrs(view, await self._row(view, row_id))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            slot = self.inodes.forget(inode, count)
            if slot is not None:
                self.tree.release(slot, self.inodes.referenced)

    # -- directories -------------------------------------------------------------------------
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        handle = DirHandle(inode)
        if isinstance(node, Namespace):
            handle.names = await self._guard(self.tree.children(node.parts))
        else:
            await self._guard(self.tree.index(node[0]))
        fh = next(self._fh)
        self._dirs[fh] = handle
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        node = self._node(handle.inode)
        if isinstance(node, Namespace):
            assert handle.names is not None
            await self._readdir_namespace(node, handle.names, start_id, token)
            return
        view, row_id = node
        idx = await self._guard(self.tree.index(view))
        after = start_id
        while True:
            rows = idx.children(row_id, after)
            if not rows:
                return
            for row in rows:
                attrs = await self._row_attrs(view, row)
                if not pyfuse3.readdir_reply(token, os.fsencode(row.name), attrs, row.id):
                    return
                self.inodes.remember(attrs.st_ino)
                after = row.id

    async def _readdir_namespace(self, node: Namespace, names: list[str], start: int,
                                 token: pyfuse3.ReaddirToken) -> None:
        page = names[start:]
        views: dict[str, View] = {}
        if node.level == "artifact":
            # Version records give the folders' times; fetch the page's records in parallel.
            for name in page:
                try:
                    views[name] = await self._resolve_view(node.parts, name)
                except pyfuse3.FUSEError:
                    continue  # an alias removed since opendir
            async with trio.open_nursery() as nursery:
                for view in {v.file_slot: v for v in views.values()}.values():
                    nursery.start_soon(self._mtime, view)
        for i, name in enumerate(page, start + 1):
            if node.level == "artifact":
                if name not in views:
                    continue
                attrs = await self._view_attrs(views[name])
            else:
                attrs = self._namespace_attrs(self.inodes.namespace((*node.parts, name)))
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, i):
                return
            self.inodes.remember(attrs.st_ino)

    async def releasedir(self, fh: int) -> None:
        del self._dirs[fh]

    # -- files -------------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & WRITE_FLAGS:
            raise _erofs()
        node = self._node(inode)
        if isinstance(node, Namespace):
            raise pyfuse3.FUSEError(errno.EISDIR)
        view, row_id = node
        row = await self._row(view, row_id)
        if row.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        what = f"sha256 {row.digest}" if row.digest else "no recorded digest"
        where = f"{view.qualified} path {row.path!r} ({row.ref or 'stored'}, {what})"
        try:
            handle = await self.reader.open(view.entity, row, where)
        except Unreadable as e:
            log.error("EIO: %s: %s", where, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        fh = next(self._fh)
        self._files[fh] = handle
        # Committed bytes never change, so the kernel keeps cached pages across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=row.size is None)

    async def read(self, fh: int, off: int, size: int) -> memoryview | bytes:
        handle = self._files[fh]
        try:
            return await handle.read(off, size)
        except Unreadable as e:
            log.error("EIO: %s: %s", handle.where, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as e:
            log.error("EIO: %s: reading %d bytes at %d: %s", handle.where, size, off, e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh: int) -> None:
        self._files.pop(fh).close()

    # -- facts -------------------------------------------------------------------------------
    async def facts(self, inode: int) -> dict[str, Any]:
        """What `artfs info PATH` and the `user.artfs.*` attributes show for an inode."""
        node = self._node(inode)
        out: dict[str, Any] = {"registry": self.registry.url}
        if isinstance(node, Namespace):
            for key, value in zip(("entity", "project", "artifact"), node.parts, strict=False):
                out[key] = value
            if node.level == "artifact":
                out["artifact"] = "/".join(node.parts)
                out["type"] = await self._guard(
                    self.tree.blocking(self.registry.artifact_type, *node.parts))
                listing = await self._guard(self.tree.artifact(*node.parts))
                out["versions"] = [f"v{n}" for n in listing.versions]
                out["aliases"] = {a: f"v{n}" for a, n in sorted(listing.aliases.items())}
            return out
        view, row_id = node
        out["artifact"] = f"{view.entity}/{view.project}/{view.name}"
        out["version"] = f"v{view.version}"
        if view.alias:
            out["alias"] = view.alias
        if row_id == VIEW_ROOT_ROW:
            out.update(_version_facts(await self._guard(self.tree.details(view))))
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

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        facts = await self.facts(inode)
        return [f"{XATTR_PREFIX}{k}".encode() for k in [*facts, "info"]]

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        key = os.fsdecode(name)
        if not key.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        facts = await self.facts(inode)
        key = key[len(XATTR_PREFIX):]
        if key == "info":
            return json.dumps(facts).encode()
        if key not in facts:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return _xattr_value(facts[key])

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = 4096
        s.f_namemax = 255
        return s

    # -- everything that would write ---------------------------------------------------------
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _erofs()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _erofs()

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        raise _erofs()

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        raise _erofs()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise _erofs()

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        raise _erofs()

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _erofs()


def _version_facts(v: Version) -> dict[str, Any]:
    return {
        "type": v.type,
        "digest": v.digest,
        "size": v.size,
        "file_count": v.file_count,
        "created_at": v.created_at,
        "description": v.description,
        "metadata": v.metadata,
        "aliases": v.aliases,
        "logged_by": v.logged_by,
    }


def _xattr_value(value: Any) -> bytes:
    """Plain text for scalars, comma-separated lists, JSON for mappings; empty for None."""
    if value is None:
        return b""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True).encode()
    if isinstance(value, list):
        return ",".join(str(v) for v in value).encode()
    return str(value).encode()

