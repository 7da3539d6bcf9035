"""`Run`: one pipeline step; what it uses and logs is its lineage. `init` starts one.

Named as W&B's module, so that `sdk.run` stays free for the active run (`wandb.run`).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from artfs import active_runs
from artfs import config as artfs_config
from artfs.errors import ArtfsError, TypeMismatch
from artfs.names import check_alias, check_name, parse_ref
from artfs.registry import Registry, RunRecord, check_metadata

from . import session
from .artifact import Artifact

#: Background logs of one run; commits are still serialised in call order.
LOG_WORKERS = 4
MODES = ("online", "offline", "disabled", "shared")
#: W&B run features outside artifacts: calling one says so instead of doing nothing.
NOT_ARTIFACTS = (
    "log", "define_metric", "watch", "unwatch", "save", "restore", "alert", "log_code",
    "log_model", "use_model", "link_model", "link_artifact", "mark_preempting", "status",
)


class RunFinishedError(ArtfsError):
    """A call on a run that has finished."""


class RunExistsError(ArtfsError, ValueError):
    """`init(id=...)` of a run that exists, without `resume`, or `resume="must"` of none."""


class Config(dict):
    """W&B's `run.config`: a dict whose keys also read as attributes."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def update(self, other: Any = (), allow_val_change: bool | None = None,  # type: ignore[override]
               **kw: Any) -> None:
        super().update(_as_dict(other), **kw)


def _not_artifacts(feature: str) -> Any:
    def refuse(self: Run, *args: Any, **kwargs: Any) -> Any:
        if self.disabled:
            return None
        raise NotImplementedError(
            f"run.{feature}() is not supported: artfs covers W&B Artifacts only "
            "(init, log_artifact, use_artifact, Artifact and Api); log metrics elsewhere"
        )

    refuse.__name__ = feature
    refuse.__doc__ = f"W&B's run.{feature}(): not part of artfs, which covers artifacts only."
    return refuse


class _Noop:
    """What a disabled run's log_artifact returns (as W&B): every attribute and call is itself."""

    def __getattr__(self, _: str) -> _Noop:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _Noop:
        return self


