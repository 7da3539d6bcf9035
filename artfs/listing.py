"""The versions of one artifact, newest first, read a page at a time and optionally filtered.

Shared by `Api().artifacts()` and `artfs ls NAME --filter`. What it costs, for N versions of
which E had their description or metadata edited, and A aliases: one listing each of the
artifact's `versions/`, `meta/` and `aliases/` (a request per 1,000 keys on S3/GCS), a read per
alias, then per page a read per version record and per edited one. Records are never read for
a filter on `version` and `aliases` alone, and never a manifest. On S3/GCS the records read
are kept on this machine (`RecordCache`) under the token the listing gave them, so listing or
filtering the same versions again reads only those written since: ~3 requests per 1,000
versions plus one per alias.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import keys
from .errors import KeyNotFound
from .filters import Filter, compile_filter, record_of
from .names import ArtifactRef
from .record_cache import RecordCache
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
        self._keys = keys.artifact(entity, project, name)
        #: Version record key → the token the listing gave it (None: the store gives none).
        self._tokens: dict[str, str | None] = {}
        numbers = self._live_numbers()
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
        local = registry.local_cache
        self._cache = RecordCache.beside(local.root, local.blobs.limit)

    def _live_numbers(self) -> list[int]:
        """Numbers listed in `versions/` less those with a tombstone, newest first."""
        art = self._keys
        taken: list[int] = []
        deleted: set[int] = set()
        for key, token in self._listed(art.versions):
            n = art.version_number(key)
            if n is not None:
                taken.append(n)
                self._tokens[key] = token
            elif (n := art.tombstone_number(key)) is not None:
                deleted.add(n)
        return sorted(set(taken) - deleted, reverse=True)

    def _listed(self, prefix: str) -> Iterator[tuple[str, str | None]]:
        """(key, token) below `prefix`; no token from a store on a local disk, whose reads
        cost less than keeping copies of them."""
        store = self.registry.store
        if not store.small_objects_costly:
            return ((k, None) for k in store.list(prefix))
        return ((i.key, i.token) for i in store.list_info(prefix))

    def _needs_records(self) -> bool:
        return self._filter is not None and not self._filter.fields <= _CHEAP

    def _list_edits(self) -> set[int]:
        found: set[int] = set()
        for key, token in self._listed(self._keys.metas):
            n = self._keys.version_number(key)
            if n is not None:
                found.add(n)
                self._tokens[key] = token
        return found

    def _fetch(self, wanted: list[str]) -> dict[str, bytes]:
        """The bytes of each key: from this machine's copies when the listing's token still
        matches, else read (in parallel on a remote store) and kept for next time."""
        tokens = {k: t for k in wanted if (t := self._tokens.get(k)) is not None}
        url = self.registry.store.url
        found = self._cache.get(url, tokens) if tokens else {}
        missing = [k for k in wanted if k not in found]

        def read(key: str) -> tuple[str, bytes | None]:
            try:
                return key, self.registry.store.get(key)
            except KeyNotFound:
                return key, None

        if len(missing) <= 1 or self.registry.workers == 1:
            fetched = [read(k) for k in missing]
        else:
            with ThreadPoolExecutor(min(RECORD_READERS, len(missing))) as pool:
                fetched = list(pool.map(read, missing))
        self._cache.put(url, ((k, tokens[k], b) for k, b in fetched
                              if b is not None and k in tokens))
        found.update((k, b) for k, b in fetched if b is not None)
        return found

    def _read(self, numbers: list[int]) -> list[Version]:
        if self._edited is None:
            self._edited = self._list_edits()
        art = self._keys
        records = {n: art.version(n) for n in numbers}
        edits = {n: art.meta(n) for n in numbers if n in self._edited}
        data = self._fetch([*records.values(), *edits.values()])
        versions: list[Version] = []
        for n, key in records.items():
            record = data.get(key)
            if record is None:  # deleted since it was listed
                continue
            edit = data.get(edits[n]) if n in edits else None
            v = self.registry.catalog.version_from(self.entity, self.project, self.name, n,
                                                   record, edit)
            if v.deleted:
                continue
            v.aliases = list(self._aliases.get(n, []))
            versions.append(v)
        return versions

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
