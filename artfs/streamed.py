"""A large remote blob read in ranges by ordinary threads: `artfs://`'s twin of the mount's
`PartialBlob` (fs/reader.py), with the same read-ahead policy (`readahead.py`).

Bytes land in a sparse file of this process's work folder as ranged GETs return them and are
served from there; a SHA-256 follows the contiguous prefix of present blocks on a hashing
thread, and once every block is present and hashed the file joins the shared blob cache only
if the digest matches. Unlike the mount, a read that reaches the blob's end once every block is
present waits for that hash, so a reader that went through the whole file learns of corrupt
bytes from that last read, not later (SEMANTICS.md, *Paths without a mount*).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import IntegrityError
from .readahead import BLOCK, PART, BlockFile, part_runs, read_ahead_blocks


class StreamedBlob(BlockFile):
    """One large remote blob being fetched into `file`; shared by every open file of it.

    `fetch_range(offset, length)` returns unverified bytes (`Blobs.read_range`); `adopt(file)`
    moves the verified file into the cache (`Blobs.adopt_streamed`). Fetches run on `pool`,
    hashing on `hasher` (one thread), so a reader never does either itself.
    """

    def __init__(self, digest: str, size: int, fetch_range: Callable[[int, int], bytes],
                 adopt: Callable[[Path], object], file: Path, pool: ThreadPoolExecutor,
                 hasher: ThreadPoolExecutor, part: int = PART) -> None:
        super().__init__(digest, size, file)
        self.fetch_range = fetch_range
        self.adopt = adopt
        self.pool = pool
        self.hasher_pool = hasher
        self.part = part
        self.map = mmap.mmap(self.fd, size, prot=mmap.PROT_READ) if size else None
        if not size:
            self.missing = 0
        #: Blocks whose GET is running.
        self.pending: set[int] = set()
        self.cond = threading.Condition()
        #: SHA-256 of bytes [0, hashed).
        self.sha = hashlib.sha256()
        if size == 0:
            self.present[0] = 1
            self._kick()

    # -- fetching --------------------------------------------------------------------------------
    def _start(self, blocks: list[int]) -> None:
        """Under `cond`: start ranged GETs of `blocks` (ascending, absent, not pending)."""
        for first, last in part_runs(blocks, self.part):
            self.pending.update(range(first, last + 1))
            self.busy += 1
            self.pool.submit(self._fetch, first, last)

    def _fetch(self, first: int, last: int) -> None:
        off = first * BLOCK
        length = min((last + 1) * BLOCK, self.size) - off
        failed = None
        try:
            data = self.fetch_range(off, length)
            if len(data) != length:
                raise IntegrityError(f"store returned {len(data)} bytes for a {length}-byte "
                                     f"range at {off}")
            view = memoryview(data)
            written = 0
            while written < length and not self.closed:
                written += os.pwrite(self.fd, view[written:], off + written)
        except Exception as e:  # noqa: BLE001 - any failure makes this blob unreadable
            failed = f"fetching bytes {off}-{off + length}: {e}"
        with self.cond:
            self.pending.difference_update(range(first, last + 1))
            if failed:
                self.error = self.error or failed
            elif not self.closed:
                for b in range(first, last + 1):
                    if not self.present[b]:
                        self.present[b] = 1
                        self.missing -= 1
            self.busy -= 1
            self._kick()
            self.cond.notify_all()

    def read_ahead(self, end: int, window: int) -> None:
        with self.cond:
            if not (self.closed or self.error):
                self._start(read_ahead_blocks(self.present, self.pending, self.blocks, end,
                                              window, self.part))

    # -- hashing ---------------------------------------------------------------------------------
    def _kick(self) -> None:
        """Under `cond`: hash newly contiguous blocks if nobody is; close the file once nothing
        needs it."""
        if (not self.hashing and not self.error and not self.verified
                and self.hashed < self.size and self.present[self.hashed // BLOCK]
                and not (self.closed and self.missing)):
            self.hashing = True
            self.busy += 1
            self.hasher_pool.submit(self._hash_run)
        elif self.closed and self.busy == 0 and self.fd >= 0:
            if self.map is not None:
                self.map.close()
            os.close(self.fd)
            self.fd = -1
            if not self.verified:
                self.file.unlink(missing_ok=True)

    def _hash_run(self) -> None:
        failed = None
        try:
            while True:
                with self.cond:
                    if self.closed and self.missing:
                        break
                    b = self.hashed // BLOCK
                    while b < self.blocks and self.present[b]:
                        b += 1
                    end = min(b * BLOCK, self.size, self.hashed + self.part)
                if end <= self.hashed:
                    break
                assert self.map is not None
                with memoryview(self.map) as whole:
                    self.sha.update(whole[self.hashed:end])  # releases the GIL
                self.hashed = end
            if self.hashed == self.size and not self.verified:
                actual = self.sha.hexdigest()
                if actual != self.digest:
                    failed = f"its bytes hash to {actual}, not to blob {self.digest}"
                else:
                    self.adopt(self.file)
                    self.verified = True
        except Exception as e:  # noqa: BLE001 - reported to every reader of this blob
            failed = f"checking blob {self.digest}: {e}"
        with self.cond:
            if failed:
                self.error = self.error or failed
            self.hashing = False
            self.busy -= 1
            self._kick()
            self.cond.notify_all()

    # -- reading ---------------------------------------------------------------------------------
    def read(self, off: int, size: int) -> bytes:
        """Bytes [off, off + size) as the store returned them. A read that reaches the end of
        the blob once every block is present returns only after the whole blob hashed to its
        digest. Raises IntegrityError (without a path: the caller adds it) on any failure."""
        end = min(off + size, self.size)
        with self.cond:
            while True:
                if self.error:
                    raise IntegrityError(self.error)
                if end <= off:
                    return b""
                need = range(off // BLOCK, (end - 1) // BLOCK + 1)
                fetch = [b for b in need if not self.present[b] and b not in self.pending]
                self._start(fetch)
                if all(self.present[b] for b in need):
                    break
                self.cond.wait()
            if end == self.size and self.missing == 0:
                while not (self.verified or self.error):
                    self.cond.wait()
                if self.error:
                    raise IntegrityError(self.error)
        assert self.map is not None
        return self.map[off:end]

    def close(self) -> None:
        """No open file is left: no more fetches; the file goes once no task touches it, or
        joins the cache when every byte is here and only the hash is left."""
        with self.cond:
            self.closed = True
            self._kick()
