"""`file://` references: size and SHA-256 of local or network-mounted files.

Unlike remote references, a file is hashed at add time (reading a local or mounted file is what
any later use costs anyway), so its entry has a `digest` and callers verify fetched bytes by it.
Symlinks inside a referenced directory are followed only when they stay inside it: a link to
`/etc/passwd` in a dataset folder must not put that file into an artifact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import SourceError
from ..hashing import hash_file
from ..manifest import Entry
from ..names import check_entry_path
from .naming import entry_name, too_many
from .verify import changed, check_range, expected_range, vanished


def _path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise SourceError(f"file reference {uri!r} names a host; use file:///absolute/path")
    return Path(unquote(parsed.path))


def _walk(uri: str, root: Path, max_objects: int) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    base = root.resolve()
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            p = Path(dirpath) / fname
            if p.is_symlink() and not p.resolve().is_relative_to(base):
                continue
            if not p.is_file():
                continue
            count += 1
            if count <= max_objects:
                files.append((p.relative_to(root).as_posix(), p))
    if count > max_objects:
        # Counted to the end (a local walk is cheap) so the message can say how many.
        raise too_many(uri, count, max_objects, True)
    return files


def expand(uri: str, name: str | None, checksum: bool, max_objects: int) -> list[Entry]:
    root = _path(uri)
    files: list[tuple[str | None, Path]]
    if root.is_file():
        files = [(None, root)]
    elif root.is_dir():
        files = list(_walk(uri, root, max_objects))
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
    """Copy the file; the caller checks its SHA-256 (`entry.digest`), this checks the size."""
    assert entry.ref is not None
    src = _path(entry.ref)
    if not src.is_file():
        raise vanished(entry)
    shutil.copyfile(src, dest)
    size = os.stat(dest).st_size
    if entry.size is not None and size != entry.size:
        raise changed(entry, f"recorded {entry.size} bytes, found {size}")


def read_range(entry: Entry, offset: int, length: int) -> bytes:
    """A positional read. Only the size can be checked per read (hashing the whole file for
    each range would defeat ranged reads); whole-file reads are checked by SHA-256."""
    assert entry.ref is not None
    expected = expected_range(entry, offset, length)
    try:
        fd = os.open(_path(entry.ref), os.O_RDONLY)
    except FileNotFoundError:
        raise vanished(entry) from None
    except OSError as e:
        raise SourceError(f"reference {entry.ref} (entry {entry.path}) cannot be read: "
                          f"{e.strerror}") from e
    try:
        size = os.fstat(fd).st_size
        if entry.size is not None and size != entry.size:
            raise changed(entry, f"recorded {entry.size} bytes, found {size}")
        data = os.pread(fd, expected if expected is not None else length, offset)
    finally:
        os.close(fd)
    return check_range(entry, offset, expected, data)
