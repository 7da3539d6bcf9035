"""Copy a version's entries into a folder: only what is missing, every byte verified.

Files already present are checked by digest, not size; the hash table remembers files this
machine verified or wrote, so an up-to-date folder costs one `stat` per file. Registry and cache
files are copied, never hard-linked: an edit in the user's folder must not reach the registry.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from . import refs
from .errors import IntegrityError, InvalidPath, ReferenceChanged
from .hashing import copy_and_hash
from .manifest import Entry
from .names import check_entry_path
from .registry import TRANSFER_WORKERS, Registry, Version

#: Below this many bytes in total a progress bar would only flicker.
PROGRESS_MIN_BYTES = 64 * 1024 * 1024


def safe_destination(root: Path, path: str) -> Path:
    """`root/path`, refusing any entry path that could land outside `root`."""
    clean = check_entry_path(path)
    dest = root / clean
    if not dest.resolve().is_relative_to(root.resolve()):
        raise InvalidPath(f"entry {path!r} would be written outside {root}")
    return dest


def _progress(total: int, what: str) -> tqdm:
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=what,
        disable=None if total >= PROGRESS_MIN_BYTES else True,
        leave=False,
    )


def download(
    registry: Registry, version: Version, entries: Iterable[Entry], root: Path
) -> Path:
    """Make `root` hold `entries` of `version`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    entries = list(entries)
    targets = [(e, safe_destination(root, e.path)) for e in entries]
    stats: dict[str, os.stat_result] = {}
    for _, dest in targets:
        try:
            stats[str(dest)] = os.stat(dest)
        except (FileNotFoundError, NotADirectoryError):
            pass
    known = registry.hashes.lookup(stats.items())
    todo = [(e, d) for e, d in targets if not (e.digest and known.get(str(d)) == e.digest)]
    written: list[tuple[str, os.stat_result, str]] = []

    bar = _progress(sum(e.size or 0 for e, _ in todo), f"{version.qualified}")

    def fetch(item: tuple[Entry, Path]) -> None:
        entry, dest = item
        if str(dest) in stats and entry.digest and str(dest) not in known:
            # Present but not known: the digest decides, never the size.
            digest, st = copy_and_hash(dest, None)
            if digest == entry.digest:
                written.append((str(dest), st, digest))
                return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.artfs-partial")
        try:
            if entry.is_reference:
                refs.fetch(entry, tmp)
                if entry.digest is not None:
                    digest, st = copy_and_hash(tmp, None)
                    if digest != entry.digest:
                        raise ReferenceChanged(
                            f"reference {entry.ref} (entry {entry.path} of {version.qualified}) "
                            f"changed: expected sha256 {entry.digest}, found {digest}"
                        )
                else:
                    st = os.stat(tmp)
            else:
                assert entry.digest is not None
                src = registry.blob_file(version.entity, entry.digest)
                digest, st = copy_and_hash(src, tmp)
                if digest != entry.digest:
                    raise IntegrityError(
                        f"blob {entry.digest} of {version.qualified} (entry {entry.path}) is "
                        f"corrupt in {registry.url}: its bytes hash to {digest}"
                    )
            os.rename(tmp, dest)
            st = os.stat(dest)
        finally:
            tmp.unlink(missing_ok=True)
        if entry.digest is not None:
            written.append((str(dest), st, entry.digest))
        bar.update(entry.size or 0)

    try:
        if len(todo) <= 1:
            for item in todo:
                fetch(item)
        else:
            with ThreadPoolExecutor(TRANSFER_WORKERS) as pool:
                for _ in pool.map(fetch, todo):
                    pass
    finally:
        bar.close()
        registry.hashes.record(written)
    return root


def verify(version: Version, entries: Iterable[Entry], root: Path) -> None:
    """Hash every file under `root` against `entries`; raise naming the first mismatch."""
    entries = list(entries)
    expected = {e.path: e for e in entries}
    for entry in entries:
        dest = safe_destination(root, entry.path)
        if not dest.is_file():
            raise IntegrityError(f"{dest} is missing (entry {entry.path} of {version.qualified})")
        if entry.digest is not None:
            digest, _ = copy_and_hash(dest, None)
            if digest != entry.digest:
                raise IntegrityError(
                    f"{dest} does not match entry {entry.path} of {version.qualified}: "
                    f"expected sha256 {entry.digest}, found {digest}"
                )
    for dirpath, _, filenames in os.walk(root):
        for fname in filenames:
            rel = (Path(dirpath) / fname).relative_to(root).as_posix()
            if rel not in expected:
                raise IntegrityError(f"{root / rel} is not part of {version.qualified}")
