"""Drafts: the bytes of files being written in `@staging`, and copy-up of a file's bytes.

Every writer writes a *draft* of its file (`OpenBytes`), never the bytes a commit may be
reading; when the last writer of a draft closes it, the draft is published (the node points at
it, one row update). While a commit stores its snapshot, drafts finished meanwhile wait for it
to end (`ServedArea.deferred`), and so does the deletion of the files they replace.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio

from ..hashing import _kernel_copy
from ..staging import Node, Staging
from .inodes import StagingFolder
from .reader import Handle, LocalHandle, Reader, Unreadable
from .running_hash import RunningHash
from .tree import Row

log = logging.getLogger(__name__)

#: Copy-up of a remote file reads it through the reader in pieces of this size.
COPY_CHUNK = 1024 * 1024

T = TypeVar("T")

#: States of a draft: being written; finished while a commit took its snapshot (published
#: when the commit ends); being finished (digest, publication); the node's bytes now; thrown
#: away (nothing changed, or the file was removed).
OPEN, CLOSED, FINISHING, PUBLISHED, DROPPED = "open", "closed", "finishing", "published", "dropped"


class OpenBytes:
    """One file of an area's `files/` open in this mount, shared by the handles reading or
    writing it: a *draft* (one write session of a file), or published bytes opened for reading.

    A session starts when a file is opened for writing or truncated, with a copy of the file's
    bytes (none with O_TRUNC). Writers opened meanwhile join it. It is *finished* when its
    last writer closes it: if it changed anything it is published (`Staging.publish` points the
    node at it), else dropped; while a commit is storing a snapshot, publishing waits for the
    commit to end. A published file never changes again, so a commit that took it reads exactly
    what a writer finished. Also kept: the running SHA-256 of the bytes while they are written
    in order from offset 0.
    """

    def __init__(self, node_id: int, path: Path, fd: int, state: str,
                 changed: bool = False) -> None:
        self.node_id = node_id
        self.path = path
        self.fd = fd
        self.state = state
        #: The session wrote or truncated (an unchanged copy is dropped, not published).
        self.changed = changed
        self.handles = 0
        self.writers = 0
        self.hash: RunningHash | None = None
        self.digest: str | None = None
        #: Set once finished: whoever waited to join or write starts a new session then.
        self.finished = trio.Event()
        #: Writes of one file are applied in order, so the running hash sees them in order.
        self.lock = trio.Lock()

    def restart_hash(self) -> None:
        self.drop_hash()
        self.hash = RunningHash()

    def drop_hash(self) -> None:
        if self.hash is not None:
            self.hash.abandon()
            self.hash = None


@dataclass(eq=False)
class FileHandle:
    area: StagingFolder
    node_id: int
    writable: bool
    bytes: OpenBytes | None = None
    #: Reads a file of the base version not written since (no draft, no local bytes).
    committed: Handle | None = None
    #: Its last writer's descriptor was closed (flush) and nothing written since: its release
    #: follows, unless a duplicate of the descriptor lives on in another process.
    flushed: bool = False


async def running_digest(session: OpenBytes) -> str | None:
    """The SHA-256 of a session's bytes when they were all written in order, else None."""
    async with session.lock:
        run = session.hash
        if run is None and session.state != OPEN:
            # Finished while we waited for the lock (a getxattr racing the release that
            # follows a `cp`): the hash is spent, its digest is the session's.
            return session.digest
        if run is None or run.length != os.fstat(session.fd).st_size:
            return None
        return await run.hexdigest()


@dataclass
class ServedArea:
    """One artifact's staging area as served by this mount: its tree (`Staging`) and what
    only the mount knows of it (drafts being written, handles, the command running)."""

    staging: Staging
    #: The session of each file being written (or finished and waiting for a commit to end):
    #: the one new writers join and new readers read.
    current: dict[int, OpenBytes] = field(default_factory=dict)
    #: Sessions being started (their copy being made), so that two opens never start two.
    starting: dict[int, trio.Event] = field(default_factory=dict)
    #: The latest open bytes of each node with handles (a removed file stays readable).
    held: dict[int, OpenBytes] = field(default_factory=dict)
    #: Handles open for writing (a commit waits for those open when it starts).
    writing: set[FileHandle] = field(default_factory=set)
    #: A commit is storing its snapshot: finished sessions wait here until it ends.
    snapshotting: bool = False
    deferred: list[OpenBytes] = field(default_factory=list)
    #: A whole-area command (commit, discard) runs: others wait for it.
    command: trio.Event | None = None
    #: Discard replaces the whole tree: changes wait for it.
    resetting: trio.Event | None = None


