"""`artfs ui`'s bad inputs fail before serving, naming the culprit; a big version's folders
are read a page at a time (artfs/ui/model.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from artfs.manifest import Entry, Manifest
from artfs.ui.model import FolderIndex, diff_versions, flatten, sort_versions
from tests.mount_fixtures import artfs

DIGEST = "ab" * 32


def test_ui_refuses_a_missing_registry_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-registry"
    r = artfs("ui", "--registry", str(missing), "--port", "0", check=False)
    assert r.returncode == 1 and str(missing) in r.stderr and "artfs init" in r.stderr
    assert not missing.exists()


def test_ui_refuses_a_port_out_of_range_naming_it(tmp_path: Path) -> None:
    r = artfs("ui", "--port", "70000", check=False)
    assert r.returncode == 1 and "--port 70000" in r.stderr


def test_ui_refuses_a_port_in_use_naming_it(tmp_path: Path) -> None:
    url = tmp_path / "registry"
    artfs("init", str(url))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = artfs("ui", "--registry", str(url), "--port", str(port), check=False)
    assert r.returncode == 1 and f"127.0.0.1:{port}" in r.stderr


def test_a_folder_of_a_big_version_is_read_a_page_at_a_time() -> None:
    manifest = Manifest(Entry(f"d{i % 10}/sub/f{i:06d}", 1, DIGEST) for i in range(100_000))
    index = FolderIndex(manifest)
    top, total = index.page("", 0, 200)
    assert total == 10 and [r.name for r in top] == [f"d{i}" for i in range(10)]
    assert all(r.entry is None for r in top)
    rows, total = index.page("d3/sub", 9_990, 200)
    assert total == 10_000 and len(rows) == 10
    assert rows[-1].path == "d3/sub/f099993" and rows[-1].entry == manifest["d3/sub/f099993"]
    assert index.is_folder("d3/sub") and not index.is_folder("d3/su") \
        and not index.is_folder("d3/sub/f000003")


def test_nested_metadata_becomes_dotted_columns() -> None:
    assert flatten({"eval": {"f1": 0.5, "per": {"a": 1}}, "empty": {}, "x": [1]}) == {
        "eval.f1": 0.5, "eval.per.a": 1, "empty": {}, "x": [1]}


def _version(n: int, metadata: dict) -> object:
    from artfs.records import Version
    return Version("e", "p", "n", "t", n, DIGEST, 0, 0, "2026-01-01", None, None, metadata)


def test_a_mixed_column_sorts_numbers_then_text_and_missing_last() -> None:
    vs = [_version(0, {"k": "b"}), _version(1, {}), _version(2, {"k": 3}), _version(3, {"k": 1})]
    assert [v.version for v in sort_versions(vs, "m.k", False)] == [3, 2, 0, 1]
    assert [v.version for v in sort_versions(vs, "m.k", True)] == [0, 2, 3, 1]


def test_a_diff_names_added_removed_changed_files_and_metadata() -> None:
    other = "cd" * 32
    a = Manifest([Entry("same", 1, DIGEST), Entry("gone", 1, DIGEST), Entry("edit", 1, DIGEST)])
    b = Manifest([Entry("same", 1, DIGEST), Entry("new", 2, other), Entry("edit", 2, other)])
    d = diff_versions(_version(0, {"a": 1, "b": 2}), a, _version(1, {"b": 3, "c": 4}), b)
    assert [e.path for e in d.added] == ["new"] and [e.path for e in d.removed] == ["gone"]
    assert [(o.path, n.size) for o, n in d.changed] == [("edit", 2)]
    assert [(c.key, c.kind, c.old, c.new) for c in d.metadata] == [
        ("a", "removed", 1, None), ("b", "changed", 2, 3), ("c", "added", None, 4)]
