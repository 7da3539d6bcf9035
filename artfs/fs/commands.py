"""Whole-area commands of `@staging` (commit, discard, empty), sent by the CLI through an
extended attribute: they run in the mount, which can wait for writers to close their files and
tell the kernel what changed. Replies and progress are read back through other attributes
(`protocol.py`)."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import OrderedDict
from functools import partial
from typing import Any

import pyfuse3
import trio

from .. import progress, staging
from ..errors import ArtfsError, Cancelled
from ..names import LATEST
from ..registry import Registry
from ..staging import ROOT, Staging
from .areas import Areas
from .attribution import commit_lineage
from .drafts import CLOSED, DROPPED, FINISHING, OPEN, Drafts, FileHandle, OpenBytes, ServedArea
from .inodes import InodeTable, StagingFolder
from .tree import Tree

log = logging.getLogger(__name__)

#: How often a commit waiting with `--wait` checks whether writers closed their files.
WAIT_POLL_S = 0.1
#: The kernel sends RELEASE just after close() returns: a commit right after `cp` gives a
#: writer this long to be released before it counts as still open.
RELEASE_GRACE_S = 1.0
#: At most this many open files are named in a refusal.
NAMED_FILES = 20
#: Replies to staging commands kept for the CLI to read (each is read right after it is made).
KEPT_REPLIES = 64


class Commands:
    """The commands of the staging areas of one mount, and their kept replies."""

    def __init__(self, registry: Registry, tree: Tree, inodes: InodeTable, areas: Areas,
                 drafts: Drafts) -> None:
        self.registry = registry
        self.tree = tree
        self.limiter = tree.limiter
        self.inodes = inodes
        self.areas = areas
        self.drafts = drafts
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: Ids of commit requests whose CLI was interrupted (`artfs commit` then Ctrl-C).
        self._cancelled: set[str] = set()
        #: Bytes moved by each running commit, by request id.
        self._progress: dict[str, progress.Tracker] = {}

    async def settle(self, st: ServedArea) -> None:
        """Wait (at most RELEASE_GRACE_S) for the release of files whose last writer closed
        them: the kernel sends it just after close() returned, so a command run right after
        a `cp` would otherwise not see the file published."""
        deadline = time.monotonic() + RELEASE_GRACE_S
        while any(h.flushed for h in st.writing) and time.monotonic() < deadline:
            await trio.sleep(WAIT_POLL_S / 10)

    async def control(self, area: StagingFolder, request: dict[str, Any]) -> None:
        """Run a command sent by the CLI (commit, discard, empty); the reply is kept for
        `result(id)`. Errors are replies too, so the CLI can print the message."""
        try:
            op = request.get("op")
            if op == "cancel":  # answered at once: the commit it names is still running
                self._cancelled.add(str(request.get("target")))
                reply = {"ok": True, "message": "cancel requested"}
            elif (owner := self.areas.owner) is not None:
                raise ArtfsError(f"staging of {area.what} is served by mount pid {owner} "
                                 "on this machine; run the command on a path of that mount")
            elif op == "commit":
                reply = await self._commit(area, request)
            elif op in ("discard", "empty"):
                reply = await self._discard(area, empty=op == "empty")
            else:
                raise ArtfsError(f"unknown staging command {op!r}")
        except ArtfsError as e:
            reply = {"ok": False, "error": str(e), "cancelled": isinstance(e, Cancelled)}
        except Exception as e:  # noqa: BLE001 - the mount stays up; the CLI shows the cause
            log.exception("staging command %s on %s failed", request.get("op"), area.what)
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        self._cancelled.discard(str(request.get("id")))
        self._results[str(request.get("id"))] = reply
        while len(self._results) > KEPT_REPLIES:
            self._results.popitem(last=False)

    def result(self, request_id: str) -> dict[str, Any] | None:
        # Not popped: getxattr is asked again with a larger buffer when the first was too small.
        return self._results.get(request_id)

    def _unfinished(self, st: ServedArea) -> list[tuple[FileHandle, OpenBytes]]:
        """Handles open for writing whose writes no one has finished yet."""
        return [(h, h.bytes) for h in st.writing
                if h.bytes is not None and h.bytes.state in (OPEN, FINISHING)]

    def _named(self, st: ServedArea, busy: list[tuple[FileHandle, OpenBytes]]) -> str:
        paths = sorted({st.staging.path(h.node_id) or f"(removed file {h.node_id})"
                        for h, _ in busy})
        return ", ".join(paths[:NAMED_FILES]) + (" …" if len(paths) > NAMED_FILES else "")

    async def _writers_done(self, area: StagingFolder, st: ServedArea, wait: float) -> None:
        """Wait (up to `wait`, at least RELEASE_GRACE_S) until every file open for writing when
        the command began has been closed. Files opened afterwards are not waited for: a
        commit takes what they last published, so a stream of writers cannot starve it."""
        deadline = time.monotonic() + max(wait, RELEASE_GRACE_S)
        waiting = self._unfinished(st)
        if waiting:
            log.info("staging of %s: waiting up to %.1f s for %d file(s) open for writing: %s",
                     area.what, max(wait, RELEASE_GRACE_S), len(waiting),
                     self._named(st, waiting))
        while waiting := [(h, b) for h, b in waiting
                          if h in st.writing and h.bytes is b and b.state in (OPEN, FINISHING)]:
            if time.monotonic() >= deadline:
                raise staging.StagingError(
                    f"staging of {area.what} has {len(waiting)} file(s) open for writing: "
                    f"{self._named(st, waiting)}; close them first, or pass --wait SECONDS")
            await trio.sleep(WAIT_POLL_S)

    async def _commit(self, area: StagingFolder, request: dict[str, Any]) -> dict[str, Any]:
        st = await self.areas.state(area)
        await self.areas.idle(st)
        st.command = trio.Event()
        try:
            await self._writers_done(area, st, float(request.get("wait") or 0))
            # From here on, sessions finished wait for the commit to end, and so does the
            # deletion of published bytes replaced or removed: the commit reads them.
            st.snapshotting = True
            st.staging.hold_deletes = []
            log.info("committing the staging folder of %s", area.what)
            done = await trio.to_thread.run_sync(self._commit_blocking, area, request,
                                                 limiter=self.limiter)
        finally:
            self._end_command(st)
        # Show the new version and the moved aliases now, not after the listing TTL.
        self.tree.forget_artifact(area.entity, area.project, area.name)
        folder = self.inodes.namespace((area.entity, area.project, area.name))
        for alias in [LATEST, *(request.get("aliases") or ())]:
            pyfuse3.invalidate_entry_async(folder, os.fsencode(alias), ignore_enoent=True)
        v = done.version
        log.info("%s", done.message)
        return {"ok": True, "created": done.created, "message": done.message,
                "version": v.qualified if v else None}

    def _end_command(self, st: ServedArea) -> None:
        if st.snapshotting:
            st.snapshotting = False
            for session in st.deferred:
                if session.state == CLOSED:
                    try:
                        self.drafts.publish(st, session)
                    except (sqlite3.Error, OSError):
                        log.exception("publishing %s of %s after a commit failed",
                                      session.path, st.staging.what)
            st.deferred.clear()
            st.staging.held_deletions()
        assert st.command is not None
        st.command.set()
        st.command = None

    def _commit_blocking(self, area: StagingFolder, request: dict[str, Any]) -> staging.Committed:
        # Its own connection: the trio thread keeps serving the area meanwhile.
        own = Staging(self.registry.url, area.entity, area.project, area.name)
        request_id = str(request.get("id"))
        try:
            run, inputs = commit_lineage(self.registry, request)
            with progress.track() as self._progress[request_id]:
                return staging.commit(
                    self.registry, own, aliases=request.get("aliases") or (),
                    type_=request.get("type"), description=request.get("description"),
                    metadata=request.get("metadata"), force=bool(request.get("force")),
                    before_commit=partial(self._unless_cancelled, request_id, area),
                    run=run, job_type=request.get("job_type") or "commit", inputs=inputs)
        finally:
            self._progress.pop(request_id, None)
            own.close()

    def progress_of(self, request_id: str) -> dict[str, int] | None:
        """Bytes a running commit has moved, and how many it will (`artfs commit`'s bar)."""
        tracker = self._progress.get(request_id)
        return tracker.state() if tracker is not None else None

    def _unless_cancelled(self, request_id: str, area: StagingFolder) -> None:
        """Called just before the version is written: the last moment a commit can stop."""
        if request_id in self._cancelled:
            raise Cancelled(f"commit of {area.what} cancelled: nothing was committed and its "
                            "staging folder is unchanged")

    async def _discard(self, area: StagingFolder, *, empty: bool) -> dict[str, Any]:
        """Replace the whole tree: only with no file open for writing, and changes wait."""
        st = await self.areas.state(area)
        await self.areas.idle(st)
        st.command = trio.Event()
        try:
            await self._writers_done(area, st, 0)
            if busy := [b for b in st.current.values() if b.writers]:
                raise staging.StagingError(
                    f"staging of {area.what} has {len(busy)} file(s) open for writing: "
                    + ", ".join(sorted(st.staging.path(b.node_id) for b in busy)[:NAMED_FILES]))
            names = [n.name for n in st.staging.children(ROOT, limit=1 << 30)]
            st.resetting = trio.Event()
            try:
                await self.areas.blocking(self._discard_blocking, area, empty)
            finally:
                for session in list(st.current.values()):
                    session.state = DROPPED
                    self.drafts.forget(st, session)
                st.resetting.set()
                st.resetting = None
        finally:
            self._end_command(st)
        root = self.inodes.staging_inode(area, ROOT)
        for name in names:  # the old nodes are gone: drop what the kernel remembers of them
            pyfuse3.invalidate_entry_async(root, os.fsencode(name), ignore_enoent=True)
        what = "emptied" if empty else "reset to the latest version"
        return {"ok": True, "message": f"staging of {area.what} {what}"}

    def _discard_blocking(self, area: StagingFolder, empty: bool) -> None:
        own = Staging(self.registry.url, area.entity, area.project, area.name)
        try:
            staging.discard(self.registry, own, empty=empty)
        finally:
            own.close()
