"""Copies of a draft's files taken when they are added (W&B's `policy="mutable"`).

What is logged is what a file held at `add_file`, whatever it becomes afterwards, so its bytes
must be kept then; but a second copy of a 1 GiB file would double the disk it uses. So there
is one copy, and it is the one the registry ends up holding:

- on a registry that is a local directory, the kernel copies the file into the store's own
  temporary area (`Store.temp_path`): at log time it is renamed into the blob store;
- elsewhere it goes into a spool folder of this machine's cache, which eviction leaves alone
  until the upload is done; then it becomes an ordinary (evictable) cache entry.

The copy is hashed on a background thread, so `add_file` costs about what `cp` does; a digest
asked for before the log waits for that hash (it is computed once). A file whose stat matches
the hash table is not read at all when its blob is already at hand (the registry's, or the
cache's, linked). A copy whose entry is removed or replaced, or whose draft is dropped
unlogged, is deleted at once; one left by a crashed process is swept with the store's
temporary files or the cache's spools.
"""

from __future__ import annotations

import os
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import keys
from .blobs import Blobs, Source
from .errors import SourceError
from .hashing import SMALL_FILE, copy_and_hash, copy_file, hash_file, stat_key

#: Hashing is CPU-bound and the caller keeps copying meanwhile: two threads share the cores.
_HASHERS = ThreadPoolExecutor(2, thread_name_prefix="artfs-capture-hash")


def _done(digest: str) -> Future[str]:
    f: Future[str] = Future()
    f.set_result(digest)
    return f


@dataclass(eq=False)
class Copy:
    """The bytes of one entry as they were when added: a file of artfs's own."""

    #: The entry path in the draft.
    path: str
    #: The copy (ours to delete when `owned`), or a blob file already held (not ours).
    file: Path
    #: Stat key of the user's file when it was copied; its size is the entry's.
    expect: tuple[int, int, int, int]
    owned: bool
    _digest: Future[str] = field(repr=False)

    @property
    def size(self) -> int:
        return self.expect[0]

    @property
    def digest(self) -> str:
        """The SHA-256 of the bytes added, waiting for the background hash if still running."""
        return self._digest.result()


