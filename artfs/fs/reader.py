"""File reads: where the bytes of an open file come from, and how they are verified.

- Stored file, local registry: read in place from the registry's blob file (no second copy).
  Before the first byte is served the whole blob is hashed once; the result is kept in the
  shared hash table keyed by the blob file's stat, so reopening costs one `stat`. Local files
  are served from a memory mapping (`LocalHandle`).
- Stored file, remote registry: a verified whole blob in the shared cache when there is one.
  Otherwise blobs up to `WHOLE_FETCH_MAX` are fetched whole and verified before the first byte
  is served (a small packed one with the rest of its pack, which its neighbours then find in
  the cache); larger ones are fetched lazily in blocks (`PartialBlob`) with sequential prefetch
  and verified as a whole once every block has arrived (SEMANTICS.md says what that means).
- Reference: fetched whole through the reference's scheme into the shared cache, verified
  against the recorded SHA-256 when there is one.

Every blocking call (disk, network, hashing) runs on a worker thread under one
`trio.CapacityLimiter` (short local-disk calls through `Reader.quick`), so the FUSE request loop
is never blocked by a slow file.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import logging
import mmap
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio

from .. import refs
from ..blob_reads import Origin
from ..errors import ArtfsError
from ..manifest import Entry
from ..readahead import (  # noqa: F401 - PART, READ_AHEAD_MAX: named here by the tests
    BLOCK,
    PART,
    READ_AHEAD_MAX,
    WHOLE_FETCH_MAX,
    BlockFile,
    Sequential,
    blocks_of,
    part_runs,
    read_ahead_blocks,
)
from ..registry import Registry
from .tree import Row, TTLCache

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Niceness of the thread that hashes partially fetched blobs. Readers are served before the
#: hash is complete anyway (SEMANTICS.md), so on a busy machine fetching and serving go first
#: and the hash catches up after: 1 GiB from S3 on 2 cores shared with the store, ~0.7 s sooner.
HASH_NICENESS = 10
#: Kernel read requests are at most 1 MiB (256 pages); buffers of that size are reused.
BUFFER_SIZE = 1 * MiB
#: Short local-disk calls (`Reader.quick`) running at once outside the shared limiter; more
#: than this wait for the limiter like any blocking call.
QUICK_THREADS = 16
#: madvise(2): fault a range of a mapping in, reading from disk where needed (Linux 5.14).
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)

T = TypeVar("T")


class Unreadable(ArtfsError):
    """A file whose bytes cannot be served: missing, corrupt, changed or unreachable."""


class BufferPool:
    """Reused read buffers: a fresh 128 KiB-1 MiB `bytes` per request measurably costs more.

    A buffer goes back to the pool *before* the read handler returns its view. That is safe
    because pyfuse3 copies the reply into the kernel right after the handler returns, with no
    await in between, so no other trio task can take the buffer and start filling it first.
    """

    def __init__(self) -> None:
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        if size <= BUFFER_SIZE and self._free:
            return self._free.pop()
        return bytearray(max(size, BUFFER_SIZE))

    def give(self, buf: bytearray) -> None:
        if len(buf) == BUFFER_SIZE and len(self._free) < 64:
            self._free.append(buf)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)


class _PyBuffer(ctypes.Structure):
    """CPython's `Py_buffer` (stable ABI): ctypes gives addresses of writable buffers only."""

    _fields_ = (("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p))


def _address(buffer: mmap.mmap) -> int:
    view = _PyBuffer()
    ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(buffer), ctypes.byref(view), 0)
    ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))
    return view.buf or 0


