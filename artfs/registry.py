"""A registry at one location: the facade the SDK, the CLI and the mount use.

It composes one part per job, each on top of the same `Store`: `blobs.py` (file bytes: in,
out, verified), `catalog.py` (artifacts, versions, aliases), `commits.py` (the commit protocol
that takes version numbers without a server), `lineage.py` (runs). The keys all of them use are
laid out in `keys.py`, the records in `records.py`. `log_version` is the one path from local
files to a version.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import config, keys
from .blobs import Blobs, Source, check_unique
from .cache import LocalCache
from .catalog import Catalog
from .commits import Committer
from .deletion import Deleter
from .errors import (
    ArtifactNotFound,
    CollectedUnderCommit,
    CorruptRecord,
    KeyNotFound,
    NotARegistry,
    RegistryMissing,
    RegistryTooNew,
)
from .hashing import HashCache
from .lease import Lease
from .lineage import Lineage
from .manifest import Entry, Manifest
from .names import LATEST, ArtifactRef, check_alias, check_name
from .packs import PackIndex
from .records import (
    CommitResult,
    RunRecord,
    Version,
    check_metadata,
    decode,
    encode,
    now_iso,
)
from .retention import Retention
from .store import Store, open_store
from .store.base import TRANSFER_WORKERS

__all__ = [
    "TRANSFER_WORKERS", "CommitResult", "Registry", "RunRecord", "Source", "Version",
    "check_metadata", "check_unique", "init_registry", "now_iso",
]

#: Logs retried after a gc removed blobs they reused (each retry uploads those again).
COLLECTED_RETRIES = 3

MARKER_KEY = keys.MARKER
MARKER = {"format": "artfs-registry", "version": 1}


def init_registry(url: str | None) -> tuple[str, bool]:
    """Make `url` a registry on purpose (`artfs init`): its URL, and whether it is new."""
    try:
        reg, created = Registry(url, create=False), False
    except RegistryMissing:
        reg, created = Registry(url, create=True), True
    reg.close()
    return reg.url, created


class Registry:
    """The registry at one location, with this machine's cache of its blobs."""

    def __init__(
        self,
        url: str | None = None,
        *,
        cache_dir: Path | None = None,
        cache_size: int | None = None,
        create: bool | None = None,
        store: Store | None = None,
    ) -> None:
        """Open the registry at `url`; `store` supplies an already-open store for it instead.

        A location without a registry is refused unless `create` says otherwise: by default
        only the embedded one is created on first use, so a mistyped URL never makes a new
        registry (`artfs init` creates one on purpose).
        """
        self.url = store.url if store is not None else (url or config.registry_url())
        self.store: Store = store if store is not None else open_store(self.url)
        if create is None:
            create = store is None and config.is_embedded_default(url)
        self._check_marker(create)
        #: This machine's cache folder; `cache` is its blobs.
        self.local_cache = LocalCache(cache_dir, cache_size)
        self.cache = self.local_cache.blobs
        self.hashes = HashCache(self.local_cache.hashes_db)
        self.packs = PackIndex(self.local_cache.packs_db)
        self.blobs = Blobs(self.store, self.cache, self.hashes, self.packs)
        self.catalog = Catalog(self.store)
        self.committer = Committer(self.store, self.catalog, self.blobs)
        self.lineage = Lineage(self.store)
        self.deleter = Deleter(self.store, self.catalog)
        self.retention = Retention(self.store, self.catalog, self.deleter)
        #: Threads for moving many files: network latency wants many, a local disk one.
        self.workers = self.blobs.workers
        self._leases = threading.local()
        self.store.sweep_temp()

    def _check_marker(self, create: bool) -> None:
        try:
            doc = decode(self.store.get(MARKER_KEY), f"registry marker in {self.url}")
        except KeyNotFound:
            foreign = self.store.foreign_content()
            if foreign is not None:
                if self.store.head(MARKER_KEY) is not None:
                    # Another process created the registry since we looked.
                    return self._check_marker(create)
                raise NotARegistry(
                    f"{self.url} is {foreign}, not an artfs registry (no {MARKER_KEY}); "
                    "point ARTFS_REGISTRY at an empty or existing registry"
                ) from None
            if not create:
                raise RegistryMissing(f"no artfs registry at {self.url}; create one with "
                                   f"`artfs init {self.url}`") from None
            self.store.put_if_absent(MARKER_KEY, encode(MARKER))
            return
        except CorruptRecord as e:
            raise NotARegistry(f"{self.url} is not an artfs registry: {e}") from e
        if doc.get("format") != MARKER["format"]:
            raise NotARegistry(f"{self.url} is not an artfs registry ({MARKER_KEY} says otherwise)")
        # Checked before any read so that a later format (docs/ARCHITECTURE.md, issue 15) is
        # refused by name rather than reported as a missing or corrupt manifest.
        version = doc.get("version", 1)
        if not isinstance(version, int) or version > MARKER["version"]:
            raise RegistryTooNew(
                f"{self.url} is an artfs registry of version {version!r}, newer than this artfs "
                f"reads ({MARKER['version']}); upgrade artfs to use it")

    def close(self) -> None:
        self.store.close()

    # -- keys (kept for callers of the key helpers; the layout lives in keys.py) ---------------
    blob_key = staticmethod(keys.blob)
    pack_key = staticmethod(keys.pack)
    manifest_key = staticmethod(keys.manifest)

    # -- versions and aliases (catalog.py) -------------------------------------------------

    def entities(self) -> list[str]:
        return self.catalog.entities()

    def projects(self, entity: str) -> list[str]:
        return self.catalog.projects(entity)

    def artifacts(self, entity: str, project: str) -> list[str]:
        return self.catalog.artifacts(entity, project)

    def artifact_type(self, entity: str, project: str, name: str) -> str | None:
        return self.catalog.artifact_type(entity, project, name)

    def versions(self, entity: str, project: str, name: str) -> list[int]:
        return self.catalog.versions(entity, project, name)

    def aliases(self, entity: str, project: str, name: str) -> dict[str, int]:
        return self.catalog.aliases(entity, project, name)

    def not_found(self, ref: ArtifactRef) -> ArtifactNotFound:
        return self.catalog.not_found(ref)

    def resolve(self, ref: ArtifactRef) -> int:
        return self.catalog.resolve(ref)

    def version(self, ref: ArtifactRef, *, with_aliases: bool = True,
                include_deleted: bool = False) -> Version:
        return self.catalog.version(ref, with_aliases=with_aliases,
                                    include_deleted=include_deleted)

    def version_record(self, entity: str, project: str, name: str, number: int, *,
                       edited: bool | None = None) -> Version:
        return self.catalog.version_record(entity, project, name, number, edited=edited)

    def edited_versions(self, entity: str, project: str, name: str) -> set[int]:
        return self.catalog.edited_versions(entity, project, name)

    def ensure_artifact(self, entity: str, project: str, name: str, type_: str) -> None:
        self.catalog.ensure_artifact(entity, project, name, type_)

    def check_type(self, entity: str, project: str, name: str, type_: str) -> None:
        self.catalog.check_type(entity, project, name, type_)

    def set_alias(self, ref: ArtifactRef, alias: str) -> Version:
        return self.catalog.set_alias(ref, alias)

    def remove_alias(self, ref: ArtifactRef, alias: str) -> None:
        self.catalog.remove_alias(ref, alias)

    def update_version(self, version: Version, *, description: str | None,
                       metadata: dict[str, Any], aliases: list[str],
                       expires_at: str | None = None) -> Version:
        return self.catalog.update_version(version, description=description, metadata=metadata,
                                           aliases=aliases, expires_at=expires_at)

    def delete_version(self, ref: ArtifactRef, *, delete_aliases: bool = False) -> Version:
        return self.deleter.delete_version(ref, delete_aliases=delete_aliases)

    def delete_artifact(self, entity: str, project: str, name: str) -> list[Version]:
        return self.deleter.delete_artifact(entity, project, name)

    def manifest(self, version: Version) -> Manifest:
        """The version's manifest; where its packed blobs live is remembered on the way."""
        manifest = self.catalog.manifest(version)
        self.blobs.remember_packs(version.entity, manifest)
        return manifest

    # -- runs and lineage (lineage.py) -----------------------------------------------------

    def start_run(self, entity: str, project: str, job_type: str, *, run_id: str | None = None,
                  **info: Any) -> RunRecord:
        return self.lineage.start_run(entity, project, job_type, run_id=run_id, **info)

    def find_run(self, entity: str, project: str, run_id: str) -> RunRecord | None:
        return self.lineage.find_run(entity, project, run_id)

    def finish_run(self, run: RunRecord, *, failed: bool = False) -> None:
        self.lineage.finish_run(run, failed=failed)

    def save_run(self, run: RunRecord) -> None:
        self.lineage.save_run(run)

    def get_run(self, entity: str, project: str, run_id: str) -> RunRecord:
        return self.lineage.get_run(entity, project, run_id)

    def runs(self, entity: str, project: str) -> Iterator[RunRecord]:
        return self.lineage.runs(entity, project)

    def record_use(self, version: Version, run: RunRecord) -> None:
        self.lineage.record_use(version, run)

    def add_input(self, version: Version, entity: str, project: str, run_id: str) -> None:
        self.lineage.add_input(version, entity, project, run_id)

    def used_by(self, version: Version) -> list[RunRecord]:
        return self.lineage.used_by(version)

    # -- blobs (see blobs.py) -------------------------------------------------------------------
    def has_blob(self, entity: str, digest: str) -> bool:
        return self.blobs.has_blob(entity, digest)

    def put_blob(self, entity: str, data: bytes) -> str:
        return self.blobs.put_blob(entity, data)

    def put_blob_files(self, entity: str, files: Iterable[tuple[str, Path]], *,
                       move: bool = False) -> None:
        self.blobs.put_blob_files(entity, files, move=move)

    def ingest_files(self, entity: str, sources: Iterable[Source],
                     skip_present: Callable[[list[Entry]], bool] | None = None
                     ) -> dict[str, Entry]:
        return self.blobs.ingest_files(entity, sources, skip_present)

    def blob_file(self, entity: str, digest: str, what: str = "") -> Path:
        return self.blobs.blob_file(entity, digest, what)

    def prefetch_packed(self, entity: str, entries: Iterable[Entry]) -> None:
        self.blobs.prefetch_packed(entity, entries)

    # -- committing (commits.py) -------------------------------------------------------------
    @contextmanager
    def lease(self, entity: str) -> Iterator[Lease]:
        """Hold a writer lease (lease.py) for this thread: gc spares what it uploads and reuses.

        Nested calls share the outer lease, so a caller can take it before uploading blobs of
        its own and then log through `log_version`.
        """
        held: dict[str, Lease] = self._leases.__dict__.setdefault("held", {})
        if entity in held:
            yield held[entity]
            return
        lease = Lease(self.store, entity)
        state = lease.start()
        self.packs.note_gc_epoch(self.url, entity, state.epoch)
        held[entity] = lease
        try:
            yield lease
        finally:
            del held[entity]
            lease.release()

    def commit(self, entity: str, project: str, name: str, type_: str, manifest: Manifest, *,
               aliases: Iterable[str] = (), description: str | None = None,
               metadata: dict[str, Any] | None = None, run_id: str | None = None
               ) -> CommitResult:
        """Make `manifest` a version (or find the version that already has it) and move aliases.

        Every blob the manifest names must already be in the registry (uploaded under the
        caller's `lease()`, or a gc may collect them first).
        """
        with self.lease(entity) as lease:
            return self.committer.commit(entity, project, name, type_, manifest,
                                         aliases=aliases, description=description,
                                         metadata=metadata, run_id=run_id, lease=lease)

    def log_version(
        self,
        entity: str,
        project: str,
        name: str,
        type_: str,
        sources: Iterable[Source],
        references: Iterable[Entry] = (),
        *,
        aliases: Iterable[str] = (),
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        run: RunRecord | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> CommitResult:
        """The one path from local files to a version, shared by the SDK, the CLI and staging.

        Bytes are uploaded first; `before_commit` (the SDK's call-order barrier) runs between
        the upload and the commit, so uploads overlap while version numbers follow call order.
        """
        check_name(type_, "artifact type")
        aliases = [check_alias(a) for a in aliases]
        check_metadata(f"{entity}/{project}/{name}", description, metadata)
        self.check_type(entity, project, name, type_)
        sources = list(sources)
        references = list(references)
        check_unique(f"{entity}/{project}/{name}", sources, references)
        barrier = [before_commit] if before_commit is not None else []
        for attempt in range(COLLECTED_RETRIES + 1):
            try:
                with self.lease(entity):
                    result = self._log_once(entity, project, name, type_, sources, references,
                                            aliases, description, metadata, run, barrier)
                break
            except CollectedUnderCommit:
                if attempt == COLLECTED_RETRIES:
                    raise
                # What this machine knew to be stored may be gone: ask the store again.
                self.packs.forget(self.url, entity)
        if run is not None:
            self.lineage.record_output(run, result.version)
        return result

    def _log_once(self, entity: str, project: str, name: str, type_: str,
                  sources: list[Source], references: list[Entry], aliases: list[str],
                  description: str | None, metadata: dict[str, Any] | None,
                  run: RunRecord | None, barrier: list[Callable[[], None]]) -> CommitResult:
        """Upload and commit once, under the caller's lease; `barrier` runs on the first try."""
        already: list[Manifest] = []

        def committed(known: list[Entry]) -> bool:
            candidate = Manifest([*known, *references])
            if self.catalog.has_digest(entity, project, name, candidate.digest):
                already.append(candidate)
            return bool(already)

        if self.blobs.packing:
            self._learn_pack_locations(entity, project, name)
        entries = self.ingest_files(entity, sources, skip_present=committed)
        manifest = already[0] if already else Manifest([*entries.values(), *references])
        while barrier:
            barrier.pop()()
        return self.commit(
            entity, project, name, type_, manifest, aliases=aliases, description=description,
            metadata=metadata, run_id=f"{run.entity}/{run.project}/{run.id}" if run else None,
        )

    def _learn_pack_locations(self, entity: str, project: str, name: str) -> None:
        """Read the latest version's manifest, which records where its packed blobs live.

        A new version mostly repeats the last one; knowing those locations lets small files
        that another machine already uploaded be reused instead of packed and sent again.
        """
        try:
            latest = self.version(ArtifactRef(entity, project, name, LATEST), with_aliases=False)
        except ArtifactNotFound:
            return
        self.manifest(latest)
