"""Reference schemes: checksum information at add time, verified bytes at use time.

Each scheme module offers `expand(uri, name, checksum, max_objects) -> list[Entry]` and
`fetch(entry, dest)`, registered in `SCHEMES`; nothing else knows which schemes exist.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

from ..errors import UnsupportedScheme
from ..manifest import Entry
from . import file as _file

SCHEMES: dict[str, ModuleType] = {"file": _file}


def scheme_module(uri: str) -> ModuleType:
    scheme = urlparse(uri).scheme
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise UnsupportedScheme(f"unsupported reference URI {uri!r}: known schemes are {known}")
    return SCHEMES[scheme]


def expand(uri: str, name: str | None, checksum: bool, max_objects: int) -> list[Entry]:
    """The entries a reference adds, named as the spec's naming table says."""
    return scheme_module(uri).expand(uri, name, checksum, max_objects)


def fetch(entry: Entry, dest: Path) -> None:
    """Write the referenced bytes to `dest`, verified against what was recorded."""
    assert entry.ref is not None
    scheme_module(entry.ref).fetch(entry, dest)


def leaf_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def entry_name(base: str, name: str | None, rel: str | None) -> str:
    """Apply the naming table: an object keeps its leaf name (or `name`); a prefix's objects
    keep their path below the prefix, under `name` when given."""
    if rel is None:
        return name or leaf_name(base)
    return f"{name.rstrip('/')}/{rel}" if name else rel
