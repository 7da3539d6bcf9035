"""POSIX corners of `@staging` on a real mount: name lengths, times, link counts.

Each failing operation is also checked to change nothing (the tree and `artfs diff`)."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

import sdk
from artfs.errors import InvalidPath
from tests.mount_fixtures import ENTITY, PROJECT, Mount, artfs, tree_of

local_only = pytest.mark.parametrize("registry_url", ["local"], indirect=True)

FILES = {"model.h5": b"weights" * 100, "images/cat.png": b"cat"}
LONGEST = "n" * 255
TOO_LONG = "n" * 256
#: 256 bytes in 128 characters: the limit counts bytes, not characters.
TOO_LONG_UTF8 = "é" * 128


def _stage(m: Mount, name: str) -> Path:
    return m.artifact(name) / "@staging"


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


@local_only
def test_names_of_255_bytes_work_and_longer_ones_are_enametoolong(registry_url, log_files,
                                                                 mount, tmp_path) -> None:
    log_files("names", FILES)
    m = mount()
    stage = _stage(m, "names")
    (stage / LONGEST).write_bytes(b"longest")
    (stage / "d").mkdir()
    os.rename(stage / LONGEST, stage / "d" / LONGEST)
    (stage / ("é" * 127 + "a")).write_bytes(b"255 bytes in utf-8")
    before, changes = tree_of(stage), artfs("diff", str(stage)).stdout
    for name in (TOO_LONG, TOO_LONG_UTF8):
        long = stage / name
        assert _errno(os.open, long, os.O_WRONLY | os.O_CREAT) == errno.ENAMETOOLONG
        assert _errno(os.mkdir, long) == errno.ENAMETOOLONG
        assert _errno(os.stat, long) == errno.ENAMETOOLONG
        assert _errno(os.rename, stage / "model.h5", long) == errno.ENAMETOOLONG
        assert _errno(os.rename, long, stage / "x") == errno.ENAMETOOLONG
        assert _errno(os.symlink, "model.h5", long) == errno.ENAMETOOLONG
        assert _errno(os.stat, m.artifact("names") / "v0" / name) == errno.ENAMETOOLONG
    assert tree_of(stage) == before and artfs("diff", str(stage)).stdout == changes
    artfs("commit", str(stage))
    out = tmp_path / "got"
    artfs("get", f"{ENTITY}/{PROJECT}/names:v1", str(out))
    assert (out / "d" / LONGEST).read_bytes() == b"longest"


def test_the_sdk_refuses_names_longer_than_255_bytes(registry_url, tmp_path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"x")
    art = sdk.Artifact("long-names", type="dataset")
    for name in (TOO_LONG, f"dir/{TOO_LONG_UTF8}/f.bin"):
        with pytest.raises(InvalidPath, match="is 256 bytes long; a file or folder name is "
                                              "at most 255 bytes") as info:
            art.add_file(f, name=name)
        assert repr(name) in str(info.value)
        with pytest.raises(InvalidPath, match="256 bytes"), art.new_file(name) as out:
            out.write("never")
    art.add_file(f, name=LONGEST)
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    assert list(sdk.Api().artifact(f"{ENTITY}/{PROJECT}/long-names:v0").manifest) == [LONGEST]


@local_only
def test_atime_is_kept_and_ctime_is_the_change_time(registry_url, log_files, mount) -> None:
    log_files("times", FILES)
    m = mount()
    stage = _stage(m, "times")
    (stage / "local.bin").write_bytes(b"local")
    for path in (stage / "model.h5", stage / "local.bin", stage / "images"):
        atime, mtime = 1_000_000_000_123_456_789, 1_100_000_000_987_654_321
        before = time.time_ns()
        os.utime(path, ns=(atime, mtime))
        s = os.stat(path)
        assert (s.st_atime_ns, s.st_mtime_ns) == (atime, mtime), path
        assert s.st_ctime_ns >= before, path  # the change time, not a time the user gave
        before = time.time_ns()
        os.chmod(path, 0o600 | (0o100 if path.name == "images" else 0))
        s = os.stat(path)
        assert s.st_ctime_ns >= before and (s.st_atime_ns, s.st_mtime_ns) == (atime, mtime)
        assert stat.S_IMODE(s.st_mode) & 0o777 in (0o600, 0o700)


@local_only
def test_a_folder_s_times_move_when_entries_are_added_or_removed(registry_url, log_files,
                                                                 mount) -> None:
    log_files("dirs", FILES)
    m = mount()
    stage = _stage(m, "dirs")
    folder = stage / "images"
    steps = [lambda: (folder / "new.bin").write_bytes(b"n"),
             lambda: (folder / "sub").mkdir(),
             lambda: os.rename(folder / "new.bin", folder / "renamed.bin"),
             lambda: (folder / "renamed.bin").unlink(),
             lambda: (folder / "sub").rmdir(),
             lambda: os.rename(folder / "cat.png", stage / "cat.png")]
    for i, step in enumerate(steps):
        os.utime(folder, ns=(0, 0))
        before = time.time_ns()
        step()
        s = os.stat(folder)
        assert s.st_mtime_ns >= before and s.st_ctime_ns >= before, i
    os.utime(stage, ns=(0, 0))
    (stage / "top.bin").write_bytes(b"t")
    assert os.stat(stage).st_mtime_ns > 0  # the staging folder itself too


@local_only
def test_link_counts(registry_url, log_files, mount) -> None:
    """Folders: 2 + their subfolders; files 1; a file removed while open 0."""
    log_files("links", FILES)
    m = mount()
    stage = _stage(m, "links")
    os.listdir(stage)  # in use: a staging folder's own count is known from its first use
    assert os.stat(stage).st_nlink == 3  # images/
    assert os.stat(stage / "images").st_nlink == 2
    (stage / "images" / "a").mkdir()
    (stage / "images" / "b").mkdir()
    assert os.stat(stage / "images").st_nlink == 4
    os.rename(stage / "images" / "b", stage / "b")
    assert (os.stat(stage).st_nlink, os.stat(stage / "images").st_nlink) == (4, 3)
    (stage / "images" / "a").rmdir()
    assert os.stat(stage / "images").st_nlink == 2
    assert os.stat(stage / "model.h5").st_nlink == 1
    with open(stage / "open.bin", "wb") as f:
        f.write(b"open")
        f.flush()
        assert os.fstat(f.fileno()).st_nlink == 1
        (stage / "open.bin").unlink()
        assert os.fstat(f.fileno()).st_nlink == 0
