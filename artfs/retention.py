"""Retention: versions that expire (W&B's TTL) and a per-artifact `--keep-last N` policy.

Both only mark versions deleted (deletion.py); `artfs gc` applies them before it marks what is
live, so one gc frees what they let go. A version that any alias names is always kept — an
alias a user set is a user saying "this one". `latest` is not such a choice: an expired latest
version goes and `latest` moves back to the newest version that remains.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from . import keys
from .catalog import Catalog
from .deletion import Deleter
from .errors import ArtifactNotFound, InvalidDuration, KeyNotFound
from .names import LATEST, ArtifactRef
from .records import Version, decode, encode
from .store import Store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """`30d`, `12h`, `15m`, `10s`, `2w` or plain seconds; InvalidDuration naming `text`."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise InvalidDuration(f"invalid {what} {text!r}: expected a number with an optional "
                              "unit s, m, h, d or w (e.g. 30d, 12h, 0)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2) or "s"])


def expiry(version: Version, ttl: timedelta | None) -> str | None:
    """When a version with `ttl` expires: its creation plus the TTL (W&B), as ISO time."""
    if ttl is None:
        return None
    return (datetime.fromisoformat(version.created_at) + ttl).isoformat(timespec="microseconds")


def ttl_of(version: Version) -> timedelta | None:
    if version.expires_at is None:
        return None
    return datetime.fromisoformat(version.expires_at) - datetime.fromisoformat(version.created_at)


class Retention:
    """Reads and applies the retention of one registry's artifacts."""

    def __init__(self, store: Store, catalog: Catalog, deleter: Deleter) -> None:
        self.store = store
        self.catalog = catalog
        self.deleter = deleter

    def set_ttl(self, version: Version, ttl: timedelta | None) -> Version:
        return self.catalog.update_version(
            version, description=version.description, metadata=version.metadata,
            aliases=version.aliases, expires_at=expiry(version, ttl))

    def keep_last(self, entity: str, project: str, name: str) -> int | None:
        key = keys.artifact(entity, project, name).retention
        try:
            n = decode(self.store.get(key), f"retention policy {key}").get("keep_last")
        except KeyNotFound:
            return None
        return n if isinstance(n, int) else None

    def set_keep_last(self, entity: str, project: str, name: str, n: int | None) -> None:
        key = keys.artifact(entity, project, name).retention
        if n is None:
            self.store.delete(key)
        else:
            self.store.put(key, encode({"keep_last": n}))

    def due(self, entity: str, project: str, name: str, now: datetime) -> list[int]:
        """Live versions the policy and TTLs let go now, aliased ones excepted."""
        live = self.catalog.versions(entity, project, name)
        aliased = {n for a, n in self.catalog.aliases(entity, project, name).items()
                   if a != LATEST}
        keep = self.keep_last(entity, project, name)
        doomed = set(live[:-keep] if keep else []) if keep is not None else set()
        edited = self.catalog.edited_versions(entity, project, name)
        for n in edited & set(live):
            v = self.catalog.version_record(entity, project, name, n)
            if v.expires_at is not None and datetime.fromisoformat(v.expires_at) <= now:
                doomed.add(n)
        return sorted(doomed - aliased)

    def apply(self, entity: str, now: datetime | None = None) -> list[str]:
        """Delete what retention lets go in every artifact of `entity`; their names."""
        now = now or datetime.now(UTC)
        gone = []
        for project in self.catalog.projects(entity):
            for name in self.catalog.artifacts(entity, project):
                for n in self.due(entity, project, name, now):
                    ref = ArtifactRef(entity, project, name, f"v{n}")
                    try:
                        if set(self.catalog.version(ref).aliases) - {LATEST}:
                            continue  # aliased meanwhile: kept
                        gone.append(self.deleter.delete_version(ref, delete_aliases=True)
                                    .qualified)
                    except ArtifactNotFound:
                        continue  # deleted meanwhile
        return gone
