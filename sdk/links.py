"""What a handle on a committed version does beyond its files: its lineage and its deletion."""

from __future__ import annotations

from typing import TYPE_CHECKING

from artfs.names import ArtifactRef
from artfs.registry import Registry, Version

if TYPE_CHECKING:
    from .wandb_run import Run


class VersionLinks:
    """`Artifact`'s links to runs (W&B's logged_by/used_by) and `delete`."""

    _version: Version | None

    def _logged(self) -> Version:
        raise NotImplementedError

    def _client(self) -> Registry:
        raise NotImplementedError

    def delete(self, delete_aliases: bool = False) -> None:
        """Delete this version (W&B): refused while aliases name it unless `delete_aliases`;
        its bytes are freed by `artfs gc` once no other version needs them."""
        v = self._logged()
        self._version = self._client().delete_version(
            ArtifactRef(v.entity, v.project, v.name, v.label), delete_aliases=delete_aliases)

    def logged_by(self) -> Run | None:
        from .wandb_run import Run

        v = self._logged()
        if not v.logged_by:
            return None
        entity, project, run_id = v.logged_by.split("/")
        reg = self._client()
        return Run._from_record(reg, reg.get_run(entity, project, run_id))

    def used_by(self) -> list[Run]:
        from .wandb_run import Run

        reg = self._client()
        return [Run._from_record(reg, r) for r in reg.used_by(self._logged())]
