"""Entries, manifests and the artifact digest.

A manifest maps entry paths to what is stored for them. Its canonical JSON (sorted keys, no
whitespace) is hashed with SHA-256; that hash is the artifact digest, the name the manifest is
stored under, and what decides whether logging creates a new version. The stored form may add,
per entry, where a small blob lives inside a pack (see packs.py): storage detail, left out of
the canonical JSON so the same contents always have the same digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptRecord, InvalidPath
from .names import check_entry_path
from .packs import PackLoc

log = logging.getLogger(__name__)

FORMAT = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX64.match(value))


@dataclass(frozen=True)
class Entry:
    """One path inside a version: a stored blob (`digest`) or a reference (`ref`)."""

    path: str
    size: int | None
    digest: str | None = None
    ref: str | None = None
    #: Checksum information of a reference (etag, version_id, generation, md5, crc32c).
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Where the blob lives when it was stored inside a pack (remote registries only).
    pack: PackLoc | None = field(default=None, compare=False)

    @property
    def is_reference(self) -> bool:
        return self.ref is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size}
        if self.digest is not None:
            out["digest"] = self.digest
        if self.ref is not None:
            out["ref"] = self.ref
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    def extra_json(self) -> str | None:
        """`extra` as the one canonical JSON text that indexes store and compare; None if empty."""
        return json.dumps(dict(self.extra), sort_keys=True) if self.extra else None

    @classmethod
    def from_index(cls, path: str, size: int | None, digest: str | None, ref: str | None,
                   extra_json: str | None) -> Entry:
        """The entry an index row holds, `extra` as `extra_json` wrote it."""
        return cls(path, size, digest, ref, json.loads(extra_json) if extra_json else {})

    @classmethod
    def from_json(cls, path: str, data: Mapping[str, Any]) -> Entry:
        size, digest, ref = data.get("size"), data.get("digest"), data.get("ref")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise CorruptRecord(f"entry {path!r}: invalid size {size!r}")
        if digest is not None and not is_sha256(digest):
            raise CorruptRecord(f"entry {path!r}: invalid digest {digest!r}")
        if digest is None and ref is None:
            raise CorruptRecord(f"entry {path!r}: neither a digest nor a reference")
        if ref is not None and not isinstance(ref, str):
            raise CorruptRecord(f"entry {path!r}: invalid reference {ref!r}")
        return cls(path, size, digest, ref, dict(data.get("extra") or {}),
                   _pack_from_json(path, data.get("pack"), size) if digest is not None else None)


def _pack_from_json(path: str, raw: object, size: int | None) -> PackLoc | None:
    if raw is None:
        return None
    if (isinstance(raw, list) and len(raw) == 2 and is_sha256(raw[0])
            and isinstance(raw[1], int) and raw[1] >= 0 and size is not None):
        return PackLoc(raw[0], raw[1], size)
    raise CorruptRecord(f"entry {path!r}: invalid pack location {raw!r}")


class Manifest(Mapping[str, Entry]):
    """An immutable mapping path → Entry with a canonical serialisation."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: dict[str, Entry] = {}
        for e in entries:
            self._entries[e.path] = e
        self._bytes: bytes | None = None

    def __getitem__(self, path: str) -> Entry:
        return self._entries[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return sum(e.size or 0 for e in self._entries.values())

    def to_bytes(self) -> bytes:
        """The canonical JSON the artifact digest is taken of."""
        if self._bytes is None:
            doc = {
                "format": FORMAT,
                "entries": {p: self._entries[p].to_json() for p in sorted(self._entries)},
            }
            self._bytes = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return self._bytes

    def to_stored_bytes(self) -> bytes:
        """What is written to the registry: the canonical JSON plus pack locations, if any."""
        if not any(e.pack for e in self._entries.values()):
            return self.to_bytes()
        entries = {}
        for p in sorted(self._entries):
            e = self._entries[p]
            entries[p] = e.to_json()
            if e.pack is not None:
                entries[p]["pack"] = [e.pack.pack, e.pack.offset]
        doc = {"format": FORMAT, "entries": entries}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, *, expect_digest: str | None = None) -> Manifest:
        """Parse a stored manifest, refusing one that was tampered with or escapes its root.

        A manifest without pack locations is its own canonical form, so hashing the bytes
        checks it; one with them is checked by re-deriving the canonical form.
        """
        canonical = expect_digest is None or hashlib.sha256(data).hexdigest() == expect_digest
        try:
            doc = json.loads(data)
            raw = doc["entries"]
            if doc.get("format") != FORMAT or not isinstance(raw, dict):
                raise ValueError("unknown format")
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptRecord(f"manifest {expect_digest or ''} is malformed: {e}") from e
        entries = []
        for path, data_ in raw.items():
            try:
                clean = check_entry_path(path)
            except InvalidPath as e:
                raise CorruptRecord(f"manifest {expect_digest or ''}: {e}") from e
            if clean != path or not isinstance(data_, dict):
                raise CorruptRecord(f"manifest {expect_digest or ''}: bad entry {path!r}")
            entries.append(Entry.from_json(path, data_))
        manifest = cls(entries)
        if not canonical and manifest.digest != expect_digest:
            raise CorruptRecord(f"manifest {expect_digest} does not match its digest")
        return manifest


def walk_tree(manifest: Manifest) -> Iterator[tuple[str, str, str, Entry | None]]:
    """(path, parent path, name, entry) of every folder (entry None) and file of `manifest`,
    each folder before what it holds; the top folder's path is "".

    A path that is both a file and a folder (`a` and `a/b`) shows as the file, and what would
    be below it is left out with a warning: the mount and staging must show the same tree.
    """
    folders: set[str] = {""}
    files: set[str] = set()
    for path in sorted(manifest):
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        if path in folders or any(p in files for p in prefixes):
            log.warning("manifest %s: %r is both a file and a folder; showing the file",
                        manifest.digest, path)
            continue
        parent = ""
        for prefix, name in zip(prefixes, parts, strict=False):
            if prefix not in folders:
                folders.add(prefix)
                yield prefix, parent, name, None
            parent = prefix
        files.add(path)
        yield path, parent, parts[-1], manifest[path]
