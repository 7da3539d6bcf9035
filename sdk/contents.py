"""What a draft artifact holds before it is logged: files, references, entries kept from the
version a `new_draft()` started from, and the rule for two things under one path."""

from __future__ import annotations

import os
import stat
import weakref
from pathlib import PurePosixPath

from artfs.blobs import Source
from artfs.capture import Copies, Copy
from artfs.errors import DuplicateEntry, SourceError
from artfs.hashing import stat_key
from artfs.manifest import Entry as ManifestEntry
from artfs.registry import Registry

from . import session

POLICIES = ("mutable", "immutable")

#: (entry path, file, its stat when scanned or None).
Item = tuple[str, str, os.stat_result | None]


class DraftContents:
    """The entries of one draft by path, each from exactly one of: an added file (`sources`:
    a copy taken at add time, or the user's file itself with `policy="immutable"`), a
    reference (`refs`), or the version the draft started from (`kept`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sources: dict[str, Source | Copy] = {}
        #: The user's file each of `sources` came from, for messages and duplicate checks.
        self.origins: dict[str, str] = {}
        self.refs: dict[str, ManifestEntry] = {}
        self.kept: dict[str, ManifestEntry] = {}
        #: The copies of policy "mutable", once the first is taken (`close` deletes them).
        self.copies: Copies | None = None

    def occupant(self, path: str) -> str | None:
        """What already holds `path`, said for an error message."""
        if path in self.sources:
            return f"added from {self.origins[path]}"
        if path in self.refs:
            return f"a reference to {self.refs[path].ref}"
        if path in self.kept:
            return "kept from the version this draft was made from"
        return None

    def digest_at(self, path: str) -> str | None:
        if path in self.sources:
            return self.sources[path].digest
        held = self.refs.get(path) or self.kept.get(path)
        return held.digest if held else None

    def drop(self, path: str) -> None:
        src = self.sources.pop(path, None)
        if isinstance(src, Copy) and self.copies is not None:
            self.copies.release([src])
        self.origins.pop(path, None)
        self.refs.pop(path, None)
        self.kept.pop(path, None)

    def paths(self) -> list[str]:
        return [*self.sources, *self.refs, *self.kept]

    def size(self) -> int:
        return (sum(s.expect[0] for s in self.sources.values() if s.expect)
                + sum(e.size or 0 for e in (*self.refs.values(), *self.kept.values())))

    def entry(self, path: str) -> ManifestEntry:
        """The manifest entry of `path`; an added file's digest is computed if still unknown."""
        held = self.refs.get(path) or self.kept.get(path)
        if held is not None:
            return held
        src = self.sources[path]
        return ManifestEntry(path, src.expect[0] if src.expect else None, src.digest)

    def add_files(self, items: list[Item], policy: str, overwrite: bool) -> list[str]:
        """Add (entry path, file, stat) items; returns the entry paths now holding them.

        A path already taken is kept when it holds the same bytes (the same file, or the same
        digest), replaced with `overwrite`, and refused otherwise, naming both. Nothing changes
        in the draft when one item is refused (copies taken for it are deleted).
        """
        if policy not in POLICIES:
            raise ValueError(f"invalid policy {policy!r} for artifact {self.name}: "
                             "use 'mutable' or 'immutable'")
        for path, file, _ in items:
            if path in self.refs and not overwrite:
                raise DuplicateEntry(f"artifact {self.name}: {path!r} is already "
                                     f"{self.occupant(path)}; cannot add {file} there")
        sources: list[Source | Copy]
        if policy == "mutable":
            if self.copies is None:
                registry, entity = session.capture_target()
                self.copies = Copies(registry.blobs, entity)
                # A draft dropped unlogged leaves no copy behind.
                weakref.finalize(self, self.copies.close)
            sources = list(self.copies.take(items))
        else:
            sources = [Source(path, file, stat_key(st if st is not None else os.stat(file)))
                       for path, file, st in items]
        added: list[tuple[Source | Copy, str]] = []
        unused: list[Copy] = []
        try:
            for src, (path, file, _) in zip(sources, items, strict=True):
                taken = self.occupant(path)
                if taken is not None and not overwrite:
                    same_file = path in self.origins and _same_file(self.origins[path], file)
                    if same_file or self._same_bytes(src, path):
                        if isinstance(src, Copy):
                            unused.append(src)
                        continue
                    raise DuplicateEntry(
                        f"artifact {self.name}: {path!r} is already {taken}; cannot add {file} "
                        "under the same name (pass overwrite=True to replace it)"
                    )
                added.append((src, file))
        except DuplicateEntry:
            unused = [s for s in sources if isinstance(s, Copy)]
            raise
        finally:
            if unused and self.copies is not None:
                self.copies.release(unused)
        for src, file in added:
            self.drop(src.path)
            self.sources[src.path] = src
            self.origins[src.path] = file
        return [s.path for s, _ in added]

    def _same_bytes(self, src: Source | Copy, path: str) -> bool:
        """Whether `src` holds what `path` already does (only asked on a name clash: it may
        wait for a digest)."""
        if isinstance(src, Source) and src.digest is None:
            return False
        return src.digest == self.digest_at(path)

    def add_refs(self, entries: list[ManifestEntry]) -> None:
        for e in entries:
            taken = self.occupant(e.path)
            if taken is not None and self.refs.get(e.path) != e:
                raise DuplicateEntry(f"artifact {self.name}: {e.path!r} is already {taken}")
        for e in entries:
            self.refs[e.path] = e

    def remove(self, path: str) -> None:
        """Take a path, or every path below a folder, out; FileNotFoundError naming it when
        nothing is there."""
        held = self.paths()
        if path in held:
            self.drop(path)
            return
        below = [p for p in held if p.startswith(path.rstrip("/") + "/")]
        if not below:
            raise FileNotFoundError(f"artifact {self.name}: no file or folder {path!r} to "
                                    "remove")
        for p in below:
            self.drop(p)

    def rename(self, path: str, new: str) -> None:
        """Move an added file to another entry path (W&B's `is_tmp`)."""
        src, origin = self.sources.pop(path), self.origins.pop(path)
        if isinstance(src, Copy):
            src.path = new
        else:
            src = Source(new, src.file, src.expect, src.digest)
        self.sources[new], self.origins[new] = src, origin

    def to_log(self, registry: Registry, entity: str) -> tuple[list[Source], list[ManifestEntry]]:
        """The sources and the ready entries (references, kept) to log into `registry`."""
        copies = [s for s in self.sources.values() if isinstance(s, Copy)]
        sources = [s for s in self.sources.values() if isinstance(s, Source)]
        if copies:
            assert self.copies is not None
            sources += self.copies.settle(copies, registry.blobs, entity)
        return sources, [*self.refs.values(), *self.kept.values()]

    def logged(self, keep_cache: bool) -> None:
        """The log is done: spooled copies become cache (or go, with `skip_cache`), and copies
        the log did not take over are deleted."""
        if self.copies is None:
            return
        spool = self.copies.spool
        if spool is not None:
            self.copies.blobs.cache.adopt_spool(spool, keep=keep_cache)
        self.copies.close()


def scan(name: str, folder: str, prefix: str, out: list[Item]) -> None:
    """Collect (entry path, file, stat) below `folder` with one stat per file: add_dir of
    10,000 files must stay far below the 0.2 s a whole unchanged re-log may take."""
    try:
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise SourceError(f"cannot read source directory {folder}: {e.strerror}") from e
    for item in items:
        if item.is_dir():
            scan(name, item.path, f"{prefix}{item.name}/", out)
            continue
        try:
            st = item.stat()
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            # A dangling symlink, FIFO or socket: skipping it would silently drop something
            # the user expects in the artifact.
            raise SourceError(
                f"artifact {name}: {item.path} is not a regular file "
                "(dangling symlink, FIFO or socket)"
            )
        # Readability is not checked here: a file that must be read fails then, naming it,
        # and an unchanged re-log of 10,000 files cannot afford another syscall per file.
        out.append((prefix + item.name, item.path, st))


def entry_path(item: str | os.PathLike) -> str:
    return str(PurePosixPath(os.fspath(item)))


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
