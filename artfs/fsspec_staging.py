"""The `@staging` side of `artfs://` paths (`fsspec_fs.py`): listing an artifact's staging
folder, and writing into it (files staged through the area's folder, hashed as they are
written, published under the mount's `mount.lock`), and `commit`. A mixin of
`ArtfsFileSystem`, which supplies the name resolution it uses (`_parts`, `_version`, `info`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import staging
from .errors import ArtfsError
from .hashing import copy_and_hash
from .names import is_name
from .registry import Version

PROTOCOL = "artfs"
STAGING = "@staging"  # as artfs/fs/protocol.py's STAGING_NAME (kept import-free of artfs.fs)
#: Bytes a writer copies per call (uploads from local files).
CHUNK = 1024 * 1024


class ReadOnlyPath(ArtfsError, PermissionError):
    """A write to a path that is not inside an artifact's `@staging` folder."""


class StagingBusy(ArtfsError, PermissionError):
    """The staging areas are served by a mount (or held by another process) on this machine."""


def url(path: str) -> str:
    return f"{PROTOCOL}://{path}"




class StagingSide:
    """`ArtfsFileSystem`'s methods for `<artifact>/@staging/` paths."""

    # -- the staging folder -----------------------------------------------------------------
    @contextlib.contextmanager
    def _area(self, parts: list[str]) -> Iterator[staging.Staging | None]:
        """The artifact's staging area to read (None: there is none; it would show `latest`)."""
        e, p, n = parts[:3]
        if not self._area_exists(e, p, n):
            yield None
            return
        area = staging.Staging(self.url, e, p, n)
        try:
            yield area
        finally:
            area.close()

    def _staged_node(self, area: staging.Staging, path: str, inner: list[str]) -> staging.Node:
        node = area.node(staging.ROOT)
        assert node is not None
        for name in inner:
            child = area.child(node.id, name) if node.is_dir else None
            if child is None:
                raise self._missing(path, f"not in the staging folder of {area.what}")
            node = child
        return node

    def _staged_info(self, path: str, parts: list[str]) -> dict[str, Any]:
        e, p, n = parts[:3]
        with self._area(parts) as area:
            if area is None:
                return self._latest_as_staging(path, parts)[0]
            node = self._staged_node(area, path, parts[4:])
            return self._node_info(path, node)

    def _node_info(self, path: str, node: staging.Node) -> dict[str, Any]:
        if node.is_dir:
            return self._dir(path)
        return {"name": path, "size": node.size or 0, "type": "file", "sha256": node.digest,
                "staged": node.kind}

    def _latest_as_staging(self, path: str, parts: list[str]) -> list[dict[str, Any]]:
        """Before its first use a staging folder shows the latest version (as in a mount)."""
        e, p, n = parts[:3]
        if n not in self._names([e, p]):
            raise self._missing(path)
        if not self.registry.versions(e, p, n):
            if len(parts) > 4:
                raise self._missing(path, f"the staging folder of {e}/{p}/{n} is empty")
            return [self._dir(path)]
        version = self._version(path, e, p, n, "latest")
        info = self.info("/".join([e, p, n, version.label, *parts[4:]]))
        return [{**info, "name": path}]

    def _staged_ls(self, path: str, parts: list[str]) -> list[dict[str, Any]]:
        with self._area(parts) as area:
            if area is None:
                info = self._latest_as_staging(path, parts)[0]
                if info["type"] == "file":
                    return [info]
                latest = "/".join([*parts[:3], "latest", *parts[4:]])
                if not self.registry.versions(*parts[:3]):
                    return []
                return [{**i, "name": f"{path}/{i['name'].rsplit('/', 1)[1]}"}
                        for i in self.ls(latest)]
            node = self._staged_node(area, path, parts[4:])
            if not node.is_dir:
                return [self._node_info(path, node)]
            out, after = [], 0
            while batch := area.children(node.id, after):
                out += [self._node_info(f"{path}/{c.name}", c) for c in batch
                        if c.is_dir or c.published]
                after = batch[-1].id
            return out


    # -- writing into @staging ------------------------------------------------------------------
    def _staging_target(self, path: str) -> tuple[list[str], list[str]]:
        """(entity/project/artifact, path inside @staging) of a writable path, else refuse."""
        parts = self._parts(path)
        if len(parts) < 5 or parts[3] != STAGING:
            where = "/".join(parts[:3]) if len(parts) >= 3 else "<entity>/<project>/<artifact>"
            raise ReadOnlyPath(
                f"{url(path)} is read-only: only an artifact's staging folder takes writes "
                f"(artfs://{where}/{STAGING}/…, then fs.commit('artfs://{where}'))")
        for name in parts[:3]:
            if not is_name(name):
                raise ReadOnlyPath(f"{url(path)}: {name!r} is not a valid artifact, project "
                                   "or entity name")
        return parts[:3], parts[4:]

    @contextlib.contextmanager
    def _owned_area(self, target: list[str]) -> Iterator[staging.Staging]:
        """The artifact's staging area, held against the mount and other writers of this
        machine (the mount's `mount.lock`), with its tree repaired as its owner does."""
        root = staging.registry_root(self.url)
        root.mkdir(parents=True, exist_ok=True)
        with self._writing:
            fd = os.open(root / "mount.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                deadline = time.monotonic() + self.staging_wait_s
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                            raise StagingBusy(
                                f"{url('/'.join(target))}/{STAGING} is in use by another "
                                f"process on this machine (an artfs mount: pid {holder or '?'}"
                                "); write through that mount, or unmount it") from None
                        time.sleep(0.1)
                area = staging.open_area(self.registry, *target)
                try:
                    yield area
                finally:
                    area.close()
            finally:
                os.close(fd)

    def _folder(self, area: staging.Staging, folders: list[str], create: bool) -> int:
        node = staging.ROOT
        for name in folders:
            child = area.child(node, name)
            if child is None:
                if not create:
                    raise FileNotFoundError(errno.ENOENT, f"{area.what}/{STAGING}: no folder "
                                            f"{name!r}")
                child = area.mkdir(node, name)
            elif not child.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, f"{area.what}/{STAGING}/"
                                         f"{area.path(child.id)} is a file")
            node = child.id
        return node

    def _publish(self, path: str, upload: Path, digest: str) -> None:
        """Make the finished file `upload` (in the area's folder) the staged file at `path`."""
        target, inner = self._staging_target(path)
        with self._owned_area(target) as area:
            parent = self._folder(area, inner[:-1], create=True)
            node = area.child(parent, inner[-1])
            if node is None:
                node, fd, draft = area.create_open(parent, inner[-1])
                os.close(fd)
            elif node.is_dir:
                raise IsADirectoryError(errno.EISDIR, f"{url(path)} is a folder")
            else:
                draft = area.new_draft(node.id)
            os.replace(upload, draft)
            area.publish(node.id, draft, digest)

    def _upload_file(self, path: str) -> Path:
        target, _ = self._staging_target(path)
        folder = staging.registry_root(self.url).joinpath(*target)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"upload-{uuid.uuid4().hex}"

    def _writer(self, path: str, mode: str) -> _StagedWriter:
        if mode not in ("wb", "xb"):
            self._staging_target(path)  # a clearer error outside @staging
            raise ValueError(f"{url(path)}: mode {mode!r} is not supported; use 'rb' or 'wb'")
        if mode == "xb" and self.exists(path):
            raise FileExistsError(errno.EEXIST, f"{url(path)} exists")
        upload = self._upload_file(path)
        return _StagedWriter(self, path, upload)

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite",
                 **kwargs: Any) -> None:
        """Stage a local file at `rpath` (inside an artifact's @staging folder)."""
        rpath = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        upload = self._upload_file(rpath)
        try:
            digest, _ = copy_and_hash(lpath, upload)
            self._publish(rpath, upload, digest)
        finally:
            upload.unlink(missing_ok=True)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        parts = self._parts(path)
        if len(parts) == 4 and parts[3] == STAGING:
            return
        target, inner = self._staging_target(path)
        with self._owned_area(target) as area:
            self._folder(area, inner, create=True)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        parts = self._parts(path)
        if len(parts) == 4 and parts[3] == STAGING:
            return
        if not exist_ok and self.exists(path):
            raise FileExistsError(errno.EEXIST, f"{url(self._strip_protocol(path))} exists")
        self.mkdir(path)

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        target, inner = self._staging_target(path)
        with self._owned_area(target) as area:
            parent = self._folder(area, inner[:-1], create=False)
            node = area.child(parent, inner[-1])
            if node is None:
                raise self._missing(path)
            if node.is_dir:
                area.rmdir(parent, inner[-1])
            else:
                area.unlink(parent, inner[-1])

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rmdir(self, path: str) -> None:
        self.rm_file(path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        self._staging_target(self._strip_protocol(path2))
        with self.open(path1, "rb") as src, self.open(path2, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)

    def commit(self, path: str, aliases: list[str] | tuple[str, ...] = (), *,
               type: str | None = None, description: str | None = None,
               metadata: dict[str, Any] | None = None) -> Version:
        """Make the staging folder of the artifact at `path` its next version (as `artfs
        commit` does: none when nothing changed); returns the version it names now."""
        parts = self._parts(path)
        if parts[3:4] == [STAGING]:
            parts = parts[:3] + parts[4:]
        if len(parts) != 3:
            raise ValueError(f"{url(self._strip_protocol(path))}: commit takes an artifact "
                             "path, artfs://<entity>/<project>/<artifact>")
        with self._owned_area(parts) as area:
            done = staging.commit(self.registry, area, aliases=aliases, type_=type,
                                  description=description, metadata=metadata)
        return done.version



class _StagedWriter(io.BufferedIOBase):
    """Bytes written to a file of the area's folder, hashed as they come; staged at `close`
    (not when the `with` block ends by an exception: nothing is staged then)."""

    def __init__(self, fs: StagingSide, path: str, upload: Path) -> None:
        self.fs = fs
        self.path = path
        self.upload = upload
        self.file = open(upload, "wb")  # noqa: SIM115 - closed in close()/discard()
        self.sha = hashlib.sha256()
        self.failed = False

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = self.file.write(b)
        self.sha.update(memoryview(b)[:n])
        return n

    def __exit__(self, *exc: Any) -> None:
        self.failed = exc[0] is not None
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.file.close()
            if not self.failed:
                self.fs._publish(self.path, self.upload, self.sha.hexdigest())
        finally:
            self.upload.unlink(missing_ok=True)
            super().close()
