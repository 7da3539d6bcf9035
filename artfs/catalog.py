"""Artifacts, versions and aliases: listing and resolving them, moving aliases.

Aliases move by compare-and-swap on the store's version token, so concurrent writers on many
machines never lose a move, and `latest` only ever moves forward (commits.py takes numbers).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import keys
from .errors import ArtifactDeleted, ArtifactNotFound, CorruptRecord, KeyNotFound, TypeMismatch
from .manifest import Manifest, is_sha256
from .names import LATEST, ArtifactRef, check_alias, check_name
from .records import Version, check_metadata, decode, encode, now_iso
from .store import Store
from .store.base import TRANSFER_WORKERS


class Catalog:
    """The artifacts, versions and aliases of the registry in `store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.url = store.url

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
            doc = decode(self.store.get(key), f"artifact record {key}")
        except KeyNotFound:
            return None
        return str(doc.get("type"))

    def versions(self, entity: str, project: str, name: str) -> list[int]:
        """The live versions: every number taken, less the deleted (one listing for both)."""
        taken, deleted = self._numbers(entity, project, name)
        return sorted(set(taken) - deleted)

    def taken_versions(self, entity: str, project: str, name: str) -> list[int]:
        """Every number ever taken, deleted ones included: numbers are never reused."""
        return self._numbers(entity, project, name)[0]

    def deleted_versions(self, entity: str, project: str, name: str) -> set[int]:
        return self._numbers(entity, project, name)[1]

    def _numbers(self, entity: str, project: str, name: str) -> tuple[list[int], set[int]]:
        art = keys.artifact(entity, project, name)
        taken: list[int] = []
        deleted: set[int] = set()
        for key in self.store.list(art.versions):
            n = art.version_number(key)
            if n is not None:
                taken.append(n)
            elif (n := art.tombstone_number(key)) is not None:
                deleted.add(n)
        return sorted(taken), deleted

    def aliases(self, entity: str, project: str, name: str) -> dict[str, int]:
        """alias → version number, for one artifact."""
        art = keys.artifact(entity, project, name)
        found = [k for k in self.store.list(art.aliases) if k.endswith(".json")]

        def read(key: str) -> tuple[str, int] | None:
            try:
                doc = decode(self.store.get(key), f"alias record {key}")
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
    def not_found(self, ref: ArtifactRef) -> ArtifactNotFound:
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
            doc = decode(self.store.get(key), f"alias record {key}")
        except KeyNotFound:
            raise self.not_found(ref) from None
        v = doc.get("version")
        if not isinstance(v, int):
            raise CorruptRecord(f"alias record {key} has no version number")
        return v

    def version(self, ref: ArtifactRef, *, with_aliases: bool = True,
                include_deleted: bool = False) -> Version:
        """The live version `ref` names; ArtifactDeleted (when, by whom) for a deleted one,
        unless `include_deleted` (lineage: a record naming it stays readable)."""
        number = self.resolve(ref)
        try:
            v = self.version_record(ref.entity, ref.project, ref.name, number)
        except KeyNotFound:
            raise self.not_found(ref) from None
        if v.deleted and not include_deleted:
            via = f" (named by {ref.qualified})" if ref.version is None else ""
            raise ArtifactDeleted(f"{v.qualified}{via} was deleted at {v.deleted_at} by "
                                  f"{v.deleted_by or 'unknown'}")
        if with_aliases:
            v.aliases = sorted(
                a for a, n in self.aliases(ref.entity, ref.project, ref.name).items() if n == number
            )
        return v

    def edited_versions(self, entity: str, project: str, name: str) -> set[int]:
        """Versions whose description or metadata was saved after commit (one listing)."""
        art = keys.artifact(entity, project, name)
        found = (art.version_number(key) for key in self.store.list(art.metas))
        return {n for n in found if n is not None}

    def version_record(self, entity: str, project: str, name: str, number: int, *,
                       edited: bool | None = None) -> Version:
        """Version `number` without its aliases; KeyNotFound when it does not exist.

        `edited=False` (known from `edited_versions`) saves the request for its later edits.
        """
        art = keys.artifact(entity, project, name)
        record = self.store.get(art.version(number))
        meta: bytes | None = None
        if edited is not False:
            try:
                meta = self.store.get(art.meta(number))
            except KeyNotFound:
                pass
        return self.version_from(entity, project, name, number, record, meta)

    def version_from(self, entity: str, project: str, name: str, number: int, record: bytes,
                     edits: bytes | None) -> Version:
        """Version `number` from the bytes of its record and of its later edits, if any."""
        def where() -> str:  # built only for a message: a key per record costs when listing
            return f"version record {keys.artifact(entity, project, name).version(number)}"

        doc = decode(record, where)
        meta = decode(edits, "version metadata") if edits is not None else {}
        try:
            v = Version(
                entity=entity,
                project=project,
                name=name,
                type=str(doc["type"]),
                version=number,
                digest=str(doc["digest"]),
                size=int(doc["size"]),
                file_count=int(doc["file_count"]),
                created_at=str(doc["created_at"]),
                logged_by=doc.get("logged_by"),
                description=meta.get("description", doc.get("description")),
                metadata=dict(meta.get("metadata", doc.get("metadata")) or {}),
                updated_at=str(meta.get("updated_at") or doc["created_at"]),
                expires_at=meta.get("expires_at"),
            )
            if isinstance(doc.get("deleted"), dict):
                v.deleted_at = str(doc["deleted"].get("at"))
                v.deleted_by = doc["deleted"].get("by")
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptRecord(f"{where()} is missing {e}") from e
        if doc.get("version") != number or not is_sha256(v.digest):
            raise CorruptRecord(f"{where()} does not describe v{number}")
        return v

    def manifest(self, version: Version) -> Manifest:
        key = keys.manifest(version.entity, version.digest)
        try:
            data = self.store.get(key)
        except KeyNotFound:
            raise CorruptRecord(
                f"manifest of {version.qualified} ({version.digest}) is missing from {self.url}"
            ) from None
        return Manifest.from_bytes(data, expect_digest=version.digest)

    def has_digest(self, entity: str, project: str, name: str, digest: str) -> bool:
        """Whether a manifest digest already is a version of the artifact."""
        key = keys.artifact(entity, project, name).digest(digest)
        try:
            doc = decode(self.store.get(key), f"digest record {key}")
        except KeyNotFound:
            return False
        return isinstance(doc.get("version"), int)

    def find_version_with_digest(self, art: keys.ArtifactKeys, digest: str) -> int | None:
        for key in self.store.list(art.versions):
            if art.version_number(key) is None:
                continue
            doc = decode(self.store.get(key), f"version record {key}")
            if doc.get("digest") == digest and "deleted" not in doc:
                return int(doc["version"])
        return None

    # -- artifacts and aliases ----------------------------------------------------------------
    def ensure_artifact(self, entity: str, project: str, name: str, type_: str) -> None:
        """Create the artifact with `type_`, or check that it already has that type."""
        check_name(entity, "entity")
        check_name(project, "project")
        check_name(name)
        check_name(type_, "artifact type")
        key = keys.artifact(entity, project, name).record
        self.store.put_if_absent(key, encode({"type": type_, "created_at": now_iso()}))
        existing = self.artifact_type(entity, project, name)
        if existing != type_:
            raise TypeMismatch(
                f"artifact {entity}/{project}/{name} has type {existing!r}; "
                f"cannot log it with type {type_!r}"
            )

    def check_type(self, entity: str, project: str, name: str, type_: str) -> None:
        """Fail before any upload when `name` already exists with another type."""
        existing = self.artifact_type(entity, project, name)
        if existing is not None and existing != type_:
            raise TypeMismatch(
                f"artifact {entity}/{project}/{name} has type {existing!r}; "
                f"cannot log it with type {type_!r}"
            )

    def move_aliases(
        self, art: keys.ArtifactKeys, number: int, aliases: list[str], *, latest_if_newer: bool
    ) -> None:
        for alias in dict.fromkeys(aliases):
            monotonic = alias == LATEST and latest_if_newer
            self._cas_alias(art.alias(alias), number, monotonic)

    def _cas_alias(self, key: str, number: int, monotonic: bool) -> None:
        """Point an alias at `number`; `latest` only ever moves forward under concurrency."""
        body = encode({"version": number, "at": now_iso()})
        while True:
            try:
                data, token = self.store.get_with_token(key)
            except KeyNotFound:
                if self.store.put_if_absent(key, body):
                    return
                continue
            current = decode(data, f"alias record {key}").get("version")
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
        expires_at: str | None = None,
    ) -> Version:
        """Save the editable parts of a version: description, metadata and its aliases.

        Only the aliases added to or removed from `version.aliases` (as loaded) are written, so
        saving a stale handle never drags `latest` back from a newer version. `expires_at` (an
        ISO time, W&B's TTL) is kept with them; None means the version never expires.
        """
        aliases = [check_alias(a) for a in aliases]
        art = keys.artifact(version.entity, version.project, version.name)
        check_metadata(version.qualified, description, metadata)
        meta = {"description": description, "metadata": metadata, "updated_at": now_iso()}
        if expires_at is not None:
            meta["expires_at"] = expires_at
        self.store.put(art.meta(version.version), encode(meta))
        for alias in set(version.aliases) - set(aliases):
            key = art.alias(alias)
            try:
                if decode(self.store.get(key), f"alias record {key}").get("version") == \
                        version.version:
                    self.store.delete(key)
            except KeyNotFound:
                pass
        added = [a for a in aliases if a not in version.aliases]
        self.move_aliases(art, version.version, added, latest_if_newer=False)
        return self.version(ArtifactRef(version.entity, version.project, version.name,
                                        version.label))
