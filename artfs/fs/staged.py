"""The `@staging` folders of a mount: FUSE requests on top of `artfs.staging`.

What a staging folder contains lives in the area's SQLite tree (`artfs.staging.Staging`); this
module adds what only a mount has: open files, write sessions, hashing while writing, and
commits that run beside writers.

Writers and commits: every writer writes a *draft* of its file (`OpenBytes`), never the bytes
a commit may be reading; when the last writer of a draft closes it, the draft is published (the
node points at it, one row update). A commit waits only for the files open for writing when it
starts, then stores what one read of the tree shows (`Staging.snapshot`): for each path, bytes
some writer finished, or the base version's. While it stores them, writers go on; drafts they
finish are published when it ends, and files they replace or remove are deleted then.

Hashing while writing: each draft keeps a SHA-256 of its bytes for as long as every write lands
exactly at the end of what was hashed (a `cp`, `dd`, `tar -x` or `rsync` writes that way). Any
other write or truncation drops it. When the draft is finished and its size equals the hashed
length, the digest is recorded, so a commit stores the file without reading it again
(measured: commit of 1 GiB in a fraction of `sha256sum`'s time).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import outcome
import pyfuse3
import trio

from .. import progress, staging
from ..errors import ArtfsError, Cancelled
from ..hashing import _kernel_copy
from ..names import LATEST
from ..registry import Registry
from ..staging import ROOT, Node, Staging
from .attribution import commit_lineage
from .inodes import InodeTable, StagingArea
from .reader import Handle, LocalHandle, Reader, Unreadable
from .tree import Row, Tree, TTLCache

log = logging.getLogger(__name__)

#: Entries and attributes of staged files: only this mount changes them (the commands that
#: replace the whole tree go through it and invalidate), so a short TTL is only a safety net.
STAGING_TTL_S = 1.0
#: How often a commit waiting with `--wait` checks whether writers closed their files.
WAIT_POLL_S = 0.1
#: The kernel sends RELEASE just after close() returns: a commit right after `cp` gives a
#: writer this long to be released before it counts as still open.
RELEASE_GRACE_S = 1.0
#: At most this many open files are named in a refusal.
NAMED_FILES = 20
#: Writes up to this size go to the page cache on the request loop itself: a thread hand-off
#: costs more than copying 64 KiB, and `cp -r` of small files is bound by per-request costs.
INLINE_WRITE_MAX = 64 * 1024
#: Writes from this size on are hashed on a separate task, beside the next writes (cp and dd
#: write 1 MiB at a time here; tar and small files stay on the cheaper in-line path).
PIPELINE_MIN = 256 * 1024
#: Writes queued for hashing per file: bounds the memory held by a writer far ahead of it.
PIPELINE_DEPTH = 16
#: How often the WAL of an area changed meanwhile is copied into its database (on a worker
#: thread; see `Staging.defer_checkpoints`).
CHECKPOINT_S = 1.0
#: Replies to staging commands kept for the CLI to read (each is read right after it is made).
KEPT_REPLIES = 64
#: Copy-up of a remote file reads it through the reader in pieces of this size.
COPY_CHUNK = 1024 * 1024

T = TypeVar("T")
Attrs = Callable[..., pyfuse3.EntryAttributes]


class RunningHash:
    """SHA-256 of a file's bytes as they are written in order from offset 0.

    Small writes are hashed by the thread that writes them. From the first large write on, the
    file gets two threads of its own: a writer, which writes each chunk and hands it on, and a
    hasher, which hashes it while the next chunks are written. Compared with a `trio.to_thread`
    hop per write and another per hashed chunk, this wakes the trio loop once per write, not
    twice: measured, ~10% less CPU in the mount for `cp` of 256 MiB, and writes of 1 MiB driven
    straight at the handlers took 0.7 ms each instead of 1.5 (the hashing now overlaps).
    """

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.length = 0
        #: Set when the threads start (most files are small and never need them).
        self._token: trio.lowlevel.TrioToken | None = None
        self._jobs: queue.SimpleQueue[tuple[trio.lowlevel.Task, int, bytes, int] | None]
        self._chunks: queue.SimpleQueue[bytes | Callable[[], None] | None]
        #: Chunks written and not yet hashed: bounds the memory a writer far ahead can hold.
        self._room: threading.Semaphore
        self._closed = False

    def inline(self, size: int) -> bool:
        """Whether a write of `size` bytes is hashed by the thread that writes it."""
        return self._token is None and size < PIPELINE_MIN

    async def write(self, fd: int, buf: bytes, off: int) -> int:
        """pwrite on the file's writer thread, which queues the bytes for the hasher."""
        assert not self._closed  # a dropped hash is replaced, never written through
        if self._token is None:
            self._jobs, self._chunks = queue.SimpleQueue(), queue.SimpleQueue()
            self._room = threading.Semaphore(PIPELINE_DEPTH)
            self._token = trio.lowlevel.current_trio_token()
            trio.lowlevel.start_thread_soon(self._write_loop, _ignore, name="artfs-write")
            trio.lowlevel.start_thread_soon(self._hash_loop, _ignore, name="artfs-hash")
        self._jobs.put((trio.lowlevel.current_task(), fd, buf, off))
        # Not cancellable: the pwrite runs to its end whatever happens to the request.
        return await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)

    def _write_loop(self) -> None:
        assert self._token is not None
        while (job := self._jobs.get()) is not None:
            task, fd, buf, off = job
            self._token.run_sync_soon(trio.lowlevel.reschedule, task,
                                      outcome.capture(self._write, fd, buf, off))

    def _write(self, fd: int, buf: bytes, off: int) -> int:
        n = os.pwrite(fd, buf, off)
        self._room.acquire()  # waits while the hasher is PIPELINE_DEPTH chunks behind
        self._chunks.put(buf[:n] if n < len(buf) else buf)
        return n

    def _hash_loop(self) -> None:
        while (item := self._chunks.get()) is not None:
            if isinstance(item, bytes):
                self.sha.update(item)
                self._room.release()
            else:
                item()

    def abandon(self) -> None:
        """Stop the threads (after the chunks already queued); called with no write running."""
        if self._token is not None and not self._closed:
            self._jobs.put(None)
            self._chunks.put(None)
        self._closed = True

    async def hexdigest(self) -> str:
        """The digest of everything written so far; hashing can go on afterwards."""
        if self._token is None:
            return self.sha.hexdigest()
        done = trio.Event()
        out: list[str] = []

        def caught_up() -> None:  # on the hasher, after every chunk queued before it
            out.append(self.sha.hexdigest())
            assert self._token is not None
            self._token.run_sync_soon(done.set)

        self._chunks.put(caught_up)
        await done.wait()
        return out[0]


