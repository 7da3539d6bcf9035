"""The stat → digest table that makes re-logging unchanged files cost one `stat` each."""

from __future__ import annotations

import os
from pathlib import Path

from artfs.hashing import HashCache, hash_file, stat_key


def _files(root: Path) -> list[Path]:
    """More than the 64 paths above which lookups scan a range, in folders whose names sort
    on both sides of '/' ('a!b' < 'a/' < 'a0'), and one folder that is a prefix of another."""
    out = []
    for folder in ("a", "a!b", "a0", "ab"):
        (root / folder).mkdir(parents=True)
        for i in range(30):
            f = root / folder / f"f{i}"
            f.write_text(f"{folder} {i}")
            out.append(f)
    return out


def test_lookup_finds_every_recorded_file_whose_stat_is_unchanged(tmp_path: Path) -> None:
    files = _files(tmp_path / "src")
    cache = HashCache(tmp_path / "hashes.db")
    cache.record([(str(f), *reversed(hash_file(f))) for f in files])
    keys = [(str(f), stat_key(os.stat(f))) for f in files]
    assert cache.lookup(keys) == {str(f): hash_file(f)[0] for f in files}

    changed = files[40]
    changed.write_text("changed, longer than before")
    keys = [(str(f), stat_key(os.stat(f))) for f in files]
    found = cache.lookup(keys)
    assert str(changed) not in found and len(found) == len(files) - 1


def test_lookup_of_some_files_returns_only_those(tmp_path: Path) -> None:
    files = _files(tmp_path / "src")
    cache = HashCache(tmp_path / "hashes.db")
    cache.record([(str(f), *reversed(hash_file(f))) for f in files])
    some = [f for f in files if f.parent.name in ("a", "a0")]
    found = cache.lookup((str(f), stat_key(os.stat(f))) for f in some)
    assert set(found) == {str(f) for f in some}
