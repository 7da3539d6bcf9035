"""Reading blobs: where a blob's bytes come from and what verifies them before a user sees them.

`BlobReads.locate` is the one decision SEMANTICS.md's *Verification* section asks for, used by
the mount, `download()` and `artfs get`; the fetches below fill the shared cache verified.
`Blobs` (blobs.py) adds the writing side on top of this.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from . import keys
from .cache import BlobCache
from .errors import IntegrityError, KeyNotFound, StoreError
from .hashing import SMALL_FILE, HashCache, copy_and_hash, copy_file, hash_bytes, stat_key
from .manifest import Entry
from .packs import PackIndex, PackLoc, split
from .store import Store

log = logging.getLogger(__name__)


class Origin(Enum):
    """Where the bytes of a blob come from, and what a reader must do before serving them."""

    #: The registry's own file on this machine (a local store): hashed once before the first
    #: byte is served, the result remembered by the file's stat (`check_in_place`).
    IN_PLACE = "in place"
    #: A whole blob in the shared cache: verified when it was filled.
    CACHED = "cached"
    #: Fetched whole (the object, or its range of a pack) into the cache and verified there
    #: before any byte is served (`fetch_whole`).
    WHOLE = "whole"
    #: Too large to wait for: fetched in ranges (`read_range`, `fetch_direct`), its SHA-256
    #: following the bytes as they land; the caller owns that check.
    STREAM = "stream"


@dataclass(frozen=True)
class Location:
    origin: Origin
    #: The blob's object key (for `read_range`); the file for IN_PLACE and CACHED.
    key: str
    path: Path | None = None


class BlobReads:
    """The reading side of one registry's blobs, with this machine's cache, hash table and
    pack index."""

    def __init__(self, store: Store, cache: BlobCache, hashes: HashCache,
                 packs: PackIndex) -> None:
        self.store = store
        self.url = store.url
        self.cache = cache
        self.hashes = hashes
        self.packs = packs
        #: Threads for moving many files: network latency wants many, a local disk one.
        self.workers = store.transfer_workers
        #: Whether small blobs go into packs (where each request is a round trip).
        self.packing = store.small_objects_costly
        #: One lock per pack being read by `fetch_with_pack`: its other readers wait for that
        #: one read instead of each fetching the pack again.
        self._pack_locks: dict[str, threading.Lock] = {}
        self._pack_locks_lock = threading.Lock()

    def _pack_loc(self, entity: str, digest: str) -> PackLoc | None:
        if not self.packing:
            return None
        return self.packs.lookup(self.url, entity, [digest]).get(digest)

    # -- the one decision -----------------------------------------------------------------------
    def locate(self, entity: str, digest: str, size: int, stream_above: int) -> Location:
        """Where the blob's bytes are, and so how they are verified (see `Origin`).

        `stream_above` is the size from which the caller would rather stream a remote blob
        than wait for a whole verified copy: the mount's `WHOLE_FETCH_MAX`, or `SMALL_FILE` for
        a download, whose own copy is the one that counts.
        """
        key = keys.blob(entity, digest)
        in_place = self.store.local_path(key)
        if in_place is not None:
            return Location(Origin.IN_PLACE, key, in_place)
        cached = self.cache.get(digest)
        if cached is not None:
            return Location(Origin.CACHED, key, cached)
        if size <= stream_above or self._pack_loc(entity, digest) is not None:
            return Location(Origin.WHOLE, key)
        return Location(Origin.STREAM, key)

    def check_in_place(self, path: Path, digest: str) -> None:
        """Raise IntegrityError unless the registry's own file hashes to `digest`."""
        if not path.exists():
            raise IntegrityError(f"blob {digest} is missing from registry {self.url}")
        actual = self.hashes.hash(path)
        if actual != digest:
            raise IntegrityError(f"blob file {path} is corrupt: its bytes hash to {actual}")

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Unverified bytes of a STREAM blob; the caller hashes them as they land."""
        return self.store.get_range(key, offset, length)

    def adopt_streamed(self, digest: str, file: Path) -> Path:
        """A STREAM blob whose every byte the caller hashed to `digest` joins the cache."""
        return self.cache.adopt_hashed(digest, file)

    # -- fetching into the cache or a download ---------------------------------------------
    def blob_file(self, entity: str, digest: str, what: str = "") -> Path:
        """A local file holding the blob: the registry's own file (IN_PLACE: whoever reads it
        checks it), or a verified cache copy.

        `what` (e.g. "entry x of e/p/n:v1") goes into error messages.
        """
        path = self.store.local_path(keys.blob(entity, digest))
        if path is not None:
            if not path.exists():
                where = f" ({what})" if what else ""
                raise IntegrityError(f"blob {digest}{where} is missing from registry {self.url}")
            return path
        return self.fetch_whole(entity, digest, what)

    def fetch_whole(self, entity: str, digest: str, what: str = "") -> Path:
        """The blob in the cache, verified: fetched whole (or its range of a pack) if absent."""
        where = f" ({what})" if what else ""
        loc = self._pack_loc(entity, digest)
        if loc is None:
            missing = f"blob {digest}"
            key = keys.blob(entity, digest)

            def fetch(tmp: Path) -> str:
                return self.store.get_file_hashed(key, tmp)
        else:
            missing = f"pack {loc.pack} holding blob {digest}"
            key = keys.pack(entity, loc.pack)

            def fetch(tmp: Path) -> str:
                data = self.store.get_range(key, loc.offset, loc.size)
                tmp.write_bytes(data)
                return hash_bytes(data)
        try:
            path = self.cache.fill_hashed(digest, fetch)
        except KeyNotFound:
            raise IntegrityError(f"{missing}{where} is missing from registry {self.url}") from None
        except IntegrityError as e:
            raise IntegrityError(f"{e}{where}; registry {self.url} holds corrupt bytes") from e
        st = os.stat(path)
        if st.st_size > SMALL_FILE:
            # Verified as it arrived: copies out of the cache (download()) need not hash it.
            self.hashes.record([(str(path), st, digest)])
        return path

    def copy_to(self, entity: str, digest: str, size: int, dest: Path, what: str, *,
                stream_above: int = SMALL_FILE) -> None:
        """Write the blob's bytes to `dest` (a download), verified before the call returns."""
        loc = self.locate(entity, digest, size, stream_above)
        if loc.origin is Origin.STREAM:
            self.fetch_direct(loc, digest, dest, what)
            return
        src = loc.path if loc.origin is Origin.CACHED else self.blob_file(entity, digest, what)
        big = size > SMALL_FILE
        if big:
            # A large blob whose (size, mtime, inode, ctime) are unchanged since it was
            # verified is copied by the kernel alone: any write to it, even one that restores
            # its mtime, changes its ctime. That halves a 1 GiB download from a local registry.
            st = os.stat(src)
            if self.hashes.lookup([(str(src), stat_key(st))]).get(str(src)) == digest:
                copy_file(src, dest)
                return
        actual, st = copy_and_hash(src, dest)
        if actual != digest:
            raise IntegrityError(f"blob {digest} ({what}) is corrupt in registry {self.url}: "
                                 f"its bytes hash to {actual}")
        if big:
            self.hashes.record([(str(src), st, digest)])

    def fetch_direct(self, location: Location, digest: str, dest: Path, what: str) -> None:
        """Download a STREAM blob straight into `dest`, verified as it arrives.

        For download() of large files: the user's copy is what was asked for, and going
        through the cache would cost a second full write of the file.
        """
        try:
            actual = self.store.get_file_hashed(location.key, dest)
        except KeyNotFound:
            raise IntegrityError(
                f"blob {digest} ({what}) is missing from registry {self.url}") from None
        if actual != digest:
            raise IntegrityError(f"blob {digest} ({what}) is corrupt in registry {self.url}: "
                                 f"its bytes hash to {actual}")

    def _fill_from_pack(self, entity: str, pack: str, locs: dict[str, PackLoc]) -> None:
        """Cache the blobs `locs` of one pack with one ranged read spanning them all. A failed
        read or a blob that does not match is left out: its own fetch reports it."""
        start = min(loc.offset for loc in locs.values())
        end = max(loc.offset + loc.size for loc in locs.values())
        try:
            data = self.store.get_range(keys.pack(entity, pack), start, end - start)
        except StoreError as e:
            log.warning("reading pack %s of registry %s failed: %s", pack, self.url, e)
            return
        self.cache.add_verified(
            split(data, start, ((d, loc.offset, loc.size) for d, loc in locs.items())))

    def fetch_with_pack(self, entity: str, digest: str, what: str = "") -> Path:
        """`fetch_whole`, except that a packed blob brings the rest of its pack into the cache
        with it: the mount cannot know which files will be read next, but the small files of a
        version sit together in a few packs, so a pass over them costs a request per pack
        instead of one per file (10,000 x 4 KiB from S3: see bench_mount_remote)."""
        loc = self._pack_loc(entity, digest)
        if loc is not None:
            with self._pack_locks_lock:
                lock = self._pack_locks.setdefault(loc.pack, threading.Lock())
            with lock:  # a reader of the same pack waits here, then finds its blob cached
                if self.cache.get(digest) is None:
                    members = {d: m for d, m in
                               self.packs.members(self.url, entity, loc.pack).items()
                               if not self.cache.path(d).exists()}
                    self._fill_from_pack(entity, loc.pack, {**members, digest: loc})
            cached = self.cache.get(digest)
            if cached is not None:
                return cached
        return self.fetch_whole(entity, digest, what)

    def prefetch_packed(self, entity: str, entries: Iterable[Entry]) -> None:
        """Bring the packed blobs among `entries` into the cache with one request per pack.

        A read that fails here is not reported: each blob's own fetch (`blob_file`) then
        tries again and names the entry in its error.
        """
        by_pack: dict[str, dict[str, PackLoc]] = {}
        for e in entries:
            if e.pack and e.digest and not self.cache.path(e.digest).exists():
                by_pack.setdefault(e.pack.pack, {})[e.digest] = e.pack

        def fetch(item: tuple[str, dict[str, PackLoc]]) -> None:
            self._fill_from_pack(entity, *item)

        if len(by_pack) <= 1:
            for item in by_pack.items():
                fetch(item)
            return
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(fetch, by_pack.items()))