def _ignore(_: object) -> None:
    """What `start_thread_soon` delivers when a file's thread ends: nothing to report."""


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
    area: StagingArea
    node_id: int
    writable: bool
    bytes: OpenBytes | None = None
    base: Handle | None = None
    #: Its last writer's descriptor was closed (flush) and nothing written since: its release
    #: follows, unless a duplicate of the descriptor lives on in another process.
    flushed: bool = False


async def _running(session: OpenBytes) -> str | None:
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
class AreaState:
    """One artifact's staging area as served by this mount."""

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


def _fsync(fd: int, area: Staging) -> None:
    os.fsync(fd)
    area.sync_tree()


def _write_and_hash(fd: int, buf: bytes, off: int, hasher: Any) -> int:
    n = os.pwrite(fd, buf, off)
    if hasher is not None:
        hasher.update(memoryview(buf)[:n])
    return n


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


class StagedFS:
    """Every request on a node inside some artifact's `@staging` folder."""

    def __init__(self, registry: Registry, tree: Tree, reader: Reader, inodes: InodeTable,
                 attrs: Attrs) -> None:
        self.registry = registry
        self.tree = tree
        self.reader = reader
        self.limiter = tree.limiter
        self.inodes = inodes
        self.make_attrs = attrs
        self._areas: dict[int, AreaState] = {}
        self._loading = TTLCache(0.0)
        self.owner = self._claim_staging()
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: Ids of commit requests whose CLI was interrupted (`artfs commit` then Ctrl-C).
        self._cancelled: set[str] = set()
        #: Bytes moved by each running commit, by request id.
        self._progress: dict[str, progress.Tracker] = {}
        self._checkpointing = False
        #: Areas of new artifacts removed by `rmdir`: ENOENT, not re-created, until a `mkdir`.
        self._removed: set[int] = set()

    def _claim_staging(self) -> str | None:
        """Take this machine's staging areas of the registry; None when we have them, else who
        does. Open files and running hashes live in the mount's memory, so two mounts sharing a
        state directory must not both change one area: the second serves it read-only."""
        root = staging.registry_root(self.registry.url)
        fd = os.open(root / "mount.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            log.warning("staging folders of %s are served read-only: mount pid %s on this "
                        "machine owns them", self.registry.url, holder)
            return holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd  # held (never closed) for the life of the mount
        return None

    def _check_owner(self, area: StagingArea) -> None:
        if self.owner is not None:
            log.error("EROFS: %s/@staging: its changes are served by mount pid %s",
                      area.what, self.owner)
            raise pyfuse3.FUSEError(errno.EROFS)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # -- areas -------------------------------------------------------------------------------
    async def state(self, area: StagingArea) -> AreaState:
        st = self._areas.get(area.slot)
        if st is None:
            if area.slot in self._removed:
                raise pyfuse3.FUSEError(errno.ENOENT)
            st = await self._loading.get(area.slot, lambda: self.blocking(self._load, area))
            self._areas[area.slot] = st
            if not self._checkpointing:
                self._checkpointing = True
                self.reader.nursery.start_soon(self._checkpoints)
        return st

    def _load(self, area: StagingArea) -> AreaState:
        existing = self._areas.get(area.slot)
        if existing is not None:
            return existing
        st = AreaState(staging.open_area(self.registry, area.entity, area.project, area.name))
        st.staging.defer_checkpoints()
        return st

    async def _checkpoints(self) -> None:
        """Checkpoint every area that changed since the last round, one at a time, off the
        request loop. A failure is logged: the WAL then keeps the changes until the next."""
        done: dict[int, int] = {}
        while True:
            await trio.sleep(CHECKPOINT_S)
            for slot, st in list(self._areas.items()):
                if done.get(slot) == st.staging.changes or self._areas.get(slot) is not st:
                    continue  # unchanged, or removed by rmdir meanwhile
                done[slot] = st.staging.changes
                try:
                    await self.blocking(st.staging.checkpoint)
                except (sqlite3.Error, OSError) as e:
                    log.warning("checkpoint of the staging index of %s failed: %s",
                                st.staging.what, e)

    async def new_area(self, area: StagingArea) -> None:
        """`mkdir` of a new artifact: create its empty staging area (again, after an rmdir)."""
        self._check_owner(area)
        self._removed.discard(area.slot)
        await self.state(area)

    async def remove_new_area(self, area: StagingArea) -> None:
        """`rmdir` of a new artifact (the caller checked that the registry does not know it):
        its staging area goes too, ENOTEMPTY while it holds anything."""
        self._check_owner(area)
        st = self._areas.get(area.slot)
        if st is not None:
            await self._idle(st)
            if st.staging.children(ROOT, limit=1):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            if st.held:  # files removed while open: their handles need the area
                raise pyfuse3.FUSEError(errno.EBUSY)
            del self._areas[area.slot]
            st.staging.close()
        self._removed.add(area.slot)
        try:
            await self.blocking(staging.remove_pending, self.registry.url,
                                (area.entity, area.project, area.name))
        except OSError as e:
            self._removed.discard(area.slot)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    def exists_on_disk(self, entity: str, project: str, name: str) -> bool:
        root = staging.registry_root(self.registry.url)
        return (root / entity / project / name / "index.db").exists()

    async def _idle(self, st: AreaState) -> None:
        """Wait for a whole-area command (commit, discard) of the area to end."""
        while st.command is not None:
            await st.command.wait()

    async def _not_resetting(self, st: AreaState) -> None:
        """Changes wait while a discard replaces the whole tree (a commit does not stop them)."""
        while st.resetting is not None:
            await st.resetting.wait()

    def inode(self, area: StagingArea, node_id: int) -> int:
        return self.inodes.staging_inode(area, node_id)

    # -- attributes --------------------------------------------------------------------------
    def root_attrs(self, area: StagingArea) -> pyfuse3.EntryAttributes:
        """The `@staging` folder itself, without loading the area (a listing must not)."""
        st = self._areas.get(area.slot)
        node = st.staging.node(ROOT) if st else None
        if node is None:  # not loaded: its times and link count are not known yet
            return self.make_attrs(self.inode(area, ROOT), stat.S_IFDIR | 0o755, 0,
                                   time.time_ns(), 0.0, STAGING_TTL_S, nlink=2)
        return self.attrs(area, st, node)  # type: ignore[arg-type]

    def attrs(self, area: StagingArea, st: AreaState, node: Node) -> pyfuse3.EntryAttributes:
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

    async def node(self, area: StagingArea, node_id: int) -> tuple[AreaState, Node]:
        st = await self.state(area)
        node = st.staging.node(node_id)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return st, node

    async def lookup(self, area: StagingArea, parent: int, name: str) -> pyfuse3.EntryAttributes:
        st = await self.state(area)
        node = st.staging.child(parent, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(area, st, node)

    async def getattr(self, area: StagingArea, node_id: int) -> pyfuse3.EntryAttributes:
        st = await self.state(area)
        node = st.staging.node(node_id)
        if node is not None:
            return self.attrs(area, st, node)
        # Removed while open: it keeps working through its descriptor, as on a local disk
        # (the kernel asks for attributes before reading once they are older than the TTL).
        held = st.held.get(node_id)
        if held is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        s = os.fstat(held.fd)
        return self.make_attrs(self.inode(area, node_id), stat.S_IFREG | staging.FILE_MODE,
                               s.st_size, s.st_mtime_ns, STAGING_TTL_S, ctime_ns=s.st_ctime_ns,
                               nlink=0)

    async def readdir(self, area: StagingArea, node_id: int, start: int,
                      token: pyfuse3.ReaddirToken) -> None:
        st = await self.state(area)
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

    # -- changing the tree -------------------------------------------------------------------
    async def _change(self, area: StagingArea, fn: Callable[..., T], *args: Any,
                      **kwargs: Any) -> T:
        self._check_owner(area)
        st = await self.state(area)
        await self._not_resetting(st)
        try:
            return fn(st.staging, *args, **kwargs)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def mkdir(self, area: StagingArea, parent: int, name: str,
                    mode: int) -> pyfuse3.EntryAttributes:
        node = await self._change(area, Staging.mkdir, parent, name, mode)
        return self.attrs(area, await self.state(area), node)

    async def rmdir(self, area: StagingArea, parent: int, name: str) -> None:
        await self._change(area, Staging.rmdir, parent, name)

    async def unlink(self, area: StagingArea, parent: int, name: str) -> None:
        await self._change(area, Staging.unlink, parent, name)

    async def rename(self, area: StagingArea, parent: int, name: str, new_parent: int,
                     new_name: str, flags: int) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE is not supported
        await self._change(area, Staging.rename, parent, name, new_parent, new_name,
                           replace=not flags & pyfuse3.RENAME_NOREPLACE)

    async def setattr(self, area: StagingArea, node_id: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields) -> pyfuse3.EntryAttributes:
        self._check_owner(area)
        st, node = await self.node(area, node_id)
        await self._not_resetting(st)
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

    async def _truncate(self, area: StagingArea, st: AreaState, node: Node, size: int) -> None:
        """truncate/ftruncate: in the file's session (one of its own when none runs)."""
        if st.current.get(node.id) is None and node.kind == "base" and size == node.size:
            return
        session = await self._session(area, st, node, copy=size != 0, detach=False)
        async with session.lock:
            await self.blocking(os.ftruncate, session.fd, size)
            session.changed = True
            if size == 0:
                session.restart_hash()
            elif session.hash is not None and size != session.hash.length:
                session.drop_hash()
        if session.writers == 0:
            await self._finish(st, session)

    # -- write sessions ----------------------------------------------------------------------
    async def _session(self, area: StagingArea, st: AreaState, node: Node, *, copy: bool,
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

    async def _start(self, area: StagingArea, st: AreaState, node: Node,
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

    async def _fill(self, area: StagingArea, st: AreaState, node: Node, out: int) -> None:
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
            handle = await self.reader.open(area.entity, _row(node, path), where)
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

    async def _finish(self, st: AreaState, session: OpenBytes) -> None:
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
                self._drop(st, session)
            elif st.snapshotting:
                session.state = CLOSED
                st.deferred.append(session)
            else:
                self._publish(st, session)
        except BaseException:
            session.state = OPEN  # kept: the next release (or writer) finishes it again
            raise
        finally:
            session.finished.set()
            if session.state == OPEN:
                session.finished = trio.Event()

    def _publish(self, st: AreaState, session: OpenBytes) -> None:
        if not st.staging.publish(session.node_id, session.path, session.digest):
            session.path.unlink(missing_ok=True)  # removed meanwhile
        session.state = PUBLISHED
        self._forget(st, session)

    def _drop(self, st: AreaState, session: OpenBytes) -> None:
        session.state = DROPPED
        session.path.unlink(missing_ok=True)
        self._forget(st, session)

    def _forget(self, st: AreaState, session: OpenBytes) -> None:
        if st.current.get(session.node_id) is session:
            del st.current[session.node_id]
        self._close_unused(st, session)

    def _close_unused(self, st: AreaState, b: OpenBytes) -> None:
        if b.handles == 0 and st.current.get(b.node_id) is not b and b.fd >= 0:
            os.close(b.fd)
            b.fd = -1
            if st.held.get(b.node_id) is b:
                del st.held[b.node_id]

    def _attach(self, st: AreaState, handle: FileHandle, b: OpenBytes) -> FileHandle:
        handle.bytes = b
        b.handles += 1
        st.held[b.node_id] = b
        if handle.writable:
            b.writers += 1
            st.writing.add(handle)
        return handle

    def _detach(self, st: AreaState, handle: FileHandle) -> OpenBytes:
        b = handle.bytes
        assert b is not None
        b.handles -= 1
        if handle.writable:
            b.writers -= 1
        return b

    async def _writable_bytes(self, st: AreaState, handle: FileHandle) -> OpenBytes:
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
            new = await self._session(handle.area, st, node, copy=True, detach=False)
        self._detach(st, handle)
        self._close_unused(st, b)
        return self._attach(st, handle, new).bytes  # type: ignore[return-value]

    # -- files -------------------------------------------------------------------------------
    async def _published(self, st: AreaState, node: Node) -> tuple[Node, OpenBytes | None]:
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

    async def open(self, area: StagingArea, node_id: int, flags: int) -> FileHandle:
        st, node = await self.node(area, node_id)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        handle = FileHandle(area, node.id, writable)
        if writable:
            self._check_owner(area)
            await self._not_resetting(st)
            truncate = bool(flags & os.O_TRUNC)
            session = await self._session(area, st, node, copy=not truncate, detach=truncate)
            return self._attach(st, handle, session)
        session = st.current.get(node.id)
        if session is not None:  # being written: readers see the writer's bytes
            return self._attach(st, handle, session)
        node, published = await self._published(st, node)
        if published is not None:
            return self._attach(st, handle, published)
        if node.kind != "base":  # a new file whose first writer is gone: nothing was kept
            raise pyfuse3.FUSEError(errno.ENOENT)
        path = st.staging.path(node.id)
        where = f"{area.what} @staging path {path!r} (sha256 {node.digest})"
        try:
            handle.base = await self.reader.open(area.entity, _row(node, path), where)
        except Unreadable as e:
            log.error("EIO: %s: %s", where, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        return handle

    async def create(self, area: StagingArea, parent: int, name: str, mode: int,
                     flags: int) -> tuple[FileHandle, pyfuse3.EntryAttributes]:
        node, fd, path = await self._change(area, Staging.create_open, parent, name, mode)
        st = await self.state(area)
        session = OpenBytes(node.id, path, fd, OPEN, changed=True)
        session.restart_hash()
        st.current[node.id] = session
        handle = self._attach(st, FileHandle(area, node.id, True), session)
        return handle, self.attrs(area, st, node)

    async def read(self, handle: FileHandle, off: int, size: int) -> memoryview | bytes:
        if handle.base is not None:
            return await handle.base.read(off, size)
        assert handle.bytes is not None
        return await self.reader.pread(handle.bytes.fd, off, size)

    async def write(self, handle: FileHandle, off: int, buf: bytes) -> int:
        if handle.bytes is None or not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        st = self._areas[handle.area.slot]
        handle.flushed = False
        b = await self._writable_bytes(st, handle)
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
            st = self._areas[handle.area.slot]
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
        if handle.base is not None:
            handle.base.close()
            return
        st = self._areas[handle.area.slot]
        st.writing.discard(handle)
        b = self._detach(st, handle)
        if handle.writable and b.writers == 0 and b.state == OPEN:
            await self._finish(st, b)
        self._close_unused(st, b)

    # -- facts and commands ------------------------------------------------------------------
    async def facts(self, area: StagingArea, node_id: int) -> dict[str, Any]:
        st, node = await self.node(area, node_id)
        out: dict[str, Any] = {"registry": self.registry.url, "artifact": area.what,
                               "staging": True}
        base = st.staging.base_version
        out["base_version"] = f"v{base}" if base is not None else None
        if node_id == ROOT:
            # `artfs diff` asks this before it reads the tree: files just closed are then in it.
            await self._settle(st)
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
            digest = session.digest if session.state == CLOSED else await _running(session)
        if digest:
            out["digest"] = digest
        if ref:
            out["ref"] = ref
        return out

    async def _settle(self, st: AreaState) -> None:
        """Wait (at most RELEASE_GRACE_S) for the release of files whose last writer closed
        them: the kernel sends it just after close() returned, so a command run right after
        a `cp` would otherwise not see the file published."""
        deadline = time.monotonic() + RELEASE_GRACE_S
        while any(h.flushed for h in st.writing) and time.monotonic() < deadline:
            await trio.sleep(WAIT_POLL_S / 10)

    async def control(self, area: StagingArea, request: dict[str, Any]) -> None:
        """Run a command sent by the CLI (commit, discard, empty); the reply is kept for
        `result(id)`. Errors are replies too, so the CLI can print the message."""
        try:
            op = request.get("op")
            if op == "cancel":  # answered at once: the commit it names is still running
                self._cancelled.add(str(request.get("target")))
                reply = {"ok": True, "message": "cancel requested"}
            elif self.owner is not None:
                raise ArtfsError(f"staging of {area.what} is served by mount pid {self.owner} "
                                 "on this machine; run the command on a path of that mount")
            elif op == "commit":
                reply = await self._commit(area, request)
            elif op in ("discard", "empty"):
                reply = await self._discard(area, empty=op == "empty")
            else:
                raise ArtfsError(f"unknown staging command {op!r}")
        except ArtfsError as e:
            reply = {"ok": False, "error": str(e), "cancelled": isinstance(e, Cancelled)}
        except Exception as e:  # noqa: BLE001 - the mount stays up; the CLI shows the cause
            log.exception("staging command %s on %s failed", request.get("op"), area.what)
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        self._cancelled.discard(str(request.get("id")))
        self._results[str(request.get("id"))] = reply
        while len(self._results) > KEPT_REPLIES:
            self._results.popitem(last=False)

    def result(self, request_id: str) -> dict[str, Any] | None:
        # Not popped: getxattr is asked again with a larger buffer when the first was too small.
        return self._results.get(request_id)

    def _unfinished(self, st: AreaState) -> list[tuple[FileHandle, OpenBytes]]:
        """Handles open for writing whose writes no one has finished yet."""
        return [(h, h.bytes) for h in st.writing
                if h.bytes is not None and h.bytes.state in (OPEN, FINISHING)]

    def _named(self, st: AreaState, busy: list[tuple[FileHandle, OpenBytes]]) -> str:
        paths = sorted({st.staging.path(h.node_id) or f"(removed file {h.node_id})"
                        for h, _ in busy})
        return ", ".join(paths[:NAMED_FILES]) + (" …" if len(paths) > NAMED_FILES else "")

    async def _writers_done(self, area: StagingArea, st: AreaState, wait: float) -> None:
        """Wait (up to `wait`, at least RELEASE_GRACE_S) until every file open for writing when
        the command began has been closed. Files opened afterwards are not waited for: a
        commit takes what they last published, so a stream of writers cannot starve it."""
        deadline = time.monotonic() + max(wait, RELEASE_GRACE_S)
        waiting = self._unfinished(st)
        if waiting:
            log.info("staging of %s: waiting up to %.1f s for %d file(s) open for writing: %s",
                     area.what, max(wait, RELEASE_GRACE_S), len(waiting),
                     self._named(st, waiting))
        while waiting := [(h, b) for h, b in waiting
                          if h in st.writing and h.bytes is b and b.state in (OPEN, FINISHING)]:
            if time.monotonic() >= deadline:
                raise staging.StagingError(
                    f"staging of {area.what} has {len(waiting)} file(s) open for writing: "
                    f"{self._named(st, waiting)}; close them first, or pass --wait SECONDS")
            await trio.sleep(WAIT_POLL_S)

    async def _commit(self, area: StagingArea, request: dict[str, Any]) -> dict[str, Any]:
        st = await self.state(area)
        await self._idle(st)
        st.command = trio.Event()
        try:
            await self._writers_done(area, st, float(request.get("wait") or 0))
            # From here on, sessions finished wait for the commit to end, and so does the
            # deletion of published bytes replaced or removed: the commit reads them.
            st.snapshotting = True
            st.staging.hold_deletes = []
            log.info("committing the staging folder of %s", area.what)
            done = await trio.to_thread.run_sync(self._commit_blocking, area, request,
                                                 limiter=self.limiter)
        finally:
            self._end_command(st)
        # Show the new version and the moved aliases now, not after the listing TTL.
        self.tree.forget_artifact(area.entity, area.project, area.name)
        folder = self.inodes.namespace((area.entity, area.project, area.name))
        for alias in [LATEST, *(request.get("aliases") or ())]:
            pyfuse3.invalidate_entry_async(folder, os.fsencode(alias), ignore_enoent=True)
        v = done.version
        log.info("%s", done.message)
        return {"ok": True, "created": done.created, "message": done.message,
                "version": v.qualified if v else None}

    def _end_command(self, st: AreaState) -> None:
        if st.snapshotting:
            st.snapshotting = False
            for session in st.deferred:
                if session.state == CLOSED:
                    try:
                        self._publish(st, session)
                    except (sqlite3.Error, OSError):
                        log.exception("publishing %s of %s after a commit failed",
                                      session.path, st.staging.what)
            st.deferred.clear()
            st.staging.held_deletions()
        assert st.command is not None
        st.command.set()
        st.command = None

    def _commit_blocking(self, area: StagingArea, request: dict[str, Any]) -> staging.Committed:
        # Its own connection: the trio thread keeps serving the area meanwhile.
        own = Staging(self.registry.url, area.entity, area.project, area.name)
        request_id = str(request.get("id"))
        try:
            run, inputs = commit_lineage(self.registry, request)
            with progress.track() as self._progress[request_id]:
                return staging.commit(
                    self.registry, own, aliases=request.get("aliases") or (),
                    type_=request.get("type"), description=request.get("description"),
                    metadata=request.get("metadata"), force=bool(request.get("force")),
                    before_commit=partial(self._unless_cancelled, request_id, area),
                    run=run, job_type=request.get("job_type") or "commit", inputs=inputs)
        finally:
            self._progress.pop(request_id, None)
            own.close()

    def progress_of(self, request_id: str) -> dict[str, int] | None:
        """Bytes a running commit has moved, and how many it will (`artfs commit`'s bar)."""
        tracker = self._progress.get(request_id)
        return tracker.state() if tracker is not None else None

    def _unless_cancelled(self, request_id: str, area: StagingArea) -> None:
        """Called just before the version is written: the last moment a commit can stop."""
        if request_id in self._cancelled:
            raise Cancelled(f"commit of {area.what} cancelled: nothing was committed and its "
                            "staging folder is unchanged")

    async def _discard(self, area: StagingArea, *, empty: bool) -> dict[str, Any]:
        """Replace the whole tree: only with no file open for writing, and changes wait."""
        st = await self.state(area)
        await self._idle(st)
        st.command = trio.Event()
        try:
            await self._writers_done(area, st, 0)
            if busy := [b for b in st.current.values() if b.writers]:
                raise staging.StagingError(
                    f"staging of {area.what} has {len(busy)} file(s) open for writing: "
                    + ", ".join(sorted(st.staging.path(b.node_id) for b in busy)[:NAMED_FILES]))
            names = [n.name for n in st.staging.children(ROOT, limit=1 << 30)]
            st.resetting = trio.Event()
            try:
                await self.blocking(self._discard_blocking, area, empty)
            finally:
                for session in list(st.current.values()):
                    session.state = DROPPED
                    self._forget(st, session)
                st.resetting.set()
                st.resetting = None
        finally:
            self._end_command(st)
        root = self.inode(area, ROOT)
        for name in names:  # the old nodes are gone: drop what the kernel remembers of them
            pyfuse3.invalidate_entry_async(root, os.fsencode(name), ignore_enoent=True)
        what = "emptied" if empty else "reset to the latest version"
        return {"ok": True, "message": f"staging of {area.what} {what}"}

    def _discard_blocking(self, area: StagingArea, empty: bool) -> None:
        own = Staging(self.registry.url, area.entity, area.project, area.name)
        try:
            staging.discard(self.registry, own, empty=empty)
        finally:
            own.close()


def _row(node: Node, path: str) -> Row:
    return Row(node.id, node.parent, node.name, path, False, node.size, node.digest, node.ref,
               node.extra, 0)