class Run:
    """An active run (from `init`) or a read-only record of a past one."""

    def __init__(self, registry: Registry | None, record: RunRecord, *, active: bool,
                 mode: str = "online", owned: bool = True) -> None:
        self._registry = registry
        #: False for the run of an `artfs run` that this process joined: that closes it.
        self._owned = owned
        self._record = record
        self._active = active
        self.mode = mode
        self.config = Config(record.config)
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future | None = None
        self._pending: list[Future] = []
        if active and registry is not None:
            session.started(self, registry, record.entity)
            atexit.register(self._finish_at_exit)

    @classmethod
    def _from_record(cls, registry: Registry, record: RunRecord) -> Run:
        return cls(registry, record, active=False)

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def name(self) -> str:
        return self._record.name or self._record.id

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
    def tags(self) -> tuple[str, ...]:
        return tuple(self._record.tags)

    @property
    def notes(self) -> str | None:
        return self._record.notes

    @property
    def group(self) -> str | None:
        return self._record.group

    @property
    def state(self) -> str:
        """"running", "finished" or "failed" (as W&B's)."""
        return self._record.state

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.id}"

    @property
    def url(self) -> None:
        """No web page shows an artfs run."""
        return None

    @property
    def offline(self) -> bool:
        return self.mode == "offline"

    @property
    def disabled(self) -> bool:
        return self.mode == "disabled"

    @property
    def summary(self) -> Any:
        if self.disabled:
            return {}
        raise NotImplementedError(
            "run.summary is not supported: artfs covers W&B Artifacts only"
        )

    def __repr__(self) -> str:
        return f"<Run {self.path} job_type={self.job_type}>"

    def _check_active(self) -> None:
        if not self._active:
            raise RunFinishedError(f"run {self.path} has finished; start a new one with init()")

    def _client(self) -> Registry:
        assert self._registry is not None
        return self._registry

    def _save_config(self) -> None:
        """`run.config` may change after init; the record keeps what it holds now."""
        self._record.config = dict(self.config)

    # -- logging ------------------------------------------------------------------------------
    def log_artifact(
        self, artifact_or_path: Artifact | str, name: str | None = None,
        type: str | None = None, aliases: list[str] | str | None = None,
        tags: list[str] | None = None,
    ) -> Artifact:
        """Log `artifact` as its next version in the background; `wait()` or `finish()` joins.

        A path instead of an Artifact logs that file or folder as artifact `name` (its base
        name by default) of `type` (W&B's default "unspecified"). What can be checked without
        I/O on the files (aliases, metadata, type) fails here, at the call, rather than later.
        """
        if self.disabled:
            return _Noop()  # type: ignore[return-value]
        self._check_active()
        artifact = self._as_artifact(artifact_or_path, name, type)
        artifact._draft()
        names = [check_alias(a) for a in ([aliases] if isinstance(aliases, str) else
                                          aliases or [])]
        entity, project = artifact._destination(self.entity, self.project)
        check_metadata(artifact.name, artifact.description, artifact.metadata)
        self._client().check_type(entity, project, artifact.name, artifact.type)
        self._save_config()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(LOG_WORKERS, thread_name_prefix=f"artfs-{self.id}")
        previous = self._last

        def job() -> None:
            artifact._commit_to(self._client(), entity, project, names, self._record, previous)

        future = self._pool.submit(job)
        artifact._future = future
        self._last = future
        self._pending.append(future)
        return artifact

    @staticmethod
    def _as_artifact(item: Artifact | str, name: str | None, type: str | None) -> Artifact:
        if isinstance(item, Artifact):
            return item
        path = os.path.abspath(item)
        art = Artifact(name or os.path.basename(path.rstrip("/")), type or "unspecified")
        if os.path.isdir(path):
            art.add_dir(path)
        else:
            art.add_file(path)
        return art

    def use_artifact(self, artifact_or_name: Artifact | str, type: str | None = None,
                     aliases: list[str] | None = None, use_as: str | None = None
                     ) -> Artifact | None:
        """Record a version as this run's input and return it (a draft is logged first)."""
        if self.disabled:
            return None
        self._check_active()
        reg = self._client()
        if isinstance(artifact_or_name, Artifact):
            art = artifact_or_name
            if art.is_draft():
                self.log_artifact(art, aliases=aliases)
            art.wait()
        else:
            ref = parse_ref(artifact_or_name, entity=self.entity, project=self.project)
            art = Artifact._from_version(reg, reg.version(ref))
        if type is not None and art.type != type:
            raise TypeMismatch(f"{art.qualified_name} has type {art.type!r}, not {type!r}")
        assert art._version is not None
        self._save_config()
        reg.record_use(art._version, self._record)
        return art

    def _versions(self, labels: list[str]) -> list[Artifact]:
        out = []
        reg = self._client()
        for q in dict.fromkeys(labels):
            ref = parse_ref(q, entity=self.entity, project=self.project)
            # A deleted version stays named by the run; its Artifact says state "DELETED".
            out.append(Artifact._from_version(reg, reg.version(ref, include_deleted=True)))
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

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Wait for the background logs and close the run: `failed` when a log failed or
        `exit_code` is not 0 (as W&B)."""
        if not self._active:
            return
        failed = exit_code not in (None, 0)
        try:
            self._join()
        except BaseException:
            failed = True
            raise
        finally:
            self._active = False
            session.finished(self)
            atexit.unregister(self._finish_at_exit)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if self._registry is not None:
                self._save_config()
                if self._owned:
                    self._registry.finish_run(self._record, failed=failed)
                else:
                    self._registry.save_run(self._record)

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
            self.finish(exit_code=1)
        except BaseException as late:  # noqa: BLE001 - the error already propagating wins
            # ...but a failed background log is still reported, never dropped.
            exc.add_note(f"also, a background log of run {self.path} failed: {late!r}")


for _feature in NOT_ARTIFACTS:
    setattr(Run, _feature, _not_artifacts(_feature))


def _as_dict(value: Any) -> dict[str, Any]:
    """W&B accepts a dict, an argparse Namespace or None as a config."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        raise NotImplementedError(
            f"config={value!r}: loading a config file is not supported; pass a dict")
    if hasattr(value, "__dict__"):
        return dict(vars(value))
    return dict(value)


