"""`Artifact`: a draft being assembled, or a handle on one committed version (as W&B's)."""

from __future__ import annotations

import os
import stat
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Literal

from artfs import config, refs, transfer
from artfs.cache import BlobCache
from artfs.errors import ArtfsError, DuplicateEntry, SourceError
from artfs.hashing import hash_file, stat_key
from artfs.manifest import Entry as ManifestEntry
from artfs.names import ArtifactRef, check_entry_path, check_name
from artfs.registry import Registry, RunRecord, Source, Version

from . import session

if TYPE_CHECKING:
    from .wandb_run import Run

POLICIES = ("mutable", "immutable")


class ArtifactStateError(ArtfsError):
    """An operation that needs a logged artifact on a draft, or the reverse."""


class Entry:
    """One path of an artifact (W&B's manifest entry); downloads only itself."""

    def __init__(self, artifact: Artifact, entry: ManifestEntry) -> None:
        self._artifact = artifact
        self._entry = entry

    @property
    def path(self) -> str:
        return self._entry.path

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
        return hash(self._entry.path)

    def __repr__(self) -> str:
        return f"<Entry {self.path!r} of {self._artifact}>"


class ArtifactManifest(Mapping[str, Entry]):
    """W&B's `artifact.manifest`: `entries` maps each path to its Entry."""

    def __init__(self, artifact: Artifact, entries: Mapping[str, ManifestEntry]) -> None:
        self.entries: dict[str, Entry] = {p: Entry(artifact, e) for p, e in entries.items()}

    def __getitem__(self, path: str) -> Entry:
        return self.entries[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def size(self) -> int:
        return sum(e.size or 0 for e in self.entries.values())


class Artifact:
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
        #: Local files to store: captured copies (policy "mutable") or the files themselves.
        self._sources: dict[str, Source] = {}
        #: The user's file each of `_sources` came from, for messages and duplicate checks.
        self._origins: dict[str, str] = {}
        self._refs: dict[str, ManifestEntry] = {}
        #: Entries taken over from the version a `new_draft()` started from: already stored.
        self._kept: dict[str, ManifestEntry] = {}
        #: Where a `new_draft()` must be logged: its version's entity and project (as W&B).
        self._home: tuple[str, str] | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._spool: Path | None = None
        self._spool_cache: BlobCache | None = None
        self._skip_cache = False
        self._registry: Registry | None = None
        self._version: Version | None = None
        self._manifest: ArtifactManifest | None = None
        self._future: Future | None = None

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
        return (sum(s.expect[0] for s in self._sources.values() if s.expect)
                + sum(e.size or 0 for e in (*self._refs.values(), *self._kept.values())))

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

    def _occupant(self, path: str) -> str | None:
        """What already holds `path` in this draft, said for an error message."""
        if path in self._sources:
            return f"added from {self._origins[path]}"
        if path in self._refs:
            return f"a reference to {self._refs[path].ref}"
        if path in self._kept:
            return "kept from the version this draft was made from"
        return None

    def _digest_at(self, path: str) -> str | None:
        if path in self._sources:
            return self._sources[path].digest
        held = self._refs.get(path) or self._kept.get(path)
        return held.digest if held else None

    def _drop(self, path: str) -> None:
        self._sources.pop(path, None)
        self._origins.pop(path, None)
        self._refs.pop(path, None)
        self._kept.pop(path, None)

    def _add_files(
        self, items: list[tuple[str, str, os.stat_result | None]], policy: str,
        overwrite: bool,
    ) -> list[str]:
        """Add (entry path, file, stat) items; returns the entry paths now holding them.

        A path already taken is kept when it holds the same bytes (the same file, or the same
        digest), replaced with `overwrite`, and refused otherwise, naming both. Nothing changes
        in the draft when one item is refused.
        """
        if policy not in POLICIES:
            raise ValueError(f"invalid policy {policy!r} for artifact {self._name}: "
                             "use 'mutable' or 'immutable'")
        for path, file, _ in items:
            if path in self._refs and not overwrite:
                raise DuplicateEntry(f"artifact {self._name}: {path!r} is already "
                                     f"{self._occupant(path)}; cannot add {file} there")
        if policy == "mutable":
            registry, entity = session.capture_target()
            sources, spool = registry.blobs.capture(entity, items, self._spool)
            if spool is not None and self._spool is None:
                self._spool, self._spool_cache = spool, registry.cache
                weakref.finalize(self, registry.cache.drop_spool, spool)
        else:
            sources = [Source(path, file, stat_key(st if st is not None else os.stat(file)))
                       for path, file, st in items]
        added: list[tuple[Source, str]] = []
        for src, (path, file, _) in zip(sources, items, strict=True):
            taken = self._occupant(path)
            if taken is not None and not overwrite:
                same_file = path in self._origins and _same_file(self._origins[path], file)
                if same_file or (src.digest is not None and src.digest == self._digest_at(path)):
                    continue
                raise DuplicateEntry(
                    f"artifact {self._name}: {path!r} is already {taken}; cannot add {file} "
                    "under the same name (pass overwrite=True to replace it)"
                )
            added.append((src, file))
        for src, file in added:
            self._drop(src.path)
            self._sources[src.path] = src
            self._origins[src.path] = file
        return [s.path for s, _ in added]

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
        self._add_files([(path, str(file), None)], policy or "mutable", overwrite)
        if is_tmp:
            path = self._rename_by_digest(path)
        return self._entry_of(path)

    def _rename_by_digest(self, path: str) -> str:
        """W&B's `is_tmp`: the file name becomes a digest prefix, so temporary files of one
        name never collide. Returns the new entry path."""
        src = self._sources[path]
        digest = src.digest or hash_file(src.file)[0]
        folder, _, leaf = path.rpartition("/")
        _, dot, ext = leaf.partition(".")
        new = (f"{folder}/" if folder else "") + digest[:20] + dot + ext
        origin = self._origins[path]
        self._drop(path)
        self._sources[new] = Source(new, src.file, src.expect, src.digest)
        self._origins[new] = origin
        return new

    def _entry_of(self, path: str) -> Entry:
        held = self._refs.get(path) or self._kept.get(path)
        if held is None:
            src = self._sources[path]
            held = ManifestEntry(path, src.expect[0] if src.expect else None, src.digest)
        return Entry(self, held)

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
        found: list[tuple[str, str, os.stat_result | None]] = []
        self._scan(root, prefix, found)
        for path, _, _ in found:
            if "\\" in path:
                check_entry_path(path)
        self._skip_cache = self._skip_cache or bool(skip_cache)
        self._add_files(found, policy or "mutable", merge)

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

    def _scan(self, folder: str, prefix: str,
              out: list[tuple[str, str, os.stat_result | None]]) -> None:
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
        if not overwrite and self._occupant(path) is not None:
            raise DuplicateEntry(f"artifact {self._name}: {path!r} is already "
                                 f"{self._occupant(path)}")
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="artfs-new-")
        file = Path(self._tmpdir.name) / path
        file.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {} if "b" in mode else {"encoding": encoding or "utf-8"}
        with open(file, mode.replace("x", "w"), **kwargs) as f:
            yield f
        self._add_files([(path, str(file), None)], policy, overwrite=True)
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
        for e in entries:
            taken = self._occupant(e.path)
            if taken is not None and self._refs.get(e.path) != e:
                raise DuplicateEntry(f"artifact {self._name}: {e.path!r} is already {taken}")
        for e in entries:
            self._refs[e.path] = e
        return [Entry(self, e) for e in entries]

    def remove(self, item: str | os.PathLike | Entry) -> None:
        """Take a path, or every path below a folder, out of this draft (W&B).

        Raises FileNotFoundError naming the path when the draft holds nothing there.
        """
        self._draft()
        path = item.path if isinstance(item, Entry) else str(PurePosixPath(os.fspath(item)))
        held = [*self._sources, *self._refs, *self._kept]
        if path in held:
            self._drop(path)
            return
        below = [p for p in held if p.startswith(path.rstrip("/") + "/")]
        if not below:
            raise FileNotFoundError(f"artifact {self._name}: no file or folder {path!r} to "
                                    "remove")
        for p in below:
            self._drop(p)

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

        result = registry.log_version(
            entity,
            project,
            self._name,
            self._type,
            self._sources.values(),
            [*self._refs.values(), *self._kept.values()],
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
        if self._spool is not None and self._spool_cache is not None:
            self._spool_cache.adopt_spool(self._spool, keep=not self._skip_cache)
        return result.version

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
        draft._kept = {p: e._entry for p, e in self.manifest.entries.items()}
        draft._home = (v.entity, v.project)
        return draft

    # -- reading a logged version -------------------------------------------------------------
    @property
    def manifest(self) -> ArtifactManifest:
        """Every entry by path; a draft's holds what was added so far."""
        if self.is_draft():
            entries = {**self._kept, **self._refs}
            for p, s in self._sources.items():
                entries[p] = ManifestEntry(p, s.expect[0] if s.expect else None, s.digest)
            return ArtifactManifest(self, entries)
        if self._manifest is None:
            reg = self._client()
            self._manifest = ArtifactManifest(self, reg.manifest(self._logged()))
        return self._manifest

    def _core_entries(self) -> list[ManifestEntry]:
        return [e._entry for e in self.manifest.entries.values()]

    def files(self, names: list[str] | None = None, per_page: int = 50) -> list[Entry]:
        """The entries, by path; only those in `names` when given (`per_page` is W&B's
        paging of a server request; the manifest here is read whole)."""
        entries = self.manifest.entries
        wanted = sorted(entries) if names is None else [n for n in names if n in entries]
        return [entries[p] for p in wanted]

    def get_entry(self, name: str | os.PathLike) -> Entry:
        path = check_entry_path(str(PurePosixPath(os.fspath(name))))
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

    def save(self) -> None:
        """Persist edits to description, metadata and aliases."""
        v = self._logged()
        reg = self._client()
        updated = reg.update_version(
            v, description=self.description, metadata=self.metadata, aliases=self.aliases
        )
        self._bind(reg, updated, self._manifest)

    def delete(self, delete_aliases: bool = False) -> None:
        """Delete this version (W&B): refused while aliases name it unless `delete_aliases`;
        its bytes are freed by `artfs gc` once no other version needs them."""
        v = self._logged()
        self._version = self._client().delete_version(
            ArtifactRef(v.entity, v.project, v.name, v.label), delete_aliases=delete_aliases)

    def logged_by(self) -> Run | None:
        from .wandb_run import Run

        v = self._logged()
        if not v.logged_by:
            return None
        entity, project, run_id = v.logged_by.split("/")
        reg = self._client()
        return Run._from_record(reg, reg.get_run(entity, project, run_id))

    def used_by(self) -> list[Run]:
        from .wandb_run import Run

        reg = self._client()
        return [Run._from_record(reg, r) for r in reg.used_by(self._logged())]


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