class Copies:
    """The copies one draft holds, in one registry's store or in this machine's cache."""

    def __init__(self, blobs: Blobs, entity: str) -> None:
        self.blobs, self.entity = blobs, entity
        #: Where copies wait on a local registry: its temporary area, the blob store's disk.
        self.in_store = blobs.store.temp_path() is not None
        self.spool: Path | None = None
        self._owned: set[Path] = set()
        self._lock = threading.Lock()

    # -- taking copies --------------------------------------------------------------------------
    def take(self, items: list[tuple[str, str, os.stat_result | None]]) -> list[Copy]:
        """A copy of each (entry path, file, stat) as the file is now.

        Raises SourceError naming a file that cannot be read, and removes the copies taken so
        far: nothing of a refused call stays behind.
        """
        stats: dict[str, os.stat_result] = {}
        for _, file, st in items:
            try:
                stats[file] = st if st is not None else os.stat(file)
            except OSError as e:
                raise SourceError(f"cannot read source {file}: {e.strerror}") from e
        known = self.blobs.hashes.lookup((f, stat_key(st)) for f, st in stats.items())
        if not self.in_store and self.spool is None:
            self.spool = self.blobs.cache.new_spool()
        taken: list[Copy] = []
        hashed: list[tuple[str, os.stat_result, str]] = []
        try:
            for path, file, _ in items:
                taken.append(self._take(path, file, stats[file], known.get(file), hashed))
        except BaseException:
            self.release(taken)
            raise
        finally:
            self.blobs.hashes.record(hashed)  # one write for them all, not one per file
        return taken

    def _take(self, path: str, file: str, st: os.stat_result, digest: str | None,
              hashed: list[tuple[str, os.stat_result, str]]) -> Copy:
        if digest is not None:
            held = self._held(digest)
            if held is not None:
                return Copy(path, held[0], stat_key(st), held[1], _done(digest))
        dest = self._new_file()
        try:
            if digest is not None:  # known by its stat: the kernel copies it, nothing hashes
                after = copy_file(file, dest)
                future = _done(digest)
            elif st.st_size <= SMALL_FILE:  # read once into memory: hashing it costs nothing
                found, after = copy_and_hash(file, dest)
                future = _done(found)
                hashed.append((file, after, found))
            else:
                after = copy_file(file, dest)
                future = _HASHERS.submit(self._hash, file, after, dest)
        except BaseException:
            self._forget(dest)
            raise
        return Copy(path, dest, stat_key(after), True, future)

    def _held(self, digest: str) -> tuple[Path, bool] | None:
        """A file already holding the blob, and whether it is ours: the registry's own, or a
        cached one linked into the spool (a hard link survives eviction and costs no copy)."""
        if self.in_store:
            # A hard link, not the blob itself: `artfs gc` may remove an unreferenced blob
            # before the log, and the link keeps its bytes.
            pinned = self.blobs.store.pin(keys.blob(self.entity, digest))
            if pinned is None:
                return None
            with self._lock:
                self._owned.add(pinned)
            return pinned, True
        dest = self._new_file()
        try:
            os.link(self.blobs.cache.path(digest), dest)
        except FileNotFoundError:
            self._forget(dest)
            return None
        return dest, True

    def _hash(self, file: str, st: os.stat_result, copy: Path) -> str:
        digest, _ = hash_file(copy)
        # The user's file, unchanged since, need not be read when it is added again.
        self.blobs.hashes.record([(file, st, digest)])
        return digest

    def _new_file(self) -> Path:
        if self.in_store:
            dest = self.blobs.store.temp_path()
            assert dest is not None
        else:
            assert self.spool is not None
            dest = self.spool / f".{uuid.uuid4().hex}"
        with self._lock:
            self._owned.add(dest)
        return dest

    def _forget(self, file: Path) -> None:
        with self._lock:
            self._owned.discard(file)
        file.unlink(missing_ok=True)

    # -- letting them go ------------------------------------------------------------------------
    def release(self, copies: list[Copy]) -> None:
        """Delete copies whose entries left the draft (removed, or replaced by another)."""
        for c in copies:
            if c.owned:
                self._forget(c.file)

    def close(self) -> None:
        """Delete every copy still held: the draft is gone, or its log no longer needs them."""
        with self._lock:
            left, self._owned = self._owned, set()
        for f in left:
            f.unlink(missing_ok=True)
        if self.spool is not None:
            self.blobs.cache.drop_spool(self.spool)

    def settle(self, copies: list[Copy], blobs: Blobs, entity: str) -> list[Source]:
        """The sources to log for `copies` into `blobs` under `entity` (at log time).

        Waits for their digests. Into the registry they were captured for, a copy becomes the
        blob itself (a rename into the blob store, or `spool/<digest>`, uploaded from there
        and then kept as cache by `BlobCache.adopt_spool`); into another one, the copies are
        read like any file and deleted by `close` afterwards.
        """
        sources: list[Source] = []
        home = blobs.url == self.blobs.url and entity == self.entity
        for c in copies:
            digest = c.digest
            file = c.file
            if home and c.owned and self.in_store:
                key = keys.blob(entity, digest)
                blob = blobs.store.local_path(key)
                assert blob is not None
                if not blob.exists():
                    blobs.put_blob_files(entity, [(digest, file)], move=True)
                    self._forget(file)
                    file = blob
                # else the copy stays the source until `close`: should a gc take the blob
                # before the commit, the log's retry stores it again from there.
            elif home and c.owned:
                assert self.spool is not None
                file = self.spool / digest
                os.replace(c.file, file)
                with self._lock:
                    self._owned.discard(c.file)
            sources.append(Source(c.path, file, stat_key(os.stat(file)), digest))
        return sources
