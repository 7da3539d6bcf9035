"""`Api`: read and edit what is in the registry, outside of any run (W&B's public API)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from artfs import config
from artfs.errors import ArtifactNotFound, TypeMismatch
from artfs.listing import VersionListing
from artfs.names import ArtifactRef, check_name, parse_ref
from artfs.registry import Registry

from .artifact import Artifact
from .wandb_run import Run


class Artifacts:
    """W&B's paged `Api().artifacts(...)`: the versions newest first; `len()`, indexing."""

    def __init__(self, registry: Registry, listing: VersionListing) -> None:
        self._registry = registry
        self._listing = listing
        self._seen: list[Artifact] = []
        self._rest: Iterator[Any] | None = None

    def __iter__(self) -> Iterator[Artifact]:
        yield from self._seen
        if self._rest is None:
            self._rest = iter(self._listing)
        for v in self._rest:
            art = Artifact._from_version(self._registry, v)
            self._seen.append(art)
            yield art

    def __len__(self) -> int:
        return len(self._listing)

    def __getitem__(self, index: int) -> Artifact:
        if index < 0:
            return list(self)[index]
        for i, art in enumerate(self):
            if i == index:
                return art
        raise IndexError(f"{self!r} holds fewer than {index + 1} versions")

    def __repr__(self) -> str:
        lst = self._listing
        return f"<Artifacts {lst.entity}/{lst.project}/{lst.name}>"


class ArtifactCollection:
    """One artifact name and its versions (W&B's collection)."""

    def __init__(self, api: Api, entity: str, project: str, name: str, type: str) -> None:
        self._api, self.entity, self.project = api, entity, project
        self.name, self.type = name, type

    def artifacts(self, per_page: int = 50, filters: dict[str, Any] | None = None) -> Artifacts:
        return self._api.artifacts(self.type, f"{self.entity}/{self.project}/{self.name}",
                                   per_page=per_page, filters=filters)

    versions = artifacts

    @property
    def aliases(self) -> list[str]:
        return sorted(self._api._registry.aliases(self.entity, self.project, self.name))

    def __repr__(self) -> str:
        return f"<ArtifactCollection {self.entity}/{self.project}/{self.name} ({self.type})>"


class ArtifactType:
    """One artifact type of a project and the artifact names that have it."""

    def __init__(self, api: Api, entity: str, project: str, name: str) -> None:
        self._api, self.entity, self.project, self.name = api, entity, project, name

    def collections(self, per_page: int = 50) -> list[ArtifactCollection]:
        return self._api.artifact_collections(f"{self.entity}/{self.project}", self.name)

    def collection(self, name: str) -> ArtifactCollection:
        return self._api.artifact_collection(self.name, f"{self.entity}/{self.project}/{name}")

    def __repr__(self) -> str:
        return f"<ArtifactType {self.name} of {self.entity}/{self.project}>"


