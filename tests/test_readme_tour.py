"""The README's five-minute tour, run verbatim as a newcomer would, so it cannot drift again."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tour_block() -> str:
    """The first `sh` block under the README's "Five-minute tour" heading."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Five-minute tour", 1)[1]
    match = re.search(r"^```sh\n(.*?)^```$", section, re.S | re.M)
    assert match, "README.md has no ```sh block under '## Five-minute tour'"
    return match.group(1)


@pytest.fixture
def fresh_home(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A HOME of its own, and an environment with no artfs setting or XDG folder in it."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ARTFS_", "XDG_", "VIRTUAL_ENV"))}
    env["HOME"] = str(home)
    yield home, env
    mnt = home / "artfs-tour" / "mnt"
    if os.path.ismount(mnt):  # the tour failed before its last line
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


@pytest.mark.slow
def test_readme_tour_runs_verbatim(fresh_home: tuple[Path, dict[str, str]]) -> None:
    home, env = fresh_home
    script = "set -euxo pipefail\n" + tour_block()
    repo_before = _repo_status()
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"the tour failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    out = proc.stdout
    assert "downloaded to" in out and "A kitten.png" in out
    assert "bike-dataset:v1" in out  # the commit made the next version
    assert "\ncat\n" in out  # `cat …/latest/images/cat.png`
    tour = home / "artfs-tour"
    assert sorted(p.relative_to(tour / "copy").as_posix()
                  for p in (tour / "copy").rglob("*") if p.is_file()) == [
        "README.txt", "images/cat.png", "images/dog.png"]
    assert not os.path.ismount(tour / "mnt")
    assert not (home / ".local" / "share" / "artfs").exists()  # the embedded registry: untouched
    assert _repo_status() == repo_before  # nothing written into the checkout it runs from


def _repo_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout


def test_make_mount_installs_only_what_the_mount_needs() -> None:
    plan = subprocess.run(["make", "-n", "-B", "mount"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert "pip install" in plan and "[test]" not in plan and "nginx" not in plan
    assert "make umount" in plan  # says how to unmount without the venv on PATH
    umount = subprocess.run(["make", "-n", "umount"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert ".venv/bin/artfs umount" in umount


def test_readme_names_every_setting_the_code_reads() -> None:
    readme = (REPO / "README.md").read_text()
    code = "\n".join(p.read_text() for d in ("artfs", "sdk") for p in (REPO / d).rglob("*.py"))
    settings = set(re.findall(r"ARTFS_[A-Z0-9_]*[A-Z0-9]", code))
    assert "ARTFS_STATE_DIR" in settings
    assert sorted(s for s in settings if f"`{s}" not in readme) == []
    assert "### Two machines, one registry" in readme
