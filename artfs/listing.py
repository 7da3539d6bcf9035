"""The versions of one artifact, newest first, read a page at a time and optionally filtered.

Shared by `Api().artifacts()` and `artfs ls NAME --filter`. What it costs, for N versions of
which E had their description or metadata edited, and A aliases: one listing each of the
artifact's `versions/`, `meta/` and `aliases/` (a request per 1,000 keys on S3/GCS), a read per
alias, then per page a read per version record and per edited one. Records are never read for
a filter on `version` and `aliases` alone, and never a manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .filters import Filter, compile_filter, record_of
from .names import ArtifactRef
from .registry import Registry, Version

#: Parallel record reads on a remote store: half of the S3 store's 32 pooled connections, so
#: uploads of the same process keep theirs. A local store reads them on one thread.
RECORD_READERS = 16
#: Fields known without reading version records.
_CHEAP = frozenset({"version", "aliases"})


class VersionListing:
    """Iterate the versions of `entity/project/name`, newest first; `len()` counts matches."""

    def __init__(self, registry: Registry, entity: str, project: str, name: str, *,
                 filters: Any = None, per_page: int = 50) -> None:
        # Compiled first: a mistake in the filter fails before any request.
        self._filter: Filter | None = compile_filter(filters) if filters is not None else None
        if per_page < 1:
            raise ValueError(f"per_page must be at least 1, not {per_page}")
        self.registry, self.entity, self.project, self.name = registry, entity, project, name
        self.per_page = per_page
        self.type = registry.artifact_type(entity, project, name)
        numbers = sorted(registry.versions(entity, project, name), reverse=True)
        if self.type is None or not numbers:
            raise registry.not_found(ArtifactRef(entity, project, name))
        alias_of = registry.aliases(entity, project, name)
        self._aliases: dict[int, list[str]] = {}
        for alias, n in sorted(alias_of.items()):
            self._aliases.setdefault(n, []).append(alias)
        if self._filter is not None and self._filter.fields <= _CHEAP:
            numbers = [n for n in numbers if self._filter.matches(
                {"version": n, "aliases": self._aliases.get(n, [])})]
        self._numbers = numbers
        self._edited: set[int] | None = None
        self._count: int | None = None if self._needs_records() else len(numbers)

    def _needs_records(self) -> bool:
        return self._filter is not None and not self._filter.fields <= _CHEAP

    def _read(self, numbers: list[int]) -> list[Version]:
        if self._edited is None:
            self._edited = self.registry.edited_versions(self.entity, self.project, self.name)
        edited = self._edited

        def one(n: int) -> Version:
            v = self.registry.version_record(self.entity, self.project, self.name, n,
                                             edited=n in edited)
            v.aliases = list(self._aliases.get(n, []))
            return v

        if len(numbers) <= 1 or self.registry.workers == 1:
            return [one(n) for n in numbers]
        with ThreadPoolExecutor(min(RECORD_READERS, len(numbers))) as pool:
            return list(pool.map(one, numbers))

    def __iter__(self) -> Iterator[Version]:
        flt = self._filter if self._needs_records() else None
        for start in range(0, len(self._numbers), self.per_page):
            for v in self._read(self._numbers[start:start + self.per_page]):
                if flt is None or flt.matches(record_of(v)):
                    yield v

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self)
        return self._count
