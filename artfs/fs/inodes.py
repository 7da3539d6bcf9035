"""Inode numbers that stay the same for the life of a mount, and the kernel's lookup counts.

Two kinds of inode:

- *Namespace* directories (root, entity, project, artifact) are few; each path gets the next
  number below 2**32 the first time it is seen and keeps it.
- Everything in a *view* (a version directory `vN`, or an alias directory resolved to one
  version) is a row of that version's SQLite index; its inode is `slot << 32 | row id`. A slot
  is handed out once per (artifact, version) or (artifact, alias, version), so numbers are stable
  without storing one record per file. Files use the slot of the version itself, so `latest/x`
  and `v3/x` are one inode and share the kernel page cache; directories use the slot of their
  own view, because Linux allows a directory inode only one name. An alias that moves resolves
  to another slot: the kernel sees a new inode and drops what it cached under the old one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pyfuse3

SLOT_SHIFT = 32
ROW_MASK = (1 << SLOT_SHIFT) - 1
#: Row id of a view's top directory in every version index.
VIEW_ROOT_ROW = 1


@dataclass(frozen=True)
class Namespace:
    """Root (`parts == ()`), an entity, a project or an artifact directory."""

    parts: tuple[str, ...]

    @property
    def level(self) -> str:
        return ("root", "entity", "project", "artifact")[len(self.parts)]


@dataclass(frozen=True)
class View:
    """A version's tree as seen through `vN/` (alias None) or through an alias directory."""

    slot: int
    entity: str
    project: str
    name: str
    version: int
    alias: str | None
    #: The slot of the plain `vN` view, whose inode space the files use.
    file_slot: int

    @property
    def label(self) -> str:
        return self.alias or f"v{self.version}"

    @property
    def qualified(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}:v{self.version}"


@dataclass(frozen=True)
class StagingFolder:
    """Which artifact's `@staging` folder an inode is in: its nodes are rows of the area's
    SQLite tree, numbered `slot << 32 | node id` like a view's rows. Node ids survive renames
    and commits. (The area itself is `staging.Staging`; the mount's state of it, `ServedArea`.)"""

    slot: int
    entity: str
    project: str
    name: str

    @property
    def what(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}"


class InodeTable:
    """Stable numbering plus per-slot lookup counts, so an unused view's index can be closed."""

    def __init__(self) -> None:
        self._ns_by_parts: dict[tuple[str, ...], int] = {(): pyfuse3.ROOT_INODE}
        self._ns_by_inode: dict[int, Namespace] = {pyfuse3.ROOT_INODE: Namespace(())}
        self._next_ns = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._slot_by_key: dict[tuple[str, str, str, int, str | None], int] = {}
        self._views: dict[int, View | StagingFolder] = {}
        self._staging: dict[tuple[str, str, str], StagingFolder] = {}
        self._next_slot = itertools.count(1)
        #: Kernel references (lookup / readdirplus replies minus forgets) per slot; slot 0 counts
        #: namespace inodes.
        self._lookups: dict[int, int] = {}

    # -- numbering ---------------------------------------------------------------------------
    def namespace(self, parts: tuple[str, ...]) -> int:
        inode = self._ns_by_parts.get(parts)
        if inode is None:
            inode = next(self._next_ns)
            if inode > ROW_MASK:
                raise OverflowError("more than 2**32 namespace directories in one mount")
            self._ns_by_parts[parts] = inode
            self._ns_by_inode[inode] = Namespace(parts)
        return inode

    def view(self, entity: str, project: str, name: str, version: int, alias: str | None) -> View:
        """The view of `version` (through `alias` when given), created on first use."""
        key = (entity, project, name, version, alias)
        slot = self._slot_by_key.get(key)
        if slot is not None:
            found = self._views[slot]
            assert isinstance(found, View)
            return found
        file_slot = self.view(entity, project, name, version, None).slot if alias else 0
        slot = next(self._next_slot)
        view = View(slot, entity, project, name, version, alias, file_slot or slot)
        self._slot_by_key[key] = slot
        self._views[slot] = view
        return view

    def staging(self, entity: str, project: str, name: str) -> StagingFolder:
        """The staging slot of an artifact, created on first use."""
        key = (entity, project, name)
        area = self._staging.get(key)
        if area is None:
            area = self._staging[key] = StagingFolder(next(self._next_slot), *key)
            self._views[area.slot] = area
        return area

    @staticmethod
    def staging_inode(area: StagingFolder, node_id: int) -> int:
        return (area.slot << SLOT_SHIFT) | node_id

    @staticmethod
    def content_inode(view: View, row: int, is_dir: bool) -> int:
        return ((view.slot if is_dir else view.file_slot) << SLOT_SHIFT) | row

    def decode(self, inode: int) -> Namespace | tuple[View | StagingFolder, int]:
        """What an inode names; KeyError for a number this mount never handed out."""
        slot, row = inode >> SLOT_SHIFT, inode & ROW_MASK
        if slot == 0:
            return self._ns_by_inode[inode]
        return self._views[slot], row

    # -- lookup counts -----------------------------------------------------------------------
    def remember(self, inode: int, count: int = 1) -> None:
        """The kernel took `count` more references (lookups or readdirplus entries) to inodes
        of `inode`'s slot."""
        slot = inode >> SLOT_SHIFT
        self._lookups[slot] = self._lookups.get(slot, 0) + count

    def forget(self, inode: int, count: int) -> int | None:
        """Release `count` references; returns the slot when its last reference went."""
        slot = inode >> SLOT_SHIFT
        left = self._lookups.get(slot, 0) - count
        if left > 0:
            self._lookups[slot] = left
            return None
        self._lookups.pop(slot, None)
        return slot if slot else None

    def referenced(self, slot: int) -> bool:
        return slot in self._lookups
