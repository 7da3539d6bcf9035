"""`artfs://` paths for code that wants files without a mount: an fsspec filesystem.

`artfs://<entity>/<project>/<artifact>/<version-or-alias>/<path>` names what
`~/artifacts/<entity>/<project>/<artifact>/<version-or-alias>/<path>` names in a mount, and
`<artifact>/@staging/` is the artifact's staging folder, shared with the mount and `artfs
commit`. Registered with fsspec through the `fsspec.specs` entry point, so `fsspec.open`,
pandas, pyarrow and `datasets` take these paths once artfs is installed.

Reads go through the core exactly as the mount's do: `Blobs.locate` decides where a blob's
bytes come from and what verifies them, the blob cache and hash table are the same, and large
remote blobs are read in ranges with the mount's read-ahead policy (`streamed.py`,
`readahead.py`). Writes go into the staging area (`staging.py`; this side in `fsspec_staging.py`)
and `commit` makes a version with `staging.commit`, as `artfs commit` does. No trio or pyfuse3 here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem, _Cached

from . import config, refs, staging
from .blob_reads import Origin
from .errors import ArtifactNotFound, IntegrityError, ReferenceError_, StoreError
from .fsspec_staging import PROTOCOL, STAGING, StagingSide, url
from .fsspec_staging import ReadOnlyPath as ReadOnlyPath
from .fsspec_staging import StagingBusy as StagingBusy
from .hashing import copy_and_hash
from .manifest import Entry, Manifest, walk_tree
from .names import ArtifactRef, is_name, parse_version
from .readahead import PART, READ_AHEAD_MAX, WHOLE_FETCH_MAX, Sequential
from .registry import Registry, Version
from .streamed import StreamedBlob

#: Version trees kept in memory (each a dict of its manifest); versions never change.
TREES_KEPT = 16
#: Ranged GETs in flight per filesystem object beyond a full read-ahead window: random reads.
SPARE_FETCH_THREADS = 4
#: How long a write waits for another process of this machine to finish with the staging areas.
STAGING_WAIT_S = 30.0


@dataclass
class _Tree:
    """One version's files and folders, from its manifest."""

    files: dict[str, Entry] = field(default_factory=dict)
    #: folder path → {child name: child path}; the top folder is "".
    dirs: dict[str, dict[str, str]] = field(default_factory=lambda: {"": {}})

    @classmethod
    def of(cls, manifest: Manifest) -> _Tree:
        t = cls()
        for path, parent, name, entry in walk_tree(manifest):
            t.dirs[parent][name] = path
            if entry is None:
                t.dirs[path] = {}
            else:
                t.files[path] = entry
        return t


