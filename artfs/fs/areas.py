"""The staging areas a mount serves: claimed from other mounts of this machine, loaded on first
use, checkpointed in the background, created and removed by `mkdir`/`rmdir` of new artifacts."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from .. import staging
from ..registry import Registry
from ..staging import ROOT
from .drafts import ServedArea
from .inodes import StagingFolder
from .reader import Reader
from .tree import TTLCache

log = logging.getLogger(__name__)

#: How often the WAL of an area changed meanwhile is copied into its database (on a worker
#: thread; see `Staging.defer_checkpoints`).
CHECKPOINT_S = 1.0

T = TypeVar("T")


def claim_staging(registry_url: str) -> tuple[str | None, int | None]:
    """Take this machine's staging areas of the registry: (None, the lock's descriptor, held
    for the life of the mount) when we have them, else (who does, None). Open files and
    running hashes live in the mount's memory, so two mounts sharing a state directory must
    not both change one area: the second serves it read-only."""
    root = staging.registry_root(registry_url)
    fd = os.open(root / "mount.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        log.warning("staging folders of %s are served read-only: mount pid %s on this "
                    "machine owns them", registry_url, holder)
        return holder, None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return None, fd


class Areas:
    """The areas of one registry served by this mount, by inode slot."""

    def __init__(self, registry: Registry, reader: Reader,
                 limiter: trio.CapacityLimiter) -> None:
        self.registry = registry
        self.reader = reader
        self.limiter = limiter
        self.loaded: dict[int, ServedArea] = {}
        self._loading = TTLCache(0.0)
        #: None when this mount owns the areas, else the pid of the mount that does.
        self.owner, self._lock_fd = claim_staging(registry.url)
        self._checkpointing = False
        #: Areas of new artifacts removed by `rmdir`: ENOENT, not re-created, until a `mkdir`.
        self._removed: set[int] = set()

    def check_owner(self, area: StagingFolder) -> None:
        if self.owner is not None:
            log.error("EROFS: %s/@staging: its changes are served by mount pid %s",
                      area.what, self.owner)
            raise pyfuse3.FUSEError(errno.EROFS)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def state(self, area: StagingFolder) -> ServedArea:
        st = self.loaded.get(area.slot)
        if st is None:
            if area.slot in self._removed:
                raise pyfuse3.FUSEError(errno.ENOENT)
            st = await self._loading.get(area.slot, lambda: self.blocking(self._load, area))
            self.loaded[area.slot] = st
            if not self._checkpointing:
                self._checkpointing = True
                self.reader.nursery.start_soon(self._checkpoints)
        return st

    def _load(self, area: StagingFolder) -> ServedArea:
        existing = self.loaded.get(area.slot)
        if existing is not None:
            return existing
        st = ServedArea(staging.open_area(self.registry, area.entity, area.project, area.name))
        st.staging.defer_checkpoints()
        return st

    async def _checkpoints(self) -> None:
        """Checkpoint every area that changed since the last round, one at a time, off the
        request loop. A failure is logged: the WAL then keeps the changes until the next."""
        done: dict[int, int] = {}
        while True:
            await trio.sleep(CHECKPOINT_S)
            for slot, st in list(self.loaded.items()):
                if done.get(slot) == st.staging.changes or self.loaded.get(slot) is not st:
                    continue  # unchanged, or removed by rmdir meanwhile
                done[slot] = st.staging.changes
                try:
                    await self.blocking(st.staging.checkpoint)
                except (sqlite3.Error, OSError) as e:
                    log.warning("checkpoint of the staging index of %s failed: %s",
                                st.staging.what, e)

    async def new_area(self, area: StagingFolder) -> None:
        """`mkdir` of a new artifact: create its empty staging area (again, after an rmdir)."""
        self.check_owner(area)
        self._removed.discard(area.slot)
        await self.state(area)

    async def remove_new_area(self, area: StagingFolder) -> None:
        """`rmdir` of a new artifact (the caller checked that the registry does not know it):
        its staging area goes too, ENOTEMPTY while it holds anything."""
        self.check_owner(area)
        st = self.loaded.get(area.slot)
        if st is not None:
            await self.idle(st)
            if st.staging.children(ROOT, limit=1):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            if st.held:  # files removed while open: their handles need the area
                raise pyfuse3.FUSEError(errno.EBUSY)
            del self.loaded[area.slot]
            st.staging.close()
        self._removed.add(area.slot)
        try:
            await self.blocking(staging.remove_pending, self.registry.url,
                                (area.entity, area.project, area.name))
        except OSError as e:
            self._removed.discard(area.slot)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    def exists_on_disk(self, entity: str, project: str, name: str) -> bool:
        root = staging.registry_root(self.registry.url)
        return (root / entity / project / name / "index.db").exists()

    async def idle(self, st: ServedArea) -> None:
        """Wait for a whole-area command (commit, discard) of the area to end."""
        while st.command is not None:
            await st.command.wait()

    async def not_resetting(self, st: ServedArea) -> None:
        """Changes wait while a discard replaces the whole tree (a commit does not stop them)."""
        while st.resetting is not None:
            await st.resetting.wait()
