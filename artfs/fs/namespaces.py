"""Namespace folders: the mount's root, entities, projects and artifacts. An artifact folder
lists its versions, aliases and `@staging`; `mkdir` of a new entity, project or artifact makes
a pending one (on local disk until its first commit), `rmdir` undoes it."""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import pyfuse3
import trio

from .. import staging
from ..names import check_name
from .errnos import erofs, registry_call, staging_call
from .inodes import Namespace, View
from .kinds import NodeKind
from .protocol import STAGING_NAME
from .staging_folders import StagingFolders
from .versions import WRITE_FLAGS, VersionViews

log = logging.getLogger(__name__)


class NamespaceFolders(NodeKind):
    """Requests on a namespace folder (Namespace,)."""

    def __init__(self, versions: VersionViews, staging_folders: StagingFolders) -> None:
        """An artifact folder lists the versions' folders and `@staging`: it serves from the
        same registry, listings, inode numbers and attributes as `versions`."""
        super().__init__(versions.registry, versions.tree, versions.inodes, versions.make_attrs)
        self.versions = versions
        self.staging_folders = staging_folders

    async def lookup(self, node: Namespace, name: str) -> pyfuse3.EntryAttributes:
        if node.level == "artifact":
            if name == STAGING_NAME:
                return self.staging_folders.root_attrs(self.inodes.staging(*node.parts))
            view = await self.versions.resolve(node.parts, name)
            return await self.versions.view_attrs(view)
        if name not in await registry_call(self.tree.children(node.parts)):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.make_attrs.namespace(self.inodes.namespace((*node.parts, name)))

    async def getattr(self, node: Namespace) -> pyfuse3.EntryAttributes:
        return self.make_attrs.namespace(self.inodes.namespace(node.parts))

    async def opendir(self, node: Namespace) -> list[str]:
        """A snapshot of the names, so paging through them stays consistent while versions
        are being committed."""
        names = await registry_call(self.tree.children(node.parts))
        if node.level == "artifact" and self.staging_folders.areas.exists_on_disk(*node.parts):
            names.append(STAGING_NAME)  # listed once in use, see SEMANTICS.md
        return names

    async def readdir(self, node: Namespace, start: int, token: pyfuse3.ReaddirToken,
                      names: list[str]) -> None:
        page = names[start:]
        views: dict[str, View] = {}
        if node.level == "artifact":
            # Version records give the folders' times; fetch the page's records in parallel.
            for name in page:
                if name == STAGING_NAME:
                    continue
                try:
                    views[name] = await self.versions.resolve(node.parts, name)
                except pyfuse3.FUSEError:
                    continue  # an alias removed since opendir
            async with trio.open_nursery() as nursery:
                for view in {v.file_slot: v for v in views.values()}.values():
                    nursery.start_soon(self.versions.mtime, view)
        for i, name in enumerate(page, start + 1):
            if node.level == "artifact":
                if name == STAGING_NAME:
                    attrs = self.staging_folders.root_attrs(self.inodes.staging(*node.parts))
                elif name not in views:
                    continue
                else:
                    attrs = await self.versions.view_attrs(views[name])
            else:
                attrs = self.make_attrs.namespace(self.inodes.namespace((*node.parts, name)))
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, i):
                return
            self.inodes.remember(attrs.st_ino)

    async def open(self, node: Namespace, flags: int,
                   pid: int) -> tuple[Any, pyfuse3.FileInfo]:
        if flags & WRITE_FLAGS:
            raise erofs()
        raise pyfuse3.FUSEError(errno.EISDIR)

    async def facts(self, node: Namespace) -> dict[str, Any]:
        out: dict[str, Any] = {"registry": self.registry.url}
        for key, value in zip(("entity", "project", "artifact"), node.parts, strict=False):
            out[key] = value
        if node.level == "artifact":
            out["artifact"] = "/".join(node.parts)
            out["type"] = await registry_call(
                self.tree.blocking(self.registry.artifact_type, *node.parts))
            listing = await registry_call(self.tree.artifact(*node.parts))
            out["versions"] = [f"v{n}" for n in listing.versions]
            out["aliases"] = {a: f"v{n}" for a, n in sorted(listing.aliases.items())}
        return out

    # -- new namespaces ----------------------------------------------------------------------
    async def mkdir(self, node: Namespace, name: str, mode: int) -> pyfuse3.EntryAttributes:
        """A new entity, project or artifact: recorded on local disk until its first commit."""
        if node.level == "artifact":
            raise erofs()
        try:
            check_name(name, ("entity", "project", "artifact name")[len(node.parts)])
        except ValueError as e:
            log.error("mkdir %s: %s", "/".join((*node.parts, name)), e)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        if name in await registry_call(self.tree.children(node.parts)):
            raise pyfuse3.FUSEError(errno.EEXIST)
        parts = (*node.parts, name)
        if node.level == "project":
            # A new, empty staging area.
            await staging_call(self.staging_folders.areas.new_area(self.inodes.staging(*parts)))
        else:
            await self.tree.blocking(staging.add_pending, self.registry.url, parts)
        return self.make_attrs.namespace(self.inodes.namespace(parts))

    async def rmdir(self, node: Namespace, name: str) -> None:
        """Undo the `mkdir` of an entity, project or artifact never committed (empty, see
        `staging.remove_pending`); whatever the registry holds is read-only."""
        if node.level == "artifact":
            raise erofs()
        parts = (*node.parts, name)
        listing = (self.registry.entities, self.registry.projects,
                   self.registry.artifacts)[len(node.parts)]
        # Asked afresh, not from the listing cache: a commit made elsewhere a moment ago must
        # not lose its name here.
        if name in await registry_call(self.tree.blocking(listing, *node.parts)):
            raise erofs()
        if node.level == "project":
            area = self.inodes.staging(*parts)
            await staging_call(self.staging_folders.areas.remove_new_area(area))
        else:
            await staging_call(self.tree.blocking(staging.remove_pending, self.registry.url,
                                                  parts))
