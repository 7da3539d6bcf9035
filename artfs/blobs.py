"""Writing blobs: how a version's bytes get into the registry, on top of `BlobReads`.

Writers come through `ingest_files`, `put_blob_files` and `put_blob`: small blobs go into packs
where a request is a round trip, and a blob hashed while it was copied in is remembered as
verified. Where a blob's bytes come from and what verifies them is `blob_reads.py`.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from . import keys, progress
from .blob_reads import BlobReads
from .errors import (
    DuplicateEntry,
    FileChangedError,
    IntegrityError,
    SourceError,
)
from .hashing import (
    hash_bytes,
    read_small,
    stat_key,
)
from .manifest import Entry, Manifest
from .packs import PACK_BLOB_MAX, PackBuilder, PackLoc

log = logging.getLogger(__name__)

#: Small files read per batch while packing: bounds the bytes held in memory at once.
PACK_BATCH = 256


@dataclass(frozen=True)
class Source:
    """A file to be stored under `path` in the next version.

    `expect` is the file's stat key when it was added: bytes that changed since then are not
    what the user added, so logging them would silently store something else.
    """

    path: str
    file: Path | str
    expect: tuple[int, int, int, int] | None = None
    #: Set for a file captured when it was added (`capture.Copies`): `file` is then artfs's own
    #: copy of the bytes (a registry blob or a cache spool file), whose SHA-256 is this.
    digest: str | None = None



def check_unique(what: str, sources: list[Source], references: list[Entry]) -> None:
    """Two things under one path would silently keep only one of them."""
    seen: dict[str, str] = {}
    for path, origin in [*((s.path, str(s.file)) for s in sources),
                         *((r.path, str(r.ref)) for r in references)]:
        if path in seen and seen[path] != origin:
            raise DuplicateEntry(
                f"artifact {what}: {path!r} is added twice, from {seen[path]} and from {origin}"
            )
        seen[path] = origin


def _check_unchanged(src: Source, st: os.stat_result) -> None:
    if src.digest is not None:
        # A captured copy is artfs's own; its ctime moves when a hard link to it goes away.
        return
    if src.expect is not None and stat_key(st) != src.expect:
        raise FileChangedError(
            f"source file {src.file} (entry {src.path}) changed after it was added"
        )




class Blobs(BlobReads):
    """The blobs of one registry's store: `BlobReads` plus ingest, packing and uploads."""

    # -- writing --------------------------------------------------------------------------------
    def has_blob(self, entity: str, digest: str) -> bool:
        loc = self._pack_loc(entity, digest)
        if loc is not None:
            return self.store.head(keys.pack(entity, loc.pack)) is not None
        return self.store.head(keys.blob(entity, digest)) is not None

    def _present_blobs(self, entity: str, digests: set[str]) -> set[str]:
        """Which of `digests` the registry holds: a stat each on a local store, parallel HEADs
        elsewhere (the hash table is per machine, not per registry, so it proves nothing)."""
        if self.workers == 1 or len(digests) <= 1:
            return {d for d in digests if self.has_blob(entity, d)}
        with ThreadPoolExecutor(self.workers) as pool:
            found = pool.map(lambda d: (d, self.has_blob(entity, d)), digests)
            return {d for d, ok in found if ok}

    def ingest_files(
        self,
        entity: str,
        sources: Iterable[Source],
        skip_present: Callable[[list[Entry]], bool] | None = None,
    ) -> dict[str, Entry]:
        """Digest every source and make sure its bytes are in the registry.

        Files whose stat matches the hash table are not read at all; on a local registry a file
        that must be read is hashed while it is copied into the blob store, so it is read once.
        When every digest is known and `skip_present(entries)` says those contents are already
        a committed version, their blobs are not even checked: that makes an unchanged re-log
        cost one stat per file. Captured sources (`Source.digest`) are never hashed again.
        """
        sources = list(sources)
        # The stat taken when a file was added is the snapshot that counts: a file that
        # changes later is caught when (and only if) its bytes must be read.
        stats: dict[str, tuple[int, int, int, int]] = {}
        captured: dict[str, str] = {}
        for s in sources:
            if s.digest is not None:
                assert s.expect is not None
                stats[str(s.file)] = s.expect
                captured[str(s.file)] = s.digest
            elif s.expect is not None:
                stats[str(s.file)] = s.expect
            else:
                try:
                    stats[str(s.file)] = stat_key(os.stat(s.file))
                except (FileNotFoundError, NotADirectoryError):
                    raise SourceError(f"source file {s.file} (entry {s.path}) vanished") from None
        known = self.hashes.lookup((f, k) for f, k in stats.items() if f not in captured)
        known.update(captured)
        if len(known) == len(stats) and skip_present is not None:
            quick = [Entry(s.path, stats[str(s.file)][0], known[str(s.file)]) for s in sources]
            if skip_present(quick):
                return {e.path: e for e in quick}
        # Blobs this machine saw in a pack need no request: the locations are forgotten when a
        # gc began since (Registry.lease), and a gc during this log is checked at commit.
        packed = {} if not self.packing else self.packs.lookup(
            self.url, entity, known.values())
        ask = set(known.values()) - set(packed)
        if self.packing:
            # A small captured blob is packed again rather than asked for: a HEAD costs what
            # its share of a pack upload does.
            ask -= {d for f, d in captured.items() if stats[f][0] <= PACK_BLOB_MAX}
        present = self._present_blobs(entity, ask)
        entries: list[Entry] = []
        todo: list[Source] = []
        for src in sources:
            digest = known.get(str(src.file))
            if digest is not None and digest in packed:
                entries.append(Entry(src.path, stats[str(src.file)][0], digest,
                                     pack=packed[digest]))
            elif digest is not None and digest in present:
                entries.append(Entry(src.path, stats[str(src.file)][0], digest))
            else:
                todo.append(src)

        fresh: list[tuple[str, os.stat_result, str]] = []
        small = [s for s in todo if stats[str(s.file)][0] <= PACK_BLOB_MAX]
        if self.packing and len(small) > 1:
            entries.extend(self._ingest_packed(entity, small, fresh))
            todo = [s for s in todo if stats[str(s.file)][0] > PACK_BLOB_MAX]

        def ingest(src: Source) -> Entry:
            if src.digest is not None:
                self.put_blob_files(entity, [(src.digest, Path(src.file))])
                return Entry(src.path, stats[str(src.file)][0], src.digest)
            digest, st = self._upload(entity, src.file)
            _check_unchanged(src, st)
            fresh.append((str(src.file), st, digest))
            return Entry(src.path, st.st_size, digest)

        if len(todo) <= 1 or self.workers == 1:
            entries.extend(ingest(s) for s in todo)
        else:
            with ThreadPoolExecutor(self.workers) as pool:
                entries.extend(pool.map(ingest, todo))
        self.hashes.record(fresh)
        return {e.path: e for e in entries}

    def _ingest_packed(self, entity: str, sources: list[Source],
                       fresh: list[tuple[str, os.stat_result, str]]) -> list[Entry]:
        """Read small files in parallel, in batches, packing them while later ones are read."""
        known: dict[str, PackLoc] = {}
        read: list[tuple[Source, str, int]] = []

        def load(src: Source) -> tuple[Source, bytes, str, os.stat_result]:
            small = read_small(src.file)
            if small is None:  # it was at most PACK_BLOB_MAX bytes when added
                raise FileChangedError(f"source file {src.file} (entry {src.path}) changed "
                                       "after it was added")
            data, digest, st = small
            if src.digest is not None and digest != src.digest:
                raise IntegrityError(f"the copy {src.file} of entry {src.path}, taken when it "
                                     f"was added, no longer hashes to {src.digest}")
            _check_unchanged(src, st)
            return src, data, digest, st

        def blobs() -> Iterator[tuple[str, bytes]]:
            with ThreadPoolExecutor(self.workers) as pool:
                for i in range(0, len(sources), PACK_BATCH):
                    batch = list(pool.map(load, sources[i : i + PACK_BATCH]))
                    known.update(self.packs.lookup(self.url, entity, (b[2] for b in batch)))
                    for src, data, digest, st in batch:
                        if src.digest is None:
                            fresh.append((str(src.file), st, digest))
                        read.append((src, digest, st.st_size))
                        if digest not in known:  # else already in a pack of this registry
                            yield digest, data

        locs = self._upload_packs(entity, blobs())
        locs.update(known)
        return [Entry(src.path, size, digest, pack=locs[digest]) for src, digest, size in read]

    def _upload_packs(self, entity: str, blobs: Iterable[tuple[str, bytes]]
                      ) -> dict[str, PackLoc]:
        """Upload (digest, bytes) pairs as packs, each as soon as it is full.

        At most `workers` packs wait for upload, so memory stays bounded whatever the count.
        """
        builder = PackBuilder()
        locs: dict[str, PackLoc] = {}
        pending: deque[Future[dict[str, PackLoc]]] = deque()

        def put(pack: tuple[str, bytes, dict[str, PackLoc]]) -> dict[str, PackLoc]:
            self.store.put(keys.pack(entity, pack[0]), pack[1])
            progress.add(len(pack[1]))
            return pack[2]

        with ThreadPoolExecutor(self.workers) as pool:
            for digest, data in blobs:
                full = builder.add(digest, data)
                if full is not None:
                    pending.append(pool.submit(put, full))
                while len(pending) > self.workers:
                    locs.update(pending.popleft().result())
            last = builder.flush()
            if last is not None:
                pending.append(pool.submit(put, last))
            for f in pending:
                locs.update(f.result())
        self.packs.record(self.url, entity, locs.items())
        return locs

    def _upload(self, entity: str, file: Path) -> tuple[str, os.stat_result]:
        """Hash `file` and store its bytes unless the registry has them; reads it once when it
        can: small files are held in memory, large ones copied while hashed on a local store."""
        small = read_small(file)
        if small is not None:
            data, digest, st = small
            self.store.put_content(keys.blob(entity, digest), data)
            progress.add(len(data))
            return digest, st
        digest, st = self.store.put_content_file(Path(file), lambda d: keys.blob(entity, d))
        blob = self.store.local_path(keys.blob(entity, digest))
        if blob is not None:
            # The copy was hashed as it was written: later downloads need not hash it again.
            self.hashes.record([(str(blob), os.stat(blob), digest)])
        return digest, st

    def put_blob_files(self, entity: str, files: Iterable[tuple[str, Path]], *,
                       move: bool = False) -> None:
        """Store each (digest, file) whose SHA-256 is already known, unless the registry has it.

        For staging, which hashes files while they are written: reading them again to hash
        would double the cost of a commit. With `move` on a local registry on the same
        filesystem a file is renamed into place (no copy), so it is gone afterwards.
        """
        verified: list[tuple[str, os.stat_result, str]] = []
        files = list(files)
        if self.packing:
            files = self._put_packed_files(entity, files)
        for digest, file in files:
            key = keys.blob(entity, digest)
            if self.store.head(key) is not None:
                continue
            self.store.adopt_file(key, Path(file), move=move)
            blob = self.store.local_path(key)
            if blob is not None:
                verified.append((str(blob), os.stat(blob), digest))
        # Hashed as written: the mount's first open need not hash these blobs again.
        self.hashes.record(verified)

    def _put_packed_files(self, entity: str, files: list[tuple[str, Path]]
                          ) -> list[tuple[str, Path]]:
        """Pack the small ones among (digest, file) pairs; returns the others.

        `commit` finds the locations in the pack index and writes them into the manifest.
        """
        sizes = {str(f): os.stat(f).st_size for _, f in files}
        small = [(d, f) for d, f in files if sizes[str(f)] <= PACK_BLOB_MAX]
        if len(small) <= 1:
            return files
        packed = self.packs.lookup(self.url, entity, (d for d, _ in small))
        self._upload_packs(entity, ((d, Path(f).read_bytes()) for d, f in small
                                    if d not in packed))
        return [(d, f) for d, f in files if sizes[str(f)] > PACK_BLOB_MAX]

    def remember_packs(self, entity: str, manifest: Manifest) -> None:
        """Note where the manifest says its packed blobs live (a live version's packs stay)."""
        self.packs.record(self.url, entity,
                          ((e.digest, e.pack) for e in manifest.values() if e.pack and e.digest),
                          replace=True)

    def locate_packed(self, entity: str, manifest: Manifest) -> Manifest:
        """`manifest` with the pack location of every blob this machine knows to be packed.

        Entries built from a staging tree or a digest-only listing do not carry locations; a
        stored manifest must, or readers on other machines would look for a blob object.
        """
        missing = [e for e in manifest.values() if e.digest and e.pack is None]
        if not self.packing or not missing:
            return manifest
        locs = self.packs.lookup(self.url, entity, (e.digest for e in missing if e.digest))
        if not locs:
            return manifest
        return Manifest(replace(e, pack=locs.get(e.digest or "", e.pack))
                        for e in manifest.values())

    def put_blob(self, entity: str, data: bytes) -> str:
        digest = hash_bytes(data)
        key = keys.blob(entity, digest)
        if self.store.head(key) is None:
            self.store.put(key, data)
        return digest
