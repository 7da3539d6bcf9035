"""The `pyfuse3.Operations` of an artfs mount: the registry as a directory tree.

This module only translates FUSE requests: it decodes each inode once into a kind of node and
its node, and the kind answers (`kinds.py`): namespace folders (`namespaces.py`), version and
alias views (`versions.py`), `@staging` folders (`staging_folders.py`). Attributes and TTLs
are made in `attrs.py`, failures become errnos in `errnos.py`. Writes fail with EROFS except
inside staging folders and `mkdir` of a new entity, project or artifact, which creates a
pending one whose staging folder starts empty.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3

from .. import config, staging
from ..names import NAME_MAX
from ..registry import Registry
from .attribution import Attribution
from .attrs import BLKSIZE, Attributes
from .errnos import erofs, staging_call
from .inodes import InodeTable, Namespace, StagingFolder
from .kinds import NodeKind
from .namespaces import NamespaceFolders
from .protocol import CONTROL_XATTR, PROGRESS_XATTR, RESULT_XATTR, XATTR_PREFIX
from .reader import Reader
from .staging_folders import StagingFolders
from .tree import Tree
from .versions import VersionViews

log = logging.getLogger(__name__)

T = TypeVar("T")


def _component(name: bytes) -> str:
    """A name from the kernel, which passes up to 1,024 bytes: longer than NAME_MAX (what
    statfs reports) is ENAMETOOLONG, as on local filesystems, so no such name is ever stored."""
    if len(name) > NAME_MAX:
        log.info("ENAMETOOLONG: a name of %d bytes (at most %d): %r…", len(name), NAME_MAX,
                 name[:40])
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    return os.fsdecode(name)


@dataclass
class DirHandle:
    """An open directory: namespace listings are a snapshot taken at opendir, so paging through
    them stays consistent while versions are being committed; version folders are immutable."""

    kind: NodeKind
    node: tuple[Any, ...]
    names: list[str] | None = None


class Operations(pyfuse3.Operations):
    """Every FUSE request, handed to the kind of node it is about; blocking calls happen in
    `tree`, `reader` or staging threads."""

    def __init__(self, registry: Registry, tree: Tree, reader: Reader) -> None:
        super().__init__()
        self.registry = registry
        self.tree = tree
        self.reader = reader
        self.inodes = InodeTable()
        self.attrs = Attributes()
        self._fh = itertools.count(1)
        self._files: dict[int, tuple[NodeKind, Any]] = {}
        self._dirs: dict[int, DirHandle] = {}
        self.attribution = Attribution(registry, tree.limiter)
        self.staging_folders = StagingFolders(registry, tree, reader, self.inodes, self.attrs)
        self.versions = VersionViews(registry, tree, reader, self.inodes, self.attrs,
                                     self.attribution)
        self.namespaces = NamespaceFolders(self.versions, self.staging_folders)

    # -- dispatch ----------------------------------------------------------------------------
    def _kind(self, inode: int) -> tuple[NodeKind, tuple[Any, ...]]:
        """The kind of node an inode is, and the node its methods start with."""
        try:
            node = self.inodes.decode(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if isinstance(node, Namespace):
            return self.namespaces, (node,)
        if isinstance(node[0], StagingFolder):
            return self.staging_folders, node
        return self.versions, node

    def _call(self, kind: NodeKind, coro: Awaitable[T]) -> Awaitable[T]:
        """Staging requests go through `staging_call` (OS errors keep their errno); the other
        kinds map the registry's failures themselves, around each registry call."""
        return staging_call(coro) if kind is self.staging_folders else coro

    def _staged(self, inode: int) -> tuple[StagingFolder, int] | None:
        """(area, node id) when the inode is inside a staging folder."""
        kind, node = self._kind(inode)
        return node if kind is self.staging_folders else None  # type: ignore[return-value]

    # -- lookups and attributes --------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        kind, node = self._kind(parent_inode)
        attrs = await self._call(kind, kind.lookup(*node, _component(name)))
        self.inodes.remember(attrs.st_ino)
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        kind, node = self._kind(inode)
        return await self._call(kind, kind.getattr(*node))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            slot = self.inodes.forget(inode, count)
            if slot is not None:
                self.tree.release(slot, self.inodes.referenced)

    # -- directories -------------------------------------------------------------------------
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        kind, node = self._kind(inode)
        names = await self._call(kind, kind.opendir(*node))
        fh = next(self._fh)
        self._dirs[fh] = DirHandle(kind, node, names)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        await self._call(handle.kind,
                         handle.kind.readdir(*handle.node, start_id, token, handle.names))

    async def releasedir(self, fh: int) -> None:
        del self._dirs[fh]

    # -- files -------------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        kind, node = self._kind(inode)
        handle, info = await self._call(kind, kind.open(*node, flags, ctx.pid))
        info.fh = next(self._fh)
        self._files[info.fh] = (kind, handle)
        return info

    async def read(self, fh: int, off: int, size: int) -> memoryview | bytes:
        kind, handle = self._files[fh]
        return await self._call(kind, kind.read(handle, off, size))

    async def release(self, fh: int) -> None:
        kind, handle = self._files.pop(fh)
        await self._call(kind, kind.release(handle))

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        kind, handle = self._files[fh]
        return await self._call(kind, kind.write(handle, off, buf))

    async def flush(self, fh: int) -> None:
        kind, handle = self._files[fh]
        kind.flush(handle)

    async def fsync(self, fh: int, datasync: bool) -> None:
        kind, handle = self._files[fh]
        await self._call(kind, kind.fsync(handle))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        kind, node = self._kind(parent_inode)
        handle, attrs = await self._call(kind, kind.create(*node, _component(name), mode,
                                                           flags))
        fh = next(self._fh)
        self._files[fh] = (kind, handle)
        self.inodes.remember(attrs.st_ino)
        return pyfuse3.FileInfo(fh=fh), attrs

    # -- facts -------------------------------------------------------------------------------
    async def facts(self, inode: int) -> dict[str, Any]:
        """What `artfs info PATH` and the `user.artfs.*` attributes show for an inode."""
        kind, node = self._kind(inode)
        return await self._call(kind, kind.facts(*node))

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
            state = self.staging_folders.commands.progress_of(key[len(PROGRESS_XATTR):])
            if state is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return json.dumps(state).encode()
        if key.startswith(RESULT_XATTR):
            reply = self.staging_folders.commands.result(key[len(RESULT_XATTR):])
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
        kind, node = self._kind(inode)
        return await self._call(kind, kind.setattr(*node, attr, fields))

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _component(name)
        raise self._not_storable(parent_inode, "device files, FIFOs and sockets")

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        kind, node = self._kind(parent_inode)
        attrs = await self._call(kind, kind.mkdir(*node, _component(name), mode))
        self.inodes.remember(attrs.st_ino)
        return attrs

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        kind, node = self._kind(parent_inode)
        await self._call(kind, kind.unlink(*node, _component(name)))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        kind, node = self._kind(parent_inode)
        await self._call(kind, kind.rmdir(*node, _component(name)))

    def _not_storable(self, parent_inode: int, what: str) -> pyfuse3.FUSEError:
        kind, node = self._kind(parent_inode)
        return kind.not_storable(*node, what)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _component(name)
        raise self._not_storable(parent_inode, "symbolic links")

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old_name, new_name = _component(name_old), _component(name_new)
        old, new = self._staged(parent_inode_old), self._staged(parent_inode_new)
        if old is None and new is None:
            raise erofs()
        if old is None or new is None or old[0] != new[0]:
            # Another artifact's staging folder, or a version: `mv` then copies and deletes.
            raise pyfuse3.FUSEError(errno.EXDEV)
        await staging_call(self.staging_folders.rename(old[0], old[1], old_name, new[1], new_name,
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
            raise erofs()
        kind, node = self._kind(inode)
        if kind is self.staging_folders and node[1] == staging.ROOT:
            area = node[0]
        elif kind is self.namespaces and node[0].level == "artifact":
            area = self.inodes.staging(*node[0].parts)
        else:
            raise pyfuse3.FUSEError(errno.EINVAL)
        try:
            request = json.loads(value)
        except ValueError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        await staging_call(self.staging_folders.commands.control(area, request))

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise erofs()


def _xattr_value(value: Any) -> bytes:
    """Plain text for scalars, comma-separated lists, JSON for mappings; empty for None."""
    if value is None:
        return b""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True).encode()
    if isinstance(value, list):
        return ",".join(str(v) for v in value).encode()
    return str(value).encode()

