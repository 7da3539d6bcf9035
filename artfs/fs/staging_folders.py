"""The `@staging` folders of a mount: FUSE requests on top of `artfs.staging`.

What a staging folder contains lives in the area's SQLite tree (`artfs.staging.Staging`); this
module adds what only a mount has, each job in a module of its own: the areas served and their
lock and checkpoints (`areas.py`), open files and write sessions (`drafts.py`), hashing while
writing (`running_hash.py`), and commits that run beside writers (`commands.py`).

Writers and commits: a commit waits only for the files open for writing when it starts, then
stores what one read of the tree shows (`Staging.snapshot`): for each path, bytes some writer
finished, or the base version's. While it stores them, writers go on; drafts they finish are
published when it ends, and files they replace or remove are deleted then.

Hashing while writing: each draft keeps a SHA-256 of its bytes for as long as every write lands
exactly at the end of what was hashed. Any other write or truncation drops it. When the draft
is finished and its size equals the hashed length, the digest is recorded, so a commit stores
the file without reading it again (measured: commit of 1 GiB in a fraction of `sha256sum`'s
time).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import pyfuse3
import trio

from .. import staging
from ..registry import Registry
from ..staging import ROOT, Node, Staging
from .areas import Areas
from .attrs import STAGING_TTL_S, Attributes
from .commands import Commands
from .drafts import (
    CLOSED,
    OPEN,
    Drafts,
    FileHandle,
    OpenBytes,
    ServedArea,
    running_digest,
    version_row,
)
from .inodes import InodeTable, StagingFolder
from .kinds import NodeKind
from .reader import Reader, Unreadable
from .tree import Tree

log = logging.getLogger(__name__)

#: Writes up to this size go to the page cache on the request loop itself: a thread hand-off
#: costs more than copying 64 KiB, and `cp -r` of small files is bound by per-request costs.
INLINE_WRITE_MAX = 64 * 1024

T = TypeVar("T")


def _fsync(fd: int, area: Staging) -> None:
    os.fsync(fd)
    area.sync_tree()


def _write_and_hash(fd: int, buf: bytes, off: int, hasher: Any) -> int:
    n = os.pwrite(fd, buf, off)
    if hasher is not None:
        hasher.update(memoryview(buf)[:n])
    return n


class StagingFolders(NodeKind):
    """Every request on a node inside some artifact's `@staging` folder."""

    def __init__(self, registry: Registry, tree: Tree, reader: Reader, inodes: InodeTable,
                 attrs: Attributes) -> None:
        super().__init__(registry, tree, inodes, attrs)
        self.reader = reader
        self.limiter = tree.limiter
        self.areas = Areas(registry, reader, tree.limiter)
        self.drafts = Drafts(reader, tree.limiter)
        self.commands = Commands(registry, tree, inodes, self.areas, self.drafts)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def inode(self, area: StagingFolder, node_id: int) -> int:
        return self.inodes.staging_inode(area, node_id)

    # -- attributes --------------------------------------------------------------------------
    def root_attrs(self, area: StagingFolder) -> pyfuse3.EntryAttributes:
        """The `@staging` folder itself, without loading the area (a listing must not)."""
        st = self.areas.loaded.get(area.slot)
        node = st.staging.node(ROOT) if st else None
        if node is None:  # not loaded: its times and link count are not known yet
            return self.make_attrs(self.inode(area, ROOT), stat.S_IFDIR | 0o755, 0,
                                   time.time_ns(), 0.0, STAGING_TTL_S, nlink=2)
        return self.attrs(area, st, node)  # type: ignore[arg-type]

    def attrs(self, area: StagingFolder, st: ServedArea, node: Node) -> pyfuse3.EntryAttributes:
        mode = staging.stat_mode(node)
        inode = self.inode(area, node.id)
        mtime = node.mtime_ns
        atime, ctime = node.atime_ns or mtime, node.ctime_ns or mtime
        if node.is_dir:
            return self.make_attrs(inode, mode, 0, mtime, STAGING_TTL_S, atime_ns=atime,
                                   ctime_ns=ctime, nlink=2 + st.staging.subdir_count(node.id))
        size = node.size or 0
        session = st.current.get(node.id)
        if session is not None:  # being written: the draft's own size and times
            s = os.fstat(session.fd)
            size, mtime, ctime = s.st_size, s.st_mtime_ns, max(ctime, s.st_ctime_ns)
        return self.make_attrs(inode, mode, size, mtime, STAGING_TTL_S, atime_ns=atime,
                               ctime_ns=ctime)

    async def node(self, area: StagingFolder, node_id: int) -> tuple[ServedArea, Node]:
        st = await self.areas.state(area)
        node = st.staging.node(node_id)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return st, node

    async def lookup(self, area: StagingFolder, parent: int, name: str) -> pyfuse3.EntryAttributes:
        st = await self.areas.state(area)
        node = st.staging.child(parent, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(area, st, node)

    async def getattr(self, area: StagingFolder, node_id: int) -> pyfuse3.EntryAttributes:
        st = await self.areas.state(area)
        node = st.staging.node(node_id)
        if node is not None:
            return self.attrs(area, st, node)
        # Removed while open: it keeps working through its descriptor, as on a local disk
        # (the kernel asks for attributes before reading once they are older than the TTL).
        held = st.held.get(node_id)
        if held is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        s = os.fstat(held.fd)
        return self.make_attrs(self.inode(area, node_id), stat.S_IFREG | staging.FILE_PERMS,
                               s.st_size, s.st_mtime_ns, STAGING_TTL_S, ctime_ns=s.st_ctime_ns,
                               nlink=0)

    async def opendir(self, area: StagingFolder, node_id: int) -> None:
        await self.getattr(area, node_id)  # ENOENT for a folder removed meanwhile

    async def readdir(self, area: StagingFolder, node_id: int, start: int,
                      token: pyfuse3.ReaddirToken, listing: None = None) -> None:
        st = await self.areas.state(area)
        after = start
        while True:
            nodes = st.staging.children(node_id, after)
            if not nodes:
                return
            for n in nodes:
                attrs = self.attrs(area, st, n)
                if not pyfuse3.readdir_reply(token, os.fsencode(n.name), attrs, n.id):
                    return
                self.inodes.remember(attrs.st_ino)
                after = n.id

    def not_storable(self, area: StagingFolder, node_id: int, what: str) -> pyfuse3.FUSEError:
        """Symlinks, hard links and special files: a manifest holds regular files only, so a
        staging folder refuses them (EPERM, as filesystems without them do) instead of
        committing something else."""
        log.info("refused in %s/@staging: %s cannot be stored in an artifact", area.what, what)
        return pyfuse3.FUSEError(errno.EPERM)

    # -- changing the tree -------------------------------------------------------------------
    async def _change(self, area: StagingFolder, fn: Callable[..., T], *args: Any,
                      **kwargs: Any) -> T:
        self.areas.check_owner(area)
        st = await self.areas.state(area)
        await self.areas.not_resetting(st)
        try:
            return fn(st.staging, *args, **kwargs)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def mkdir(self, area: StagingFolder, parent: int, name: str,
                    mode: int) -> pyfuse3.EntryAttributes:
        node = await self._change(area, Staging.mkdir, parent, name, mode)
        return self.attrs(area, await self.areas.state(area), node)

    async def rmdir(self, area: StagingFolder, parent: int, name: str) -> None:
        await self._change(area, Staging.rmdir, parent, name)

    async def unlink(self, area: StagingFolder, parent: int, name: str) -> None:
        await self._change(area, Staging.unlink, parent, name)

    async def rename(self, area: StagingFolder, parent: int, name: str, new_parent: int,
                     new_name: str, flags: int) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE is not supported
        await self._change(area, Staging.rename, parent, name, new_parent, new_name,
                           replace=not flags & pyfuse3.RENAME_NOREPLACE)

    async def setattr(self, area: StagingFolder, node_id: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields) -> pyfuse3.EntryAttributes:
        self.areas.check_owner(area)
        st, node = await self.node(area, node_id)
        await self.areas.not_resetting(st)
        if fields.update_size and not node.is_dir:
            await self._truncate(area, st, node, attr.st_size)
        session = st.current.get(node.id)
        if fields.update_mtime and session is not None:
            # The draft's mtime is the file's until it is published (then the row's).
            await self.blocking(partial(os.utime, session.fd,
                                        ns=(attr.st_mtime_ns, attr.st_mtime_ns)))
        # uid/gid: accepted and ignored (every file belongs to the mounting user), so that
        # `rsync -a` and `tar -x` as root do not fail; the change time moves as for the rest.
        if (fields.update_mode or fields.update_mtime or fields.update_atime
                or fields.update_uid or fields.update_gid):
            st.staging.set_attrs(
                node.id, mode=attr.st_mode if fields.update_mode else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
                atime_ns=attr.st_atime_ns if fields.update_atime else None)
        _, node = await self.node(area, node_id)
        return self.attrs(area, st, node)

    async def _truncate(self, area: StagingFolder, st: ServedArea, node: Node, size: int) -> None:
        """truncate/ftruncate: in the file's session (one of its own when none runs)."""
        if st.current.get(node.id) is None and node.kind == "base" and size == node.size:
            return
        session = await self.drafts.session(area, st, node, copy=size != 0, detach=False)
        async with session.lock:
            await self.blocking(os.ftruncate, session.fd, size)
            session.changed = True
            if size == 0:
                session.restart_hash()
            elif session.hash is not None and size != session.hash.length:
                session.drop_hash()
        if session.writers == 0:
            await self.drafts.finish(st, session)

    async def open(self, area: StagingFolder, node_id: int, flags: int,
                   pid: int) -> tuple[FileHandle, pyfuse3.FileInfo]:
        return await self._open(area, node_id, flags), pyfuse3.FileInfo()

    async def _open(self, area: StagingFolder, node_id: int, flags: int) -> FileHandle:
        st, node = await self.node(area, node_id)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        handle = FileHandle(area, node.id, writable)
        if writable:
            self.areas.check_owner(area)
            await self.areas.not_resetting(st)
            truncate = bool(flags & os.O_TRUNC)
            session = await self.drafts.session(area, st, node, copy=not truncate, detach=truncate)
            return self.drafts.attach(st, handle, session)
        session = st.current.get(node.id)
        if session is not None:  # being written: readers see the writer's bytes
            return self.drafts.attach(st, handle, session)
        node, published = await self.drafts.published(st, node)
        if published is not None:
            return self.drafts.attach(st, handle, published)
        if node.kind != "base":  # a new file whose first writer is gone: nothing was kept
            raise pyfuse3.FUSEError(errno.ENOENT)
        path = st.staging.path(node.id)
        where = f"{area.what} @staging path {path!r} (sha256 {node.digest})"
        try:
            handle.committed = await self.reader.open(area.entity, version_row(node, path), where)
        except Unreadable as e:
            log.error("EIO: %s: %s", where, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        return handle

    async def create(self, area: StagingFolder, parent: int, name: str, mode: int,
                     flags: int) -> tuple[FileHandle, pyfuse3.EntryAttributes]:
        node, fd, path = await self._change(area, Staging.create_open, parent, name, mode)
        st = await self.areas.state(area)
        session = OpenBytes(node.id, path, fd, OPEN, changed=True)
        session.restart_hash()
        st.current[node.id] = session
        handle = self.drafts.attach(st, FileHandle(area, node.id, True), session)
        return handle, self.attrs(area, st, node)

    async def read(self, handle: FileHandle, off: int, size: int) -> memoryview | bytes:
        if handle.committed is not None:
            return await handle.committed.read(off, size)
        assert handle.bytes is not None
        return await self.reader.pread(handle.bytes.fd, off, size)

    async def write(self, handle: FileHandle, off: int, buf: bytes) -> int:
        if handle.bytes is None or not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        st = self.areas.loaded[handle.area.slot]
        handle.flushed = False
        b = await self.drafts.writable(st, handle)
        async with b.lock:
            b.changed = True
            run = b.hash
            if run is not None and off != run.length:
                b.drop_hash()
                run = None
            if run is not None and not run.inline(len(buf)):
                n = await run.write(b.fd, buf, off)
            else:
                hasher = run.sha if run is not None else None
                if len(buf) <= INLINE_WRITE_MAX:
                    n = _write_and_hash(b.fd, buf, off, hasher)
                else:
                    n = await self.blocking(_write_and_hash, b.fd, buf, off, hasher)
            if run is not None:
                run.length += n
        return n

    async def fsync(self, handle: FileHandle) -> None:
        """The file's bytes, and the tree that names them (its WAL), reach the disk."""
        if handle.bytes is not None:
            st = self.areas.loaded[handle.area.slot]
            await self.blocking(_fsync, handle.bytes.fd, st.staging)

    def flush(self, handle: FileHandle) -> None:
        """A close() of a descriptor; the session is finished only at release (see there)."""
        if handle.writable and handle.bytes is not None and handle.bytes.writers == 1:
            handle.flushed = True

    async def release(self, handle: FileHandle) -> None:
        """The last close of a descriptor: the last writer of a session finishes it. Not at
        flush, which every close() of a duplicate sends (a process that forks and execs while
        writing would publish and copy the file again each time): a commit right after a
        writer closed waits up to RELEASE_GRACE_S for this release instead."""
        if handle.committed is not None:
            handle.committed.close()
            return
        st = self.areas.loaded[handle.area.slot]
        st.writing.discard(handle)
        b = self.drafts.detach(st, handle)
        if handle.writable and b.writers == 0 and b.state == OPEN:
            await self.drafts.finish(st, b)
        self.drafts.close_unused(st, b)

    # -- facts and commands ------------------------------------------------------------------
    async def facts(self, area: StagingFolder, node_id: int) -> dict[str, Any]:
        st, node = await self.node(area, node_id)
        out: dict[str, Any] = {"registry": self.registry.url, "artifact": area.what,
                               "staging": True}
        base = st.staging.base_version
        out["base_version"] = f"v{base}" if base is not None else None
        if node_id == ROOT:
            # `artfs diff` asks this before it reads the tree: files just closed are then in it.
            await self.commands.settle(st)
            return out
        out["path"] = st.staging.path(node_id)
        if node.is_dir:
            return out
        session = st.current.get(node.id)
        if session is None:
            out["staged"] = node.kind == "local"
            digest, ref = node.digest, node.ref
        else:  # being written, or closed and not yet released: the session's bytes
            out["staged"], ref = True, None
            digest = session.digest if session.state == CLOSED else await running_digest(session)
        if digest:
            out["digest"] = digest
        if ref:
            out["ref"] = ref
        return out
