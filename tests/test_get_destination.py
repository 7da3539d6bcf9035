"""`artfs get` into a folder that already holds files: never a silent overwrite or mix."""

from __future__ import annotations

from pathlib import Path

import pytest

from artfs.cli import main
from tests.mount_fixtures import tree_of

FILES = {"a.txt": b"alpha", "sub/b.txt": b"beta"}


def get(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["get", "ds:v0", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dest(commit_tree, tmp_path: Path) -> Path:
    commit_tree("ds", FILES)
    return tmp_path / "out"


def test_get_again_into_the_same_folder_is_fine(dest: Path, capsys) -> None:
    assert get(capsys, str(dest))[0] == 0
    (dest / "a.txt").unlink()  # an interrupted download: part of the version is there
    assert get(capsys, str(dest))[0] == 0
    assert tree_of(dest) == FILES


def test_a_folder_with_other_files_is_refused_naming_them(dest: Path, capsys) -> None:
    dest.mkdir()
    (dest / "mine.txt").write_bytes(b"keep me")
    code, _, err = get(capsys, str(dest))
    assert code == 1 and "1 file not in tester/uncategorized/ds:v0" in err
    assert "mine.txt" in err and "--merge" in err
    assert tree_of(dest) == {"mine.txt": b"keep me"}


def test_merge_adds_the_version_to_other_files(dest: Path, capsys) -> None:
    dest.mkdir()
    (dest / "mine.txt").write_bytes(b"keep me")
    assert get(capsys, str(dest), "--merge")[0] == 0
    assert tree_of(dest) == {**FILES, "mine.txt": b"keep me"}


def test_a_file_that_would_be_overwritten_is_named_even_with_merge(dest: Path, capsys) -> None:
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "b.txt").write_bytes(b"my own b")
    for extra in ([], ["--merge"]):
        code, _, err = get(capsys, str(dest), *extra)
        assert code == 1 and "1 file would be overwritten (sub/b.txt)" in err
        assert "--force" in err
        assert tree_of(dest) == {"sub/b.txt": b"my own b"}
    assert get(capsys, str(dest), "--force")[0] == 0
    assert tree_of(dest) == FILES


def test_many_conflicts_are_counted_and_a_few_named(dest: Path, capsys) -> None:
    dest.mkdir()
    for i in range(12):
        (dest / f"f{i:02d}.txt").write_text("x")
    code, _, err = get(capsys, str(dest))
    assert code == 1 and "12 files not in" in err and "f00.txt" in err and "and 7 more" in err
