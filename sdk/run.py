"""`Run`: one pipeline step; what it uses and logs is its lineage."""

from __future__ import annotations

import atexit
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from artfs import config
from artfs.errors import ArtfsError, TypeMismatch
from artfs.names import check_alias, check_name, parse_ref
from artfs.registry import Registry, RunRecord, check_metadata

from .artifact import Artifact

#: Background logs of one run; commits are still serialised in call order.
LOG_WORKERS = 4


class RunFinishedError(ArtfsError):
    """A call on a run that has finished."""


class Run:
    """An active run (from `init`) or a read-only record of a past one."""

    def __init__(self, registry: Registry, record: RunRecord, *, active: bool) -> None:
        self._registry = registry
        self._record = record
        self._active = active
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future | None = None
        self._pending: list[Future] = []
        if active:
            atexit.register(self._finish_at_exit)

    @classmethod
    def _from_record(cls, registry: Registry, record: RunRecord) -> Run:
        return cls(registry, record, active=False)

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def entity(self) -> str:
        return self._record.entity

    @property
    def project(self) -> str:
        return self._record.project

    @property
    def job_type(self) -> str:
        return self._record.job_type

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.id}"

    def __repr__(self) -> str:
        return f"<Run {self.path} job_type={self.job_type}>"

    def _check_active(self) -> None:
        if not self._active:
            raise RunFinishedError(f"run {self.path} has finished; start a new one with init()")

    # -- logging ------------------------------------------------------------------------------
    def log_artifact(
        self, artifact: Artifact, aliases: list[str] | None = None
    ) -> Artifact:
        """Log `artifact` as its next version in the background; `wait()` or `finish()` joins.

        What can be checked without I/O on the files (aliases, metadata, type) fails here, at
        the call, rather than later in `wait()`.
        """
        self._check_active()
        artifact._draft()
        names = [check_alias(a) for a in ([aliases] if isinstance(aliases, str) else
                                          aliases or [])]
        check_metadata(artifact.name, artifact.description, artifact.metadata)
        self._registry.check_type(self.entity, self.project, artifact.name, artifact.type)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(LOG_WORKERS, thread_name_prefix=f"artfs-{self.id}")
        previous = self._last

        def job() -> None:
            artifact._commit_to(
                self._registry, self.entity, self.project, names, self._record, previous
            )

        future = self._pool.submit(job)
        artifact._future = future
        self._last = future
        self._pending.append(future)
        return artifact

    def use_artifact(self, artifact_or_name: Artifact | str, type: str | None = None) -> Artifact:
        """Record a version as this run's input and return it (a draft is logged first)."""
        self._check_active()
        if isinstance(artifact_or_name, Artifact):
            art = artifact_or_name
            if art._version is None and art._future is None:
                self.log_artifact(art)
            art.wait()
        else:
            ref = parse_ref(artifact_or_name, entity=self.entity, project=self.project)
            version = self._registry.version(ref)
            art = Artifact._from_version(self._registry, version)
        if type is not None and art.type != type:
            raise TypeMismatch(f"{art.qualified_name} has type {art.type!r}, not {type!r}")
        assert art._version is not None
        self._registry.record_use(art._version, self._record)
        return art

    def _versions(self, labels: list[str]) -> list[Artifact]:
        out = []
        for q in dict.fromkeys(labels):
            ref = parse_ref(q, entity=self.entity, project=self.project)
            out.append(Artifact._from_version(self._registry, self._registry.version(ref)))
        return out

    def used_artifacts(self) -> list[Artifact]:
        return self._versions(self._record.inputs)

    def logged_artifacts(self) -> list[Artifact]:
        self._join()
        return self._versions(self._record.outputs)

    # -- finishing ----------------------------------------------------------------------------
    def _join(self) -> None:
        """Wait for every background log; raise the first error after all have ended."""
        errors = []
        for f in self._pending:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001 - collected and re-raised below
                errors.append(e)
        self._pending.clear()
        if errors:
            raise errors[0]

    def finish(self) -> None:
        if not self._active:
            return
        try:
            self._join()
        finally:
            self._active = False
            atexit.unregister(self._finish_at_exit)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._registry.finish_run(self._record)

    def _finish_at_exit(self) -> None:
        """A script that never finished its run still gets its logs committed (the worker
        threads finish before this runs) and hears about a log that failed, on stderr."""
        try:
            self.finish()
        except Exception as e:  # noqa: BLE001 - nobody is left to raise to
            print(f"artfs: a background log of run {self.path} failed: {e}", file=sys.stderr)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.finish()
            return
        try:
            self.finish()
        except BaseException as late:  # noqa: BLE001 - the error already propagating wins
            # ...but a failed background log is still reported, never dropped.
            exc.add_note(f"also, a background log of run {self.path} failed: {late!r}")


def init(
    job_type: str = "train",
    project: str | None = None,
    entity: str | None = None,
    registry: str | Registry | None = None,
) -> Run:
    """Start a run against `registry` (ARTFS_REGISTRY or the embedded default)."""
    entity = check_name(entity or config.default_entity(), "entity")
    project = check_name(project or config.default_project(), "project")
    check_name(job_type, "job type")
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    record = reg.start_run(entity, project, job_type)
    return Run(reg, record, active=True)
