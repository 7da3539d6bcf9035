"""`artfs gc`: remove what no live version needs, safely beside writers on other machines.

One entity at a time (its blobs are shared by its projects): take the entity's gc state by
compare-and-swap (a new epoch), list the writers' leases, then the live versions, then read
their manifests; everything else below the entity's blobs/, packs/ and manifests/ that is
older than the gc's start less the grace period — and than every live lease — is deleted, with
unfinished uploads and the leases of dead writers. The protocol and why it is safe are in
docs/ARCHITECTURE.md ("Garbage collection"). Every step is idempotent, so a gc killed anywhere
leaves live versions whole and the next run finishes the work.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .catalog import Catalog
from .errors import CorruptRecord, GcBusy, KeyNotFound
from .lease import GC_BEAT_S, LEASE_DEAD_S, GcState, read_state
from .procs import pid_alive
from .records import decode, encode, now_iso
from .store import Store

#: Keys deleted per batch; ownership of the gc state is checked before each batch.
DELETE_BATCH = 1000
#: What `artfs gc` spares by default: objects written in the last hour.
DEFAULT_GRACE_S = 3600.0


@dataclass
class Freed:
    """What one kind of object gave back."""

    count: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.count += 1
        self.bytes += size


@dataclass
class GcReport:
    """What a gc of one entity found and removed (or would remove, in a dry run)."""

    entity: str
    live_versions: int = 0
    expired: list[str] = field(default_factory=list)
    freed: dict[str, Freed] = field(default_factory=lambda: {
        k: Freed() for k in ("blobs", "packs", "manifests", "uploads", "leases")})
    #: Unreferenced objects kept because they are newer than the cutoff (grace, live leases).
    spared: int = 0

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.freed.values())


@dataclass
class _Owner:
    """This gc's hold on an entity's gc state."""

    key: str
    body: dict[str, Any]
    token: str
    start: float
    lost: threading.Event = field(default_factory=threading.Event)


class Collector:
    """Collects the garbage of every entity of one registry."""

    def __init__(self, store: Store, catalog: Catalog, *, grace: float = DEFAULT_GRACE_S,
                 dry_run: bool = False,
                 before_mark: Callable[[str, float], list[str]] | None = None) -> None:
        """`before_mark(entity, start)` runs once the state is held (`start`: its store time),
        before versions are listed: retention deletes what it lets go there and names it."""
        self.store = store
        self.catalog = catalog
        self.grace = grace
        self.dry_run = dry_run
        self.before_mark = before_mark
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.workers = store.transfer_workers
        #: The earliest cutoff of the entities collected (store time): temporary files of the
        #: registry as a whole are swept against it.
        self.cutoff: float | None = None

    def run(self, entities: Iterable[str] | None = None) -> list[GcReport]:
        return [self.collect(e) for e in (entities or self.catalog.entities())]

    # -- one entity ---------------------------------------------------------------------------
    def collect(self, entity: str) -> GcReport:
        report = GcReport(entity)
        owner = None if self.dry_run else self._acquire(entity)
        beat = None
        if owner is not None:
            beat = threading.Thread(target=self._heartbeat, args=(owner,), daemon=True,
                                    name="artfs-gc-beat")
            beat.start()
        try:
            start = owner.start if owner is not None else time.time()
            protect_after, lease_manifests, dead = self._leases(entity, start)
            if self.before_mark is not None:
                report.expired = self.before_mark(entity, start)
            manifests = self._live_manifests(entity, report)
            blobs, packs = self._live_contents(entity, manifests, lease_manifests - manifests)
            manifests |= lease_manifests
            cutoff = min(start - self.grace, protect_after)
            self.cutoff = cutoff if self.cutoff is None else min(self.cutoff, cutoff)
            doomed: list[tuple[str, str, int]] = []
            for kind, prefix, live in (
                    ("blobs", keys.blobs(entity), blobs),
                    ("packs", keys.packs(entity), packs),
                    ("manifests", keys.manifests(entity), manifests)):
                for info in self.store.list_info(prefix):
                    name = info.key.rsplit("/", 1)[-1].removesuffix(".json")
                    if name in live:
                        continue
                    if info.mtime >= cutoff:
                        report.spared += 1
                        continue
                    doomed.append((kind, info.key, info.size))
            uploads = [u for u in self.store.stale_uploads(cutoff)
                       if f"/{keys.ENTITIES}{entity}/" in f"/{u.split(' ', 1)[-1]}"]
            for kind, _, size in doomed:
                report.freed[kind].add(size)
            for _ in uploads:
                report.freed["uploads"].add(0)
            for _ in dead:
                report.freed["leases"].add(0)
            if owner is not None:
                self._delete(owner, [k for _, k, _ in doomed] + dead)
                self._check(owner)
                self.store.abort_uploads(uploads)
        finally:
            if owner is not None and beat is not None:
                owner.lost.set()
                beat.join()
                self._release(owner, report)
        return report

    def sweep_temp(self) -> int:
        """Temporary files of the whole registry (not of one entity) older than every cutoff
        of this run; none when no entity was collected (no store time was learnt)."""
        if self.cutoff is None:
            return 0
        stale = [u for u in self.store.stale_uploads(self.cutoff) if " " not in u]
        if not self.dry_run:
            self.store.abort_uploads(stale)
        return len(stale)

    # -- the gc state ---------------------------------------------------------------------------
    def _acquire(self, entity: str) -> _Owner:
        """Start a new epoch with this gc running, unless a live gc runs; a dead one (killed,
        or silent past GC_DEAD_S) is taken over: its work is simply done again."""
        key = keys.gc_state(entity)
        while True:
            state = read_state(self.store, entity)
            if state.running is not None and state.alive(self._store_now(entity, state)):
                raise GcBusy(f"a garbage collection of {entity} in {self.store.url} is running "
                             f"({state.running}, since {state.doc.get('started')}); try later")
            body = {"epoch": state.epoch + 1, "running": self.id, "host": socket.gethostname(),
                    "pid": os.getpid(), "started": now_iso(), "beat": 0,
                    "last": state.doc.get("last"),
                    "took_over": state.running if state.running is not None else None}
            ok = (self.store.put_if_absent(key, encode(body)) if state.token is None
                  else self.store.put_if_match(key, encode(body), state.token))
            if ok:
                data, token = self.store.get_with_token(key)
                info = self.store.head(key)
                if decode(data, f"gc state {key}").get("running") != self.id or info is None:
                    continue
                return _Owner(key, body, token, info.mtime)

    def _store_now(self, entity: str, state: GcState) -> float:
        """The store's clock, needed only to judge another host's gc by its heartbeat."""
        if state.host == socket.gethostname():
            return 0.0
        probe = f"{keys.ENTITIES}{entity}/gc/clock"
        self.store.put(probe, b"{}")
        info = self.store.head(probe)
        return info.mtime if info else state.mtime

    def _heartbeat(self, owner: _Owner) -> None:
        while not owner.lost.wait(GC_BEAT_S):
            owner.body["beat"] += 1
            try:
                ok = self.store.put_if_match(owner.key, encode(owner.body), owner.token)
            except Exception:  # noqa: BLE001 - one missed beat is not fatal
                continue
            if not ok:
                owner.lost.set()  # another gc took over: stop deleting
                return
            owner.token = self.store.get_with_token(owner.key)[1]

    def _check(self, owner: _Owner) -> None:
        if owner.lost.is_set():
            raise GcBusy(f"lost the gc state {owner.key} of {self.store.url} to another gc; "
                         "stopped before deleting more")

    def _release(self, owner: _Owner, report: GcReport) -> None:
        body = {**owner.body, "running": None, "finished": now_iso(),
                "last": {"at": now_iso(), "by": self.id, "bytes": report.bytes}}
        try:
            self.store.put_if_match(owner.key, encode(body), owner.token)
        except Exception:  # noqa: BLE001 - a state left "running" is taken over when dead
            pass

    def _delete(self, owner: _Owner, doomed: list[str]) -> None:
        for i in range(0, len(doomed), DELETE_BATCH):
            self._check(owner)
            self.store.delete_many(doomed[i : i + DELETE_BATCH])

    # -- marking --------------------------------------------------------------------------------
    def _leases(self, entity: str, start: float) -> tuple[float, set[str], list[str]]:
        """(time after which every object is kept, manifests named by live leases, keys of
        dead leases). Read after the state was taken: see ARCHITECTURE.md."""
        protect_after = float("inf")
        manifests: set[str] = set()
        dead: list[str] = []
        for info in self.store.list_info(keys.leases(entity)):
            try:
                doc = decode(self.store.get(info.key), f"lease {info.key}")
            except KeyNotFound:
                continue  # its writer committed and let go
            since = min(info.mtime, float(doc.get("since") or info.mtime))
            if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
                alive = pid_alive(doc["pid"])
            else:
                alive = start - info.mtime < LEASE_DEAD_S
            if not alive:
                dead.append(info.key)
                continue
            protect_after = min(protect_after, since)
            manifests.update(k.rsplit("/", 1)[-1].removesuffix(".json")
                             for k in doc.get("manifests") or [])
        return protect_after, manifests, dead

    def _live_manifests(self, entity: str, report: GcReport) -> set[str]:
        """Digests of the manifests of every live version of the entity."""
        records: list[str] = []
        for project in self.catalog.projects(entity):
            for name in self.catalog.artifacts(entity, project):
                art = keys.artifact(entity, project, name)
                listed = list(self.store.list(art.versions))
                deleted = {art.tombstone_number(k) for k in listed} - {None}
                records.extend(k for k in listed
                               if (n := art.version_number(k)) is not None and n not in deleted)

        def digest(key: str) -> str | None:
            doc = decode(self.store.get(key), f"version record {key}")
            if "deleted" in doc:
                return None
            if not isinstance(doc.get("digest"), str):
                raise CorruptRecord(f"version record {key} has no digest; gc stopped")
            return doc["digest"]

        with ThreadPoolExecutor(self.workers) as pool:
            found = [d for d in pool.map(digest, records) if d is not None]
        report.live_versions = len(found)
        return set(found)

    def _live_contents(self, entity: str, manifests: set[str], leased: set[str]
                       ) -> tuple[set[str], set[str]]:
        """(blob digests, pack digests) the manifests name. A manifest a live version needs
        that cannot be read stops the gc: what it names is unknown. One only a lease names may
        be missing (its writer puts it again, see Committer._missing)."""

        def read(digest: str) -> tuple[list[str], list[str]]:
            key = keys.manifest(entity, digest)
            try:
                doc = json.loads(self.store.get(key))
            except KeyNotFound:
                if digest in leased:
                    return [], []
                raise CorruptRecord(f"manifest {key} of a live version is missing from "
                                    f"{self.store.url}; gc stopped before deleting") from None
            except ValueError as e:
                raise CorruptRecord(f"manifest {key} is not JSON ({e}); gc stopped") from e
            blobs, packs = [], []
            for entry in (doc.get("entries") or {}).values():
                if entry.get("digest") and entry.get("ref") is None:
                    blobs.append(entry["digest"])
                    if entry.get("pack"):
                        packs.append(entry["pack"][0])
            return blobs, packs

        blobs: set[str] = set()
        packs: set[str] = set()
        with ThreadPoolExecutor(self.workers) as pool:
            for b, p in pool.map(read, sorted(manifests | leased)):
                blobs.update(b)
                packs.update(p)
        return blobs, packs
