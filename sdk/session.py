"""What the SDK knows outside any one object: the active run, and registries opened by default.

W&B keeps a process-wide current run (`wandb.run`); a draft needs it before it is logged, to
know where `add_file` should capture bytes. Kept apart from `run.py` and `artifact.py` so that
neither has to import the other for it.
"""

from __future__ import annotations

import threading
from typing import Any

from artfs import config
from artfs.registry import Registry

_lock = threading.Lock()
#: (run, its registry, its entity), oldest first.
_runs: list[tuple[Any, Registry, str]] = []
_registries: dict[tuple[str, str], Registry] = {}


def started(run: Any, registry: Registry, entity: str) -> None:
    with _lock:
        _runs.append((run, registry, entity))


def finished(run: Any) -> None:
    with _lock:
        _runs[:] = [r for r in _runs if r[0] is not run]


def current_run() -> Any | None:
    """The most recently started run that has not finished (W&B's `wandb.run`)."""
    with _lock:
        return _runs[-1][0] if _runs else None


def default_registry() -> Registry:
    """The registry `ARTFS_REGISTRY` names, opened once per process (and cache folder)."""
    key = (config.registry_url(), str(config.cache_dir()))
    with _lock:
        reg = _registries.get(key)
        if reg is None:
            reg = _registries[key] = Registry(key[0])
        return reg


def capture_target() -> tuple[Registry, str]:
    """Where a draft's files are captured: the active run's registry and entity, else the
    defaults the next `init()` would use."""
    with _lock:
        if _runs:
            return _runs[-1][1], _runs[-1][2]
    return default_registry(), config.default_entity()
