"""The registry's key layout: every key any module reads or writes is built here.

One prefix per entity, so a bucket policy on `entities/<entity>/` grants or denies everything
of that entity, its blobs included:

    registry.json                                          marks the location as a registry
    entities/<e>/blobs/<2 hex>/<sha256>                    file bytes, stored once per entity
    entities/<e>/packs/<2 hex>/<sha256>                    small blobs packed together (remote)
    entities/<e>/manifests/<2 hex>/<sha256>.json           manifests by artifact digest
    entities/<e>/projects/<p>/runs/<run id>.json           runs with their inputs and outputs
    entities/<e>/projects/<p>/artifacts/<n>/artifact.json  the artifact's type, fixed at creation
        .../versions/v<N>.json                             version records (a delete adds
                                                           "deleted" by compare-and-swap)
        .../versions/v<N>.deleted                          tombstone: v<N> is deleted (listing)
        .../meta/v<N>.json                                 description/metadata edited later
        .../aliases/<alias>.json                           {"version": N}
        .../digests/<sha256>.json                          artifact digest → version (dedup)
        .../used_by/v<N>/<run entity>/<run project>/<run id>   reverse lineage
        .../retention.json                                 --keep-last policy of the artifact
    entities/<e>/gc/state.json                   the entity's gc epoch, running gc, heartbeat
    entities/<e>/gc/leases/<id>.json             a writer's lease, which gc respects
"""

from __future__ import annotations

from dataclasses import dataclass

MARKER = "registry.json"
ENTITIES = "entities/"


def _entity(entity: str, folder: str) -> str:
    return f"{ENTITIES}{entity}/{folder}/"


def _sharded(folder: str, digest: str, suffix: str = "") -> str:
    """Content-addressed keys spread over 256 folders by their first two hex digits."""
    return f"{folder}{digest[:2]}/{digest}{suffix}"


def projects(entity: str) -> str:
    return _entity(entity, "projects")


def artifacts(entity: str, project: str) -> str:
    return f"{projects(entity)}{project}/artifacts/"


def runs(entity: str, project: str) -> str:
    return f"{projects(entity)}{project}/runs/"


def run(entity: str, project: str, run_id: str) -> str:
    return f"{runs(entity, project)}{run_id}.json"


def blobs(entity: str) -> str:
    return _entity(entity, "blobs")


def blob(entity: str, digest: str) -> str:
    return _sharded(blobs(entity), digest)


def pack(entity: str, pack_digest: str) -> str:
    return _sharded(_entity(entity, "packs"), pack_digest)


def manifest(entity: str, digest: str) -> str:
    return _sharded(_entity(entity, "manifests"), digest, ".json")


@dataclass(frozen=True)
class ArtifactKeys:
    """The keys below one artifact's folder."""

    entity: str
    project: str
    name: str

    @property
    def prefix(self) -> str:
        return f"{artifacts(self.entity, self.project)}{self.name}/"

    @property
    def record(self) -> str:
        return self.prefix + "artifact.json"

    @property
    def versions(self) -> str:
        return self.prefix + "versions/"

    def version(self, number: int) -> str:
        return f"{self.versions}v{number}.json"

    @property
    def metas(self) -> str:
        return self.prefix + "meta/"

    def meta(self, number: int) -> str:
        return f"{self.metas}v{number}.json"

    @property
    def aliases(self) -> str:
        return self.prefix + "aliases/"

    def alias(self, alias: str) -> str:
        return f"{self.aliases}{alias}.json"

    def digest(self, digest: str) -> str:
        return f"{self.prefix}digests/{digest}.json"

    def used_by(self, number: int) -> str:
        return f"{self.prefix}used_by/v{number}/"

    def use(self, number: int, entity: str, project: str, run_id: str) -> str:
        return f"{self.used_by(number)}{entity}/{project}/{run_id}"

    def tombstone(self, number: int) -> str:
        return f"{self.versions}v{number}.deleted"

    def tombstone_number(self, key: str) -> int | None:
        """N for a key `tombstone(N)` made, None for anything else."""
        label = key.rsplit("/", 1)[-1]
        if not label.endswith(".deleted"):
            return None
        return self.version_number(label.removesuffix(".deleted"))

    @property
    def retention(self) -> str:
        return self.prefix + "retention.json"

    def version_number(self, key: str) -> int | None:
        """N for a key `version(N)` or `meta(N)` made, None for anything else below them."""
        label = key.rsplit("/", 1)[-1].removesuffix(".json")
        return int(label[1:]) if label.startswith("v") and label[1:].isdigit() else None

    def alias_name(self, key: str) -> str:
        return key.removeprefix(self.aliases).removesuffix(".json")

    def user(self, number: int, key: str) -> tuple[str, str, str]:
        """(entity, project, run id) of a key `use(number, ...)` made."""
        e, p, run_id = key.removeprefix(self.used_by(number)).split("/")
        return e, p, run_id


def gc_state(entity: str) -> str:
    return f"{ENTITIES}{entity}/gc/state.json"


def leases(entity: str) -> str:
    return f"{ENTITIES}{entity}/gc/leases/"


def lease(entity: str, lease_id: str) -> str:
    return f"{leases(entity)}{lease_id}.json"


def packs(entity: str) -> str:
    return f"{ENTITIES}{entity}/packs/"


def manifests(entity: str) -> str:
    return f"{ENTITIES}{entity}/manifests/"


def artifact(entity: str, project: str, name: str) -> ArtifactKeys:
    return ArtifactKeys(entity, project, name)
