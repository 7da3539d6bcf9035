"""The one tree a manifest makes, shared by the mount's index and staging areas."""

from __future__ import annotations

import logging

import pytest

from artfs.manifest import Entry, Manifest, walk_tree


def test_folders_come_before_what_they_hold() -> None:
    m = Manifest([Entry("c/d/e", 2, "2" * 64), Entry("a.txt", 1, "3" * 64)])
    assert [(path, parent, name, e is None) for path, parent, name, e in walk_tree(m)] == [
        ("a.txt", "", "a.txt", False), ("c", "", "c", True), ("c/d", "c", "d", True),
        ("c/d/e", "c/d", "e", False),
    ]


def test_a_path_that_is_both_file_and_folder_shows_the_file_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Manifest([Entry("a", 1, "0" * 64), Entry("a/b", 1, "1" * 64)])
    with caplog.at_level(logging.WARNING):
        assert [path for path, *_ in walk_tree(m)] == ["a"]
    assert "'a/b' is both a file and a folder" in caplog.text
