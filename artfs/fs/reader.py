"""File reads: where the bytes of an open file come from, and how they are verified.

- Stored file, local registry: read in place from the registry's blob file (no second copy).
  Before the first byte is served the whole blob is hashed once; the result is kept in the
  shared hash table keyed by the blob file's stat, so reopening costs one `stat`.
- Stored file, remote registry: a verified whole blob in the shared cache when there is one.
  Otherwise blobs up to `WHOLE_FETCH_MAX` are fetched whole and verified before the first byte
  is served; larger ones are fetched lazily in blocks (`PartialBlob`) with sequential prefetch
  and verified as a whole once every block has arrived (SEMANTICS.md says what that means).
- Reference: fetched whole through the reference's scheme into the shared cache, verified
  against the recorded SHA-256 when there is one.

Every blocking call (disk, network, hashing) runs on a worker thread under one
`trio.CapacityLimiter`, so the FUSE request loop is never blocked by a slow file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from .. import refs
from ..errors import ArtfsError
from ..manifest import Entry
from ..registry import Registry
from .tree import Row, TTLCache

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Remote blobs up to this size are fetched whole and verified before the first byte is
#: served: one GET of 64 MiB costs ~0.2-0.5 s on the test stores, a fair price for never serving
#: unverified bytes of the files most datasets consist of.
WHOLE_FETCH_MAX = 64 * MiB
#: Granularity of a partially fetched remote blob; one bit of state per block.
BLOCK = 1 * MiB
#: Sequential prefetch starts at one block and doubles on every sequential read up to the cap:
#: a random reader pays for ~1 MiB, a streaming reader soon has 64 MiB in flight, enough to
#: hide the ~230 ms per-request latency measured on moto (FACTS.md).
PREFETCH_START = 1 * MiB
PREFETCH_MAX = 64 * MiB
#: One ranged GET fetches at most this much, so a large window becomes parallel requests.
PART = 8 * MiB
#: Kernel read requests are at most 1 MiB (256 pages); buffers of that size are reused.
BUFFER_SIZE = 1 * MiB

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
    """Reads from a local file already verified: a registry blob or a cached blob."""

    def __init__(self, reader: Reader, where: str, fd: int) -> None:
        super().__init__(reader, where)
        self.fd = fd

    async def read(self, off: int, size: int) -> memoryview | bytes:
        return await self.reader.pread(self.fd, off, size)

    def close(self) -> None:
        os.close(self.fd)


class PartialBlob:
    """A large remote blob being fetched block by block into a sparse file of the cache.

    Shared by every open handle of that blob in this mount. When the last block arrives the
    file is handed to the shared cache, which hashes it and keeps it only if it matches.
    """

    def __init__(self, reader: Reader, digest: str, size: int,
                 fetch_range: Callable[[int, int], bytes], file: Path) -> None:
        self.reader = reader
        self.digest = digest
        self.size = size
        self.fetch_range = fetch_range
        self.file = file
        self.fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, size)
        self.blocks = max(1, -(-size // BLOCK))
        self.present = bytearray(self.blocks)
        self.missing = self.blocks
        self.pending: dict[int, trio.Event] = {}
        self.error: str | None = None
        self.verified = False
        self.users = 0

    def _start(self, first: int, last: int) -> list[trio.Event]:
        """Start fetching the missing blocks in [first, last]; events to wait for all of them."""
        events: list[trio.Event] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                ev = trio.Event()
                for b in run:
                    self.pending[b] = ev
                self.reader.nursery.start_soon(self._fetch, run[0], run[-1], ev)
                events.append(ev)
                run.clear()

        for b in range(max(first, 0), min(last, self.blocks - 1) + 1):
            if self.present[b]:
                flush()
            elif b in self.pending:
                flush()
                if self.pending[b] not in events:
                    events.append(self.pending[b])
            else:
                run.append(b)
                if len(run) * BLOCK >= PART:
                    flush()
        flush()
        return events

    async def _fetch(self, first: int, last: int, done: trio.Event) -> None:
        off = first * BLOCK
        length = min((last + 1) * BLOCK, self.size) - off
        try:
            data = await self.reader.blocking(self.fetch_range, off, length)
            if len(data) != length:
                raise Unreadable(f"store returned {len(data)} bytes for a {length}-byte range "
                                 f"at {off}")
            await self.reader.blocking(os.pwrite, self.fd, data, off)
            for b in range(first, last + 1):
                self.present[b] = 1
            self.missing -= last - first + 1
        except Exception as e:  # noqa: BLE001 - any failure makes this file unreadable
            self.error = self.error or f"fetching bytes {off}-{off + length}: {e}"
        finally:
            for b in range(first, last + 1):
                self.pending.pop(b, None)
            done.set()
        if self.missing == 0 and self.error is None:
            await self._adopt()

    async def _adopt(self) -> None:
        """Give the complete file to the shared cache, which verifies it against the digest."""

        def move(tmp: Path) -> None:
            os.rename(self.file, tmp)

        try:
            await self.reader.blocking(self.reader.registry.cache.fill, self.digest, move)
            self.verified = True
        except Exception as e:  # noqa: BLE001 - reported to every reader of this blob
            self.error = f"blob does not match its digest once complete: {e}"
            log.error("blob %s: %s", self.digest, self.error)

    def prefetch(self, first: int, last: int) -> None:
        self._start(first, last)

    async def read(self, off: int, size: int) -> memoryview | bytes:
        if self.error:
            raise Unreadable(self.error)
        end = min(off + size, self.size)
        if end <= off:
            return b""
        for ev in self._start(off // BLOCK, (end - 1) // BLOCK):
            await ev.wait()
        if self.error:
            raise Unreadable(self.error)
        return await self.reader.pread(self.fd, off, end - off)

    def close(self) -> None:
        os.close(self.fd)
        if not self.verified:
            self.file.unlink(missing_ok=True)


class BlockHandle(Handle):
    """An open large remote blob: detects sequential reads and widens the prefetch window."""

    def __init__(self, reader: Reader, where: str, blob: PartialBlob) -> None:
        super().__init__(reader, where)
        self.blob = blob
        self.next_off = 0
        self.window = PREFETCH_START

    async def read(self, off: int, size: int) -> memoryview | bytes:
        if off == self.next_off:
            self.window = min(self.window * 2, PREFETCH_MAX)
            end = off + size
            self.blob.prefetch(end // BLOCK, (end + self.window - 1) // BLOCK)
        else:
            self.window = PREFETCH_START
        self.next_off = off + size
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
        self.nursery: trio.Nursery  # set by the mount once its nursery is open
        self._single = TTLCache(0.0)
        self._partials: dict[str, PartialBlob] = {}
        self._unchecked_refs: dict[str, Path] = {}

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter,
                                             abandon_on_cancel=True)

    async def pread(self, fd: int, off: int, size: int) -> memoryview | bytes:
        buf = self.pool.take(size)
        n = await self.blocking(os.preadv, fd, [memoryview(buf)[:size]], off)
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
        fd = await self.blocking(os.open, path, os.O_RDONLY)
        return LocalHandle(self, where, fd)

    async def _open_blob(self, entity: str, digest: str, size: int, where: str) -> Handle:
        key = Registry.blob_key(entity, digest)
        in_place = self.registry.store.local_path(key)
        if in_place is not None:
            if not in_place.exists():
                raise Unreadable(f"blob is missing from registry {self.registry.url}")
            actual = await self._single.get(
                ("hash", str(in_place)), lambda: self.blocking(self.registry.hashes.hash,
                                                               in_place))
            if actual != digest:
                raise Unreadable(f"blob file {in_place} is corrupt: its bytes hash to {actual}")
            return await self._open_local(in_place, where)
        cached = await self.blocking(self.registry.cache.get, digest)
        if cached is not None:
            return await self._open_local(cached, where)
        if size <= WHOLE_FETCH_MAX:
            path = await self._single.get(
                ("blob", digest), lambda: self.blocking(self.registry.blob_file, entity, digest))
            return await self._open_local(path, where)
        blob = self._partials.get(digest)
        if blob is None or blob.error:
            store = self.registry.store
            blob = PartialBlob(self, digest, size,
                               lambda off, n: store.get_range(key, off, n),
                               self.work_dir / f"{digest}.partial")
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
        entry = Entry(row.path, row.size, row.digest, row.ref,
                      json.loads(row.extra) if row.extra else {})
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
