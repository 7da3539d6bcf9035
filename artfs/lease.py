"""Writer leases and the gc state: how commits and `artfs gc` on many machines stay safe.

Both live below the entity (`entities/<e>/gc/`), like the blobs they protect, so a writer whose
bucket policy covers only its entity can take a lease.
The protocol is in docs/ARCHITECTURE.md ("Garbage collection"). In short: a writer puts a
lease object before it looks for or uploads any blob; gc spares every object written since a
live lease began and every manifest (with its blobs) a lease names. Before its version record,
the writer names its manifest in the lease, then looks at `gc/state.json`: if a gc ran or runs
that may have listed the leases before that, the writer waits for it to end and checks that
every object its version needs is still there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import keys
from .errors import CollectedUnderCommit, KeyNotFound
from .procs import pid_alive
from .records import decode, encode, now_iso
from .store import Store

log = logging.getLogger(__name__)

#: A writer refreshes its lease this often while it uploads.
LEASE_BEAT_S = 30.0
#: A lease not refreshed for this long (by the store's clock) belongs to a dead writer.
LEASE_DEAD_S = 600.0
#: A running gc refreshes gc/state.json this often; one silent for GC_DEAD_S is dead.
GC_BEAT_S = 5.0
GC_DEAD_S = 120.0


@dataclass(frozen=True)
class GcState:
    """What gc/state.json says: the epoch (one per gc started) and the gc running, if any."""

    epoch: int
    running: str | None
    host: str | None
    pid: int | None
    #: Store time of the last write (the running gc's heartbeat).
    mtime: float
    token: str | None
    doc: dict[str, Any]

    def alive(self, now: float) -> bool:
        """Whether the gc it names still runs: its pid on this host, its heartbeat elsewhere."""
        if self.running is None:
            return False
        if self.host == socket.gethostname() and isinstance(self.pid, int):
            return pid_alive(self.pid)
        return now - self.mtime < GC_DEAD_S


def read_state(store: Store, entity: str) -> GcState:
    key = keys.gc_state(entity)
    try:
        data, token = store.get_with_token(key)
    except KeyNotFound:
        return GcState(0, None, None, None, 0.0, None, {})
    doc = decode(data, f"gc state {key}")
    info = store.head(key)
    return GcState(int(doc.get("epoch", 0)), doc.get("running"), doc.get("host"),
                   doc.get("pid"), info.mtime if info else 0.0, token, doc)


class Lease:
    """One writer's lease, held from before its first blob check until its version exists."""

    def __init__(self, store: Store, entity: str) -> None:
        self.store = store
        self.entity = entity
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.key = keys.lease(entity, self.id)
        self.manifests: list[str] = []
        #: Store time the lease began, learnt once the first heartbeat needs it.
        self.since: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.start_state = GcState(0, None, None, None, 0.0, None, {})
        #: Whether a gc was running (alive) when the lease began.
        self.start_busy = False

    def start(self) -> GcState:
        """Put the lease, then read the gc state (in this order: see ARCHITECTURE.md)."""
        self._write()
        self.start_state = read_state(self.store, self.entity)
        self.start_busy = self._busy(self.start_state)
        self._beat = threading.Thread(target=self._heartbeat, name="artfs-lease", daemon=True)
        self._beat.start()
        return self.start_state

    def _write(self) -> None:
        body = {"host": socket.gethostname(), "pid": os.getpid(), "at": now_iso(),
                "manifests": self.manifests}
        if self.since is not None:
            body["since"] = self.since
        self.store.put(self.key, encode(body))

    def _heartbeat(self) -> None:
        while not self._stop.wait(LEASE_BEAT_S):
            with self._lock:
                if self.since is None:
                    info = self.store.head(self.key)
                    self.since = info.mtime if info else None
                try:
                    self._write()
                except Exception:  # noqa: BLE001 - the next beat retries; the lease is not dead
                    pass

    def cover(self, manifest_key: str) -> None:
        """Name a manifest the commit needs: gc keeps it and its blobs from now on."""
        with self._lock:
            self.manifests.append(manifest_key)
            self._write()

    def settle(self, check: Callable[[], list[str]]) -> None:
        """Return once no gc that may have missed `cover` can still delete what the commit
        needs; if one ran while the lease was held, `check` (the objects missing) must come
        back empty, otherwise CollectedUnderCommit names them.

        A gc started after the state read below lists the leases after it, so it sees the
        cover; only gcs up to that epoch can have missed it.
        """
        seen = read_state(self.store, self.entity)
        delay = 0.05
        state = seen
        while state.epoch == seen.epoch and self._busy(state):
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            state = read_state(self.store, self.entity)
        if seen.epoch == self.start_state.epoch and not self.start_busy:
            return  # no gc began while the lease was held, nor ran when it began
        missing = check()
        if missing:
            raise CollectedUnderCommit(
                f"a garbage collection of {self.store.url} removed {len(missing)} objects this "
                f"commit reused, e.g. {missing[0]}; they are uploaded again on retry")

    def _busy(self, state: GcState) -> bool:
        """Whether `state` names a gc still running. Its heartbeat is compared with the store's
        clock now: the time of our own lease object, written a moment ago."""
        if state.running is None:
            return False
        if state.host == socket.gethostname():
            return state.alive(0.0)
        info = self.store.head(self.key)
        return state.alive(info.mtime if info else state.mtime)

    def release(self) -> None:
        """Let go of the lease. Best effort: the commit's own outcome (or error) is what the
        caller must see; a lease left behind only makes gc spare a little more until its writer
        is known dead (its pid on this host, or LEASE_DEAD_S without a refresh)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            self.store.delete(self.key)
        except Exception as e:  # noqa: BLE001 - see above
            log.warning("could not remove lease %s from %s: %s", self.key, self.store.url, e)
