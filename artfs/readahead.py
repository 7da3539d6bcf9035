"""Read-ahead of large remote blobs, shared by the mount (`fs/reader.py`) and `artfs://`.

A blob too large to fetch whole before its first byte is served is fetched in `BLOCK`s, by
ranged GETs of at most `PART`. A reader that looks sequential gets a read-ahead window that
starts at `READ_AHEAD_MIN` and doubles with each further sequential read up to
`READ_AHEAD_MAX`. This module holds only that policy (which blocks to fetch next, how to group
them into requests, when a reader is sequential); the mount drives it with trio tasks,
`artfs/streamed.py` with threads. No trio here: `import artfs.fsspec_fs` must not need it.
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterable, Sequence
from pathlib import Path

MiB = 1024 * 1024
#: Remote blobs up to this size are fetched whole and verified before the first byte is
#: served: one GET of 64 MiB costs ~0.2-0.5 s on the test stores, a fair price for never serving
#: unverified bytes of the files most datasets consist of.
WHOLE_FETCH_MAX = 64 * MiB
#: Granularity of a partially fetched remote blob; one bit of state per block. A read outside
#: a sequential run fetches just its own blocks, so a random 4 KiB read costs one ranged GET of
#: 1 MiB and reading 1 MiB at the end of a 4 GiB blob about 1-2 MiB.
BLOCK = 1 * MiB
#: One ranged GET fetches at most this much: ~50 ms of transfer against a few ms of request
#: overhead. 16 MiB parts cost the store (SeaweedFS) ~15% less CPU than 8 MiB ones for the
#: same bytes, which on a shared 2-core machine was 0.3-0.6 s of 3.6 s per GiB.
PART = 16 * MiB
BLOCKS_PER_PART = PART // BLOCK
#: Read-ahead of a sequential reader starts at one block past its read and doubles with each
#: further sequential read up to the maximum, which keeps that many parallel GETs in flight
#: (8 x 16 MiB) and bounds what an abandoned reader costs.
READ_AHEAD_MIN = 1 * MiB
READ_AHEAD_MAX = 128 * MiB
#: A read this far behind the previous one still continues its sequential run: with several
#: read requests in flight the kernel's own read-ahead may deliver them slightly reordered.
SEQUENTIAL_SLACK = 4 * MiB


def blocks_of(size: int) -> int:
    """Blocks of a blob of `size` bytes (an empty one has one, empty)."""
    return max(1, -(-size // BLOCK))


def read_ahead_blocks(present: Sequence[int], pending: Container[int], blocks: int, end: int,
                      window: int, part: int = PART) -> list[int]:
    """The blocks to fetch for a sequential reader that has asked up to `end` so that about
    `window` bytes past it are present or on their way. Small windows top up once half is
    consumed; from one part up, each part consumed starts the next, so the parts in flight stay
    at window / part and a slow part does not drain the pipeline behind it."""
    b = -(-end // BLOCK)
    last = min(blocks, -(-(end + window) // BLOCK))
    while b < last and (present[b] or b in pending):
        b += 1
    room = window - (b * BLOCK - end)
    if b >= last or room < (part if window >= part else window // 2):
        return []
    if window >= part:  # whole parts: fewer, fuller requests
        last = min(blocks, b + room // part * (part // BLOCK))
    return [i for i in range(b, last) if not present[i] and i not in pending]


def part_runs(blocks: Iterable[int], part: int = PART) -> list[tuple[int, int]]:
    """Ascending `blocks` as (first, last) runs of consecutive blocks of at most `part` bytes:
    one ranged GET each."""
    runs: list[tuple[int, int]] = []
    first = prev = -1
    for b in blocks:
        if first >= 0 and (b != prev + 1 or (prev - first + 1) * BLOCK >= part):
            runs.append((first, prev))
            first = -1
        if first < 0:
            first = b
        prev = b
    if first >= 0:
        runs.append((first, prev))
    return runs


class Sequential:
    """Tells a sequential reader of one open file from a random one, and sizes its window."""

    def __init__(self, maximum: int = READ_AHEAD_MAX) -> None:
        self.maximum = maximum
        #: End of the furthest read so far.
        self.next_off = 0
        #: Read-ahead of the current sequential run; 0 while reads look random.
        self.window = 0

    def read(self, off: int, size: int) -> int:
        """Note a read of `size` bytes at `off`; returns the read-ahead window it gets (0: none).

        Sequential: from offset 0 (whole-file readers start there), or within reach of the
        previous read (the kernel's own read-ahead requests may arrive slightly reordered)."""
        if off == 0 or self.next_off - SEQUENTIAL_SLACK <= off <= self.next_off + self.window:
            self.window = min(max(2 * self.window, READ_AHEAD_MIN), self.maximum)
        else:
            self.window = 0
        self.next_off = max(self.next_off, off + size) if self.window else off + size
        return self.window


class BlockFile:
    """A blob's sparse file filled block by block, and what both of its fillers (the mount's
    `PartialBlob`, `artfs://`'s `StreamedBlob`) track about it; they add how fetches and the
    hash run (trio tasks or threads)."""

    def __init__(self, digest: str, size: int, file: Path) -> None:
        self.digest = digest
        self.size = size
        self.file = file
        self.fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, size)
        self.blocks = blocks_of(size)
        self.present = bytearray(self.blocks)
        self.missing = self.blocks
        #: Bytes [0, hashed) are in the running SHA-256; only the one hashing task moves it.
        self.hashed = 0
        self.hashing = False
        self.error: str | None = None
        self.verified = False
        self.users = 0
        #: Tasks that may still touch `fd`: the file is closed only once none does.
        self.busy = 0
        self.closed = False
