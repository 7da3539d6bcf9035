"""The block path for large remote blobs: lazy ranged fetches, a growing read-ahead window for
sequential readers, whole-blob check."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trio

import sdk
from artfs.fs.reader import (
    BLOCK,
    PART,
    READ_AHEAD_MAX,
    BlockHandle,
    PartialBlob,
    Reader,
    Unreadable,
)
from artfs.fs.tree import Row
from artfs.registry import Registry

MiB = 1024 * 1024


def pattern(off: int, n: int) -> bytes:
    """Bytes of a virtual blob of any size, without storing it."""
    return (np.arange(off, off + n, dtype=np.uint64) % 251).astype(np.uint8).tobytes()


def pattern_digest(size: int) -> str:
    h = hashlib.sha256()
    for off in range(0, size, 8 * MiB):
        h.update(pattern(off, min(8 * MiB, size - off)))
    return h.hexdigest()


def run_reads(tmp_path: Path, size: int, digest: str,
              body: Callable[[BlockHandle], object],
              fetch: Callable[[int, int], bytes] = pattern,
              delay: float = 0.0) -> list[tuple[int, int]]:
    """Run `body(handle)` against a PartialBlob served by `fetch`; returns the ranged GETs made
    as (offset, length), so the sum of lengths is the bytes transferred."""
    fetched: list[tuple[int, int]] = []

    def counting_fetch(off: int, n: int) -> bytes:
        fetched.append((off, n))
        time.sleep(delay)
        return fetch(off, n)

    registry = Registry(str(tmp_path / "registry"), create=True)
    reader = Reader(registry, trio.CapacityLimiter(8), tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            blob = PartialBlob(reader, digest, size, counting_fetch, tmp_path / "p.partial")
            blob.users = 1
            reader._partials[digest] = blob
            handle = BlockHandle(reader, "test blob", blob)
            try:
                await body(handle)  # type: ignore[misc]
            finally:
                handle.close()

    trio.run(main)
    registry.close()
    return fetched


def test_reading_1_mib_at_the_end_of_a_4_gib_blob_fetches_a_few_mib(tmp_path: Path) -> None:
    size = 4 * 1024**3

    async def body(h: BlockHandle) -> None:
        data = await h.read(size - MiB, MiB)
        assert bytes(data) == pattern(size - MiB, MiB)

    fetched = run_reads(tmp_path, size, "0" * 64, body)
    assert sum(n for _, n in fetched) <= 3 * MiB


def test_random_reads_fetch_only_their_blocks(tmp_path: Path) -> None:
    size = 1024 * MiB
    offsets = [700 * MiB + 5, 3 * MiB, 512 * MiB - 10, 100 * MiB]

    async def body(h: BlockHandle) -> None:
        for off in offsets:
            assert bytes(await h.read(off, 4096)) == pattern(off, 4096)

    fetched = run_reads(tmp_path, size, "0" * 64, body)
    assert sum(n for _, n in fetched) <= 2 * len(offsets) * BLOCK


def test_sequential_read_fetches_each_byte_once_in_parts_and_verifies(tmp_path: Path) -> None:
    size = 96 * MiB + 123
    digest = pattern_digest(size)
    in_flight: list[int] = []

    async def body(h: BlockHandle) -> None:
        off = 0
        while off < size:
            chunk = await h.read(off, 128 * 1024)
            assert bytes(chunk) == pattern(off, len(chunk))
            off += len(chunk)
            in_flight.append(len(set(h.blob.pending.values())))
        while not h.blob.verified and h.blob.error is None:
            await trio.sleep(0.01)
        assert h.blob.verified

    fetched = run_reads(tmp_path, size, digest, body, delay=0.002)
    assert sum(n for _, n in fetched) == size  # each byte fetched once
    assert all(n <= PART for _, n in fetched)
    # The window grew from 1 MiB: most of the blob came in whole parts, several at once.
    assert sum(n for _, n in fetched if n == PART) >= size - 2 * READ_AHEAD_MAX
    assert max(in_flight) >= 4
    registry = Registry(str(tmp_path / "registry"), create=True)
    assert registry.cache.get(digest) is not None  # the complete blob joined the shared cache
    assert not list(tmp_path.glob("*.partial"))


def test_read_ahead_of_an_abandoned_reader_is_bounded_and_leaves_nothing(tmp_path: Path) -> None:
    size = 1024 * MiB
    digest = pattern_digest(4 * MiB)  # never reached: the reader stops early

    async def body(h: BlockHandle) -> None:
        for off in range(0, 4 * MiB, MiB):
            assert bytes(await h.read(off, MiB)) == pattern(off, MiB)
        # The reader stops; what was asked ahead arrives, and nothing starts another fetch.
        while h.blob.pending:
            await trio.sleep(0.01)

    fetched = run_reads(tmp_path, size, digest, body, delay=0.001)
    assert sum(n for _, n in fetched) <= 4 * MiB + READ_AHEAD_MAX + PART
    assert not list(tmp_path.glob("*.partial"))  # closing removed the partial file
    registry = Registry(str(tmp_path / "registry"), create=True)
    assert registry.cache.get(digest) is None
    assert not list((registry.cache.root / "tmp").iterdir())


def test_random_reads_never_read_ahead(tmp_path: Path) -> None:
    size = 1024 * MiB

    async def body(h: BlockHandle) -> None:
        # Not from offset 0: a read there counts as sequential at once (whole-file readers).
        for off in range(8 * MiB, 72 * MiB, 8 * MiB):
            await h.read(off, 128 * 1024)
        assert h.window == 0

    fetched = run_reads(tmp_path, size, "0" * 64, body)
    assert sum(n for _, n in fetched) == 8 * BLOCK


def test_a_reader_closing_after_the_last_byte_still_adds_the_blob_to_the_cache(
        tmp_path: Path) -> None:
    size = 80 * MiB
    digest = pattern_digest(size)

    async def body(h: BlockHandle) -> None:
        off = 0
        while off < size:
            off += len(await h.read(off, MiB))
        # Returns at once: the handle closes while the hash may still be catching up.

    run_reads(tmp_path, size, digest, body)
    registry = Registry(str(tmp_path / "registry"), create=True)
    assert registry.cache.get(digest) is not None
    assert not list(tmp_path.glob("*.partial"))


def test_a_blob_that_does_not_match_its_digest_becomes_unreadable(tmp_path: Path) -> None:
    size = 4 * MiB

    def corrupt(off: int, n: int) -> bytes:
        data = bytearray(pattern(off, n))
        data[0] ^= 0xFF
        return bytes(data)

    async def body(h: BlockHandle) -> None:
        await h.read(0, size)  # served as fetched; checked once complete
        while h.blob.error is None:
            await trio.sleep(0.01)
        with pytest.raises(Unreadable, match="does not match"):
            await h.read(0, 10)

    run_reads(tmp_path, size, pattern_digest(size), body, fetch=corrupt)


def test_a_cached_blob_evicted_between_lookup_and_open_is_fetched_again(
        tmp_path: Path, make_store_url: Callable[[str], str]) -> None:
    """Another process's eviction may unlink a blob right after `cache.get` found it."""
    data = b"evicted-between-get-and-open" * 1000
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    registry = Registry(make_store_url("s3"), cache_dir=tmp_path / "cache",
                        create=True)
    with sdk.init(job_type="t", project="p", entity="e", registry=registry) as run:
        art = sdk.Artifact("a", type="dataset")
        art.add_file(src)
        run.log_artifact(art)
    digest = hashlib.sha256(data).hexdigest()
    registry.blob_file("e", digest)  # in the cache now
    found = registry.cache.get

    def get_then_evict(d: str) -> Path | None:
        path = found(d)
        if path is not None:
            path.unlink()  # what a concurrent `BlobCache.evict` in another process does
        return path

    registry.cache.get = get_then_evict  # type: ignore[method-assign]
    reader = Reader(registry, trio.CapacityLimiter(8), tmp_path)
    row = Row(1, 0, "f.bin", "f.bin", False, len(data), digest, None, None, 0)

    async def main() -> bytes:
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            handle = await reader.open("e", row, "e/p/a:v0 f.bin")
            try:
                return bytes(await handle.read(0, len(data)))
            finally:
                handle.close()

    assert trio.run(main) == data
    registry.close()


