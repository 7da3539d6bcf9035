"""`Artifact`: a draft being assembled, or a handle on one committed version."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from artfs import config, refs, transfer
from artfs.errors import ArtfsError, DuplicateEntry, SourceError
from artfs.hashing import stat_key
from artfs.manifest import Entry as ManifestEntry
from artfs.manifest import Manifest
from artfs.names import check_entry_path, check_name
from artfs.registry import Registry, RunRecord, Source, Version

if TYPE_CHECKING:
    from .run import Run


class ArtifactStateError(ArtfsError):
    """An operation that needs a logged artifact on a draft, or the reverse."""


class Entry:
    """One path of a logged artifact; downloads only itself."""

    def __init__(self, artifact: Artifact, entry: ManifestEntry) -> None:
        self._artifact = artifact
        self._entry = entry

    @property
    def path(self) -> str:
        return self._entry.path

    @property
    def digest(self) -> str | None:
        return self._entry.digest

    @property
    def size(self) -> int | None:
        return self._entry.size

    def ref(self) -> str | None:
        """The referenced URI, or None for a stored file."""
        return self._entry.ref

    def download(self, root: str | os.PathLike | None = None) -> str:
        """Fetch this entry alone into `root` (the artifact's default folder); returns its path."""
        art = self._artifact
        dest_root = Path(root) if root is not None else art._default_root()
        transfer.download(art._registry, art._logged(), [self._entry], dest_root)
        return str(transfer.safe_destination(dest_root, self._entry.path))

    def __repr__(self) -> str:
        return f"<Entry {self.path!r} of {self._artifact.qualified_name}>"


class Artifact:
    """A W&B-style artifact: build it with `add_*`, log it with `Run.log_artifact`."""

    def __init__(
        self,
        name: str,
        type: str,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._name = check_name(name)
        self._type = check_name(type, "artifact type")
        self.description = description
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.aliases: list[str] = []
        self._sources: dict[str, Source] = {}
        self._refs: dict[str, ManifestEntry] = {}
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._registry: Registry | None = None
        self._version: Version | None = None
        self._manifest: Manifest | None = None
        self._future: Future | None = None

    # -- identity -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def type(self) -> str:
        return self._type

    @property
    def version(self) -> str | None:
        return self._version.label if self._version else None

    @property
    def qualified_name(self) -> str:
        if self._version is None:
            return f"{self._name} (draft)"
        return self._version.qualified

    @property
    def digest(self) -> str:
        return self._logged().digest

    @property
    def size(self) -> int:
        return self._logged().size

    @property
    def created_at(self) -> str:
        return self._logged().created_at

    @property
    def entity(self) -> str:
        return self._logged().entity

    @property
    def project(self) -> str:
        return self._logged().project

    def __repr__(self) -> str:
        return f"<Artifact {self.qualified_name} type={self._type}>"

    # -- building a draft ---------------------------------------------------------------------
    def _draft(self) -> None:
        if self._version is not None or self._future is not None:
            raise ArtifactStateError(
                f"artifact {self.qualified_name} is already logged; create a new Artifact "
                "to make another version"
            )

    def _add_source(
        self, path: str, file: str, st: os.stat_result | None = None, trusted: bool = False
    ) -> None:
        """`trusted` paths come from a directory scan below a checked prefix: a name read from
        a directory cannot hold '/' or be '..', so only the backslash rule is left to check."""
        if not trusted or "\\" in path:
            path = check_entry_path(path)
        existing = self._sources.get(path)
        if existing is not None:
            if os.path.samefile(existing.file, file):
                return
            raise DuplicateEntry(
                f"artifact {self._name}: {path!r} is already added from {existing.file}; "
                f"cannot add {file} under the same name"
            )
        if path in self._refs:
            raise DuplicateEntry(
                f"artifact {self._name}: {path!r} is already a reference to {self._refs[path].ref}"
            )
        if st is None:
            try:
                st = os.stat(file)
            except OSError as e:
                raise SourceError(f"artifact {self._name}: cannot read source {file}: {e}") from e
        self._sources[path] = Source(path, file, stat_key(st))

    def add_file(self, local_path: str | os.PathLike, name: str | None = None) -> None:
        self._draft()
        file = Path(local_path).absolute()
        if not file.exists():
            raise SourceError(f"artifact {self._name}: source file {file} does not exist")
        if not file.is_file():
            raise SourceError(f"artifact {self._name}: source {file} is not a regular file")
        if not os.access(file, os.R_OK):
            raise SourceError(f"artifact {self._name}: source file {file} is not readable")
        self._add_source(name if name is not None else file.name, str(file))

    def add_dir(self, local_path: str | os.PathLike, name: str | None = None) -> None:
        self._draft()
        root = os.path.abspath(local_path)
        if not os.path.isdir(root):
            raise SourceError(f"artifact {self._name}: source directory {root} does not exist")
        prefix = check_entry_path(name) + "/" if name else ""
        found: list[tuple[str, str, os.stat_result]] = []
        self._scan(root, prefix, found)
        for path, file, st in found:
            self._add_source(path, file, st, trusted=True)

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

    def _scan(self, folder: str, prefix: str, out: list[tuple[str, str, os.stat_result]]) -> None:
        """Collect (entry path, file, stat) below `folder` with one stat per file: add_dir of
        10,000 files must stay far below the 0.2 s a whole unchanged re-log may take."""
        try:
            with os.scandir(folder) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise SourceError(f"cannot read source directory {folder}: {e.strerror}") from e
        for item in items:
            if item.is_dir():
                self._scan(item.path, f"{prefix}{item.name}/", out)
                continue
            try:
                st = item.stat()
            except OSError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                # A dangling symlink, FIFO or socket: skipping it would silently drop
                # something the user expects in the artifact.
                raise SourceError(
                    f"artifact {self._name}: {item.path} is not a regular file "
                    "(dangling symlink, FIFO or socket)"
                )
            # Readability is not checked here: a file that must be read fails then, naming it,
            # and an unchanged re-log of 10,000 files cannot afford another syscall per file.
            out.append((prefix + item.name, item.path, st))

    @contextmanager
    def new_file(
        self, name: str, mode: str = "w", encoding: str | None = None
    ) -> Iterator[IO[Any]]:
        """Write a file straight into the artifact (text mode unless `mode='wb'`)."""
        self._draft()
        path = check_entry_path(name)
        if path in self._sources or path in self._refs:
            raise DuplicateEntry(f"artifact {self._name}: {path!r} is already added")
        if mode not in ("w", "wb", "x", "xb"):
            raise ValueError(f"new_file mode must be 'w' or 'wb', not {mode!r}")
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="artfs-new-")
        file = Path(self._tmpdir.name) / path
        file.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {} if "b" in mode else {"encoding": encoding or "utf-8"}
        with open(file, mode.replace("x", "w"), **kwargs) as f:
            yield f
        self._add_source(path, str(file))

    def add_reference(
        self,
        uri: str,
        name: str | None = None,
        checksum: bool = True,
        max_objects: int | None = None,
    ) -> None:
        self._draft()
        limit = config.max_objects() if max_objects is None else max_objects
        entries = refs.expand(uri, name, checksum, limit)
        for e in entries:
            if e.path in self._sources or (e.path in self._refs and self._refs[e.path] != e):
                raise DuplicateEntry(f"artifact {self._name}: {e.path!r} is already added")
        for e in entries:
            self._refs[e.path] = e

    # -- logging ------------------------------------------------------------------------------
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

        result = registry.log_version(
            entity,
            project,
            self._name,
            self._type,
            self._sources.values(),
            self._refs.values(),
            aliases=aliases,
            description=self.description,
            metadata=self.metadata,
            run=run,
            before_commit=barrier,
        )
        self._bind(registry, result.version, None)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        return result.version

    def _bind(self, registry: Registry, version: Version, manifest: Manifest | None) -> None:
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
        if self._version is None and self._future is not None:
            self.wait()
        if self._version is None:
            raise ArtifactStateError(
                f"artifact {self._name} is a draft: log it with run.log_artifact() first"
            )
        return self._version

    # -- reading a logged version -------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        v = self._logged()
        if self._manifest is None:
            assert self._registry is not None
            self._manifest = self._registry.manifest(v)
        return self._manifest

    def files(self) -> list[Entry]:
        return [Entry(self, self.manifest[p]) for p in sorted(self.manifest)]

    def get_path(self, name: str) -> Entry:
        path = check_entry_path(name)
        try:
            return Entry(self, self.manifest[path])
        except KeyError:
            raise KeyError(f"{path!r} is not in {self.qualified_name}") from None

    def _default_root(self) -> Path:
        v = self._logged()
        return Path("artifacts") / f"{v.name}:{v.label}"

    def download(self, root: str | os.PathLike | None = None) -> str:
        """Copy the version's files into `root`, fetching only what is missing or wrong."""
        dest = Path(root) if root is not None else self._default_root()
        assert self._registry is not None
        transfer.download(self._registry, self._logged(), self.manifest.values(), dest)
        return str(dest)

    def verify(self, root: str | os.PathLike | None = None) -> None:
        """Raise IntegrityError unless `root` holds exactly this version's files."""
        dest = Path(root) if root is not None else self._default_root()
        transfer.verify(self._logged(), self.manifest.values(), dest)

    def save(self) -> None:
        """Persist edits to description, metadata and aliases."""
        v = self._logged()
        assert self._registry is not None
        updated = self._registry.update_version(
            v, description=self.description, metadata=self.metadata, aliases=self.aliases
        )
        self._bind(self._registry, updated, self._manifest)

    def logged_by(self) -> Run | None:
        from .run import Run

        v = self._logged()
        if not v.logged_by:
            return None
        assert self._registry is not None
        entity, project, run_id = v.logged_by.split("/")
        return Run._from_record(self._registry, self._registry.get_run(entity, project, run_id))

    def used_by(self) -> list[Run]:
        from .run import Run

        assert self._registry is not None
        return [Run._from_record(self._registry, r) for r in self._registry.used_by(self._logged())]
