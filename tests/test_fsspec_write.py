"""Writes through `artfs://` (issue 21): files into an artifact's @staging folder with `put`,
`open(…, "wb")` and `pipe`, then `fs.commit`; every write elsewhere refused, nothing changed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pandas as pd
import pytest

import sdk
from artfs import staging
from artfs.fsspec_fs import ArtfsFileSystem, ReadOnlyPath, StagingBusy
from artfs.names import ArtifactRef
from artfs.registry import Registry

E, P = "tester", "proj"
BASE = f"artfs://{E}/{P}"


@pytest.fixture(autouse=True)
def fresh_instances() -> Iterator[None]:
    yield
    ArtfsFileSystem.clear_instance_cache()


@pytest.fixture(params=["local", "s3"])
def url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str],
        monkeypatch: pytest.MonkeyPatch) -> str:
    url = make_store_url(request.param)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    Registry(url, create=True).close()
    return url


def _log(tmp_path: Path, name: str, files: dict[str, bytes]) -> None:
    art = sdk.Artifact(name, type="model")
    for path, data in files.items():
        (tmp_path / "src" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / path).write_bytes(data)
        art.add_file(tmp_path / "src" / path, name=path)
    with sdk.init(job_type="test", project=P) as run:
        run.log_artifact(art)


def _versions(url: str, name: str) -> list[int]:
    reg = Registry(url)
    try:
        return reg.versions(E, P, name)
    finally:
        reg.close()


def test_put_open_and_commit(url: str, tmp_path: Path) -> None:
    _log(tmp_path, "model", {"weights.bin": b"w0", "old.txt": b"old"})
    fs = fsspec.filesystem("artfs")
    stage = f"{BASE}/model/@staging"
    local = tmp_path / "metrics.csv"
    pd.DataFrame({"a": [1, 2]}).to_csv(local, index=False)
    fs.put(str(local), f"{stage}/eval/metrics.csv")
    with fs.open(f"{stage}/weights.bin", "wb") as f:  # replaces the base version's file
        f.write(b"w1" * 1000)
    fs.pipe_file(f"{stage}/notes.txt", b"trained longer")
    fs.rm(f"{stage}/old.txt")
    assert sorted(fs.ls(stage, detail=False)) == [f"{E}/{P}/model/@staging/{n}" for n in
                                                   ("eval", "notes.txt", "weights.bin")]
    assert fs.cat(f"{stage}/weights.bin") == b"w1" * 1000
    assert f"{E}/{P}/model/@staging" in fs.ls(f"{BASE}/model", detail=False)
    # A failed writer stages nothing.
    with pytest.raises(RuntimeError), fs.open(f"{stage}/half.bin", "wb") as f:
        f.write(b"partial")
        raise RuntimeError("writer died")
    assert not fs.exists(f"{stage}/half.bin")

    version = fs.commit(f"{BASE}/model", aliases=["candidate"])
    assert version.qualified == f"{E}/{P}/model:v1" and _versions(url, "model") == [0, 1]
    new = f"{BASE}/model/candidate"
    assert fs.cat(f"{new}/weights.bin") == b"w1" * 1000
    assert fs.cat(f"{new}/notes.txt") == b"trained longer"
    assert not fs.exists(f"{new}/old.txt")
    pd.testing.assert_frame_equal(pd.read_csv(f"{new}/eval/metrics.csv"),
                                  pd.DataFrame({"a": [1, 2]}))
    assert fs.cat(f"{BASE}/model/v0/old.txt") == b"old"
    # Nothing changed since: no new version, the alias still moves.
    again = fs.commit(f"{BASE}/model/@staging", aliases=["reviewed"])
    assert again.version == 1 and _versions(url, "model") == [0, 1]
    assert fs.info(f"{BASE}/model/reviewed/notes.txt")["version"] == f"{E}/{P}/model:v1"


def test_a_new_artifact_needs_its_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "reg")
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    Registry(url, create=True).close()
    fs = fsspec.filesystem("artfs")
    fs.pipe_file(f"{BASE}/fresh/@staging/a/b.txt", b"bee")
    frame = pd.DataFrame({"x": [1.5, 2.5], "y": ["p", "q"]})
    frame.to_parquet(f"{BASE}/fresh/@staging/t.parquet")  # pyarrow writing through fsspec
    with fsspec.open(f"{BASE}/fresh/@staging/notes.txt", "w") as f:  # text mode
        f.write("näive notes")
    with pytest.raises(staging.StagingError, match=f"{E}/{P}/fresh is new: give its type"):
        fs.commit(f"{BASE}/fresh")
    assert _versions(url, "fresh") == []
    assert fs.commit(f"{BASE}/fresh", type="dataset").version == 0
    assert fs.cat(f"{BASE}/fresh/latest/a/b.txt") == b"bee"
    pd.testing.assert_frame_equal(pd.read_parquet(f"{BASE}/fresh/v0/t.parquet"), frame)
    assert fs.cat(f"{BASE}/fresh/v0/notes.txt").decode() == "näive notes"


@pytest.mark.parametrize("write", ["open", "put", "pipe", "rm", "mkdir", "commit-version"])
def test_writes_outside_staging_are_refused(write: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "reg")
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    Registry(url, create=True).close()
    _log(tmp_path, "model", {"w.bin": b"weights"})
    fs = fsspec.filesystem("artfs")
    src = tmp_path / "x.bin"
    src.write_bytes(b"x")
    target = {"open": f"{BASE}/model/v0/w.bin", "put": f"{BASE}/model/latest/x.bin",
              "pipe": f"{BASE}/new.bin", "rm": f"{BASE}/model/v0/w.bin",
              "mkdir": f"{BASE}/model/v0/sub", "commit-version": f"{BASE}/model/v0/w.bin"}[write]
    calls: dict[str, Callable[[], object]] = {
        "open": lambda: fs.open(target, "wb"), "put": lambda: fs.put(str(src), target),
        "pipe": lambda: fs.pipe_file(target, b"x"), "rm": lambda: fs.rm(target),
        "mkdir": lambda: fs.mkdir(target), "commit-version": lambda: fs.commit(target)}
    with pytest.raises((ReadOnlyPath, ValueError)) as e:
        calls[write]()
    assert target in str(e.value)
    if isinstance(e.value, ReadOnlyPath):
        assert "@staging" in str(e.value)
    assert _versions(url, "model") == [0]
    assert fs.cat(f"{BASE}/model/v0/w.bin") == b"weights"
    assert fs.ls(f"{BASE}/model", detail=False) == [f"{E}/{P}/model/v0",
                                                     f"{E}/{P}/model/latest"]


def test_writes_wait_for_the_mount_that_owns_staging(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A mount of the registry holds its staging areas: writes fail naming it, reads go on."""
    url = str(tmp_path / "reg")
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    Registry(url, create=True).close()
    _log(tmp_path, "model", {"w.bin": b"weights"})
    lock = staging.registry_root(url) / "mount.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0);"
         "print('held', flush=True); sys.stdin.read()", str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        fs = fsspec.filesystem("artfs")
        fs.staging_wait_s = 0.3
        with pytest.raises(StagingBusy, match=f"pid {holder.pid}"):
            fs.pipe_file(f"{BASE}/model/@staging/n.txt", b"n")
        assert fs.cat(f"{BASE}/model/latest/w.bin") == b"weights"
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    fs.pipe_file(f"{BASE}/model/@staging/n.txt", b"n")  # let go: writes work again
    assert fs.commit(f"{BASE}/model").version == 1
    reg = Registry(url)
    try:
        assert reg.version(ArtifactRef(E, P, "model", "latest")).file_count == 2
    finally:
        reg.close()
