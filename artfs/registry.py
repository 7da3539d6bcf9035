"""Versions, aliases, runs and lineage on top of any `Store`.

The keys are laid out in `keys.py`.

Concurrency without a server: a version number is taken by creating `versions/v<N>.json` only
if absent, so two writers can never both own one. Before taking a number, a writer claims the
artifact digest (`digests/<d>.json`, create-only), so the same contents logged twice at once
become one version. Aliases are written only after the version they name exists.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import config, keys
from .blobs import Blobs, Source, check_unique
from .cache import LocalCache
from .errors import (
    ArtifactNotFound,
    CorruptRecord,
    InvalidMetadata,
    KeyNotFound,
    NotARegistry,
    RegistryMissing,
    TypeMismatch,
)
from .hashing import (
    HashCache,
)
from .manifest import Entry, Manifest, is_sha256
from .names import LATEST, ArtifactRef, check_alias, check_name
from .packs import PackIndex
from .procs import pid_alive
from .store import Store, open_store
from .store.base import TRANSFER_WORKERS

log = logging.getLogger(__name__)

MARKER_KEY = keys.MARKER
MARKER = {"format": "artfs-registry", "version": 1}
#: A digest claim older than this whose owner cannot be checked is taken over; a commit holds
#: its claim only for the few metadata writes after all bytes are uploaded.
CLAIM_TTL_S = 120.0
#: Digest claims this process holds right now. A claim naming this process that is not in here
#: was left by a commit of ours that failed (and could not release it, e.g. the network was
#: down): it is stale at once, so retrying the same log does not wait CLAIM_TTL_S.
_HELD_CLAIMS: set[str] = set()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CorruptRecord(f"{what} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise CorruptRecord(f"{what} is not a JSON object")
    return doc


@dataclass
class Version:
    """One committed version, with its mutable description/metadata folded in."""

    entity: str
    project: str
    name: str
    type: str
    version: int
    digest: str
    size: int
    file_count: int
    created_at: str
    logged_by: str | None
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"v{self.version}"

    @property
    def qualified(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}:v{self.version}"

    def facts(self) -> dict[str, Any]:
        """What `artfs info` and the mount's extended attributes publish about a version."""
        return {
            "type": self.type,
            "digest": self.digest,
            "size": self.size,
            "file_count": self.file_count,
            "created_at": self.created_at,
            "description": self.description,
            "metadata": self.metadata,
            "aliases": self.aliases,
            "logged_by": self.logged_by,
        }


@dataclass
class RunRecord:
    """One pipeline step and the versions it used and logged."""

    entity: str
    project: str
    id: str
    job_type: str
    created_at: str
    finished_at: str | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    #: A run's inputs (main thread) and outputs (background logs) change concurrently; appending
    #: and saving under one lock keeps a later save from dropping an earlier append.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity, "project": self.project, "id": self.id,
            "job_type": self.job_type, "created_at": self.created_at,
            "finished_at": self.finished_at, "inputs": list(self.inputs),
            "outputs": list(self.outputs),
        }


@dataclass
class CommitResult:
    version: Version
    created: bool


