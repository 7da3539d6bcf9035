"""The mounted registry read with ordinary tools: layout, reads, references, facts, errors."""

from __future__ import annotations

import errno
import filecmp
import json
import mmap
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import sdk
from artfs.names import ArtifactRef
from artfs.registry import Registry, init_registry
from tests.mount_fixtures import tree_of

#: Tests of behaviour that does not depend on the store kind run on a local registry only.
local_only = pytest.mark.parametrize("registry_url", ["local"], indirect=True)

FILES = {
    "model.h5": b"model-bytes" * 1000,
    "images/cat.png": b"cat" * 5000,
    "images/dog.png": b"dog" * 7000,
    "deep/a/b/c.txt": b"deep\n",
}


def test_layout_entity_project_name_version_and_aliases(log_files, mount) -> None:
    log_files("bike-dataset", FILES, aliases=["best"])
    m = mount()
    assert os.listdir(m.root) == ["tester"]
    assert os.listdir(m.root / "tester") == ["uncategorized"]
    art = m.artifact("bike-dataset")
    assert sorted(os.listdir(art)) == ["best", "latest", "v0"]
    ls = subprocess.run(["ls", "-l", art / "v0"], capture_output=True, text=True, check=True)
    assert "model.h5" in ls.stdout and "images" in ls.stdout
    assert (art / "v0" / "model.h5").stat().st_size == len(FILES["model.h5"])


