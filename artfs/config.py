"""Where things live by default; every setting can be overridden by an ARTFS_* variable."""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path

import platformdirs

from .errors import ArtfsError

DEFAULT_PROJECT = "uncategorized"
#: 10 GiB: big enough for a few models, small enough not to fill a laptop unnoticed.
DEFAULT_CACHE_SIZE = 10 * 1024**3
DEFAULT_MAX_OBJECTS = 10_000


def embedded_registry() -> str:
    return str(Path(platformdirs.user_data_dir("artfs", appauthor=False)))


def registry_url() -> str:
    return os.environ.get("ARTFS_REGISTRY") or embedded_registry()


def is_embedded_default(url: str | None) -> bool:
    """True when `url` (None: whatever ARTFS_REGISTRY says) names the embedded registry, the
    only one created on first use."""
    chosen = url or registry_url()
    return Path(chosen).expanduser().absolute() == Path(embedded_registry()).absolute()


def cache_dir() -> Path:
    env = os.environ.get("ARTFS_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("artfs", appauthor=False))


def state_dir() -> Path:
    """Staged files and mount logs: data that must survive a crash, unlike the cache."""
    env = os.environ.get("ARTFS_STATE_DIR")
    return Path(env) if env else Path(platformdirs.user_state_dir("artfs", appauthor=False))


def parse_size(text: str) -> int:
    """`10G`, `512M`, `1.5GiB`, `1000` → bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise ArtfsError(f"invalid size {text!r}: expected a number with an optional K/M/G/T")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def cache_size() -> int:
    env = os.environ.get("ARTFS_CACHE_SIZE")
    return parse_size(env) if env else DEFAULT_CACHE_SIZE


def default_entity() -> str:
    return os.environ.get("ARTFS_ENTITY") or getpass.getuser()


def default_project() -> str:
    return os.environ.get("ARTFS_PROJECT") or DEFAULT_PROJECT


def max_objects() -> int:
    env = os.environ.get("ARTFS_MAX_OBJECTS")
    return int(env) if env else DEFAULT_MAX_OBJECTS
