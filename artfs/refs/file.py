"""`file://` references: size and SHA-256 of local or network-mounted files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import ReferenceChanged, SourceError, TooManyObjects
from ..hashing import hash_file
from ..manifest import Entry
from ..names import check_entry_path


def _path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise SourceError(f"file reference {uri!r} names a host; use file:///absolute/path")
    return Path(unquote(parsed.path))


def expand(uri: str, name: str | None, checksum: bool, max_objects: int) -> list[Entry]:
    from . import entry_name

    root = _path(uri)
    if root.is_file():
        files = [(None, root)]
    elif root.is_dir():
        files = []
        base = root.resolve()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fname in sorted(filenames):
                p = Path(dirpath) / fname
                # A symlink may not lead out of the referenced tree.
                if p.is_symlink() and not p.resolve().is_relative_to(base):
                    continue
                if not p.is_file():
                    continue
                files.append((p.relative_to(root).as_posix(), p))
                if len(files) > max_objects:
                    raise TooManyObjects(
                        f"reference {uri} holds more than {max_objects} files; "
                        "raise max_objects= or ARTFS_MAX_OBJECTS to add them all"
                    )
    else:
        raise SourceError(f"reference {uri} does not exist")
    entries = []
    for rel, p in files:
        path = check_entry_path(entry_name(str(root), name, rel))
        file_uri = p.absolute().as_uri()
        if checksum:
            digest, st = hash_file(p)
            entries.append(Entry(path, st.st_size, digest, file_uri))
        else:
            entries.append(Entry(path, None, None, file_uri))
    return entries


def fetch(entry: Entry, dest: Path) -> None:
    assert entry.ref is not None
    src = _path(entry.ref)
    if not src.is_file():
        raise ReferenceChanged(f"referenced file {entry.ref} (entry {entry.path}) has vanished")
    shutil.copyfile(src, dest)