class _PerRegistry(_Cached):
    """fsspec keeps one instance per constructor arguments: name the registry the environment
    gives, so a changed ARTFS_REGISTRY (or cache, or state folder) gets its own instance."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if not args and kwargs.get("registry") is None:
            kwargs["registry"] = config.registry_url()
        kwargs.setdefault("cache_dir", str(config.cache_dir()))
        kwargs.setdefault("state_dir", str(config.state_dir()))
        return super().__call__(*args, **kwargs)


class ArtfsFileSystem(StagingSide, AbstractFileSystem, metaclass=_PerRegistry):
    """The registry `registry` (default: ARTFS_REGISTRY) as `artfs://` paths, with the blob
    cache at `cache_dir` (default: ARTFS_CACHE_DIR). `state_dir` is the ARTFS_STATE_DIR the
    instance was made under (its staging areas live there); it only keys fsspec's instance
    cache, the folder itself always comes from the environment, as for the mount and the CLI.
    """

    protocol = PROTOCOL
    root_marker = ""
    #: Remote blobs up to this size are fetched whole and verified before any byte is served
    #: (the mount's rule); larger ones are read in ranges (`StreamedBlob`).
    whole_fetch_max = WHOLE_FETCH_MAX
    #: Largest ranged GET of a streamed blob, and the largest read-ahead window of a
    #: sequential reader (the mount's `PART` and `READ_AHEAD_MAX`).
    part_size = PART
    read_ahead_max = READ_AHEAD_MAX
    #: How long a write waits for another process of this machine to let go of the staging
    #: areas of the registry before it fails naming the holder.
    staging_wait_s = STAGING_WAIT_S

    def __init__(self, registry: str | None = None, cache_dir: str | None = None,
                 state_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registry = Registry(registry or config.registry_url(),
                                 cache_dir=Path(cache_dir) if cache_dir else None)
        self.url = self.registry.url
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str, str, int], Version] = {}
        self._trees: OrderedDict[str, _Tree] = OrderedDict()
        self._streams: dict[str, StreamedBlob] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._hasher: ThreadPoolExecutor | None = None
        self._work: Path | None = None
        #: One writer of this process's staging areas at a time (flock is per descriptor).
        self._writing = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path: str | list[str]) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return path.strip("/")

    # -- resolving names ---------------------------------------------------------------------
    @staticmethod
    def _parts(path: str) -> list[str]:
        return [p for p in ArtfsFileSystem._strip_protocol(path).split("/") if p]

    def _missing(self, path: str, why: str = "") -> FileNotFoundError:
        return FileNotFoundError(errno.ENOENT, f"{url(path)} not found in registry "
                                 f"{self.url}{': ' + why if why else ''}")

    def _names(self, parts: list[str]) -> list[str]:
        """Names inside a namespace folder (root, entity, project), as the mount lists them."""
        if len(parts) == 0:
            names = self.registry.entities()
        elif len(parts) == 1:
            names = self.registry.projects(parts[0])
        else:
            names = self.registry.artifacts(parts[0], parts[1])
        pending = staging.pending_names(self.url, tuple(parts))
        return sorted({n for n in names if is_name(n)} | set(pending))

    def _labels(self, e: str, p: str, n: str) -> list[str]:
        labels = [f"v{v}" for v in self.registry.versions(e, p, n)]
        labels += sorted(self.registry.aliases(e, p, n))
        if self._area_exists(e, p, n):
            labels.append(STAGING)
        return labels

    def _version(self, path: str, e: str, p: str, n: str, label: str) -> Version:
        """The version `label` names now (an alias is read afresh on every call)."""
        if not (is_name(label) or parse_version(label) is not None):
            raise self._missing(path)
        ref = ArtifactRef(e, p, n, label)
        try:
            number = self.registry.resolve(ref)
            key = (e, p, n, number)
            with self._lock:
                record = self._records.get(key)
            if record is None:
                record = self.registry.version(ArtifactRef(e, p, n, f"v{number}"),
                                               with_aliases=False)
                with self._lock:
                    self._records[key] = record
            return record
        except ArtifactNotFound as err:
            raise self._missing(path, str(err)) from None

    def _tree(self, version: Version) -> _Tree:
        with self._lock:
            tree = self._trees.get(version.digest)
            if tree is not None:
                self._trees.move_to_end(version.digest)
                return tree
        tree = _Tree.of(self.registry.manifest(version))
        with self._lock:
            self._trees[version.digest] = tree
            while len(self._trees) > TREES_KEPT:
                self._trees.popitem(last=False)
        return tree

    def _area_exists(self, e: str, p: str, n: str) -> bool:
        return (staging.registry_root(self.url) / e / p / n / "index.db").exists()

    # -- metadata ------------------------------------------------------------------------------
    def _dir(self, path: str, **extra: Any) -> dict[str, Any]:
        return {"name": path, "size": 0, "type": "directory", **extra}

    def _file(self, path: str, entry: Entry, version: Version | None) -> dict[str, Any]:
        info: dict[str, Any] = {"name": path, "size": entry.size or 0, "type": "file",
                                "sha256": entry.digest}
        if entry.ref:
            info["ref"] = entry.ref
        if version is not None:
            info["version"] = version.qualified
            info["created_at"] = version.created_at
        return info

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        parts = self._parts(path)
        if len(parts) < 3:
            if len(parts) and parts[-1] not in self._names(parts[:-1]):
                raise self._missing(path)
            return self._dir(path)
        e, p, n = parts[:3]
        if len(parts) == 3:
            if n not in self._names([e, p]):
                raise self._missing(path)
            return self._dir(path, artifact_type=self.registry.artifact_type(e, p, n))
        if parts[3] == STAGING:
            return self._staged_info(path, parts)
        version = self._version(path, e, p, n, parts[3])
        inner = "/".join(parts[4:])
        if not inner:
            return self._dir(path, version=version.qualified, sha256=version.digest)
        tree = self._tree(version)
        entry = tree.files.get(inner)
        if entry is not None:
            return self._file(path, entry, version)
        if inner in tree.dirs:
            return self._dir(path, version=version.qualified)
        raise self._missing(path, f"no {inner!r} in {version.qualified}")

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        parts = self._parts(path)
        if len(parts) < 4:
            info = self.info(path)
            if len(parts) < 3:
                out = [self._dir("/".join([*parts, c])) for c in self._names(parts)]
            else:
                out = [self._dir(f"{path}/{label}") for label in self._labels(*parts)]
            del info
        elif parts[3] == STAGING:
            out = self._staged_ls(path, parts)
        else:
            version = self._version(path, *parts[:4])
            tree = self._tree(version)
            inner = "/".join(parts[4:])
            if inner in tree.files:
                out = [self._file(path, tree.files[inner], version)]
            elif inner in tree.dirs:
                out = []
                for name, child in tree.dirs[inner].items():
                    full = f"{path}/{name}"
                    entry = tree.files.get(child)
                    out.append(self._file(full, entry, version) if entry is not None
                               else self._dir(full))
            else:
                raise self._missing(path, f"no {inner!r} in {version.qualified}")
        return out if detail else [o["name"] for o in out]

    def checksum(self, path: str) -> int:
        """The file's SHA-256 as an int (fsspec wants an int; `info()["sha256"]` is the hex)."""
        info = self.info(path)
        if info.get("sha256"):
            return int(info["sha256"], 16)
        return super().checksum(path)

    def created(self, path: str) -> datetime:
        info = self.info(path)
        if "created_at" not in info:
            raise self._missing(path, "only files of versions have a creation time")
        return datetime.fromisoformat(info["created_at"].replace("Z", "+00:00"))

    modified = created

    # -- reading ------------------------------------------------------------------------------
    def _open(self, path: str, mode: str = "rb", block_size: Any = None,
              autocommit: bool = True, cache_options: Any = None, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "r" not in mode or "+" in mode:
            return self._writer(path, mode)
        info = self.info(path)
        if info["type"] != "file":
            raise IsADirectoryError(errno.EISDIR, f"{url(path)} is a folder")
        return ArtfsFile(self, path, info["size"], self._handle(path))

    def _source(self, path: str) -> tuple[str, Entry, str, Path | None]:
        """(entity, entry, what, local staged file) of a file: what names it in errors."""
        parts = self._parts(path)
        if len(parts) < 5:
            raise IsADirectoryError(errno.EISDIR, f"{url(path)} is a folder")
        e, p, n = parts[:3]
        if parts[3] == STAGING:
            with self._area(parts) as area:
                if area is not None:
                    node = self._staged_node(area, path, parts[4:])
                    if node.is_dir:
                        raise IsADirectoryError(errno.EISDIR, f"{url(path)} is a folder")
                    if node.kind == "local":
                        return e, Entry("/".join(parts[4:]), node.size, node.digest), \
                            url(path), area.file(node)
                    return e, node.entry("/".join(parts[4:])), url(path), None
            parts = [*parts[:3], "latest", *parts[4:]]
        version = self._version(path, *parts[:4])
        inner = "/".join(parts[4:])
        entry = self._tree(version).files.get(inner)
        if entry is None:
            if inner in self._tree(version).dirs:
                raise IsADirectoryError(errno.EISDIR, f"{url(path)} is a folder")
            raise self._missing(path, f"no {inner!r} in {version.qualified}")
        return e, entry, f"{url(path)} ({version.qualified})", None

    def _handle(self, path: str, *, whole: bool = False) -> _Handle:
        """Verified access to a file's bytes, by the mount's rules (SEMANTICS.md)."""
        entity, entry, what, local = self._source(path)
        try:
            if local is not None:
                return _LocalHandle(local, what)
            if entry.is_reference:
                return _LocalHandle(self._reference(entry, what), what)
            assert entry.digest is not None
            blobs = self.registry.blobs
            loc = blobs.locate(entity, entry.digest, entry.size or 0, self.whole_fetch_max)
            if loc.origin is Origin.IN_PLACE:
                assert loc.path is not None
                blobs.check_in_place(loc.path, entry.digest)
                return _LocalHandle(loc.path, what)
            if loc.origin is Origin.CACHED:
                assert loc.path is not None
                with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: fetch again
                    return _LocalHandle(loc.path, what)
            if loc.origin is not Origin.STREAM or whole:
                return _LocalHandle(blobs.fetch_with_pack(entity, entry.digest, what), what)
            return _StreamHandle(self, self._stream(entry.digest, entry.size or 0, loc.key),
                                 what)
        except (IntegrityError, StoreError, ReferenceError_) as e:
            raise IntegrityError(f"{what}: {e}") from e

    def _reference(self, entry: Entry, what: str) -> Path:
        if entry.digest is not None:
            digest = entry.digest
            return self.registry.cache.fill(digest, lambda tmp: refs.fetch(entry, tmp))
        # Recorded with checksum=False: nothing to check it against, served as found.
        dest = self._work_dir() / f"ref-{uuid.uuid4().hex}"
        refs.fetch(entry, dest)
        return dest

    def _work_dir(self) -> Path:
        with self._lock:
            if self._work is None:
                self._work = self.registry.local_cache.work_dir()
            return self._work

    def _stream(self, digest: str, size: int, key: str) -> StreamedBlob:
        work = self._work_dir()
        with self._lock:
            blob = self._streams.get(digest)
            if blob is None or blob.error:
                if self._pool is None:
                    threads = self.read_ahead_max // self.part_size + SPARE_FETCH_THREADS
                    self._pool = ThreadPoolExecutor(threads, "artfs-fetch")
                    self._hasher = ThreadPoolExecutor(1, "artfs-hash")
                assert self._hasher is not None
                blobs = self.registry.blobs
                blob = StreamedBlob(
                    digest, size, lambda off, n: blobs.read_range(key, off, n),
                    lambda file: blobs.adopt_streamed(digest, file),
                    work / f"{digest}.{uuid.uuid4().hex[:8]}.partial", self._pool, self._hasher,
                    self.part_size)
                self._streams[digest] = blob
            blob.users += 1
            return blob

    def _release(self, blob: StreamedBlob) -> None:
        with self._lock:
            blob.users -= 1
            if blob.users == 0:
                if self._streams.get(blob.digest) is blob:
                    del self._streams[blob.digest]
                blob.close()

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        """Bytes [start, end) of a file (negative: from its end). The whole file of a large
        remote blob is fetched whole and verified first, as `get` does."""
        path = self._strip_protocol(path)
        whole = not start and end is None
        handle = self._handle(path, whole=whole)
        try:
            size = handle.size()
            lo = 0 if start is None else (max(0, size + start) if start < 0 else start)
            hi = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            return handle.read(lo, max(0, hi - lo), None)
        finally:
            handle.close()

    def get_file(self, rpath: str, lpath: str, callback: Any = None, outfile: Any = None,
                 **kwargs: Any) -> None:
        """Download one file, verified before it gets its name (as `artfs get` does)."""
        rpath = self._strip_protocol(rpath)
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        entity, entry, what, local = self._source(rpath)
        if outfile is not None:
            outfile.write(self.cat_file(rpath))
            return
        dest = Path(lpath)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.artfs-partial")
        try:
            if local is not None:
                copy_and_hash(local, tmp)
            elif entry.is_reference:
                refs.fetch_verified(entry, tmp, what)
            else:
                assert entry.digest is not None
                self.registry.blobs.copy_to(entity, entry.digest, entry.size or 0, tmp, what)
            os.rename(tmp, dest)
        except (StoreError, ReferenceError_) as e:
            raise IntegrityError(f"{what}: {e}") from e
        finally:
            tmp.unlink(missing_ok=True)


class _Handle:
    what: str

    def size(self) -> int:
        raise NotImplementedError

    def read(self, off: int, size: int, sequential: Sequential | None) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _LocalHandle(_Handle):
    """A local file already verified (or a staged file, which is the user's own)."""

    def __init__(self, path: Path, what: str) -> None:
        self.what = what
        self.fd = os.open(path, os.O_RDONLY)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, off: int, size: int, sequential: Sequential | None) -> bytes:
        return os.pread(self.fd, size, off)

    def close(self) -> None:
        os.close(self.fd)


