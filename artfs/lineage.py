"""Runs and lineage: which versions each run used and logged, and who used a version."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

from . import keys
from .errors import ArtifactNotFound, InvalidMetadata, KeyNotFound
from .names import check_name
from .records import RunRecord, Version, decode, encode, now_iso
from .store import Store


class Lineage:
    """Run records and the used-by links of the registry in `store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def start_run(self, entity: str, project: str, job_type: str, *, run_id: str | None = None,
                  **info: Any) -> RunRecord:
        """Record a new run; `info` holds W&B's name, config, tags, notes and group."""
        run = RunRecord(
            entity=check_name(entity, "entity"),
            project=check_name(project, "project"),
            id=check_name(run_id, "run id") if run_id is not None else secrets.token_hex(4),
            job_type=check_name(job_type, "job type"),
            created_at=now_iso(),
            **info,
        )
        try:
            encode(run.toencode())
        except (TypeError, ValueError) as e:
            raise InvalidMetadata(f"config of run {entity}/{project}/{run.id} is not "
                                  f"JSON-serialisable: {e}") from e
        self.save_run(run)
        return run

    def find_run(self, entity: str, project: str, run_id: str) -> RunRecord | None:
        try:
            return self.get_run(entity, project, run_id)
        except ArtifactNotFound:
            return None

    def finish_run(self, run: RunRecord, *, failed: bool = False) -> None:
        with run.lock:
            run.finished_at = now_iso()
            run.state = "failed" if failed else "finished"
            if not run.shared:
                self._save_run(run)
                return

            def close(stored: RunRecord | None) -> RunRecord:
                # What other processes stored (a joined SDK's config, inputs) is kept whole.
                if stored is None:
                    return run
                stored.finished_at, stored.state = run.finished_at, run.state
                return stored

            self._update(keys.run(run.entity, run.project, run.id), close)

    def save_run(self, run: RunRecord) -> None:
        with run.lock:
            self._save_run(run)

    def _save_run(self, run: RunRecord) -> None:
        key = keys.run(run.entity, run.project, run.id)
        if run.shared:
            self._update(key, lambda stored: _merge_into(run, stored))
            return
        # Rewritten at every step of a run: an fsync each (~15 ms here) would dominate a
        # re-log, and a power cut loses at most the last lineage update, never data.
        self.store.put_fast(key, encode(run.toencode()))

    def _update(self, key: str, change: Callable[[RunRecord | None], RunRecord]) -> RunRecord:
        """Apply `change` to the stored run (None when there is none yet) by compare-and-swap:
        a shared run's record is written by several processes, none may drop another's
        inputs or outputs."""
        while True:
            try:
                data, token = self.store.get_with_token(key)
            except KeyNotFound:
                record = change(None)
                if self.store.put_if_absent(key, encode(record.toencode())):
                    return record
                continue
            record = change(RunRecord.decode(decode(data, f"run record {key}"), key))
            if self.store.put_if_match(key, encode(record.toencode()), token):
                return record

    def add_input(self, version: Version, entity: str, project: str, run_id: str) -> None:
        """Record that a run another process runs (`artfs run`) used `version`; the run's
        own record may be rewritten meanwhile."""
        key = keys.run(entity, project, run_id)
        if self.store.head(key) is None:
            raise ArtifactNotFound(f"run {entity}/{project}/{run_id} not found")
        art = keys.artifact(version.entity, version.project, version.name)
        self.store.put(art.use(version.version, entity, project, run_id), b"")

        def add(stored: RunRecord | None) -> RunRecord:
            if stored is None:
                raise ArtifactNotFound(f"run {entity}/{project}/{run_id} not found")
            if version.qualified not in stored.inputs:
                stored.inputs.append(version.qualified)
            return stored

        self._update(key, add)

    def record_output(self, run: RunRecord, version: Version) -> None:
        """Add a version the run logged to its outputs."""
        with run.lock:
            run.outputs.append(version.qualified)
            self._save_run(run)

    def get_run(self, entity: str, project: str, run_id: str) -> RunRecord:
        key = keys.run(entity, project, run_id)
        try:
            doc = decode(self.store.get(key), f"run record {key}")
        except KeyNotFound:
            raise ArtifactNotFound(f"run {entity}/{project}/{run_id} not found") from None
        return RunRecord.decode(doc, key)

    def runs(self, entity: str, project: str) -> Iterator[RunRecord]:
        for key in self.store.list(keys.runs(entity, project)):
            yield RunRecord.decode(decode(self.store.get(key), f"run record {key}"), key)

    def record_use(self, version: Version, run: RunRecord) -> None:
        """Add `version` to the run's inputs, and the run to the version's users."""
        art = keys.artifact(version.entity, version.project, version.name)
        self.store.put(art.use(version.version, run.entity, run.project, run.id), b"")
        with run.lock:
            if version.qualified not in run.inputs:
                run.inputs.append(version.qualified)
            self._save_run(run)

    def used_by(self, version: Version) -> list[RunRecord]:
        art = keys.artifact(version.entity, version.project, version.name)
        return [self.get_run(*art.user(version.version, key))
                for key in self.store.list(art.used_by(version.version))]


def _merge_into(run: RunRecord, stored: RunRecord | None) -> RunRecord:
    """`run` as this process knows it, plus the inputs and outputs others stored meanwhile."""
    if stored is not None:
        run.inputs[:] = [*stored.inputs, *(v for v in run.inputs if v not in stored.inputs)]
        run.outputs[:] = [*stored.outputs, *(v for v in run.outputs if v not in stored.outputs)]
        run.config = {**stored.config, **run.config}
    return run