def test_cat_cp_rsync_find_du_see_the_version(log_files, mount, tmp_path: Path) -> None:
    log_files("ds", FILES)
    m = mount()
    latest = m.artifact("ds") / "latest"
    cat = subprocess.run(["cat", latest / "images" / "cat.png"], capture_output=True, check=True)
    assert cat.stdout == FILES["images/cat.png"]

    subprocess.run(["cp", "-r", latest, tmp_path / "cp"], check=True)
    assert tree_of(tmp_path / "cp") == FILES
    subprocess.run(["rsync", "-a", f"{latest}/", tmp_path / "rsync"], check=True)
    assert tree_of(tmp_path / "rsync") == FILES
    assert filecmp.cmp(tmp_path / "rsync" / "model.h5", latest / "model.h5", shallow=False)

    found = subprocess.run(["find", latest, "-type", "f"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert sorted(Path(p).relative_to(latest).as_posix() for p in found) == sorted(FILES)
    du = subprocess.run(["du", "-s", "--apparent-size", "-B1", latest], capture_output=True,
                        text=True, check=True)
    assert int(du.stdout.split()[0]) >= sum(len(v) for v in FILES.values())


def test_python_open_seek_mmap_and_numpy_memmap(log_files, mount, tmp_path: Path) -> None:
    arr = np.arange(300_000, dtype=np.float32).reshape(1000, 300)
    np.save(tmp_path / "arr.npy", arr)
    data = os.urandom(3 * 1024 * 1024 + 17)
    log_files("np", {"arr.npy": (tmp_path / "arr.npy").read_bytes(), "blob.bin": data})
    m = mount()
    v0 = m.artifact("np") / "v0"
    with open(v0 / "blob.bin", "rb") as f:
        f.seek(2 * 1024 * 1024 + 5)
        assert f.read(100) == data[2 * 1024 * 1024 + 5:][:100]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert mm[1234:5678] == data[1234:5678]
            assert mm[-1] == data[-1]
    loaded = np.load(v0 / "arr.npy", mmap_mode="r")
    assert isinstance(loaded, np.memmap)
    assert np.array_equal(loaded, arr)
    del loaded  # a live mapping would keep the mount busy at teardown


@local_only
def test_file_references_are_read_from_their_source(registry_url, mount,
                                                    tmp_path: Path) -> None:
    src = tmp_path / "external"
    src.mkdir()
    (src / "a.bin").write_bytes(b"A" * 100_000)
    (src / "b.bin").write_bytes(b"B" * 10)
    art = sdk.Artifact("refs", type="dataset")
    art.add_reference(src.as_uri(), name="ext")
    with sdk.init() as run:
        run.log_artifact(art)
    m = mount()
    v0 = m.artifact("refs") / "v0"
    assert (v0 / "ext" / "a.bin").read_bytes() == b"A" * 100_000
    assert os.getxattr(v0 / "ext" / "a.bin", "user.artfs.ref").decode() == \
        (src / "a.bin").as_uri()

    # A reference whose source changed since it was logged: EIO for that file only.
    (src / "b.bin").write_bytes(b"changed!!!")
    with pytest.raises(OSError) as e:
        (v0 / "ext" / "b.bin").read_bytes()
    assert e.value.errno == errno.EIO
    assert (v0 / "ext" / "a.bin").read_bytes() == b"A" * 100_000
    assert "ext/b.bin" in m.log_text() and "refs:v0" in m.log_text()


def _write_attempts(d: Path) -> dict[str, Callable[[], object]]:
    return {
        "open for writing": lambda: open(d / "model.h5", "r+b"),  # noqa: SIM115
        "create": lambda: open(d / "new.txt", "w"),  # noqa: SIM115
        "truncate": lambda: os.truncate(d / "model.h5", 0),
        "unlink": lambda: os.unlink(d / "model.h5"),
        "rename": lambda: os.rename(d / "model.h5", d / "other.h5"),
        "mkdir": lambda: os.mkdir(d / "sub"),
        "rmdir": lambda: os.rmdir(d / "images"),
        "chmod": lambda: os.chmod(d / "model.h5", 0o600),
        "utime": lambda: os.utime(d / "model.h5", (0, 0)),
        "setxattr": lambda: os.setxattr(d / "model.h5", "user.x", b"1"),
        "symlink": lambda: os.symlink("model.h5", d / "link"),
        "mkdir beside versions": lambda: os.mkdir(d.parent / "v9"),
    }


@local_only
def test_writes_to_versions_and_aliases_fail_with_erofs(log_files, mount) -> None:
    log_files("ds", FILES)
    m = mount()
    for view in ("v0", "latest"):
        for what, attempt in _write_attempts(m.artifact("ds") / view).items():
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS, (view, what)
    assert tree_of(m.artifact("ds") / "v0") == FILES


@local_only
def test_corrupt_blob_is_eio_for_that_file_only(tmp_path: Path, log_files, mount,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "local-registry")
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    init_registry(url)
    log_files("ds", FILES)
    reg = Registry(url)
    v = reg.version(ArtifactRef("tester", "uncategorized", "ds", "v0"))
    digest = reg.manifest(v)["images/cat.png"].digest
    blob = reg.blob_file("tester", digest)
    blob.write_bytes(b"tampered" + blob.read_bytes()[8:])
    m = mount()
    v0 = m.artifact("ds") / "v0"
    with pytest.raises(OSError) as e:
        (v0 / "images" / "cat.png").read_bytes()
    assert e.value.errno == errno.EIO
    assert (v0 / "images" / "dog.png").read_bytes() == FILES["images/dog.png"]
    log = m.log_text()
    assert "ds:v0" in log and "images/cat.png" in log and digest in log
    assert os.path.ismount(m.root)


def test_new_version_and_alias_move_appear_within_5_seconds(log_files, mount,
                                                            registry_url: str) -> None:
    log_files("ds", {"f.txt": b"one"})
    m = mount()
    art = m.artifact("ds")
    assert (art / "latest" / "f.txt").read_bytes() == b"one"
    assert sorted(os.listdir(art)) == ["latest", "v0"]

    log_files("ds", {"f.txt": b"two"}, aliases=["candidate"])
    start = time.monotonic()
    while time.monotonic() - start < 5:
        try:
            if (set(os.listdir(art)) >= {"v1", "candidate"}
                    and (art / "latest" / "f.txt").read_bytes() == b"two"):
                break
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail(f"v1 not visible after 5 s: {os.listdir(art)}")
    assert os.getxattr(art / "latest", "user.artfs.version") == b"v1"
    assert (art / "v0" / "f.txt").read_bytes() == b"one"

    a = sdk.Api().artifact("tester/uncategorized/ds:v0")
    a.aliases.append("candidate")
    a.save()
    start = time.monotonic()
    while (art / "candidate" / "f.txt").read_bytes() != b"one":
        assert time.monotonic() - start < 5, "alias move not visible after 5 s"
        time.sleep(0.1)


@local_only
def test_facts_as_xattrs_and_artfs_info(log_files, mount, run_artfs) -> None:
    art = sdk.Artifact("ds", type="model", description="first try", metadata={"ap50": 0.5})
    src = Path("weights.bin")
    src.write_bytes(b"w" * 1000)
    art.add_file(src)
    with sdk.init() as run:
        run.log_artifact(art, aliases=["best"])
    m = mount()
    v0 = m.artifact("ds") / "v0"
    best = m.artifact("ds") / "best"

    def x(path: Path, key: str) -> str:
        return os.getxattr(path, f"user.artfs.{key}").decode()

    assert x(best, "version") == "v0"
    assert x(v0, "type") == "model"
    assert x(v0, "description") == "first try"
    assert json.loads(x(v0, "metadata")) == {"ap50": 0.5}
    assert set(x(v0, "aliases").split(",")) == {"best", "latest"}
    assert x(v0, "logged_by").startswith("tester/uncategorized/")
    assert x(v0, "created_at")
    assert x(v0 / "weights.bin", "size") == "1000"
    assert len(x(v0 / "weights.bin", "digest")) == 64
    assert "user.artfs.digest" in os.listxattr(v0 / "weights.bin")

    info = json.loads(run_artfs("info", str(best / "weights.bin"), "--json").stdout)
    assert info["artifact"] == "tester/uncategorized/ds" and info["version"] == "v0"
    assert info["path"] == "weights.bin" and info["size"] == 1000
    info = json.loads(run_artfs("info", str(best), "--json").stdout)
    assert info["alias"] == "best" and info["version"] == "v0" and info["type"] == "model"
    text = run_artfs("info", str(m.artifact("ds"))).stdout
    assert "versions:" in text and "v0" in text


@local_only
def test_inode_numbers_stay_stable(log_files, mount) -> None:
    log_files("ds", FILES)
    m = mount()
    paths = [m.artifact("ds") / "v0" / "images" / "cat.png", m.artifact("ds") / "v0",
             m.artifact("ds")]
    before = [p.stat().st_ino for p in paths]
    Path("/proc/sys/vm/drop_caches").write_text("2\n")  # forget every dentry and inode
    assert [p.stat().st_ino for p in paths] == before
    # A file seen through an alias is the same inode as in its version.
    assert (m.artifact("ds") / "latest" / "images" / "cat.png").stat().st_ino == before[0]


def test_readdir_of_a_large_folder_is_complete_and_paged(mount, commit_tree) -> None:
    commit_tree("big", {f"many/f{i:05d}.txt": b"same bytes" for i in range(3000)})
    m = mount()
    names = os.listdir(m.artifact("big") / "v0" / "many")
    assert len(names) == len(set(names)) == 3000
    assert sorted(names) == [f"f{i:05d}.txt" for i in range(3000)]


@local_only
def test_listing_attributes_equal_lookup_attributes(log_files, mount) -> None:
    """readdirplus fills the kernel's attribute cache; it must agree with lookup/getattr."""
    log_files("ds", {**FILES, "empty.txt": b""})
    m = mount()
    v0 = m.artifact("ds") / "v0"

    def stat_of(path: str) -> tuple[int, ...]:
        st = os.lstat(path)
        return (st.st_ino, st.st_mode, st.st_nlink, st.st_size, st.st_blocks, st.st_mtime_ns,
                st.st_uid)

    paths = [os.path.join(d, n) for d, dirs, files in os.walk(v0) for n in [*dirs, *files]]
    assert len(paths) == 9  # 5 files; folders images, deep, deep/a, deep/a/b
    listed = [stat_of(p) for p in paths]  # the kernel has them from the listings
    Path("/proc/sys/vm/drop_caches").write_text("2\n")  # forget them: stat now looks up
    assert [stat_of(p) for p in paths] == listed
    assert os.stat(v0 / "deep").st_nlink == 3  # its entry, its ".", and the ".." of a/


@local_only
def test_xattrs_outside_the_user_namespace_are_not_supported(log_files, mount) -> None:
    """`ls -l` asks every file for its SELinux label and ACL; "not supported" (not "no such
    attribute") makes it stop asking, so `ls -lR` does not cost two round trips per file."""
    log_files("ds", FILES)
    m = mount()
    f = m.artifact("ds") / "v0" / "model.h5"
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        with pytest.raises(OSError) as e:
            os.getxattr(f, name)
        assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as e:
        os.getxattr(f, "user.other")
    assert e.value.errno == errno.ENODATA
    ls = subprocess.run(["ls", "-lR", m.artifact("ds")], capture_output=True, text=True,
                        check=True)
    assert "model.h5" in ls.stdout and not ls.stderr


@local_only
def test_a_blob_changed_under_an_open_file_is_eio_not_a_crash(tmp_path: Path, log_files, mount,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Local files are served from a memory mapping: a blob truncated while open must fail
    that read with EIO (a careless mapping access would kill the mount with SIGBUS)."""
    url = str(tmp_path / "local-registry")
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    init_registry(url)
    data = os.urandom(4 * 1024 * 1024)
    log_files("ds", {"big.bin": data, "other.bin": b"other"})
    reg = Registry(url)
    v = reg.version(ArtifactRef("tester", "uncategorized", "ds", "v0"))
    blob = reg.blob_file("tester", reg.manifest(v)["big.bin"].digest)
    m = mount()
    v0 = m.artifact("ds") / "v0"
    fd = os.open(v0 / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == data[:4096]
        os.chmod(blob, 0o644)
        os.truncate(blob, 1024 * 1024)
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 3 * 1024 * 1024)
        assert e.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert (v0 / "other.bin").read_bytes() == b"other"
    assert os.path.ismount(m.root) and "big.bin" in m.log_text()