class Api:
    def __init__(
        self,
        overrides: dict[str, Any] | None = None,
        timeout: int | None = None,
        api_key: str | None = None,
        *,
        registry: str | Registry | None = None,
        entity: str | None = None,
        project: str | None = None,
    ) -> None:
        """W&B's `overrides` may name `entity` and `project`; `registry` is artfs's own."""
        overrides = overrides or {}
        self._registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.entity = entity or overrides.get("entity") or config.default_entity()
        self.project = project or overrides.get("project") or config.default_project()

    @property
    def default_entity(self) -> str:
        return self.entity

    def _project_path(self, path: str | None) -> tuple[str, str]:
        parts = (path or "").split("/") if path else []
        if len(parts) > 2:
            raise ValueError(f"invalid project path {path!r}: expected [entity/]project")
        entity = parts[0] if len(parts) == 2 else self.entity
        project = parts[-1] if parts else self.project
        return check_name(entity, "entity"), check_name(project, "project")

    def _collection_ref(self, name: str) -> ArtifactRef:
        if ":" in name:
            raise ValueError(f"{name!r} names a version; an artifact collection is "
                             "[entity/][project/]name without ':'")
        return parse_ref(name, entity=self.entity, project=self.project)

    # -- versions -----------------------------------------------------------------------------
    def artifact(self, name: str, type: str | None = None) -> Artifact:
        """`[entity/][project/]name[:version-or-alias]`, `latest` when no label is given."""
        ref = parse_ref(name, entity=self.entity, project=self.project)
        art = Artifact._from_version(self._registry, self._registry.version(ref))
        if type is not None and art.type != type:
            raise TypeMismatch(f"{art.qualified_name} has type {art.type!r}, not {type!r}")
        return art

    def artifacts(self, type_name: str | None, name: str, per_page: int = 50,
                  tags: list[str] | None = None, filters: dict[str, Any] | None = None,
                  order: str | None = None) -> Artifacts:
        """The versions of one artifact (`[entity/][project/]name`), newest first, paged.

        `filters` (beyond W&B) keeps versions matching a MongoDB-style query on `metadata.<key>`,
        `aliases`, `created_at`, `size`, `version`... (see `artfs.filters`).
        """
        if tags:
            raise NotImplementedError("artifact tags are not supported; filter on aliases or "
                                      "metadata instead (filters=...)")
        ref = self._collection_ref(name)
        listing = VersionListing(self._registry, ref.entity, ref.project, ref.name,
                                 filters=filters, per_page=per_page)
        if type_name is not None and listing.type != type_name:
            raise TypeMismatch(f"artifact {ref.entity}/{ref.project}/{ref.name} has type "
                               f"{listing.type!r}, not {type_name!r}")
        return Artifacts(self._registry, listing)

    artifact_versions = artifacts

    def artifact_exists(self, name: str, type: str | None = None) -> bool:
        try:
            self.artifact(name, type)
        except (ArtifactNotFound, TypeMismatch):
            return False
        return True

    # -- collections and types ----------------------------------------------------------------
    def artifact_collection(self, type_name: str, name: str) -> ArtifactCollection:
        ref = self._collection_ref(name)
        actual = self._registry.artifact_type(ref.entity, ref.project, ref.name)
        if actual is None:
            raise self._registry.not_found(ref)
        if actual != type_name:
            raise TypeMismatch(f"artifact {ref.entity}/{ref.project}/{ref.name} has type "
                               f"{actual!r}, not {type_name!r}")
        return ArtifactCollection(self, ref.entity, ref.project, ref.name, actual)

    def artifact_collection_exists(self, name: str, type: str) -> bool:
        try:
            self.artifact_collection(type, name)
        except (ArtifactNotFound, TypeMismatch):
            return False
        return True

    def artifact_collections(self, project_name: str, type_name: str,
                             per_page: int = 50) -> list[ArtifactCollection]:
        """The artifacts of `[entity/]project` that have type `type_name`, by name."""
        entity, project = self._project_path(project_name)
        reg = self._registry
        return [ArtifactCollection(self, entity, project, n, type_name)
                for n in reg.artifacts(entity, project)
                if reg.artifact_type(entity, project, n) == type_name]

    def artifact_types(self, project: str | None = None) -> list[ArtifactType]:
        """The artifact types used in `[entity/]project`, by name."""
        entity, proj = self._project_path(project)
        reg = self._registry
        types = {reg.artifact_type(entity, proj, n) for n in reg.artifacts(entity, proj)}
        return [ArtifactType(self, entity, proj, t) for t in sorted(t for t in types if t)]

    def artifact_type(self, type_name: str, project: str | None = None) -> ArtifactType:
        for t in self.artifact_types(project):
            if t.name == type_name:
                return t
        entity, proj = self._project_path(project)
        raise ArtifactNotFound(f"no artifact of type {type_name!r} in {entity}/{proj}")

    # -- runs ---------------------------------------------------------------------------------
    def run(self, path: str) -> Run:
        """`entity/project/run_id` → the run's record."""
        parts = path.split("/")
        if len(parts) != 3:
            raise ValueError(f"invalid run path {path!r}: expected entity/project/run_id")
        entity, project, run_id = parts
        record = self._registry.get_run(check_name(entity, "entity"),
                                        check_name(project, "project"), run_id)
        return Run._from_record(self._registry, record)