def _resumed(reg: Registry, entity: str, project: str, run_id: str | None,
             resume: bool | str | None) -> RunRecord | None:
    """W&B's `id`/`resume`: continue the run with that id, or refuse as W&B does."""
    if resume not in (None, False, True, "allow", "never", "must", "auto"):
        raise ValueError(f"invalid resume {resume!r}: use 'allow', 'must', 'never' or 'auto'")
    if run_id is None:
        if resume == "must":
            raise RunExistsError("resume='must' needs the id= of the run to continue")
        return None
    existing = reg.find_run(entity, project, check_name(run_id, "run id"))
    if existing is None:
        if resume == "must":
            raise RunExistsError(f"run {entity}/{project}/{run_id} does not exist; "
                                 "resume='must' continues an existing run only")
        return None
    if resume in (None, False, "never"):
        raise RunExistsError(f"run {entity}/{project}/{run_id} already exists; pass "
                             "resume='allow' to continue it, or another id")
    existing.finished_at = None
    return existing


def init(
    entity: str | None = None,
    project: str | None = None,
    dir: str | None = None,
    id: str | None = None,
    name: str | None = None,
    notes: str | None = None,
    tags: Sequence[str] | None = None,
    config: Any = None,
    config_exclude_keys: list[str] | None = None,
    config_include_keys: list[str] | None = None,
    allow_val_change: bool | None = None,
    group: str | None = None,
    job_type: str | None = None,
    mode: str | None = None,
    force: bool | None = None,
    reinit: bool | str | None = None,
    resume: bool | str | None = None,
    resume_from: str | None = None,
    fork_from: str | None = None,
    save_code: bool | None = None,
    tensorboard: bool | None = None,
    sync_tensorboard: bool | None = None,
    monitor_gym: bool | None = None,
    settings: Any = None,
    anonymous: Any = None,
    registry: str | Registry | None = None,
) -> Run:
    """Start a run against `registry` (ARTFS_REGISTRY or the embedded default).

    Takes W&B's keywords. `name`, `config`, `tags`, `notes` and `group` are recorded with the
    run (`artifact.logged_by().config`); `dir`, `settings`, `reinit`, `force` and
    `allow_val_change` change nothing here. `mode="disabled"` returns a run whose artifact
    calls do nothing (as W&B); `mode="offline"` works on a local registry only, since artfs
    has nothing that syncs a remote one later.
    """
    for feature, wanted in (("resume_from", resume_from), ("fork_from", fork_from),
                            ("save_code", save_code), ("tensorboard", tensorboard),
                            ("sync_tensorboard", sync_tensorboard),
                            ("monitor_gym", monitor_gym)):
        if wanted:
            raise NotImplementedError(
                f"init({feature}=...) is not supported: artfs covers W&B Artifacts only")
    mode = mode or "online"
    if mode not in MODES:
        raise ValueError(f"invalid mode {mode!r}: use one of {', '.join(MODES)}")
    entity = check_name(entity or artfs_config.default_entity(), "entity")
    project = check_name(project or artfs_config.default_project(), "project")
    job_type = check_name(job_type or "train", "job type")
    cfg = _as_dict(config)
    if config_include_keys:
        cfg = {k: v for k, v in cfg.items() if k in config_include_keys}
    for key in config_exclude_keys or ():
        cfg.pop(key, None)
    info = {"name": name, "config": cfg, "tags": list(tags or ()), "notes": notes,
            "group": group}
    if mode == "disabled":
        record = RunRecord(entity, project, id or "disabled", job_type, created_at="", **info)
        return Run(None, record, active=False, mode=mode)
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    if mode == "offline" and reg.store.local_path("registry.json") is None:
        raise ArtfsError(
            f"mode='offline' needs a registry on a local path, not {reg.url}: artfs has no "
            "queue that uploads to a remote registry later; set ARTFS_REGISTRY to a folder"
        )
    joined = None if id is not None else active_runs.from_environment(reg.url)
    record = _resumed(reg, entity, project, id, resume) if joined is None else None
    if joined is not None:
        # Inside `artfs run`: one run for the files the command reads and what SDK code in it
        # uses and logs. `artfs run` closes it with the command's exit status.
        record = reg.get_run(*joined)
        record.shared = True
        record.config.update(cfg)
        reg.save_run(record)
    elif record is None:
        record = reg.start_run(entity, project, job_type, run_id=id, **info)
    else:
        record.config.update(cfg)
        reg.save_run(record)
    return Run(reg, record, active=True, mode=mode, owned=joined is None)
