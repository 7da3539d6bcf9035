"""Small things a newcomer trips over: where writes go, a second mount, counts, moved aliases."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from artfs.cli import main


def test_a_write_into_a_version_is_erofs_and_the_log_points_at_staging(
    commit_tree, mount, tmp_path: Path
) -> None:
    commit_tree("ds", {"a.txt": b"alpha"})
    m = mount()
    (tmp_path / "new.txt").write_text("x")
    out = subprocess.run(["cp", str(tmp_path / "new.txt"), str(m.artifact("ds") / "v0")],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Read-only file system" in out.stderr
    log = m.log_text()
    assert "tester/uncategorized/ds/v0 is a committed version" in log
    assert "tester/uncategorized/ds/@staging" in log and "artfs commit" in log
    assert sorted(p.name for p in (m.artifact("ds") / "v0").iterdir()) == ["a.txt"]


def test_a_second_mount_says_its_staging_folders_are_read_only(commit_tree, mount,
                                                               run_artfs, tmp_path) -> None:
    commit_tree("ds", {"a.txt": b"alpha"})
    first = mount()
    (tmp_path / "second").mkdir()
    out = run_artfs("mount", str(tmp_path / "second"))
    try:
        assert "warning: @staging folders are read-only in this mount" in out.stderr
        assert f"mount pid {first.pid}" in out.stderr
    finally:
        run_artfs("umount", str(tmp_path / "second"))


def test_the_first_mount_gives_no_warning(commit_tree, run_artfs, tmp_path: Path) -> None:
    commit_tree("ds", {"a.txt": b"alpha"})
    (tmp_path / "m").mkdir()
    out = run_artfs("mount", str(tmp_path / "m"))
    try:
        assert "warning" not in out.stderr
    finally:
        run_artfs("umount", str(tmp_path / "m"))


def test_commit_prints_the_aliases_it_moved(commit_tree, mount, run_artfs) -> None:
    commit_tree("ds", {"a.txt": b"alpha"})
    m = mount()
    (m.artifact("ds") / "@staging" / "b.txt").write_text("beta")
    out = run_artfs("commit", str(m.artifact("ds")), "--alias", "best", "--alias", "prod")
    assert re.search(r"ds:v1 .*aliases: best, latest, prod", out.stdout), out.stdout


def test_counts_of_one_are_singular(commit_tree, capsys: pytest.CaptureFixture[str]) -> None:
    commit_tree("ds", {"a.txt": b"alpha"})
    assert main(["ls", "tester/uncategorized/ds"]) == 0
    assert "\t1 file\t" in capsys.readouterr().out
    assert main(["info", "ds"]) == 0
    assert "in 1 file\n" in capsys.readouterr().out