def _populate(addr: int, length: int) -> None:
    """Make a mapped range resident, reading it from disk if needed. Through ctypes, which
    releases the GIL: `mmap.madvise` holds it, so a disk read there would stall the FUSE loop."""
    if _libc.madvise(addr, length, MADV_POPULATE_READ) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _lower_priority() -> None:
    """Give the calling thread (not the process) a higher niceness."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)
    except OSError as e:
        log.debug("cannot lower the hashing thread's priority: %s", e)


async def _wait_for(start: Callable[[Callable[[outcome.Outcome[T]], object]], object]) -> T:
    """`start(deliver)` hands work to another thread, which calls `deliver` with its outcome;
    the calling task sleeps until then, with no worker thread of its own blocked waiting.
    Cancellable only before the work is handed over."""
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[T]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    start(deliver)
    return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)


class Residency:
    """Asks mincore(2) whether a mapped range is all in the page cache (~2 us for 1 MiB), so a
    read of cached pages is answered at once, without a worker-thread hop to fault them in."""

    def __init__(self) -> None:
        self.vec = ctypes.create_string_buffer(BUFFER_SIZE // mmap.PAGESIZE + 1)

    def all_in(self, addr: int, length: int) -> bool:
        """`addr` is page-aligned; False for ranges longer than a read request."""
        pages = -(-length // mmap.PAGESIZE)
        if pages > len(self.vec) or _libc.mincore(addr, length, self.vec) != 0:
            return False
        return 0 not in self.vec.raw[:pages]


class Mapped:
    """A read-only shared mapping of a whole local file; None from `open` where the file is
    empty or cannot be mapped."""

    def __init__(self, fd: int, size: int) -> None:
        self.map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        self.size = size
        self.addr = _address(self.map)

    @classmethod
    def open(cls, fd: int) -> Mapped | None:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        try:
            return cls(fd, size)
        except (OSError, ValueError) as e:
            log.debug("cannot map fd %d (%s): reading with pread", fd, e)
            return None

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:
            pass  # a view is still alive somewhere: the mapping goes with the last of them


class Handle:
    """One open file."""

    def __init__(self, reader: Reader, where: str) -> None:
        self.reader = reader
        #: Names the artifact version, path and digest in every log line about this file.
        self.where = where

    async def read(self, off: int, size: int) -> memoryview | bytes:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class LocalHandle(Handle):
    """Reads from a local file already verified: a registry blob or a cached blob.

    The file is mapped; a read makes its pages resident on a worker thread, then returns a view
    of the mapping, so pyfuse3's reply copies straight from the page cache: one copy per byte
    instead of two through a buffer (1 GiB, page cache warm: ~0.45 instead of ~0.75 CPU-seconds
    in the mount, ~1.5x the throughput). The reply, on the trio thread, finds the pages mapped:
    reclaim keeps a page referenced microseconds before (only under extreme memory pressure
    could one go and be read back there). The views are for the reply only, where the kernel
    reads them: Python code reading one of a blob truncated meanwhile would die of SIGBUS.
    """

    def __init__(self, reader: Reader, where: str, fd: int, mapped: Mapped | None) -> None:
        super().__init__(reader, where)
        self.fd = fd
        self.mapped = mapped

    async def read(self, off: int, size: int) -> memoryview | bytes:
        m = self.mapped
        if m is None or not self.reader.can_populate:
            return await self.reader.pread(self.fd, off, size)
        end = min(off + size, m.size)
        if end <= off:
            return b""
        start = off - off % mmap.PAGESIZE
        if self.reader.residency.all_in(m.addr + start, end - start):
            return memoryview(m.map)[off:end]
        try:
            await self.reader.quick(_populate, m.addr + start, end - start)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            log.info("madvise(MADV_POPULATE_READ) unsupported (%s): reading with pread", e)
            self.reader.can_populate = False
            return await self.reader.pread(self.fd, off, size)
        return memoryview(m.map)[off:end]

    def close(self) -> None:
        if self.mapped is not None:
            self.mapped.close()
        os.close(self.fd)


class PartialBlob(BlockFile):
    """A large remote blob being fetched into a sparse file of this mount's work folder.

    Shared by every open handle of that blob in this mount. Bytes come from ranged GETs of at
    most `PART`, run in parallel on worker threads: a reader's own missing blocks, plus the
    read-ahead window of a sequential reader. A SHA-256 of the blob's contiguous prefix follows
    the blocks as they land (read back through a mapping of the file, on the low-priority
    hashing thread); once every block is present and hashed, the blob joins the shared cache
    only if the digest matches.
    """

    def __init__(self, reader: Reader, digest: str, size: int,
                 fetch_range: Callable[[int, int], bytes], file: Path) -> None:
        super().__init__(digest, size, file)
        self.reader = reader
        self.fetch_range = fetch_range
        #: Hashing and replies read the fetched bytes through this mapping, straight from the
        #: page cache the fetches wrote them into: two copies per byte fewer than `pread`.
        self.mapped = Mapped(self.fd, size)
        self.pending: dict[int, trio.Event] = {}
        #: SHA-256 of bytes [0, hashed).
        self.hasher = hashlib.sha256()

    # -- ranged fetches ----------------------------------------------------------------------
    def _start(self, blocks: list[int]) -> list[trio.Event]:
        """Start ranged fetches of `blocks` (ascending, not present, not pending)."""
        events: list[trio.Event] = []
        for first, last in part_runs(blocks):
            ev = trio.Event()
            for b in range(first, last + 1):
                self.pending[b] = ev
            self.busy += 1
            self.reader.nursery.start_soon(self._fetch, first, last, ev)
            events.append(ev)
        return events

    def _fetch_into_file(self, off: int, length: int) -> None:
        """On a worker thread: one ranged GET, written where it belongs in the file."""
        data = self.fetch_range(off, length)
        if len(data) != length:
            raise Unreadable(f"store returned {len(data)} bytes for a {length}-byte range "
                             f"at {off}")
        if self.closed:
            return
        view = memoryview(data)
        written = 0
        while written < length:
            written += os.pwrite(self.fd, view[written:], off + written)

    async def _fetch(self, first: int, last: int, done: trio.Event) -> None:
        off = first * BLOCK
        length = min((last + 1) * BLOCK, self.size) - off
        try:
            await self.reader.blocking(self._fetch_into_file, off, length)
            if not self.closed:
                for b in range(first, last + 1):
                    if not self.present[b]:
                        self.present[b] = 1
                        self.missing -= 1
        except Exception as e:  # noqa: BLE001 - any failure makes this file unreadable
            self.error = self.error or f"fetching bytes {off}-{off + length}: {e}"
        finally:
            for b in range(first, last + 1):
                self.pending.pop(b, None)
            done.set()
            self.busy -= 1
        self._hash_or_finish()  # not after a cancellation (unmount): it would start a task

    def read_ahead(self, end: int, window: int) -> None:
        """A sequential reader has asked up to `end`: keep about `window` bytes past it
        present or on their way (`read_ahead_blocks`)."""
        if self.closed or self.error:
            return
        self._start(read_ahead_blocks(self.present, self.pending, self.blocks, end, window))

    # -- hashing and completion --------------------------------------------------------------
    def _hash_or_finish(self) -> None:
        """Hash newly contiguous blocks if nobody is; close the file if nothing needs it."""
        if (not self.hashing and not self.error and not self.verified
                and self.hashed < self.size and self.present[self.hashed // BLOCK]
                and not (self.closed and self.missing)):
            self.hashing = True
            self.busy += 1
            self.reader.nursery.start_soon(self._hash_run)
        elif self.closed and self.busy == 0 and self.fd >= 0:
            self.mapped.close()
            os.close(self.fd)
            self.fd = -1
            if not self.verified:
                self.file.unlink(missing_ok=True)

    async def _hash_run(self) -> None:
        """Extend the prefix hash over present blocks; adopt the blob when it is complete."""
        try:
            while not (self.closed and self.missing):
                b = self.hashed // BLOCK
                while b < self.blocks and self.present[b]:
                    b += 1
                # A part per call: an unmount then waits for at most one part's hash.
                end = min(b * BLOCK, self.size, self.hashed + PART)
                if end <= self.hashed:
                    break
                await self.reader.in_background(self._hash_to, end)
            if self.hashed == self.size:
                await self.reader.in_background(self._verify_and_adopt)
                self.verified = True
        except Exception as e:  # noqa: BLE001 - reported to every reader of this blob
            self.error = f"blob does not match its digest once complete: {e}"
            log.error("blob %s: %s", self.digest, self.error)
        finally:
            self.hashing = False
            self.busy -= 1
        # Not in `finally`: after a cancellation (unmount) this would start the next hashing
        # task, which the cancellation ends at once, and so on forever.
        self._hash_or_finish()

    def _hash_to(self, end: int) -> None:
        with memoryview(self.mapped.map) as whole:
            self.hasher.update(whole[self.hashed:end])  # releases the GIL
        self.hashed = end

    def _verify_and_adopt(self) -> None:
        actual = self.hasher.hexdigest()
        if actual != self.digest:
            raise Unreadable(f"its bytes hash to {actual}")
        self.reader.registry.blobs.adopt_streamed(self.digest, self.file)

    # -- reading -----------------------------------------------------------------------------
    async def read(self, off: int, size: int) -> memoryview | bytes:
        end = min(off + size, self.size)
        if end <= off:
            if self.error:
                raise Unreadable(self.error)
            return b""
        while True:
            if self.error:
                raise Unreadable(self.error)
            events: list[trio.Event] = []
            fetch: list[int] = []
            for b in range(off // BLOCK, (end - 1) // BLOCK + 1):
                if self.present[b]:
                    continue
                ev = self.pending.get(b)
                if ev is not None:
                    events.append(ev)
                else:
                    fetch.append(b)
            if not events and not fetch:
                break
            events += self._start(fetch)
            for ev in dict.fromkeys(events):
                await ev.wait()
        return memoryview(self.mapped.map)[off:end]  # just written: in the page cache

    def close(self) -> None:
        """No reader is left: no more fetches; the file goes once no task touches it (or joins
        the cache, when every byte is already here and only the hash is left)."""
        self.closed = True
        self._hash_or_finish()


class BlockHandle(Handle):
    """An open large remote blob: detects a sequential reader and grows its read-ahead."""

    def __init__(self, reader: Reader, where: str, blob: PartialBlob) -> None:
        super().__init__(reader, where)
        self.blob = blob
        self.sequential = Sequential()

    @property
    def window(self) -> int:
        """Read-ahead of the current sequential run; 0 while reads look random."""
        return self.sequential.window

    async def read(self, off: int, size: int) -> memoryview | bytes:
        window = self.sequential.read(off, size)
        if window:
            self.blob.read_ahead(min(off + size, self.blob.size), window)
        return await self.blob.read(off, size)

    def close(self) -> None:
        self.reader.release_partial(self.blob)


class Reader:
    """Opens files of versions; owns the buffer pool and the partial blobs of this mount."""

    def __init__(self, registry: Registry, limiter: trio.CapacityLimiter, work_dir: Path) -> None:
        self.registry = registry
        self.limiter = limiter
        #: Partial blobs and unchecksummed references of this mount; removed at unmount.
        self.work_dir = work_dir
        self.pool = BufferPool()
        self.residency = Residency()
        self.nursery: trio.Nursery  # set by the mount once its nursery is open
        self._single = TTLCache(0.0)
        self._partials: dict[str, PartialBlob] = {}
        self._unchecked_refs: dict[str, Path] = {}
        self._quick = 0
        #: False once the kernel refused MADV_POPULATE_READ (before Linux 5.14): pread instead.
        self.can_populate = True
        self._hashing = ThreadPoolExecutor(1, "artfs-verify", initializer=_lower_priority)

    async def in_background(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work no reader waits for on the low-priority hashing thread. Not
        cancellable once started: callers keep each call short (one part's hash)."""

        def start(deliver: Callable[[outcome.Outcome[T]], object]) -> None:
            future = self._hashing.submit(fn, *args)
            future.add_done_callback(lambda f: deliver(outcome.capture(f.result)))

        return await _wait_for(start)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter,
                                             abandon_on_cancel=True)

    async def quick(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short local-disk call on trio's cached worker threads. Skipping the limiter
        and context copy of `trio.to_thread` saves ~50 us per call, a tenth of serving 1 MiB.
        Not cancellable: it is bounded by a local disk read."""
        if self._quick >= QUICK_THREADS:
            return await self.blocking(fn, *args)
        self._quick += 1
        try:
            return await _wait_for(
                lambda deliver: trio.lowlevel.start_thread_soon(functools.partial(fn, *args),
                                                                deliver))
        finally:
            self._quick -= 1

    async def pread(self, fd: int, off: int, size: int) -> memoryview | bytes:
        buf = self.pool.take(size)
        n = await self.quick(os.preadv, fd, [memoryview(buf)[:size]], off)
        self.pool.give(buf)  # safe: see BufferPool
        return memoryview(buf)[:n]

    async def open(self, entity: str, row: Row, where: str) -> Handle:
        """A handle serving `row`'s bytes; raises Unreadable (the mount turns it into EIO)."""
        try:
            if row.ref is not None:
                return await self._open_reference(row, where)
            assert row.digest is not None
            return await self._open_blob(entity, row.digest, row.size or 0, where)
        except Unreadable:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to get verified bytes is EIO
            raise Unreadable(str(e) or type(e).__name__) from e

    async def _open_local(self, path: Path, where: str) -> LocalHandle:
        def open_mapped() -> tuple[int, Mapped | None]:
            fd = os.open(path, os.O_RDONLY)
            try:
                return fd, Mapped.open(fd)
            except BaseException:
                os.close(fd)
                raise

        fd, mapped = await self.blocking(open_mapped)
        return LocalHandle(self, where, fd, mapped)

    async def _open_blob(self, entity: str, digest: str, size: int, where: str) -> Handle:
        blobs = self.registry.blobs
        loc = await self.blocking(blobs.locate, entity, digest, size, WHOLE_FETCH_MAX)
        if loc.origin is Origin.IN_PLACE:
            assert loc.path is not None
            in_place = loc.path
            await self._single.get(("hash", str(in_place)),
                                   lambda: self.blocking(blobs.check_in_place, in_place, digest))
            return await self._open_local(in_place, where)
        if loc.origin is Origin.CACHED:
            assert loc.path is not None
            try:
                return await self._open_local(loc.path, where)
            except FileNotFoundError:
                log.info("blob %s left the cache as it was opened (evicted by another "
                         "process): fetching it again", digest)
        if loc.origin is not Origin.STREAM:
            path = await self._single.get(
                ("blob", digest), lambda: self.blocking(blobs.fetch_with_pack, entity, digest))
            return await self._open_local(path, where)
        blob = self._partials.get(digest)
        if blob is None or blob.error:
            blob = PartialBlob(self, digest, size,
                               lambda off, n: blobs.read_range(loc.key, off, n),
                               # unique: a closed blob's fetch may still be finishing a write
                               self.work_dir / f"{digest}.{uuid.uuid4().hex[:8]}.partial")
            self._partials[digest] = blob
        blob.users += 1
        return BlockHandle(self, where, blob)

    def release_partial(self, blob: PartialBlob) -> None:
        blob.users -= 1
        if blob.users == 0:
            if self._partials.get(blob.digest) is blob:
                del self._partials[blob.digest]
            blob.close()

    async def _open_reference(self, row: Row, where: str) -> Handle:
        assert row.ref is not None
        entry = Entry.from_index(row.path, row.size, row.digest, row.ref, row.extra)
        if entry.digest is not None:
            digest = entry.digest
            path = await self._single.get(
                ("ref", digest),
                lambda: self.blocking(self.registry.cache.fill, digest,
                                      lambda tmp: refs.fetch(entry, tmp)))
            return await self._open_local(path, where)
        # Recorded with checksum=False: nothing to verify against, and not content-addressed,
        # so it is fetched once per mount into the mount's own folder.
        local = self._unchecked_refs.get(entry.ref or "")
        if local is None:
            dest = self.work_dir / hashlib.sha256(row.ref.encode()).hexdigest()

            def fetch() -> Path:
                tmp = dest.with_suffix(".tmp")
                refs.fetch(entry, tmp)
                os.rename(tmp, dest)
                return dest

            local = await self._single.get(("unchecked", row.ref), lambda: self.blocking(fetch))
            self._unchecked_refs[row.ref] = local
        return await self._open_local(local, where)
