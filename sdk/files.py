"""The files of an artifact as W&B shows them: entries, the manifest, and what copies a
version into a folder (`download`, `checkout`) or checks one against it (`verify`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artfs import transfer
from artfs.manifest import Entry as ManifestEntry
from artfs.names import check_entry_path
from artfs.registry import Registry, Version

from .contents import entry_path

if TYPE_CHECKING:
    from .artifact import Artifact


class Entry:
    """One path of an artifact (W&B's manifest entry); downloads only itself."""

    def __init__(self, artifact: Artifact, entry: ManifestEntry) -> None:
        self._artifact = artifact
        self._path = entry.path
        self._held: ManifestEntry | None = entry
        self._make: Callable[[], ManifestEntry] | None = None

    @classmethod
    def _later(cls, artifact: Artifact, path: str, make: Callable[[], ManifestEntry]) -> Entry:
        """A draft's entry whose file may still be hashed in the background: made when its
        digest (or anything else but the path) is asked for."""
        entry = cls.__new__(cls)
        entry._artifact, entry._path, entry._held, entry._make = artifact, path, None, make
        return entry

    @property
    def _entry(self) -> ManifestEntry:
        if self._held is None:
            assert self._make is not None
            self._held = self._make()
        return self._held

    @property
    def path(self) -> str:
        return self._path

    #: W&B's `File.name` of `artifact.files()`.
    name = path

    @property
    def digest(self) -> str | None:
        return self._entry.digest

    @property
    def size(self) -> int | None:
        return self._entry.size

    @property
    def ref(self) -> str | None:
        """The referenced URI, or None for a stored file."""
        return self._entry.ref

    @property
    def extra(self) -> dict[str, Any]:
        """A reference's checksum information (ETag, version id, generation...)."""
        return dict(self._entry.extra)

    def ref_target(self) -> str:
        if self._entry.ref is None:
            raise ValueError(f"entry {self.path} of {self._artifact} is not a reference")
        return self._entry.ref

    def download(self, root: str | os.PathLike | None = None,
                 skip_cache: bool | None = None) -> str:
        """Fetch this entry alone into `root` (the artifact's default folder); returns its path."""
        art = self._artifact
        dest_root = Path(root) if root is not None else art._default_root()
        transfer.download(art._client(), art._logged(), [self._entry], dest_root,
                          skip_cache=bool(skip_cache))
        return str(transfer.safe_destination(dest_root, self._entry.path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and other._entry == self._entry

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"<Entry {self.path!r} of {self._artifact}>"


class ArtifactManifest(Mapping[str, Entry]):
    """W&B's `artifact.manifest`: `entries` maps each path to its Entry."""

    def __init__(self, artifact: Artifact, entries: Mapping[str, ManifestEntry | Entry]) -> None:
        self.entries: dict[str, Entry] = {
            p: e if isinstance(e, Entry) else Entry(artifact, e) for p, e in entries.items()}

    def __getitem__(self, path: str) -> Entry:
        return self.entries[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def size(self) -> int:
        return sum(e.size or 0 for e in self.entries.values())


class VersionFiles:
    """The file operations of `Artifact` on the version it stands for."""

    manifest: ArtifactManifest

    def _logged(self) -> Version:
        raise NotImplementedError

    def _client(self) -> Registry:
        raise NotImplementedError

    def _describe(self) -> str:
        raise NotImplementedError

    def _core_entries(self) -> list[ManifestEntry]:
        return [e._entry for e in self.manifest.entries.values()]

    def files(self, names: list[str] | None = None, per_page: int = 50) -> list[Entry]:
        """The entries, by path; only those in `names` when given (`per_page` is W&B's
        paging of a server request; the manifest here is read whole)."""
        entries = self.manifest.entries
        wanted = sorted(entries) if names is None else [n for n in names if n in entries]
        return [entries[p] for p in wanted]

    def get_entry(self, name: str | os.PathLike) -> Entry:
        path = check_entry_path(entry_path(name))
        try:
            return self.manifest.entries[path]
        except KeyError:
            raise KeyError(f"{path!r} is not in {self._describe()}") from None

    get_path = get_entry

    def _default_root(self, include_version: bool = True) -> Path:
        v = self._logged()
        return Path("artifacts") / (f"{v.name}:{v.label}" if include_version else v.name)

    def download(
        self,
        root: str | os.PathLike | None = None,
        allow_missing_references: bool = False,
        skip_cache: bool | None = None,
        path_prefix: str | os.PathLike | None = None,
        multipart: bool | None = None,
    ) -> str:
        """Copy the version's files into `root`, fetching only what is missing or wrong.

        `path_prefix` limits it to entries whose path starts with it; with
        `allow_missing_references` a reference whose source changed or vanished is skipped
        (and not written) instead of failing the download. `multipart` is accepted for W&B
        scripts; large files are always fetched in parallel parts where the store allows.
        """
        dest = Path(root) if root is not None else self._default_root()
        entries = self._core_entries()
        if path_prefix is not None:
            prefix = os.fspath(path_prefix).lstrip("/").removeprefix("./")
            entries = [e for e in entries if e.path.startswith(prefix)]
        transfer.download(self._client(), self._logged(), entries, dest,
                          skip_cache=bool(skip_cache),
                          skip_missing_refs=allow_missing_references)
        return str(dest)

    def checkout(self, root: str | os.PathLike | None = None) -> str:
        """Make `root` hold exactly this version: other files there are deleted (W&B)."""
        dest = Path(root) if root is not None else self._default_root(include_version=False)
        transfer.remove_others(dest, set(self.manifest.entries))
        return self.download(dest)

    def verify(self, root: str | os.PathLike | None = None) -> None:
        """Raise ValueError naming the first file under `root` that differs from this version,
        is missing, or is not part of it."""
        dest = Path(root) if root is not None else self._default_root()
        transfer.verify(self._logged(), self._core_entries(), dest)
