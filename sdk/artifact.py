"""`Artifact`: a draft being assembled, or a handle on one committed version (as W&B's)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from artfs import config, refs
from artfs.errors import ArtfsError, DuplicateEntry, SourceError
from artfs.hashing import hash_file
from artfs.names import check_entry_path, check_name
from artfs.registry import Registry, RunRecord, Version
from artfs.retention import expiry, ttl_of

from .contents import POLICIES, DraftContents, Item, entry_path, scan
from .files import ArtifactManifest, Entry, VersionFiles
from .links import VersionLinks

if TYPE_CHECKING:
    pass

__all__ = ["POLICIES", "Artifact", "ArtifactManifest", "ArtifactStateError", "Entry"]


class ArtifactStateError(ArtfsError):
    """An operation that needs a logged artifact on a draft, or the reverse."""


class Artifact(VersionFiles, VersionLinks):
    """A W&B-style artifact: build it with `add_*`, log it with `Run.log_artifact`.

    `incremental` and `use_as` are taken for W&B scripts and change nothing: every log here
    already stores only what changed (and `new_draft()` starts from a version).
    """

    def __init__(
        self,
        name: str,
        type: str,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        incremental: bool = False,
        use_as: str | None = None,
    ) -> None:
        self._name = check_name(name)
        self._type = check_name(type, "artifact type")
        self.description = description
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.aliases: list[str] = []
        self._contents = DraftContents(self._name)
        #: Where a `new_draft()` must be logged: its version's entity and project (as W&B).
        self._home: tuple[str, str] | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._skip_cache = False
        self._registry: Registry | None = None
        self._version: Version | None = None
        self._manifest: ArtifactManifest | None = None
        self._future: Future | None = None
        #: A TTL set since the version was loaded, for `save()` (W&B); None never expires.
        self._ttl: timedelta | None | Literal["unset"] = "unset"

    # -- identity -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """`bike-model:v0` once logged, `bike-model` while a draft (as W&B)."""
        v = self._settled()
        return f"{self._name}:{v.label}" if v else self._name

    @property
    def source_name(self) -> str:
        return self.name

    @property
    def type(self) -> str:
        return self._type

    @property
    def version(self) -> str:
        return self._logged().label

    source_version = version

    @property
    def entity(self) -> str:
        return self._logged().entity

    source_entity = entity

    @property
    def project(self) -> str:
        return self._logged().project

    source_project = project

    @property
    def qualified_name(self) -> str:
        """`entity/project/bike-model:v0`."""
        v = self._logged()
        return f"{v.entity}/{v.project}/{self._name}:{v.label}"

    source_qualified_name = qualified_name

    @property
    def id(self) -> str | None:
        v = self._settled()
        return v.qualified if v else None

    @property
    def digest(self) -> str:
        return self._logged().digest

    @property
    def size(self) -> int:
        """Bytes of every entry, references included (as W&B)."""
        v = self._settled()
        if v is not None:
            return v.size
        return self._contents.size()

    @property
    def file_count(self) -> int:
        return self._logged().file_count

    @property
    def created_at(self) -> str:
        return self._logged().created_at

    @property
    def updated_at(self) -> str:
        return self._logged().updated_at

    @property
    def state(self) -> str:
        v = self._settled()
        return "PENDING" if v is None else "DELETED" if v.deleted else "COMMITTED"

    def is_draft(self) -> bool:
        return self._version is None and self._future is None

    def _settled(self) -> Version | None:
        """The version, waiting for a log in progress; None for a draft."""
        if self._version is None and self._future is not None:
            self.wait()
        return self._version

    def _describe(self) -> str:
        v = self._version
        return v.qualified if v else f"{self._name} (draft)"

    def __repr__(self) -> str:
        return f"<Artifact {self._describe()} type={self._type}>"

    # -- building a draft ---------------------------------------------------------------------
    def _draft(self) -> None:
        if self._version is not None or self._future is not None:
            raise ArtifactStateError(
                f"artifact {self._describe()} is already logged; use new_draft() or a new "
                "Artifact to make another version"
            )

    def add_file(
        self,
        local_path: str | os.PathLike,
        name: str | None = None,
        is_tmp: bool | None = False,
        skip_cache: bool | None = False,
        policy: Literal["mutable", "immutable"] = "mutable",
        overwrite: bool = False,
    ) -> Entry:
        """Add one file under `name` (its base name by default).

        `policy="mutable"` (W&B's default) logs the bytes the file holds now, whatever happens
        to it afterwards; `"immutable"` reads it at upload time, and a file changed by then
        fails the log naming it.
        """
        self._draft()
        file = Path(local_path).absolute()
        if not file.exists():
            raise SourceError(f"artifact {self._name}: source file {file} does not exist")
        if not file.is_file():
            raise SourceError(f"artifact {self._name}: source {file} is not a regular file")
        if not os.access(file, os.R_OK):
            raise SourceError(f"artifact {self._name}: source file {file} is not readable")
        path = check_entry_path(name if name is not None else file.name)
        self._skip_cache = self._skip_cache or bool(skip_cache)
        self._contents.add_files([(path, str(file), None)], policy or "mutable", overwrite)
        if is_tmp:
            path = self._rename_by_digest(path)
        return self._entry_of(path)

    def _rename_by_digest(self, path: str) -> str:
        """W&B's `is_tmp`: the file name becomes a digest prefix, so temporary files of one
        name never collide. Returns the new entry path."""
        src = self._contents.sources[path]
        digest = src.digest or hash_file(src.file)[0]
        folder, _, leaf = path.rpartition("/")
        _, dot, ext = leaf.partition(".")
        new = (f"{folder}/" if folder else "") + digest[:20] + dot + ext
        self._contents.rename(path, new)
        return new

    def _entry_of(self, path: str) -> Entry:
        return Entry._later(self, path, lambda: self._contents.entry(path))

    def add_dir(
        self,
        local_path: str | os.PathLike,
        name: str | None = None,
        skip_cache: bool | None = False,
        policy: Literal["mutable", "immutable"] = "mutable",
        merge: bool = False,
    ) -> None:
        """Add every file below `local_path`, under the prefix `name` if given.

        `merge=True` replaces files of the same names added before (W&B).
        """
        self._draft()
        root = os.path.abspath(local_path)
        if not os.path.isdir(root):
            raise SourceError(f"artifact {self._name}: source directory {root} does not exist")
        prefix = check_entry_path(name) + "/" if name else ""
        found: list[Item] = []
        scan(self._name, root, prefix, found)
        for path, _, _ in found:
            if "\\" in path:
                check_entry_path(path)
        self._skip_cache = self._skip_cache or bool(skip_cache)
        self._contents.add_files(found, policy or "mutable", merge)

    @classmethod
    def from_dir(
        cls,
        local_path: str | os.PathLike,
        name: str,
        type: str,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Artifact:
        """A draft of every file below `local_path`, for scripts that commit a folder without
        a mount: `run.log_artifact(Artifact.from_dir(...))` goes through the same
        `Registry.log_version` as `artfs commit` of a staging folder."""
        art = cls(name, type, description, metadata)
        art.add_dir(local_path)
        return art

    @contextmanager
    def new_file(
        self, name: str, mode: str = "x", encoding: str | None = None,
        policy: Literal["mutable", "immutable"] = "mutable",
    ) -> Iterator[IO[Any]]:
        """Write a file straight into the artifact (text unless the mode has `b`); mode `w`
        replaces an entry of that name, `x` (the default, as W&B) refuses to."""
        self._draft()
        path = check_entry_path(name)
        if mode not in ("w", "wb", "x", "xb"):
            raise ValueError(f"new_file mode must be 'x', 'w', 'xb' or 'wb', not {mode!r}")
        overwrite = "w" in mode
        taken = self._contents.occupant(path)
        if not overwrite and taken is not None:
            raise DuplicateEntry(f"artifact {self._name}: {path!r} is already {taken}")
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="artfs-new-")
        file = Path(self._tmpdir.name) / path
        file.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {} if "b" in mode else {"encoding": encoding or "utf-8"}
        with open(file, mode.replace("x", "w"), **kwargs) as f:
            yield f
        self._contents.add_files([(path, str(file), None)], policy, overwrite=True)
        if policy == "mutable":
            file.unlink()  # its bytes were captured: one copy on disk, not two

    def add_reference(
        self,
        uri: str,
        name: str | None = None,
        checksum: bool = True,
        max_objects: int | None = None,
    ) -> list[Entry]:
        self._draft()
        limit = config.max_objects() if max_objects is None else max_objects
        entries = refs.expand(uri, name, checksum, limit)
        self._contents.add_refs(entries)
        return [Entry(self, e) for e in entries]

    def remove(self, item: str | os.PathLike | Entry) -> None:
        """Take a path, or every path below a folder, out of this draft (W&B).

        Raises FileNotFoundError naming the path when the draft holds nothing there.
        """
        self._draft()
        self._contents.remove(item.path if isinstance(item, Entry) else entry_path(item))

    # -- logging ------------------------------------------------------------------------------
    def _destination(self, entity: str, project: str) -> tuple[str, str]:
        """Where a run logs this draft: a new_draft() goes back to its own artifact."""
        return self._home or (entity, project)

    def _commit_to(
        self,
        registry: Registry,
        entity: str,
        project: str,
        aliases: list[str],
        run: RunRecord | None,
        after: Future | None,
    ) -> Version:
        """Upload this draft's bytes, then (after the previous log of the run) commit it."""

        def barrier() -> None:
            if after is not None:
                try:
                    after.result()
                except BaseException:  # noqa: BLE001 - that log reports its own error
                    pass

        # Under one lease from before the copies become blobs (`artfs gc` spares them).
        with registry.lease(entity):
            sources, ready = self._contents.to_log(registry, entity)
            result = registry.log_version(
                entity,
                project,
                self._name,
                self._type,
                sources,
                ready,
                aliases=aliases,
                description=self.description,
                metadata=self.metadata,
                run=run,
                before_commit=barrier,
            )
        version = result.version
        if self._ttl != "unset":  # W&B: a TTL set on the draft applies to the logged version
            version = registry.retention.set_ttl(version, self._ttl)  # type: ignore[arg-type]
            self._ttl = "unset"
        self._bind(registry, version, None)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        self._contents.logged(keep_cache=not self._skip_cache)
        return version

    def _bind(self, registry: Registry, version: Version,
              manifest: ArtifactManifest | None) -> None:
        self._registry = registry
        self._version = version
        self._manifest = manifest
        self.description = version.description
        self.metadata = dict(version.metadata)
        self.aliases = list(version.aliases)

    @classmethod
    def _from_version(cls, registry: Registry, version: Version) -> Artifact:
        art = cls(version.name, version.type)
        art._bind(registry, version, None)
        return art

    def wait(self, timeout: float | None = None) -> Artifact:
        """Block until a background log finishes; re-raises its error."""
        if self._future is not None:
            self._future.result(timeout)
        if self._version is None:
            raise ArtifactStateError(f"artifact {self._name} has not been logged")
        return self

    def _logged(self) -> Version:
        v = self._settled()
        if v is None:
            raise ArtifactStateError(
                f"artifact {self._name} is a draft: log it with run.log_artifact() first"
            )
        return v

    def _client(self) -> Registry:
        self._logged()
        assert self._registry is not None
        return self._registry

    def new_draft(self) -> Artifact:
        """A draft holding this version's entries, to change and log as the next version.

        Entries left as they are cost nothing when logged: neither read nor uploaded again.
        """
        v = self._logged()
        draft = Artifact(self._name, self._type, self.description, dict(self.metadata))
        draft._contents.kept = {p: e._entry for p, e in self.manifest.entries.items()}
        draft._home = (v.entity, v.project)
        return draft

    # -- reading a logged version -------------------------------------------------------------
    @property
    def manifest(self) -> ArtifactManifest:
        """Every entry by path; a draft's holds what was added so far."""
        if self.is_draft():
            c = self._contents
            return ArtifactManifest(self, {**c.kept, **c.refs,
                                           **{p: self._entry_of(p) for p in c.sources}})
        if self._manifest is None:
            reg = self._client()
            self._manifest = ArtifactManifest(self, reg.manifest(self._logged()))
        return self._manifest

    @property
    def ttl(self) -> timedelta | None:
        """Time to live from creation (W&B); `artfs gc` deletes the version once it passed."""
        if self._ttl != "unset":
            return self._ttl  # type: ignore[return-value]
        v = self._settled()
        return ttl_of(v) if v is not None else None

    @ttl.setter
    def ttl(self, value: timedelta | None) -> None:
        self._ttl = value

    def save(self) -> None:
        """Persist edits to description, metadata, aliases and the TTL."""
        v = self._logged()
        reg = self._client()
        ttl = self._ttl
        expires_at = v.expires_at if ttl == "unset" else expiry(v, ttl)  # type: ignore[arg-type]
        updated = reg.update_version(
            v, description=self.description, metadata=self.metadata, aliases=self.aliases,
            expires_at=expires_at)
        self._ttl = "unset"
        self._bind(reg, updated, self._manifest)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
