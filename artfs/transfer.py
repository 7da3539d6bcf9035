"""Copy a version's entries into a folder: only what is missing, every byte verified.

Files already present are checked by digest, not size; the hash table remembers files this
machine verified or wrote, so an up-to-date folder costs one `stat` per file. Registry and cache
files are copied, never hard-linked: an edit in the user's folder must not reach the registry.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import progress, refs
from .errors import (
    InvalidPath,
    ReferenceChanged,
    SourceError,
    VerificationError,
)
from .hashing import SMALL_FILE, copy_and_hash, stat_key
from .manifest import Entry
from .names import NAME_MAX, check_entry_path
from .registry import Registry, Version

log = logging.getLogger(__name__)


def safe_destination(root: Path, path: str) -> Path:
    """`root/path`, refusing any entry path that could land outside `root`."""
    return Destinations(root).path(path)


class Destinations:
    """Maps entry paths to files below `root`, refusing any that could land outside it.

    Entry paths are already free of `..` and leading `/`; the remaining way out is a symlinked
    folder inside `root`, so each distinct parent folder is resolved once, not every file.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = root.resolve()
        self._parents: dict[str, Path] = {}

    def path(self, entry_path: str) -> Path:
        clean = check_entry_path(entry_path)
        parent_rel, _, name = clean.rpartition("/")
        parent = self._parents.get(parent_rel)
        if parent is None:
            parent = self.root / parent_rel if parent_rel else self.root
            if not parent.resolve().is_relative_to(self._real_root):
                raise InvalidPath(f"entry {entry_path!r} would be written outside {self.root}")
            self._parents[parent_rel] = parent
        return parent / name

    def make_parent(self, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.parent.resolve().is_relative_to(self._real_root):
            raise InvalidPath(f"{dest} would be written outside {self.root}")


@dataclass
class Conflicts:
    """What downloading into a folder that is not empty would do to the files already there."""

    #: Files of the version's paths whose bytes differ: downloading replaces them.
    overwritten: list[str]
    #: Files the version does not have: they would end up mixed with it.
    foreign: list[str]


def destination_conflicts(registry: Registry, entries: Iterable[Entry], root: Path) -> Conflicts:
    """Compare `root` with `entries`: a folder holding a part of the very same version (an
    interrupted download, a second `get`) has no conflicts."""
    by_path = {e.path: e for e in entries}
    overwritten, foreign = [], []
    if not root.is_dir():
        return Conflicts([], [])
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            entry = by_path.get(rel)
            if entry is None:
                if not name.endswith(".artfs-partial"):
                    foreign.append(rel)
            elif entry.digest is None or registry.hashes.hash(path) != entry.digest:
                overwritten.append(rel)
    return Conflicts(sorted(overwritten), sorted(foreign))


def _partial(dest: Path) -> Path:
    """Where `dest` is written before it is renamed into place: its own name, hidden and
    suffixed, or a hash of it when that would pass NAME_MAX (a name of up to 255 bytes is
    allowed in a version)."""
    tmp = f".{dest.name}.artfs-partial"
    if len(os.fsencode(tmp)) > NAME_MAX:
        tmp = f".{hashlib.sha256(os.fsencode(dest.name)).hexdigest()[:32]}.artfs-partial"
    return dest.with_name(tmp)


def download(
    registry: Registry, version: Version, entries: Iterable[Entry], root: Path, *,
    quiet: bool = False, skip_cache: bool = False, skip_missing_refs: bool = False,
) -> Path:
    """Make `root` hold `entries` of `version`; returns `root`. A progress bar shows on a
    terminal unless `quiet`.

    `skip_cache`: remote blobs of any size go straight to `root`, not through the cache.
    `skip_missing_refs`: a reference whose source changed or vanished is left out (logged),
    not an error.
    """
    root.mkdir(parents=True, exist_ok=True)
    entries = list(entries)
    where = Destinations(root)
    targets = [(e, where.path(e.path)) for e in entries]
    stats: dict[str, os.stat_result] = {}
    for _, dest in targets:
        try:
            stats[str(dest)] = os.stat(dest)
        except (FileNotFoundError, NotADirectoryError):
            pass
    known = registry.hashes.lookup((p, stat_key(st)) for p, st in stats.items())
    todo = [(e, d) for e, d in targets if not (e.digest and known.get(str(d)) == e.digest)]
    total = sum(e.size or 0 for e, _ in todo)
    with progress.bar(total, version.qualified, quiet=quiet) as bar:
        registry.prefetch_packed(version.entity, (e for e, _ in todo if not e.is_reference))
        _fetch_all(registry, version, todo, where, stats, known, bar,
                   stream_above=0 if skip_cache else SMALL_FILE,
                   skip_missing_refs=skip_missing_refs)
    return root


def _fetch_all(registry: Registry, version: Version, todo: list[tuple[Entry, Path]],
               where: Destinations, stats: dict[str, os.stat_result], known: dict[str, str],
               bar: progress.Progress, *, stream_above: int, skip_missing_refs: bool) -> None:
    """Download `todo` (entries not yet in place), in parallel where the store gains by it."""
    made: set[Path] = set()
    written: list[tuple[str, os.stat_result, str]] = []

    def fetch(item: tuple[Entry, Path]) -> None:
        entry, dest = item
        if str(dest) in stats and entry.digest and str(dest) not in known:
            # Present but not known: the digest decides, never the size.
            digest, st = copy_and_hash(dest, None)
            if digest == entry.digest:
                written.append((str(dest), st, digest))
                return
        if dest.parent not in made:
            where.make_parent(dest)
            made.add(dest.parent)
        tmp = _partial(dest)
        try:
            if entry.is_reference:
                try:
                    refs.fetch_verified(entry, tmp, f"entry {entry.path} of {version.qualified}")
                except (ReferenceChanged, SourceError) as e:
                    if not skip_missing_refs:
                        raise
                    log.warning("skipped %s of %s: %s", entry.path, version.qualified, e)
                    return
            else:
                assert entry.digest is not None
                registry.blobs.copy_to(version.entity, entry.digest, entry.size or 0, tmp,
                                       f"entry {entry.path} of {version.qualified}",
                                       stream_above=stream_above)
            os.rename(tmp, dest)
            st = os.stat(dest)
        finally:
            tmp.unlink(missing_ok=True)
        if entry.digest is not None:
            written.append((str(dest), st, entry.digest))
        bar.done(entry.size or 0)

    try:
        if len(todo) <= 1 or registry.workers == 1:
            for item in todo:
                fetch(item)
        else:
            with ThreadPoolExecutor(registry.workers) as pool:
                for _ in pool.map(fetch, todo):
                    pass
    finally:
        registry.hashes.record(written)


def verify(version: Version, entries: Iterable[Entry], root: Path) -> None:
    """Hash every file under `root` against `entries`; raise naming the first mismatch."""
    entries = list(entries)
    expected = {e.path: e for e in entries}
    where = Destinations(root)
    for entry in entries:
        dest = where.path(entry.path)
        if not dest.is_file():
            raise VerificationError(
                f"{dest} is missing (entry {entry.path} of {version.qualified})")
        if entry.digest is not None:
            digest, _ = copy_and_hash(dest, None)
            if digest != entry.digest:
                raise VerificationError(
                    f"{dest} does not match entry {entry.path} of {version.qualified}: "
                    f"expected sha256 {entry.digest}, found {digest}"
                )
    for dirpath, _, filenames in os.walk(root):
        for fname in filenames:
            rel = (Path(dirpath) / fname).relative_to(root).as_posix()
            if rel not in expected:
                raise VerificationError(f"{root / rel} is not part of {version.qualified}")


def remove_others(root: Path, keep: set[str]) -> None:
    """Delete every file below `root` whose path is not in `keep`, and the folders that
    leaves empty (for `checkout`). Symlinks are removed, never followed."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        folder = Path(dirpath)
        for name in filenames + [d for d in dirnames if (folder / d).is_symlink()]:
            path = folder / name
            if path.relative_to(root).as_posix() not in keep:
                path.unlink()
        if folder != root and not any(folder.iterdir()):
            folder.rmdir()
