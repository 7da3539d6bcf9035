"""`Api`: read and edit what is in the registry, outside of any run."""

from __future__ import annotations

from artfs import config
from artfs.errors import TypeMismatch
from artfs.names import ArtifactRef, check_name, parse_ref
from artfs.registry import Registry

from .artifact import Artifact
from .run import Run


class Api:
    def __init__(
        self,
        registry: str | Registry | None = None,
        entity: str | None = None,
        project: str | None = None,
    ) -> None:
        self._registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.entity = entity or config.default_entity()
        self.project = project or config.default_project()

    def artifact(self, name: str, type: str | None = None) -> Artifact:
        """`[entity/][project/]name[:version-or-alias]`, `latest` when no label is given."""
        ref = parse_ref(name, entity=self.entity, project=self.project)
        art = Artifact._from_version(self._registry, self._registry.version(ref))
        if type is not None and art.type != type:
            raise TypeMismatch(f"{art.qualified_name} has type {art.type!r}, not {type!r}")
        return art

    def artifacts(self, type: str | None, name: str) -> list[Artifact]:
        """Every version of one artifact (`[entity/][project/]name`), oldest first."""
        ref = parse_ref(name, entity=self.entity, project=self.project)
        actual = self._registry.artifact_type(ref.entity, ref.project, ref.name)
        versions = self._registry.versions(ref.entity, ref.project, ref.name)
        if actual is None or not versions:
            raise self._registry.not_found(ref)
        if type is not None and actual != type:
            raise TypeMismatch(
                f"artifact {ref.entity}/{ref.project}/{ref.name} has type {actual!r}, not {type!r}"
            )
        return [
            Artifact._from_version(self._registry, self._registry.version(
                ArtifactRef(ref.entity, ref.project, ref.name, f"v{n}")))
            for n in versions
        ]

    def run(self, path: str) -> Run:
        """`entity/project/run_id` → the run's record."""
        entity, project, run_id = path.split("/")
        record = self._registry.get_run(check_name(entity, "entity"),
                                        check_name(project, "project"), run_id)
        return Run._from_record(self._registry, record)
