"""The `pyfuse3.Operations` of an artfs mount: the registry as a read-only directory tree.

This module only translates FUSE requests; what a directory contains lives in `tree`, where
bytes come from in `reader`, inode numbering in `inodes`, and everything inside an artifact's
`@staging` folder in `staged`. Writes anywhere else fail with EROFS, except `mkdir` of a new
entity, project or artifact, which creates a pending one whose staging folder starts empty.
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

from .. import config, staging
from ..errors import ArtifactNotFound
from ..names import NAME_MAX, check_name, parse_version
from ..registry import Registry
from .attribution import Attribution
from .inodes import VIEW_ROOT_ROW, InodeTable, Namespace, StagingArea, View
from .protocol import CONTROL_XATTR, PROGRESS_XATTR, RESULT_XATTR, STAGING_NAME, XATTR_PREFIX
from .reader import Handle, Reader, Unreadable
from .staged import FileHandle, StagedFS
from .tree import READDIR_PAGE, Row, Tree, VersionIndex

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
DIR_MODE = stat.S_IFDIR | 0o755
FILE_MODE = stat.S_IFREG | 0o644


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


def _component(name: bytes) -> str:
    """A name from the kernel, which passes up to 1,024 bytes: longer than NAME_MAX (what
    statfs reports) is ENAMETOOLONG, as on local filesystems, so no such name is ever stored."""
    if len(name) > NAME_MAX:
        log.info("ENAMETOOLONG: a name of %d bytes (at most %d): %r…", len(name), NAME_MAX,
                 name[:40])
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    return os.fsdecode(name)


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
        self._files: dict[int, Handle | FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._mtimes: dict[int, int] = {}
        self.staged = StagedFS(registry, tree, reader, self.inodes, self._attrs)
        self.attribution = Attribution(registry, tree.limiter)
        #: Artifacts whose read-only versions a write was refused in; logged once each.
        self._hinted: set[tuple[str, str, str]] = set()

    # -- helpers -----------------------------------------------------------------------------
    def _node(self, inode: int) -> Namespace | tuple[View, int] | tuple[StagingArea, int]:
        try:
            node = self.inodes.decode(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        return node  # type: ignore[return-value]

    def _read_only(self, inode: int) -> pyfuse3.FUSEError:
        """EROFS for a write into a version or alias folder; the first one per artifact is
        logged with where such writes go instead."""
        node = self._node(inode)
        view = node[0] if isinstance(node, tuple) else None
        if isinstance(view, View) and (view.entity, view.project, view.name) not in self._hinted:
            self._hinted.add((view.entity, view.project, view.name))
            artifact = f"{view.entity}/{view.project}/{view.name}"
            log.warning("EROFS: %s/%s is a committed version, read-only; to change it, write "
                        "into %s/%s and run `artfs commit`", artifact,
                        view.alias or f"v{view.version}", artifact, STAGING_NAME)
        return _erofs()

    async def _staging(self, coro: Any) -> Any:
        """Await a staging request: OS errors keep their errno; anything unexpected is logged
        and becomes EIO, so one bad request never takes the mount down."""
        try:
            return await coro
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            log.warning("staging request failed: %s", e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:  # noqa: BLE001 - the mount must stay up
            log.exception("staging request failed")
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _staged(self, inode: int) -> tuple[StagingArea, int] | None:
        """(area, node id) when the inode is inside a staging folder."""
        node = self._node(inode)
        if isinstance(node, tuple) and isinstance(node[0], StagingArea):
            return node[0], node[1]
        return None

    def _view(self, inode: int) -> Namespace | tuple[View, int]:
        """A namespace or version node; anything inside a staging folder is handled before."""
        node = self._node(inode)
        assert not (isinstance(node, tuple) and isinstance(node[0], StagingArea))
        return node  # type: ignore[return-value]

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
               entry_ttl: float | None = None, nlink: int = 1, *, atime_ns: int | None = None,
               ctime_ns: int | None = None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = mode
        a.st_nlink = nlink
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_size = size
        a.st_blksize = BLKSIZE
        a.st_blocks = -(-size // 512)
        a.st_mtime_ns = mtime_ns
        a.st_atime_ns = mtime_ns if atime_ns is None else atime_ns
        a.st_ctime_ns = mtime_ns if ctime_ns is None else ctime_ns
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
        attrs = await self._lookup(parent_inode, _component(name))
        self.inodes.remember(attrs.st_ino)
        return attrs

    async def _lookup(self, parent_inode: int, name: str) -> pyfuse3.EntryAttributes:
        staged = self._staged(parent_inode)
        if staged is not None:
            return await self._staging(self.staged.lookup(*staged, name))
        node = self._view(parent_inode)
        if isinstance(node, Namespace):
            if node.level == "artifact":
                if name == STAGING_NAME:
                    return self.staged.root_attrs(self.inodes.staging(*node.parts))
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
        staged = self._staged(inode)
        if staged is not None:
            return await self._staging(self.staged.getattr(*staged))
        node = self._view(inode)
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
        handle = DirHandle(inode)
        staged = self._staged(inode)
        if staged is not None:
            # ENOENT for a folder removed meanwhile
            await self._staging(self.staged.getattr(*staged))
            fh = next(self._fh)
            self._dirs[fh] = handle
            return fh
        node = self._view(inode)
        if isinstance(node, Namespace):
            handle.names = await self._guard(self.tree.children(node.parts))
            if node.level == "artifact" and self.staged.areas.exists_on_disk(*node.parts):
                handle.names.append(STAGING_NAME)  # listed once in use, see SEMANTICS.md
        else:
            await self._guard(self.tree.index(node[0]))
        fh = next(self._fh)
        self._dirs[fh] = handle
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        staged = self._staged(handle.inode)
        if staged is not None:
            await self._staging(self.staged.readdir(*staged, start_id, token))
            return
        node = self._view(handle.inode)
        if isinstance(node, Namespace):
            assert handle.names is not None
            await self._readdir_namespace(node, handle.names, start_id, token)
            return
        view, row_id = node
        idx = await self._guard(self.tree.index(view))
        await self._readdir_view(view, idx, row_id, start_id, token)

    async def _readdir_view(self, view: View, idx: VersionIndex, row_id: int, start: int,
                            token: pyfuse3.ReaddirToken) -> None:
        """The same attributes as `_row_attrs`, without its per-entry costs: `find` and `ls -lR`
        over 100,000 files spend most of their mount time here. One `EntryAttributes` serves
        every entry (readdir_reply copies it) and kernel references are counted once per call."""
        attrs = self._attrs(0, FILE_MODE, 0, await self._mtime(view), IMMUTABLE_TTL_S)
        file_base = self.inodes.content_inode(view, 0, is_dir=False)
        dir_base = self.inodes.content_inode(view, 0, is_dir=True)
        files = dirs = 0
        try:
            while True:
                rows = idx.listing(row_id, start)
                for rid, name, is_dir, size, subdirs in rows:
                    if is_dir:
                        attrs.st_ino = dir_base | rid
                        attrs.st_mode = DIR_MODE
                        attrs.st_nlink = 2 + subdirs
                        attrs.st_size = attrs.st_blocks = 0
                    else:
                        attrs.st_ino = file_base | rid
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
                self.inodes.remember(file_base, files)
            if dirs:
                self.inodes.remember(dir_base, dirs)

    async def _readdir_namespace(self, node: Namespace, names: list[str], start: int,
                                 token: pyfuse3.ReaddirToken) -> None:
        page = names[start:]
        views: dict[str, View] = {}
        if node.level == "artifact":
            # Version records give the folders' times; fetch the page's records in parallel.
            for name in page:
                if name == STAGING_NAME:
                    continue
                try:
                    views[name] = await self._resolve_view(node.parts, name)
                except pyfuse3.FUSEError:
                    continue  # an alias removed since opendir
            async with trio.open_nursery() as nursery:
                for view in {v.file_slot: v for v in views.values()}.values():
                    nursery.start_soon(self._mtime, view)
        for i, name in enumerate(page, start + 1):
            if node.level == "artifact":
                if name == STAGING_NAME:
                    attrs = self.staged.root_attrs(self.inodes.staging(*node.parts))
                elif name not in views:
                    continue
                else:
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
        staged = self._staged(inode)
        if staged is not None:
            fh = next(self._fh)
            self._files[fh] = await self._staging(self.staged.open(*staged, flags))
            return pyfuse3.FileInfo(fh=fh)
        if flags & WRITE_FLAGS:
            raise self._read_only(inode)
        node = self._view(inode)
        if isinstance(node, Namespace):
            raise pyfuse3.FUSEError(errno.EISDIR)
        view, row_id = node
        row = await self._row(view, row_id)
        if row.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self.attribution.opened(ctx.pid, view)
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
        if isinstance(handle, FileHandle):
            return await self._staging(self.staged.read(handle, off, size))
        try:
            return await handle.read(off, size)
        except Unreadable as e:
            log.error("EIO: %s: %s", handle.where, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as e:
            log.error("EIO: %s: reading %d bytes at %d: %s", handle.where, size, off, e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh)
        if isinstance(handle, FileHandle):
            await self._staging(self.staged.release(handle))
        else:
            handle.close()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._files[fh]
        if not isinstance(handle, FileHandle):
            raise _erofs()
        return await self._staging(self.staged.write(handle, off, buf))

    async def flush(self, fh: int) -> None:
        handle = self._files[fh]
        if isinstance(handle, FileHandle):
            self.staged.flush(handle)

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._files[fh]
        if isinstance(handle, FileHandle):
            await self._staging(self.staged.fsync(handle))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        staged = self._staged(parent_inode)
        if staged is None:
            raise self._read_only(parent_inode)
        handle, attrs = await self._staging(
            self.staged.create(*staged, _component(name), mode, flags))
        fh = next(self._fh)
        self._files[fh] = handle
        self.inodes.remember(attrs.st_ino)
        return pyfuse3.FileInfo(fh=fh), attrs

    # -- facts -------------------------------------------------------------------------------
    async def facts(self, inode: int) -> dict[str, Any]:
        """What `artfs info PATH` and the `user.artfs.*` attributes show for an inode."""
        staged = self._staged(inode)
        if staged is not None:
            return await self._staging(self.staged.facts(*staged))
        node = self._view(inode)
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
            out.update((await self._guard(self.tree.details(view))).facts())
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
            # Only `user.` attributes exist here. For other namespaces (ls -l asks every file
            # for `security.selinux` and `system.posix_acl_access`) "not supported", as
            # filesystems without them answer, makes ls stop asking on this device: the kernel
            # caches no xattr answer, so ENODATA cost two round trips per file.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR if key.startswith("user.")
                                    else errno.EOPNOTSUPP)
        if key.startswith(PROGRESS_XATTR):
            state = self.staged.commands.progress_of(key[len(PROGRESS_XATTR):])
            if state is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return json.dumps(state).encode()
        if key.startswith(RESULT_XATTR):
            reply = self.staged.commands.result(key[len(RESULT_XATTR):])
            if reply is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return json.dumps(reply).encode()
        facts = await self.facts(inode)
        key = key[len(XATTR_PREFIX):]
        if key == "info":
            return json.dumps(facts).encode()
        if key not in facts:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return _xattr_value(facts[key])

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Free space is that of the state folder, where staged bytes go (so `df` and tools
        that check for room before copying see the truth)."""
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = 4096
        s.f_namemax = NAME_MAX
        try:
            disk = os.statvfs(config.state_dir())
        except OSError:
            return s
        scale = disk.f_frsize / s.f_frsize
        s.f_blocks = int(disk.f_blocks * scale)
        s.f_bfree = int(disk.f_bfree * scale)
        s.f_bavail = int(disk.f_bavail * scale)
        s.f_files, s.f_ffree, s.f_favail = disk.f_files, disk.f_ffree, disk.f_favail
        return s

    # -- writing: inside staging folders, and new namespaces -------------------------------
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        staged = self._staged(inode)
        if staged is None:
            raise self._read_only(inode)
        return await self._staging(self.staged.setattr(*staged, attr, fields))

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _component(name)
        raise self._not_storable(parent_inode, "device files, FIFOs and sockets")

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        staged = self._staged(parent_inode)
        if staged is not None:
            attrs = await self._staging(self.staged.mkdir(*staged, _component(name), mode))
        else:
            attrs = await self._mkdir_namespace(parent_inode, _component(name))
        self.inodes.remember(attrs.st_ino)
        return attrs

    async def _mkdir_namespace(self, parent_inode: int, name: str) -> pyfuse3.EntryAttributes:
        """A new entity, project or artifact: recorded on local disk until its first commit."""
        node = self._view(parent_inode)
        if not isinstance(node, Namespace) or node.level == "artifact":
            raise _erofs()
        try:
            check_name(name, ("entity", "project", "artifact name")[len(node.parts)])
        except ValueError as e:
            log.error("mkdir %s: %s", "/".join((*node.parts, name)), e)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        if name in await self._guard(self.tree.children(node.parts)):
            raise pyfuse3.FUSEError(errno.EEXIST)
        parts = (*node.parts, name)
        if node.level == "project":
            # A new, empty staging area.
            await self._staging(self.staged.areas.new_area(self.inodes.staging(*parts)))
        else:
            await self.tree.blocking(staging.add_pending, self.registry.url, parts)
        return self._namespace_attrs(self.inodes.namespace(parts))

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        staged = self._staged(parent_inode)
        if staged is None:
            raise self._read_only(parent_inode)
        await self._staging(self.staged.unlink(*staged, _component(name)))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        staged = self._staged(parent_inode)
        if staged is None:
            await self._rmdir_namespace(parent_inode, _component(name))
            return
        await self._staging(self.staged.rmdir(*staged, _component(name)))

    async def _rmdir_namespace(self, parent_inode: int, name: str) -> None:
        """Undo the `mkdir` of an entity, project or artifact never committed (empty, see
        `staging.remove_pending`); whatever the registry holds is read-only."""
        node = self._view(parent_inode)
        if not isinstance(node, Namespace) or node.level == "artifact":
            raise _erofs()
        parts = (*node.parts, name)
        listing = (self.registry.entities, self.registry.projects,
                   self.registry.artifacts)[len(node.parts)]
        # Asked afresh, not from the listing cache: a commit made elsewhere a moment ago must
        # not lose its name here.
        if name in await self._guard(self.tree.blocking(listing, *node.parts)):
            raise _erofs()
        if node.level == "project":
            await self._staging(self.staged.areas.remove_new_area(self.inodes.staging(*parts)))
        else:
            await self._staging(self.tree.blocking(staging.remove_pending, self.registry.url,
                                                   parts))

    def _not_storable(self, parent_inode: int, what: str) -> pyfuse3.FUSEError:
        """Symlinks, hard links and special files: a manifest holds regular files only, so a
        staging folder refuses them (EPERM, as filesystems without them do) instead of
        committing something else."""
        staged = self._staged(parent_inode)
        if staged is None:
            return _erofs()
        log.info("refused in %s/@staging: %s cannot be stored in an artifact", staged[0].what,
                 what)
        return pyfuse3.FUSEError(errno.EPERM)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _component(name)
        raise self._not_storable(parent_inode, "symbolic links")

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old_name, new_name = _component(name_old), _component(name_new)
        old, new = self._staged(parent_inode_old), self._staged(parent_inode_new)
        if old is None and new is None:
            raise _erofs()
        if old is None or new is None or old[0] != new[0]:
            # Another artifact's staging folder, or a version: `mv` then copies and deletes.
            raise pyfuse3.FUSEError(errno.EXDEV)
        await self._staging(self.staged.rename(old[0], old[1], old_name, new[1], new_name,
                                               flags))

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _component(new_name)
        raise self._not_storable(new_parent_inode, "hard links")

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        """The CLI's channel into the mount: `artfs commit` and friends set CONTROL_XATTR on an
        artifact folder or its staging folder; the mount runs the command, so it can wait for
        writers and refresh what the kernel caches."""
        if os.fsdecode(name) != CONTROL_XATTR:
            raise _erofs()
        staged = self._staged(inode)
        if staged is not None and staged[1] == staging.ROOT:
            area = staged[0]
        else:
            node = self._node(inode)
            if not isinstance(node, Namespace) or node.level != "artifact":
                raise pyfuse3.FUSEError(errno.EINVAL)
            area = self.inodes.staging(*node.parts)
        try:
            request = json.loads(value)
        except ValueError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        await self._staging(self.staged.commands.control(area, request))

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _erofs()


def _xattr_value(value: Any) -> bytes:
    """Plain text for scalars, comma-separated lists, JSON for mappings; empty for None."""
    if value is None:
        return b""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True).encode()
    if isinstance(value, list):
        return ",".join(str(v) for v in value).encode()
    return str(value).encode()