class _StreamHandle(_Handle):
    """A large remote blob read in ranges (`StreamedBlob`)."""

    def __init__(self, fs: ArtfsFileSystem, blob: StreamedBlob, what: str) -> None:
        self.fs = fs
        self.blob = blob
        self.what = what

    def size(self) -> int:
        return self.blob.size

    def read(self, off: int, size: int, sequential: Sequential | None) -> bytes:
        window = sequential.read(off, size) if sequential is not None else 0
        if window:
            self.blob.read_ahead(min(off + size, self.blob.size), window)
        try:
            return self.blob.read(off, size)
        except IntegrityError as e:
            raise IntegrityError(f"{self.what}: {e}") from None

    def close(self) -> None:
        self.fs._release(self.blob)


class ArtfsFile(AbstractBufferedFile):
    """A file opened for reading: random access, with read-ahead for sequential readers."""

    def __init__(self, fs: ArtfsFileSystem, path: str, size: int, handle: _Handle) -> None:
        self.handle = handle
        self.sequential = Sequential(fs.read_ahead_max)
        super().__init__(fs, path, mode="rb", block_size=1024 * 1024, cache_type="none",
                         size=size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.handle.read(start, end - start, self.sequential)

    def close(self) -> None:
        if not self.closed:
            self.handle.close()
        super().close()
