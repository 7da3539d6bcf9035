"""What the pages show, read from the registry: artifact summaries, version tables, a
version's folders a page at a time, and the difference between two versions.

All blocking reads; the server calls them on its request threads.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..listing import VersionListing
from ..manifest import Entry, Manifest
from ..registry import Registry, Version

#: Manifests kept parsed, with their folder index, by their entries in all: a 1 M-file
#: manifest took 18 s to read and 690 MB of memory here, so a diff of two such versions is
#: kept and not more; small versions are kept many at a time.
ENTRIES_KEPT = 2_000_000
#: Version columns that are not metadata keys, and the Version field each sorts by.
FIXED_COLUMNS = {"version": "version", "created": "created_at", "size": "size",
                 "files": "file_count"}


def flatten(metadata: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metadata as dotted keys (`eval.f1`): one column or chart series per leaf."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def show_value(value: Any) -> str:
    """A metadata value as a cell shows it: strings bare, everything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


@dataclass
class ArtifactSummary:
    name: str
    type: str | None
    versions: int
    #: alias → version number, sorted by alias.
    aliases: dict[str, int]
    #: When the newest version was logged or last edited; None without versions.
    updated: str | None


def artifact_summary(reg: Registry, entity: str, project: str, name: str) -> ArtifactSummary:
    """One line of a project's artifact table: three listings and one record read."""
    numbers = reg.versions(entity, project, name)
    updated = None
    if numbers:
        updated = reg.version_record(entity, project, name, numbers[-1]).updated_at
    return ArtifactSummary(name, reg.artifact_type(entity, project, name), len(numbers),
                           dict(sorted(reg.aliases(entity, project, name).items())), updated)


def all_versions(reg: Registry, entity: str, project: str, name: str) -> list[Version]:
    """Every version's record with its aliases, oldest first (the table sorts and pages them;
    a chart needs them all)."""
    return sorted(VersionListing(reg, entity, project, name, per_page=1000),
                  key=lambda v: v.version)


def metadata_keys(versions: list[Version]) -> tuple[list[str], list[str]]:
    """(every flattened metadata key, the keys a chart can draw: a number in some version;
    versions where it is text or missing are left out of the line), sorted."""
    keys: set[str] = set()
    numeric: set[str] = set()
    for v in versions:
        for key, value in flatten(v.metadata).items():
            keys.add(key)
            if is_number(value):
                numeric.add(key)
    return sorted(keys), sorted(numeric)


def column_value(version: Version, column: str) -> Any:
    if column in FIXED_COLUMNS:
        return getattr(version, FIXED_COLUMNS[column])
    return flatten(version.metadata).get(column.removeprefix("m."))


def sort_versions(versions: list[Version], column: str, descending: bool) -> list[Version]:
    """Sorted by one column; versions without a value come last either way, numbers before
    text before anything else, so mixed columns still sort."""
    def rank(v: Version) -> tuple[int, Any]:
        value = column_value(v, column)
        if is_number(value):
            return 0, value
        if isinstance(value, str):
            return 1, value
        return 2, json.dumps(value, sort_keys=True)

    present = [v for v in versions if column_value(v, column) is not None]
    missing = [v for v in versions if column_value(v, column) is None]
    return sorted(present, key=rank, reverse=descending) + missing


class FolderIndex:
    """The folders of one manifest: each folder's sub-folders and files, sorted on first look,
    so a page of a folder is a slice and a version of a million files is never listed whole."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._files: dict[str, list[str]] = defaultdict(list)
        self._folders: dict[str, set[str]] = defaultdict(set)
        self._sorted: dict[str, list[tuple[str, bool]]] = {}
        self._lock = threading.Lock()
        for path in manifest:
            folder, _, name = path.rpartition("/")
            self._files[folder].append(name)
            while folder:
                parent, _, child = folder.rpartition("/")
                if child in self._folders[parent]:
                    break
                self._folders[parent].add(child)
                folder = parent

    def is_folder(self, folder: str) -> bool:
        if folder == "":
            return True
        parent, _, name = folder.rpartition("/")
        return name in self._folders.get(parent, ())

    def _children(self, folder: str) -> list[tuple[str, bool]]:
        with self._lock:
            found = self._sorted.get(folder)
            if found is None:
                found = [(n, True) for n in sorted(self._folders.get(folder, ()))]
                found += [(n, False) for n in sorted(self._files.get(folder, ()))]
                self._sorted[folder] = found
            return found

    def page(self, folder: str, offset: int, limit: int) -> tuple[list[FolderRow], int]:
        """Rows `offset`…`offset+limit` of `folder` (sub-folders first), and how many it has."""
        children = self._children(folder)
        rows = []
        for name, is_dir in children[offset:offset + limit]:
            path = f"{folder}/{name}" if folder else name
            rows.append(FolderRow(name, path, None if is_dir else self.manifest[path]))
        return rows, len(children)


@dataclass
class FolderRow:
    name: str
    path: str
    #: None for a folder.
    entry: Entry | None


class Manifests:
    """The last manifests asked for, parsed and indexed by folder, keyed by digest (a
    version never changes, so nothing here goes stale). Two requests for the same version
    read it once."""

    def __init__(self, reg: Registry, entries_kept: int = ENTRIES_KEPT) -> None:
        self.reg = reg
        self.entries_kept = entries_kept
        self._lock = threading.Lock()
        self._items: OrderedDict[str, FolderIndex] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}

    def _cached(self, digest: str) -> FolderIndex | None:
        with self._lock:
            found = self._items.get(digest)
            if found is not None:
                self._items.move_to_end(digest)
            return found

    def get(self, version: Version) -> FolderIndex:
        found = self._cached(version.digest)
        if found is not None:
            return found
        with self._lock:
            loading = self._loading.setdefault(version.digest, threading.Lock())
        with loading:
            found = self._cached(version.digest)
            if found is not None:
                return found
            index = FolderIndex(self.reg.manifest(version))
            with self._lock:
                self._items[version.digest] = index
                self._loading.pop(version.digest, None)
                while len(self._items) > 1 and sum(
                        len(i.manifest) for i in self._items.values()) > self.entries_kept:
                    self._items.popitem(last=False)
            return index


@dataclass
class MetadataChange:
    key: str
    #: "added", "removed" or "changed".
    kind: str
    old: Any
    new: Any


@dataclass
class Diff:
    """What changed from version `a` to version `b` (paths sorted)."""

    added: list[Entry] = field(default_factory=list)
    removed: list[Entry] = field(default_factory=list)
    changed: list[tuple[Entry, Entry]] = field(default_factory=list)
    metadata: list[MetadataChange] = field(default_factory=list)
    description: tuple[str | None, str | None] | None = None


def diff_versions(a: Version, ma: Manifest, b: Version, mb: Manifest) -> Diff:
    d = Diff()
    for path in sorted(set(ma) | set(mb)):
        old, new = ma.get(path), mb.get(path)
        if old is None and new is not None:
            d.added.append(new)
        elif new is None and old is not None:
            d.removed.append(old)
        elif old != new and old is not None and new is not None:
            d.changed.append((old, new))
    fa, fb = flatten(a.metadata), flatten(b.metadata)
    for key in sorted(set(fa) | set(fb)):
        if key not in fa:
            d.metadata.append(MetadataChange(key, "added", None, fb[key]))
        elif key not in fb:
            d.metadata.append(MetadataChange(key, "removed", fa[key], None))
        elif fa[key] != fb[key]:
            d.metadata.append(MetadataChange(key, "changed", fa[key], fb[key]))
    if a.description != b.description:
        d.description = (a.description, b.description)
    return d
