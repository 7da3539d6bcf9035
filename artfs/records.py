"""The records a registry keeps (versions, runs) and their canonical JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import ArtfsError, CorruptRecord, InvalidMetadata


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def encode(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces): equal records are equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes | str, what: str | Callable[[], str],
           error: type[ArtfsError] = CorruptRecord) -> dict[str, Any]:
    """A JSON object, or `error` naming `what` (e.g. "alias record <key>", "--config"); `what`
    may be a function, called only for the message, where building it costs in a hot loop."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise error(f"{_label(what)} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise error(f"{_label(what)} is not a JSON object")
    return doc


def _label(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


@dataclass
class Version:
    """One committed version, with its mutable description/metadata folded in."""

    entity: str
    project: str
    name: str
    type: str
    version: int
    digest: str
    size: int
    file_count: int
    created_at: str
    logged_by: str | None
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    #: When description, metadata or aliases were last saved; `created_at` until then.
    updated_at: str = ""
    #: When and by whom the version was deleted (its record stays, so lineage can name it).
    deleted_at: str | None = None
    deleted_by: str | None = None
    #: When the version expires (W&B's TTL), as an ISO time; None keeps it.
    expires_at: str | None = None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def label(self) -> str:
        return f"v{self.version}"

    @property
    def qualified(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}:v{self.version}"

    def facts(self) -> dict[str, Any]:
        """What `artfs info` and the mount's extended attributes publish about a version."""
        return {
            "type": self.type,
            "digest": self.digest,
            "size": self.size,
            "file_count": self.file_count,
            "created_at": self.created_at,
            "description": self.description,
            "metadata": self.metadata,
            "aliases": self.aliases,
            "logged_by": self.logged_by,
            **({"deleted_at": self.deleted_at, "deleted_by": self.deleted_by}
               if self.deleted else {}),
            **({"expires_at": self.expires_at} if self.expires_at else {}),
        }


@dataclass
class RunRecord:
    """One pipeline step and the versions it used and logged."""

    entity: str
    project: str
    id: str
    job_type: str
    created_at: str
    finished_at: str | None = None
    #: "running", "finished" or "failed" (interrupted, or stopped by an error).
    state: str = "running"
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    #: What W&B's `init` records about a run besides its artifacts.
    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    group: str | None = None
    #: A run's inputs (main thread) and outputs (background logs) change concurrently; appending
    #: and saving under one lock keeps a later save from dropping an earlier append.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    #: Written by other processes too (a run of `artfs run`: its mounts record inputs, the
    #: commands it runs record outputs), so saved by compare-and-swap, merging their changes.
    shared: bool = field(default=False, repr=False, compare=False)

    def toencode(self) -> dict[str, Any]:
        return {
            "entity": self.entity, "project": self.project, "id": self.id,
            "job_type": self.job_type, "created_at": self.created_at,
            "finished_at": self.finished_at, "state": self.state, "inputs": list(self.inputs),
            "outputs": list(self.outputs), "name": self.name, "config": dict(self.config),
            "tags": list(self.tags), "notes": self.notes, "group": self.group,
        }

    @classmethod
    def decode(cls, doc: dict[str, Any], key: str) -> RunRecord:
        """A stored run; fields a newer artfs added are left out rather than refused."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("lock", "shared")}
        try:
            return cls(**{k: v for k, v in doc.items() if k in known})
        except TypeError as e:
            raise CorruptRecord(f"run record {key} is incomplete: {e}") from e


@dataclass
class CommitResult:
    version: Version
    created: bool


def check_metadata(what: str, description: str | None, metadata: dict[str, Any] | None) -> bytes:
    """The JSON of a description and metadata, or InvalidMetadata before anything is written."""
    if description is not None and not isinstance(description, str):
        raise InvalidMetadata(f"description of {what} must be a string, not {description!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidMetadata(f"metadata of {what} must be a dict, not {type(metadata).__name__}")
    try:
        return encode({"description": description, "metadata": metadata or {}})
    except (TypeError, ValueError) as e:
        raise InvalidMetadata(f"metadata of {what} is not JSON-serialisable: {e}") from e
