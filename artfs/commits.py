"""The commit protocol: a manifest becomes the next version, without a server.

A version number is taken by creating `versions/v<N>.json` only if absent, so two writers can
never both own one. Before taking a number, a writer claims the artifact digest
(`digests/<d>.json`, create-only), so the same contents logged twice at once become one
version. Aliases are written only after the version they name exists.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import keys
from .blobs import Blobs
from .catalog import Catalog
from .errors import KeyNotFound
from .lease import Lease
from .manifest import Manifest
from .names import LATEST, ArtifactRef, check_alias
from .procs import pid_alive
from .records import CommitResult, check_metadata, decode, encode, now_iso
from .store import Store

#: A digest claim older than this whose owner cannot be checked is taken over; a commit holds
#: its claim only for the few metadata writes after all bytes are uploaded.
CLAIM_TTL_S = 120.0
#: Digest claims this process holds right now. A claim naming this process that is not in here
#: was left by a commit of ours that failed (and could not release it, e.g. the network was
#: down): it is stale at once, so retrying the same log does not wait CLAIM_TTL_S.
_HELD_CLAIMS: set[str] = set()


class Committer:
    """Commits manifests whose blobs are already stored."""

    def __init__(self, store: Store, catalog: Catalog, blobs: Blobs) -> None:
        self.store = store
        self.catalog = catalog
        self.blobs = blobs

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
        lease: Lease | None = None,
    ) -> CommitResult:
        """Make `manifest` a version (or find the version that already has it) and move aliases.

        Every blob the manifest names must already be in the registry. Under `lease` (held since
        before the blobs were checked or uploaded) the manifest is named in it and any gc that
        may have missed that is waited out before the version record is written.
        """
        aliases = [check_alias(a) for a in aliases]
        check_metadata(f"{entity}/{project}/{name}", description, metadata)
        self.catalog.ensure_artifact(entity, project, name, type_)
        art = keys.artifact(entity, project, name)
        digest = manifest.digest

        manifest_key = keys.manifest(entity, digest)
        located = self.blobs.locate_packed(entity, manifest)
        if self.store.head(manifest_key) is None:
            self.store.flush()
            self.store.put(manifest_key, located.to_stored_bytes())
        if lease is not None:
            lease.cover(manifest_key)
            lease.settle(lambda: self._missing(entity, manifest_key, located))

        claim_key = art.digest(digest)
        existing, claim = self._claim_digest(claim_key, art, digest)
        if existing is not None:
            self.catalog.move_aliases(art, existing, [LATEST, *aliases], latest_if_newer=False)
            committed = ArtifactRef(entity, project, name, f"v{existing}")
            return CommitResult(self.catalog.version(committed), created=False)

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
            number = (self.catalog.taken_versions(entity, project, name) or [-1])[-1] + 1
            while True:
                record["version"] = number
                if self.store.put_if_absent(art.version(number), encode(record)):
                    break
                number += 1
        except BaseException:
            # No number was taken: give the digest back so a retry (or another writer of the
            # same contents) need not wait for the claim to go stale.
            self._release_claim(claim_key, claim)
            _HELD_CLAIMS.discard(claim)
            raise
        try:
            self.store.put(claim_key, encode({"version": number}))
        finally:
            _HELD_CLAIMS.discard(claim)
        self.catalog.move_aliases(art, number, [LATEST, *aliases], latest_if_newer=True)
        committed = ArtifactRef(entity, project, name, f"v{number}")
        return CommitResult(self.catalog.version(committed), created=True)

    def _missing(self, entity: str, manifest_key: str, manifest: Manifest) -> list[str]:
        """The objects a commit of `manifest` needs that are not in the store (after a gc)."""
        if self.store.head(manifest_key) is None:
            self.store.put(manifest_key, manifest.to_stored_bytes())
        wanted = sorted({keys.pack(entity, e.pack.pack) if e.pack else keys.blob(entity, e.digest)
                         for e in manifest.values() if e.digest and e.ref is None})
        with ThreadPoolExecutor(self.store.transfer_workers) as pool:
            present = list(pool.map(self.store.head, wanted))
        return [k for k, info in zip(wanted, present, strict=True) if info is None]

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
                if self.store.put_if_absent(claim_key, encode(me)):
                    _HELD_CLAIMS.add(me["claim"])
                    return None, me["claim"]
                continue
            doc = decode(data, f"digest record {claim_key}")
            if isinstance(doc.get("version"), int):
                return int(doc["version"]), me["claim"]
            if self._claim_is_stale(doc):
                # The owner died between claiming and recording; it may have taken a number.
                found = self.catalog.find_version_with_digest(art, digest)
                if found is not None:
                    self.store.put_if_match(claim_key, encode({"version": found}), token)
                    return found, me["claim"]
                if self.store.put_if_match(claim_key, encode(me), token):
                    _HELD_CLAIMS.add(me["claim"])
                    return None, me["claim"]
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _release_claim(self, claim_key: str, claim: str) -> None:
        """Delete our digest claim if it is still ours (best effort: the TTL is the fallback)."""
        try:
            data, token = self.store.get_with_token(claim_key)
            if decode(data, f"digest record {claim_key}").get("claim") != claim:
                return
            # Mark it stale rather than delete: stores have no conditional delete.
            self.store.put_if_match(claim_key, encode({"claim": claim, "at": 0}), token)
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
