"""The one interface of the three kinds of node a mount serves: namespace folders
(`namespaces.py`), version and alias views (`versions.py`) and `@staging` folders
(`staging_folders.py`). `Operations` decodes an inode once into (kind, node) and calls the
kind; a node is the tuple the kind's methods start with: (Namespace,), (View, row id) or
(StagingFolder, node id). The defaults are those of a read-only node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyfuse3

from .errnos import erofs

if TYPE_CHECKING:
    from ..registry import Registry
    from .attrs import Attributes
    from .inodes import InodeTable
    from .tree import Tree


class NodeKind:
    """Requests on nodes of one kind; `handle` is what `open` or `create` returned."""

    def __init__(self, registry: Registry, tree: Tree, inodes: InodeTable,
                 make_attrs: Attributes) -> None:
        self.registry = registry
        self.tree = tree
        self.inodes = inodes
        self.make_attrs = make_attrs

    async def lookup(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise NotImplementedError

    async def getattr(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise NotImplementedError

    async def opendir(self, *args: Any) -> list[str] | None:
        """Check that the folder can be listed; returns the listing when it is a snapshot."""
        raise NotImplementedError

    async def readdir(self, *args: Any) -> None:
        """(node…, start, token, what `opendir` returned)."""
        raise NotImplementedError

    async def open(self, *args: Any) -> tuple[Any, pyfuse3.FileInfo]:
        """(node…, flags, pid of the opener) → the handle of the open file and how the
        kernel may cache it (`fh` is set by the caller)."""
        raise NotImplementedError

    async def facts(self, *args: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def read(self, handle: Any, off: int, size: int) -> memoryview | bytes:
        raise NotImplementedError

    async def release(self, handle: Any) -> None:
        handle.close()

    async def write(self, handle: Any, off: int, buf: bytes) -> int:
        raise erofs()

    def flush(self, handle: Any) -> None:
        """A close() of a descriptor: nothing to do unless the kind keeps writes."""

    async def fsync(self, handle: Any) -> None:
        """Nothing to make durable unless the kind keeps writes."""

    async def create(self, *args: Any) -> tuple[Any, pyfuse3.EntryAttributes]:
        raise erofs()

    async def setattr(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise erofs()

    async def unlink(self, *args: Any) -> None:
        raise erofs()

    async def mkdir(self, *args: Any) -> pyfuse3.EntryAttributes:
        raise erofs()

    async def rmdir(self, *args: Any) -> None:
        raise erofs()

    def not_storable(self, *args: Any) -> pyfuse3.FUSEError:
        """Symlinks, hard links and special files: (node…, what they are)."""
        return erofs()