def check_metadata(what: str, description: str | None, metadata: dict[str, Any] | None) -> bytes:
    """The JSON of a description and metadata, or InvalidMetadata before anything is written."""
    if description is not None and not isinstance(description, str):
        raise InvalidMetadata(f"description of {what} must be a string, not {description!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidMetadata(f"metadata of {what} must be a dict, not {type(metadata).__name__}")
    try:
        return _json({"description": description, "metadata": metadata or {}})
    except (TypeError, ValueError) as e:
        raise InvalidMetadata(f"metadata of {what} is not JSON-serialisable: {e}") from e


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
        #: Threads for moving many files: network latency wants many, a local disk one.
        self.workers = self.blobs.workers
        self.store.sweep_temp()

    def _check_marker(self, create: bool) -> None:
        try:
            doc = _load(self.store.get(MARKER_KEY), f"registry marker in {self.url}")
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
            self.store.put_if_absent(MARKER_KEY, _json(MARKER))
            return
        except CorruptRecord as e:
            raise NotARegistry(f"{self.url} is not an artfs registry: {e}") from e
        if doc.get("format") != MARKER["format"]:
            raise NotARegistry(f"{self.url} is not an artfs registry ({MARKER_KEY} says otherwise)")

    def close(self) -> None:
        self.store.close()

    # -- keys (kept for callers of the key helpers; the layout lives in keys.py) ---------------
    blob_key = staticmethod(keys.blob)
    pack_key = staticmethod(keys.pack)
    manifest_key = staticmethod(keys.manifest)

    # -- listing ------------------------------------------------------------------------------
    def entities(self) -> list[str]:
        return self.store.list_dirs(keys.ENTITIES)

    def projects(self, entity: str) -> list[str]:
        return self.store.list_dirs(keys.projects(entity))

    def artifacts(self, entity: str, project: str) -> list[str]:
        return self.store.list_dirs(keys.artifacts(entity, project))

    def artifact_type(self, entity: str, project: str, name: str) -> str | None:
        key = keys.artifact(entity, project, name).record
        try:
            doc = _load(self.store.get(key), f"artifact record {key}")
        except KeyNotFound:
            return None
        return str(doc.get("type"))

    def versions(self, entity: str, project: str, name: str) -> list[int]:
        art = keys.artifact(entity, project, name)
        numbers = (art.version_number(key) for key in self.store.list(art.versions))
        return sorted(n for n in numbers if n is not None)

    def aliases(self, entity: str, project: str, name: str) -> dict[str, int]:
        """alias → version number, for one artifact."""
        art = keys.artifact(entity, project, name)
        found = [k for k in self.store.list(art.aliases) if k.endswith(".json")]

        def read(key: str) -> tuple[str, int] | None:
            try:
                doc = _load(self.store.get(key), f"alias record {key}")
            except KeyNotFound:
                return None
            v = doc.get("version")
            if not isinstance(v, int):
                raise CorruptRecord(f"alias record {key} has no version number")
            return art.alias_name(key), v

        if len(found) <= 1:
            pairs = [read(k) for k in found]
        else:
            with ThreadPoolExecutor(min(TRANSFER_WORKERS, len(found))) as pool:
                pairs = list(pool.map(read, found))
        return dict(p for p in pairs if p is not None)

    # -- resolving ----------------------------------------------------------------------------
    def _not_found(self, ref: ArtifactRef) -> ArtifactNotFound:
        e, p, n = ref.entity, ref.project, ref.name
        if self.artifact_type(e, p, n) is None:
            names = self.artifacts(e, p)
            have = ", ".join(names[:20]) if names else "none"
            return ArtifactNotFound(
                f"artifact {e}/{p}/{n} not found in registry {self.url}; "
                f"artifacts in {e}/{p}: {have}"
            )
        versions = ", ".join(f"v{v}" for v in self.versions(e, p, n)) or "none"
        aliases = ", ".join(sorted(self.aliases(e, p, n))) or "none"
        return ArtifactNotFound(
            f"{ref.qualified} not found; versions: {versions}; aliases: {aliases}"
        )

    def resolve(self, ref: ArtifactRef) -> int:
        """The version number `ref` names (following an alias)."""
        if ref.version is not None:
            return ref.version
        key = keys.artifact(ref.entity, ref.project, ref.name).alias(ref.label)
        try:
            doc = _load(self.store.get(key), f"alias record {key}")
        except KeyNotFound:
            raise self._not_found(ref) from None
        v = doc.get("version")
        if not isinstance(v, int):
            raise CorruptRecord(f"alias record {key} has no version number")
        return v

    def version(self, ref: ArtifactRef, *, with_aliases: bool = True) -> Version:
        number = self.resolve(ref)
        art = keys.artifact(ref.entity, ref.project, ref.name)
        key = art.version(number)
        try:
            doc = _load(self.store.get(key), f"version record {key}")
        except KeyNotFound:
            raise self._not_found(ref) from None
        try:
            meta = _load(self.store.get(art.meta(number)), "version metadata")
        except KeyNotFound:
            meta = {}
        try:
            v = Version(
                entity=ref.entity,
                project=ref.project,
                name=ref.name,
                type=str(doc["type"]),
                version=number,
                digest=str(doc["digest"]),
                size=int(doc["size"]),
                file_count=int(doc["file_count"]),
                created_at=str(doc["created_at"]),
                logged_by=doc.get("logged_by"),
                description=meta.get("description", doc.get("description")),
                metadata=dict(meta.get("metadata", doc.get("metadata")) or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptRecord(f"version record {key} is missing {e}") from e
        if doc.get("version") != number or not is_sha256(v.digest):
            raise CorruptRecord(f"version record {key} does not describe v{number}")
        if with_aliases:
            v.aliases = sorted(
                a for a, n in self.aliases(ref.entity, ref.project, ref.name).items() if n == number
            )
        return v

    def manifest(self, version: Version) -> Manifest:
        key = keys.manifest(version.entity, version.digest)
        try:
            data = self.store.get(key)
        except KeyNotFound:
            raise CorruptRecord(
                f"manifest of {version.qualified} ({version.digest}) is missing from {self.url}"
            ) from None
        manifest = Manifest.from_bytes(data, expect_digest=version.digest)
        self.packs.record(self.url, version.entity,
                          ((e.digest, e.pack) for e in manifest.values() if e.pack and e.digest))
        return manifest

    def _committed(self, entity: str, project: str, name: str, digest: str) -> bool:
        """Whether a manifest digest already is a version of the artifact."""
        key = keys.artifact(entity, project, name).digest(digest)
        try:
            doc = _load(self.store.get(key), f"digest record {key}")
        except KeyNotFound:
            return False
        return isinstance(doc.get("version"), int)

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

    # -- committing ---------------------------------------------------------------------------
    def ensure_artifact(self, entity: str, project: str, name: str, type_: str) -> None:
        """Create the artifact with `type_`, or check that it already has that type."""
        check_name(entity, "entity")
        check_name(project, "project")
        check_name(name)
        check_name(type_, "artifact type")
        key = keys.artifact(entity, project, name).record
        self.store.put_if_absent(key, _json({"type": type_, "created_at": now_iso()}))
        existing = self.artifact_type(entity, project, name)
        if existing != type_:
            raise TypeMismatch(
                f"artifact {entity}/{project}/{name} has type {existing!r}; "
                f"cannot log it with type {type_!r}"
            )

    def commit(
        self,
        entity: str,
        project: str,
        name: str,
        type_: str,
        manifest: Manifest,
        *,
        aliases: Iterable[str] = (),
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> CommitResult:
        """Make `manifest` a version (or find the version that already has it) and move aliases.

        Every blob the manifest names must already be in the registry.
        """
        aliases = [check_alias(a) for a in aliases]
        check_metadata(f"{entity}/{project}/{name}", description, metadata)
        self.ensure_artifact(entity, project, name, type_)
        art = keys.artifact(entity, project, name)
        digest = manifest.digest

        manifest_key = keys.manifest(entity, digest)
        if self.store.head(manifest_key) is None:
            self.store.flush()
            stored = self.blobs.locate_packed(entity, manifest).to_stored_bytes()
            self.store.put(manifest_key, stored)

        claim_key = art.digest(digest)
        existing, claim = self._claim_digest(claim_key, art, digest)
        if existing is not None:
            self._move_aliases(art, existing, [LATEST, *aliases], latest_if_newer=False)
            return CommitResult(self.version(ArtifactRef(entity, project, name, f"v{existing}")),
                                created=False)

        record = {
            "version": 0,
            "type": type_,
            "digest": digest,
            "size": manifest.size,
            "file_count": len(manifest),
            "created_at": now_iso(),
            "logged_by": run_id,
            "description": description,
            "metadata": metadata or {},
        }
        try:
            number = (self.versions(entity, project, name) or [-1])[-1] + 1
            while True:
                record["version"] = number
                if self.store.put_if_absent(art.version(number), _json(record)):
                    break
                number += 1
        except BaseException:
            # No number was taken: give the digest back so a retry (or another writer of the
            # same contents) need not wait for the claim to go stale.
            self._release_claim(claim_key, claim)
            _HELD_CLAIMS.discard(claim)
            raise
        try:
            self.store.put(claim_key, _json({"version": number}))
        finally:
            _HELD_CLAIMS.discard(claim)
        self._move_aliases(art, number, [LATEST, *aliases], latest_if_newer=True)
        return CommitResult(self.version(ArtifactRef(entity, project, name, f"v{number}")),
                            created=True)

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
        already: list[Manifest] = []

        def committed(known: list[Entry]) -> bool:
            candidate = Manifest([*known, *references])
            if self._committed(entity, project, name, candidate.digest):
                already.append(candidate)
            return bool(already)

        if self.blobs.packing:
            self._learn_pack_locations(entity, project, name)
        entries = self.ingest_files(entity, sources, skip_present=committed)
        manifest = already[0] if already else Manifest([*entries.values(), *references])
        if before_commit is not None:
            before_commit()
        result = self.commit(
            entity, project, name, type_, manifest, aliases=aliases, description=description,
            metadata=metadata, run_id=f"{run.entity}/{run.project}/{run.id}" if run else None,
        )
        if run is not None:
            with run.lock:
                run.outputs.append(result.version.qualified)
                self._save_run(run)
        return result

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

    def start_run(self, entity: str, project: str, job_type: str) -> RunRecord:
        run = RunRecord(
            entity=check_name(entity, "entity"),
            project=check_name(project, "project"),
            id=secrets.token_hex(4),
            job_type=check_name(job_type, "job type"),
            created_at=now_iso(),
        )
        self.save_run(run)
        return run

    def finish_run(self, run: RunRecord) -> None:
        with run.lock:
            run.finished_at = now_iso()
            self._save_run(run)

    def check_type(self, entity: str, project: str, name: str, type_: str) -> None:
        """Fail before any upload when `name` already exists with another type."""
        existing = self.artifact_type(entity, project, name)
        if existing is not None and existing != type_:
            raise TypeMismatch(
                f"artifact {entity}/{project}/{name} has type {existing!r}; "
                f"cannot log it with type {type_!r}"
            )

    def _claim_digest(self, claim_key: str, art: keys.ArtifactKeys, digest: str
                      ) -> tuple[int | None, str]:
        """Own the right to commit `digest` (returns None and the claim id), or return the
        version that already has it."""
        me = {"claim": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
              "at": time.time()}
        delay = 0.02
        while True:
            try:
                data, token = self.store.get_with_token(claim_key)
            except KeyNotFound:
                if self.store.put_if_absent(claim_key, _json(me)):
                    _HELD_CLAIMS.add(me["claim"])
                    return None, me["claim"]
                continue
            doc = _load(data, f"digest record {claim_key}")
            if isinstance(doc.get("version"), int):
                return int(doc["version"]), me["claim"]
            if self._claim_is_stale(doc):
                # The owner died between claiming and recording; it may have taken a number.
                found = self._find_version_with_digest(art, digest)
                if found is not None:
                    self.store.put_if_match(claim_key, _json({"version": found}), token)
                    return found, me["claim"]
                if self.store.put_if_match(claim_key, _json(me), token):
                    _HELD_CLAIMS.add(me["claim"])
                    return None, me["claim"]
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _release_claim(self, claim_key: str, claim: str) -> None:
        """Delete our digest claim if it is still ours (best effort: the TTL is the fallback)."""
        try:
            data, token = self.store.get_with_token(claim_key)
            if _load(data, f"digest record {claim_key}").get("claim") != claim:
                return
            # Mark it stale rather than delete: stores have no conditional delete.
            self.store.put_if_match(claim_key, _json({"claim": claim, "at": 0}), token)
        except Exception:  # noqa: BLE001 - the original error is what the caller must see
            pass

    @staticmethod
    def _claim_is_stale(doc: dict[str, Any]) -> bool:
        if (doc.get("host"), doc.get("pid")) == (socket.gethostname(), os.getpid()):
            return doc.get("claim") not in _HELD_CLAIMS
        if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
            if not pid_alive(doc["pid"]):
                return True
        return time.time() - float(doc.get("at", 0)) > CLAIM_TTL_S

    def _find_version_with_digest(self, art: keys.ArtifactKeys, digest: str) -> int | None:
        for key in self.store.list(art.versions):
            doc = _load(self.store.get(key), f"version record {key}")
            if doc.get("digest") == digest:
                return int(doc["version"])
        return None

    def _move_aliases(
        self, art: keys.ArtifactKeys, number: int, aliases: list[str], *, latest_if_newer: bool
    ) -> None:
        for alias in dict.fromkeys(aliases):
            monotonic = alias == LATEST and latest_if_newer
            self._cas_alias(art.alias(alias), number, monotonic)

    def _cas_alias(self, key: str, number: int, monotonic: bool) -> None:
        """Point an alias at `number`; `latest` only ever moves forward under concurrency."""
        body = _json({"version": number, "at": now_iso()})
        while True:
            try:
                data, token = self.store.get_with_token(key)
            except KeyNotFound:
                if self.store.put_if_absent(key, body):
                    return
                continue
            current = _load(data, f"alias record {key}").get("version")
            if current == number or (monotonic and isinstance(current, int) and current > number):
                return
            if self.store.put_if_match(key, body, token):
                return

    def set_alias(self, ref: ArtifactRef, alias: str) -> Version:
        """Point `alias` at the version `ref` names."""
        check_alias(alias)
        target = self.version(ref, with_aliases=False)
        art = keys.artifact(ref.entity, ref.project, ref.name)
        self._cas_alias(art.alias(alias), target.version, monotonic=False)
        return self.version(ArtifactRef(ref.entity, ref.project, ref.name, target.label))

    def remove_alias(self, ref: ArtifactRef, alias: str) -> None:
        self.store.delete(keys.artifact(ref.entity, ref.project, ref.name).alias(alias))

    def update_version(
        self,
        version: Version,
        *,
        description: str | None,
        metadata: dict[str, Any],
        aliases: list[str],
    ) -> Version:
        """Save the editable parts of a version: description, metadata and its aliases.

        Only the aliases added to or removed from `version.aliases` (as loaded) are written, so
        saving a stale handle never drags `latest` back from a newer version.
        """
        aliases = [check_alias(a) for a in aliases]
        art = keys.artifact(version.entity, version.project, version.name)
        meta_json = check_metadata(version.qualified, description, metadata)
        self.store.put(art.meta(version.version), meta_json)
        for alias in set(version.aliases) - set(aliases):
            key = art.alias(alias)
            try:
                if _load(self.store.get(key), f"alias record {key}").get("version") == \
                        version.version:
                    self.store.delete(key)
            except KeyNotFound:
                pass
        added = [a for a in aliases if a not in version.aliases]
        self._move_aliases(art, version.version, added, latest_if_newer=False)
        return self.version(ArtifactRef(version.entity, version.project, version.name,
                                        version.label))

    # -- runs ---------------------------------------------------------------------------------
    def save_run(self, run: RunRecord) -> None:
        with run.lock:
            self._save_run(run)

    def _save_run(self, run: RunRecord) -> None:
        key, data = keys.run(run.entity, run.project, run.id), _json(run.to_json())
        # Rewritten at every step of a run: an fsync each (~15 ms here) would dominate a
        # re-log, and a power cut loses at most the last lineage update, never data.
        self.store.put_fast(key, data)

    def get_run(self, entity: str, project: str, run_id: str) -> RunRecord:
        key = keys.run(entity, project, run_id)
        try:
            doc = _load(self.store.get(key), f"run record {key}")
        except KeyNotFound:
            raise ArtifactNotFound(f"run {entity}/{project}/{run_id} not found") from None
        return RunRecord(**doc)

    def runs(self, entity: str, project: str) -> Iterator[RunRecord]:
        for key in self.store.list(keys.runs(entity, project)):
            yield RunRecord(**_load(self.store.get(key), f"run record {key}"))

    def record_use(self, version: Version, run: RunRecord) -> None:
        """Add `version` to the run's inputs, and the run to the version's users."""
        art = keys.artifact(version.entity, version.project, version.name)
        self.store.put(art.use(version.version, run.entity, run.project, run.id), b"")
        with run.lock:
            if version.qualified not in run.inputs:
                run.inputs.append(version.qualified)
            self._save_run(run)

    def used_by(self, version: Version) -> list[RunRecord]:
        art = keys.artifact(version.entity, version.project, version.name)
        return [self.get_run(*art.user(version.version, key))
                for key in self.store.list(art.used_by(version.version))]
