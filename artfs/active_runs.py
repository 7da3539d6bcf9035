"""Runs started by `artfs run` that are running on this machine, and the processes in them.

`artfs run` writes one small file per run into the state dir, in a folder per registry, before
it starts its command, and removes it when the command ends. A mount of the same registry reads
that folder to tell which process tree an `open` came from: a process belongs to a run when the
run's process is among its ancestors. A pid alone can be reused after its process ended, so a
process is named by its pid and its start time (field 22 of `/proc/<pid>/stat`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config
from .names import check_name, parse_ref

#: What `artfs run` tells its command: the run it is in ("entity/project/id")...
RUN_ENV = "ARTFS_RUN_ID"
#: ...and the registry that run is recorded in (joined only by code using that registry).
REGISTRY_ENV = "ARTFS_RUN_REGISTRY"


@dataclass(frozen=True)
class ActiveRun:
    """A run in progress: its record's address and the process `artfs run` runs it in."""

    entity: str
    project: str
    id: str
    pid: int
    start: int

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.id}"


def runs_dir(registry_url: str) -> Path:
    """This machine's folder of active runs of the registry at `registry_url`."""
    slug = hashlib.sha256(registry_url.encode()).hexdigest()[:16]
    return config.state_dir() / "runs" / slug


def register(registry_url: str, run: ActiveRun) -> Path:
    """Announce `run` to mounts of the registry; the file to remove when it ends."""
    folder = runs_dir(registry_url)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run.pid}-{run.start}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"entity": run.entity, "project": run.project, "id": run.id,
                               "pid": run.pid, "start": run.start}))
    os.replace(tmp, path)
    return path


def registered(folder: Path) -> list[ActiveRun]:
    """The runs announced in `folder` whose process still runs (a crashed `artfs run` leaves
    its file behind; its pid, if reused, has another start time)."""
    out = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            doc = json.loads((folder / name).read_text())
            run = ActiveRun(doc["entity"], doc["project"], doc["id"], int(doc["pid"]),
                            int(doc["start"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # removed meanwhile, or not ours
        if process_start(run.pid) == run.start:
            out.append(run)
    return out


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None when there is none."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def parent_and_start(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, or None when it is gone."""
    fields = _stat_fields(pid)
    return (int(fields[1]), int(fields[19])) if fields else None


def from_environment(registry_url: str) -> tuple[str, str, str] | None:
    """(entity, project, run id) of the `artfs run` this process is in, when that run is
    recorded in the registry at `registry_url`."""
    path = os.environ.get(RUN_ENV)
    if not path or os.environ.get(REGISTRY_ENV) != registry_url:
        return None
    parts = path.split("/")
    if len(parts) != 3:
        return None
    entity, project, run_id = parts
    return (check_name(entity, "entity"), check_name(project, "project"),
            check_name(run_id, "run id"))


def commit_lineage(inputs: list[str], job_type: str) -> dict[str, Any]:
    """What `artfs commit` tells the mount about lineage: the inputs it names (qualified with
    this process's default entity and project, which the mount's may differ from), the job
    type of the commit's run, and the `artfs run` it is inside, if any."""
    check_name(job_type, "job type")
    qualified = [parse_ref(spec, entity=config.default_entity(),
                           project=config.default_project()).qualified for spec in inputs]
    request: dict[str, Any] = {"inputs": qualified, "job_type": job_type}
    if os.environ.get(RUN_ENV):
        request["run"] = os.environ[RUN_ENV]
        request["run_registry"] = os.environ.get(REGISTRY_ENV)
    return request
