"""Deleting versions: a tombstone in the version record, written by compare-and-swap.

The record itself stays (its number is never taken again, and lineage that names it still reads
it, marked deleted); a `versions/v<N>.deleted` key beside it lets one listing tell live versions
from deleted ones. The bytes only go when `artfs gc` finds nothing live that needs them.
A version that aliases name is deleted only with consent (W&B's `delete_aliases=True`), and
`latest` is such an alias: with consent it moves to the newest version that remains.
"""

from __future__ import annotations

import getpass
import socket

from . import keys
from .catalog import Catalog
from .errors import KeyNotFound, VersionHasAliases
from .names import LATEST, ArtifactRef
from .records import Version, decode, encode, now_iso
from .store import Store


def deleter_identity() -> str:
    """Who a tombstone says deleted the version: user@host, like a commit's author."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


class Deleter:
    """Deletes versions and artifacts of one registry."""

    def __init__(self, store: Store, catalog: Catalog) -> None:
        self.store = store
        self.catalog = catalog

    def delete_version(self, ref: ArtifactRef, *, delete_aliases: bool = False) -> Version:
        """Delete the version `ref` names; VersionHasAliases, before any write, when aliases
        name it and `delete_aliases` is False."""
        v = self.catalog.version(ref)
        if v.aliases and not delete_aliases:
            raise VersionHasAliases(
                f"{v.qualified} has aliases {', '.join(v.aliases)}; delete it with them by "
                "passing delete_aliases=True (artfs delete --delete-aliases)")
        art = keys.artifact(v.entity, v.project, v.name)
        v.deleted_at, v.deleted_by = self._tombstone(art, v.version)
        self.store.put(art.tombstone(v.version), encode(
            {"version": v.version, "at": v.deleted_at, "by": v.deleted_by}))
        self._drop_aliases(art, v.version)
        self._drop_digest(art, v.digest, v.version)
        return v

    def delete_artifact(self, entity: str, project: str, name: str) -> list[Version]:
        """Delete every live version of an artifact (with their aliases); returns them."""
        done = []
        for n in self.catalog.versions(entity, project, name):
            ref = ArtifactRef(entity, project, name, f"v{n}")
            done.append(self.delete_version(ref, delete_aliases=True))
        return done

    def _tombstone(self, art: keys.ArtifactKeys, number: int) -> tuple[str, str]:
        """Add "deleted" to the version record (the first delete wins); its (at, by)."""
        key = art.version(number)
        while True:
            data, token = self.store.get_with_token(key)
            doc = decode(data, f"version record {key}")
            if isinstance(doc.get("deleted"), dict):
                return str(doc["deleted"].get("at")), str(doc["deleted"].get("by"))
            mark = {"at": now_iso(), "by": deleter_identity()}
            if self.store.put_if_match(key, encode({**doc, "deleted": mark}), token):
                return mark["at"], mark["by"]

    def _drop_aliases(self, art: keys.ArtifactKeys, number: int) -> None:
        """Remove the aliases still on `number`; `latest` moves to the newest live version."""
        for alias in (a for a, n in self.catalog.aliases(
                art.entity, art.project, art.name).items() if n == number):
            if alias == LATEST:
                self._move_latest_back(art, number)
                continue
            self._delete_if_names(art.alias(alias), "alias record", number)

    def _move_latest_back(self, art: keys.ArtifactKeys, number: int) -> None:
        """Point `latest` at the newest live version, by compare-and-swap: a commit that moves
        it forward meanwhile wins. With no version left the alias goes."""
        key = art.alias(LATEST)
        while True:
            try:
                data, token = self.store.get_with_token(key)
            except KeyNotFound:
                return
            if decode(data, f"alias record {key}").get("version") != number:
                return
            live = self.catalog.versions(art.entity, art.project, art.name)
            if not live:
                self.store.delete(key)
                return
            body = encode({"version": live[-1], "at": now_iso()})
            if self.store.put_if_match(key, body, token):
                return

    def _drop_digest(self, art: keys.ArtifactKeys, digest: str, number: int) -> None:
        """Forget that `digest` is `number`, so the same files logged again are a new version."""
        self._delete_if_names(art.digest(digest), "digest record", number)

    def _delete_if_names(self, key: str, what: str, number: int) -> None:
        """Delete the record at `key` if it still names version `number` (gone already: fine)."""
        try:
            if decode(self.store.get(key), f"{what} {key}").get("version") == number:
                self.store.delete(key)
        except KeyNotFound:
            pass
