"""Which run an `open` of a version's file belongs to, and recording the version as its input.

FUSE tells the mount the pid (thread id) behind each request. A process belongs to a run of
`artfs run` when that run's process is among its ancestors (`active_runs`). The first open of a
version by a run's tree records the version as an input of the run, once.

Costs: with no run announced for this registry, an open costs one `stat` of the runs folder
(µs, against the tens of µs of the FUSE round trip). With runs announced, one read of
`/proc/<pid>/stat` per open checks the cached answer for that pid is still its process's (a pid
can be reused); a pid seen for the first time walks up its parents. Both are reads of procfs,
which answers from memory, so they stay on the trio thread. Recording goes to a worker thread,
and the open that triggers it waits for it, so a run's inputs are stored before it reads them.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import trio

from .. import active_runs
from ..active_runs import ActiveRun
from ..config import default_entity, default_project
from ..errors import ArtfsError
from ..names import check_name, parse_ref
from ..registry import Registry, RunRecord, Version
from .inodes import View

log = logging.getLogger(__name__)

#: A folder changed this recently may change again within the same mtime tick (coarse on
#: some filesystems): it is listed again rather than trusted, as git does with racy entries.
RACY_MTIME_NS = 2_000_000_000
#: Pids remembered; beyond this the table starts over (a long build forks millions).
MAX_CACHED_PIDS = 65_536


class Attribution:
    """The runs of `artfs run` on this machine, and the inputs recorded for them."""

    def __init__(self, registry: Registry, limiter: trio.CapacityLimiter) -> None:
        self.registry = registry
        self.limiter = limiter
        self.folder = active_runs.runs_dir(registry.url)
        self._listed_mtime: int | None = None
        #: The announced runs by (pid, start time) of their `artfs run` process.
        self._runs: dict[tuple[int, int], ActiveRun] = {}
        #: pid → (its start time, the run it is in or None).
        self._pids: dict[int, tuple[int, ActiveRun | None]] = {}
        #: (run path, qualified version) already recorded.
        self._recorded: set[tuple[str, str]] = set()

    def _refresh(self) -> bool:
        """Re-read the announced runs when their folder changed; whether there are any."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            self._runs.clear()
            return False
        if mtime != self._listed_mtime or time.time_ns() - mtime < RACY_MTIME_NS:
            runs = {(r.pid, r.start): r for r in active_runs.registered(self.folder)}
            if runs != self._runs:
                self._runs = runs
                self._pids.clear()
            self._listed_mtime = mtime
        return bool(self._runs)

    def run_of(self, pid: int) -> ActiveRun | None:
        """The announced run whose process tree `pid` is in, if any."""
        if not self._refresh():
            return None
        return self._walk(pid)

    def _walk(self, pid: int) -> ActiveRun | None:
        seen: list[tuple[int, int]] = []
        found: ActiveRun | None = None
        while pid > 1:
            facts = active_runs.parent_and_start(pid)
            if facts is None:
                break
            parent, start = facts
            cached = self._pids.get(pid)
            if cached is not None and cached[0] == start:
                found = cached[1]
                break
            seen.append((pid, start))
            found = self._runs.get((pid, start))
            if found is not None:
                break
            pid = parent
        if len(self._pids) + len(seen) > MAX_CACHED_PIDS:
            self._pids.clear()
        for p, start in seen:
            self._pids[p] = (start, found)
        return found

    async def opened(self, pid: int, view: View) -> None:
        """Record `view`'s version as an input of the run `pid` is in (once per run)."""
        run = self.run_of(pid)
        if run is None:
            return
        key = (run.path, view.qualified)
        if key in self._recorded:
            return
        self._recorded.add(key)
        try:
            await trio.to_thread.run_sync(self._record, run, view, limiter=self.limiter)
        except (ArtfsError, OSError) as e:
            # The read goes on: lineage is a record about the data, never a reason to refuse it.
            self._recorded.discard(key)
            log.error("recording %s as an input of run %s failed: %s", view.qualified,
                      run.path, e)

    def _record(self, run: ActiveRun, view: View) -> None:
        version = self.registry.version_record(view.entity, view.project, view.name,
                                               view.version)
        self.registry.add_input(version, run.entity, run.project, run.id)
        log.info("run %s used %s", run.path, view.qualified)


def commit_lineage(registry: Registry, request: dict[str, Any]
                   ) -> tuple[RunRecord | None, list[Version]]:
    """The run of `artfs run` a commit request came from (when recorded in this mount's
    registry), and the versions it names with --input: resolved before anything is committed,
    so an unknown one fails the commit with nothing changed."""
    check_name(str(request.get("job_type") or "commit"), "job type")
    inputs = []
    for spec in request.get("inputs") or ():
        # Qualified by `artfs commit`: the defaults here are never used.
        ref = parse_ref(str(spec), entity=default_entity(), project=default_project())
        inputs.append(registry.version(ref))
    run = None
    path = request.get("run")
    if path and request.get("run_registry") == registry.url:
        entity, project, run_id = str(path).split("/")
        run = registry.get_run(entity, project, run_id)
        run.shared = True
    return run, inputs
