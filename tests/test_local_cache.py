"""The cache folder as a whole: `artfs cache` counts and bounds the mount's version indexes
with the blobs, under one ARTFS_CACHE_SIZE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from artfs.cache import LocalCache
from tests.mount_fixtures import Mount


def test_a_mounts_version_index_is_counted_and_cleaned_by_artfs_cache(
    mount: Callable[..., Mount], commit_tree: Callable[..., None],
    run_artfs: Callable[..., object], tmp_path: Path,
) -> None:
    commit_tree("ds", {f"d/{i}.txt": b"x" for i in range(50)})
    m = mount()
    assert len(list((m.artifact("ds") / "v0" / "d").iterdir())) == 50
    indexes = list((tmp_path / "cache" / "fs-index").glob("*/*.db"))
    assert len(indexes) == 1
    out = run_artfs("cache").stdout
    assert "1 version index," in out, out
    run_artfs("cache", "--clean")
    assert not indexes[0].exists()
    assert "0 version indexes" in run_artfs("cache").stdout


def test_version_indexes_and_blobs_share_one_budget(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "c", limit=1000)
    old = cache.index_path("ab" * 32, 1)
    old.parent.mkdir(parents=True)
    old.write_bytes(b"i" * 600)
    cache.blobs.add_file(old)
    new = cache.index_path("cd" * 32, 1)
    new.parent.mkdir(parents=True)
    new.write_bytes(b"j" * 600)
    cache.blobs.add_file(new)  # over the limit: the least recently used index goes
    assert not old.exists() and new.exists()
    assert cache.usage().indexes == (1, 600)


def test_indexes_built_before_they_were_counted_join_the_budget(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "c", limit=1000)
    old = cache.index_path("ab" * 32, 1)
    old.parent.mkdir(parents=True)
    old.write_bytes(b"i" * 600)
    assert cache.usage().indexes == (1, 600)
    assert cache.clean() == 600 and not old.exists()