def _new_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)


def _copy_local(src: Path, dest_fd: int, mtime_ns: int) -> None:
    """A published file's bytes into a new draft; FileNotFoundError when it is gone."""
    fd = os.open(src, os.O_RDONLY)
    try:
        _kernel_copy(fd, dest_fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    os.utime(dest_fd, ns=(mtime_ns, mtime_ns))


def version_row(node: Node, path: str) -> Row:
    """A base-version file of a staging tree, as the reader opens the files of a version."""
    return Row(node.id, node.parent, node.name, path, False, node.size, node.digest, node.ref,
               node.extra, 0)


class Drafts:
    """Write sessions of files in the areas of a mount: start (with a copy of the file's
    bytes), join, finish (publish or drop), and the handles attached to them."""

    def __init__(self, reader: Reader, limiter: trio.CapacityLimiter) -> None:
        self.reader = reader
        self.limiter = limiter

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def session(self, area: StagingFolder, st: ServedArea, node: Node, *, copy: bool,
                       detach: bool) -> OpenBytes:
        """The session a writer of `node` writes in: the running one, or a new one holding a
        copy of the file's bytes (`copy`) or none. `detach` (an open with O_TRUNC): while
        others write the running session, start a new one for this writer instead, so that two
        `cp` to one name each write a whole file of their own and the last to close wins."""
        while True:
            if (starting := st.starting.get(node.id)) is not None:
                await starting.wait()
                continue
            cur = st.current.get(node.id)
            if cur is not None and cur.state == FINISHING:
                await cur.finished.wait()
                continue
            break
        fresh = st.staging.node(node.id)
        if fresh is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if cur is not None and not (detach and cur.state == OPEN and cur.writers > 0):
            if cur.state == CLOSED:  # finished while a commit ran: written again instead
                st.deferred.remove(cur)
                cur.state = OPEN
                cur.drop_hash()
            if not copy:
                async with cur.lock:
                    await self.blocking(os.ftruncate, cur.fd, 0)
                    cur.changed = True
                    cur.restart_hash()
            return cur
        return await self._start(area, st, fresh, copy)

    async def _start(self, area: StagingFolder, st: ServedArea, node: Node,
                     copy: bool) -> OpenBytes:
        started = st.starting[node.id] = trio.Event()
        try:
            path = st.staging.new_draft(node.id)
            fd = await self.blocking(_new_file, path)
            try:
                if copy:
                    await self._fill(area, st, node, fd)
            except BaseException:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            session = OpenBytes(node.id, path, fd, OPEN, changed=not copy)
            if not copy or node.size == 0:
                session.restart_hash()
            st.current[node.id] = session
            return session
        finally:
            del st.starting[node.id]
            started.set()

    async def _fill(self, area: StagingFolder, st: ServedArea, node: Node, out: int) -> None:
        """Copy the node's published bytes (a local file or the registry's blob) into `out`,
        keeping its mtime: a copy is no change."""
        while node.kind == "local" and node.content is not None:
            try:
                await self.blocking(_copy_local, st.staging.file(node), out, node.mtime_ns)
                return
            except FileNotFoundError:  # a commit made it a base file meanwhile: read again
                fresh = st.staging.node(node.id)
                if fresh is None or fresh == node:
                    raise pyfuse3.FUSEError(errno.ENOENT) from None
                node = fresh
        if node.kind != "base":
            return  # a new file not yet written: nothing to copy
        path = st.staging.path(node.id)
        where = f"{area.what} @staging path {path!r} (sha256 {node.digest})"
        try:
            handle = await self.reader.open(area.entity, version_row(node, path), where)
        except Unreadable as e:
            log.error("EIO: copying up %s: %s", where, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        try:
            if isinstance(handle, LocalHandle):
                await self.blocking(_kernel_copy, handle.fd, out, node.size or 0)
            else:
                off = 0
                while data := bytes(await handle.read(off, COPY_CHUNK)):
                    await self.blocking(os.pwrite, out, data, off)
                    off += len(data)
        finally:
            handle.close()
        os.utime(out, ns=(node.mtime_ns, node.mtime_ns))

    async def finish(self, st: ServedArea, session: OpenBytes) -> None:
        """The last writer closed the session: publish it (later, while a commit stores a
        snapshot), or drop it when it changed nothing."""
        session.state = FINISHING
        try:
            async with session.lock:
                size = os.fstat(session.fd).st_size
                run = session.hash
                session.digest = await run.hexdigest() if run and run.length == size else None
                session.drop_hash()
            if not session.changed:
                self.drop(st, session)
            elif st.snapshotting:
                session.state = CLOSED
                st.deferred.append(session)
            else:
                self.publish(st, session)
        except BaseException:
            session.state = OPEN  # kept: the next release (or writer) finishes it again
            raise
        finally:
            session.finished.set()
            if session.state == OPEN:
                session.finished = trio.Event()

    def publish(self, st: ServedArea, session: OpenBytes) -> None:
        if not st.staging.publish(session.node_id, session.path, session.digest):
            session.path.unlink(missing_ok=True)  # removed meanwhile
        session.state = PUBLISHED
        self.forget(st, session)

    def drop(self, st: ServedArea, session: OpenBytes) -> None:
        session.state = DROPPED
        session.path.unlink(missing_ok=True)
        self.forget(st, session)

    def forget(self, st: ServedArea, session: OpenBytes) -> None:
        if st.current.get(session.node_id) is session:
            del st.current[session.node_id]
        self.close_unused(st, session)

    def close_unused(self, st: ServedArea, b: OpenBytes) -> None:
        if b.handles == 0 and st.current.get(b.node_id) is not b and b.fd >= 0:
            os.close(b.fd)
            b.fd = -1
            if st.held.get(b.node_id) is b:
                del st.held[b.node_id]

    def attach(self, st: ServedArea, handle: FileHandle, b: OpenBytes) -> FileHandle:
        handle.bytes = b
        b.handles += 1
        st.held[b.node_id] = b
        if handle.writable:
            b.writers += 1
            st.writing.add(handle)
        return handle

    def detach(self, st: ServedArea, handle: FileHandle) -> OpenBytes:
        b = handle.bytes
        assert b is not None
        b.handles -= 1
        if handle.writable:
            b.writers -= 1
        return b

    async def writable(self, st: ServedArea, handle: FileHandle) -> OpenBytes:
        """The session a write through `handle` goes to: a new one once its own was finished
        (a descriptor still open after a close of one of its duplicates, or mmap writeback)."""
        b = handle.bytes
        assert b is not None
        while b.state == FINISHING:
            await b.finished.wait()
        if b.state == OPEN:
            return b
        if b.state == CLOSED:
            st.deferred.remove(b)
            b.state = OPEN
            return b
        node = st.staging.node(handle.node_id)
        if node is None:  # removed: a private copy of its bytes, which nobody will publish
            path = st.staging.new_draft(handle.node_id)
            fd = await self.blocking(_new_file, path)
            await self.blocking(_kernel_copy, b.fd, fd, os.fstat(b.fd).st_size)
            new = OpenBytes(handle.node_id, path, fd, OPEN, changed=True)
        else:
            new = await self.session(handle.area, st, node, copy=True, detach=False)
        self.detach(st, handle)
        self.close_unused(st, b)
        return self.attach(st, handle, new).bytes  # type: ignore[return-value]

    async def published(self, st: ServedArea, node: Node) -> tuple[Node, OpenBytes | None]:
        """Open a published local file for reading (None for a base file)."""
        while node.kind == "local" and node.content is not None:
            path = st.staging.file(node)
            try:
                fd = await self.blocking(os.open, path, os.O_RDONLY)
            except FileNotFoundError:  # a commit made it a base file meanwhile: read again
                fresh = st.staging.node(node.id)
                if fresh is None or fresh == node:
                    raise pyfuse3.FUSEError(errno.ENOENT) from None
                node = fresh
                continue
            return node, OpenBytes(node.id, path, fd, PUBLISHED)
        return node, None