@pytest.mark.timeout(60)
def test_unmount_cancelling_the_hash_of_a_complete_blob_ends_the_reader(tmp_path: Path) -> None:
    """Unmount cancels the reader's nursery while a complete blob is still being hashed: the
    cancelled hashing task must not start the next one (which the cancellation ends at once,
    and so on forever: a mount process that never exited, spinning, was seen). The timeout
    mark is the bound: a reader that spins never returns from `run_reads`."""
    size = 96 * MiB
    hashing = threading.Event()

    def slow_hash(end: int) -> None:
        hashing.set()
        time.sleep(2)  # one slow part after another that never gets anywhere

    async def body(h: BlockHandle) -> None:
        off = 0
        while off < size:
            off += len(await h.read(off, 8 * MiB))
        while not h.blob.verified:
            await trio.sleep(0.01)
        h.blob.users += 1  # as at unmount: the blob is never released
        # Hashing again from the start.
        h.blob.verified, h.blob.hashed = False, 0
        h.blob._hash_to = slow_hash  # type: ignore[method-assign]
        h.blob._hash_or_finish()
        while not hashing.is_set():
            await trio.sleep(0.01)
        assert h.blob.hashing
        h.reader.nursery.cancel_scope.cancel()

    run_reads(tmp_path, size, pattern_digest(size), body)
    assert hashing.is_set()
