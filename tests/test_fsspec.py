"""`artfs://` paths through fsspec (issue 21): pandas, pyarrow and fsspec's own calls on a
local registry and on the S3 and GCS test servers; aliases, missing paths, tampered blobs and
ranged reads at the end of a large remote file."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pandas as pd
import pytest

import sdk
from artfs.errors import IntegrityError
from artfs.fsspec_fs import ArtfsFileSystem
from artfs.registry import Registry

MiB = 1024 * 1024
E, P = "tester", "proj"


@pytest.fixture(autouse=True)
def fresh_instances() -> Iterator[None]:
    """fsspec keeps filesystem instances: none may outlive the test's registry."""
    yield
    ArtfsFileSystem.clear_instance_cache()


@pytest.fixture
def publish(tmp_path: Path) -> Callable[..., None]:
    """`publish(name, {path: bytes}, aliases=[...])`: log a version to ARTFS_REGISTRY."""
    count = iter(range(1000))

    def log(name: str, files: dict[str, bytes], aliases: list[str] | None = None) -> None:
        src = tmp_path / f"publish-{next(count)}"
        art = sdk.Artifact(name, type="dataset")
        for path, data in files.items():
            (src / path).parent.mkdir(parents=True, exist_ok=True)
            (src / path).write_bytes(data)
            art.add_file(src / path, name=path)
        with sdk.init(job_type="test", project=P) as run:
            run.log_artifact(art, aliases=aliases)

    return log


@pytest.fixture
def local_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = str(tmp_path / "reg")
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    Registry(url, create=True).close()
    return url


def table() -> pd.DataFrame:
    return pd.DataFrame({"step": range(50), "loss": [1 / (i + 1) for i in range(50)],
                         "tag": [f"t{i % 3}" for i in range(50)]})


def frames(tmp_path: Path) -> dict[str, bytes]:
    csv = table().to_csv(index=False).encode()
    buf = io.BytesIO()
    table().to_parquet(buf)
    return {"metrics.csv": csv, "tables/metrics.parquet": buf.getvalue(),
            "tables/other.csv": b"a,b\n1,2\n"}


def test_import_needs_no_fuse() -> None:
    """`artfs://` is for machines without FUSE: importing it must not import trio or pyfuse3."""
    code = ("import sys, artfs.fsspec_fs, artfs.streamed, artfs.readahead; "
            "bad = {'trio', 'pyfuse3'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pandas_pyarrow_and_open_files(registry_url: str, publish: Callable[..., None],
                                       tmp_path: Path) -> None:
    files = frames(tmp_path)
    publish("runs", files, aliases=["best"])
    assert fsspec.get_filesystem_class("artfs") is ArtfsFileSystem  # the entry point
    base = f"artfs://{E}/{P}/runs"
    pd.testing.assert_frame_equal(pd.read_csv(f"{base}/best/metrics.csv"), table())
    pd.testing.assert_frame_equal(pd.read_parquet(f"{base}/v0/tables/metrics.parquet"),
                                  table())
    opened = fsspec.open_files(f"{base}/latest/**/*.csv")
    assert sorted(f.path for f in opened) == [f"{E}/{P}/runs/latest/metrics.csv",
                                              f"{E}/{P}/runs/latest/tables/other.csv"]
    for f in opened:
        with f as fh:
            assert fh.read() == files[f.path.split("/latest/", 1)[1]]

    fs = fsspec.filesystem("artfs")
    assert fs.ls(f"{E}/{P}", detail=False) == [f"{E}/{P}/runs"]
    assert fs.ls(f"{base}", detail=False) == [f"{E}/{P}/runs/{n}"
                                               for n in ("v0", "best", "latest")]
    assert sorted(fs.ls(f"{base}/v0/tables", detail=False)) == [
        f"{E}/{P}/runs/v0/tables/metrics.parquet", f"{E}/{P}/runs/v0/tables/other.csv"]
    assert fs.glob(f"{base}/v0/*/*.csv") == [f"{E}/{P}/runs/v0/tables/other.csv"]
    assert len(fs.find(f"{base}/v0")) == 3
    assert fs.isdir(f"{base}/best/tables") and not fs.isdir(f"{base}/best/metrics.csv")
    assert fs.exists(f"{base}/v0/metrics.csv") and not fs.exists(f"{base}/v0/nope.csv")
    info = fs.info(f"{base}/v0/metrics.csv")
    digest = hashlib.sha256(files["metrics.csv"]).hexdigest()
    assert info["size"] == len(files["metrics.csv"]) and info["sha256"] == digest
    assert fs.checksum(f"{base}/v0/metrics.csv") == int(digest, 16)
    data = files["metrics.csv"]
    assert fs.cat_file(f"{base}/v0/metrics.csv", 5, 17) == data[5:17]
    assert fs.cat_file(f"{base}/v0/metrics.csv", -10) == data[-10:]
    with fs.open(f"{base}/v0/metrics.csv") as f:
        f.seek(len(data) - 7)
        assert f.read() == data[-7:]
        f.seek(3)
        assert f.read(4) == data[3:7]
    fs.get(f"{base}/v0", str(tmp_path / "out"), recursive=True)
    assert (tmp_path / "out" / "tables" / "other.csv").read_bytes() == b"a,b\n1,2\n"
    assert not [p for p in (tmp_path / "out").rglob("*") if "artfs-partial" in p.name]


def test_registry_from_storage_options(local_url: str, publish: Callable[..., None],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    publish("opts", {"a.txt": b"from options"})
    monkeypatch.setenv("ARTFS_REGISTRY", "/nonexistent/registry")
    with fsspec.open(f"artfs://{E}/{P}/opts/v0/a.txt",
                     registry=local_url) as f:
        assert f.read() == b"from options"


def test_an_alias_resolves_at_each_call(local_url: str,
                                        publish: Callable[..., None]) -> None:
    publish("model", {"w.bin": b"first"}, aliases=["prod"])
    fs = fsspec.filesystem("artfs")
    path = f"artfs://{E}/{P}/model/prod/w.bin"
    assert fs.cat(path) == b"first"
    assert fs.info(path)["version"] == f"{E}/{P}/model:v0"
    publish("model", {"w.bin": b"second!"}, aliases=["prod"])
    # The same filesystem object: nothing cached past the alias move.
    assert fs.cat(path) == b"second!"
    assert fs.info(path)["size"] == 7 and fs.info(path)["version"] == f"{E}/{P}/model:v1"
    assert fs.cat(f"artfs://{E}/{P}/model/v0/w.bin") == b"first"


@pytest.mark.parametrize("missing", [
    "nobody/proj/model/v0/w.bin", "tester/nope/model/v0/w.bin", "tester/proj/nope/v0/w.bin",
    "tester/proj/model/v7/w.bin", "tester/proj/model/gone/w.bin", "tester/proj/model/v0/x.bin",
    "tester/proj/model/v0/w.bin/deeper", "tester/proj/model/bad name/w.bin",
])
def test_missing_paths_raise_file_not_found(local_url: str, missing: str,
                                            publish: Callable[..., None]) -> None:
    publish("model", {"w.bin": b"weights"})
    fs = fsspec.filesystem("artfs")
    for call in (fs.info, fs.cat, fs.open, fs.ls):
        with pytest.raises(FileNotFoundError) as e:
            call(f"artfs://{missing}")
        assert f"artfs://{missing}" in str(e.value)
    assert not fs.exists(f"artfs://{missing}")
    with pytest.raises(FileNotFoundError):
        pd.read_csv(f"artfs://{missing}")


def _blob_file(registry_url: str, digest: str) -> Path:
    reg = Registry(registry_url)
    try:
        path = reg.store.local_path(Registry.blob_key(E, digest))
        assert path is not None
        return path
    finally:
        reg.close()


def test_tampered_local_blob_names_the_path(local_url: str, tmp_path: Path,
                                            publish: Callable[..., None]) -> None:
    good = b"id,value\n" + b"1,2\n" * 1000
    publish("data", {"t.csv": good, "ok.csv": b"a\n1\n"})
    blob = _blob_file(local_url, hashlib.sha256(good).hexdigest())
    blob.chmod(0o644)
    blob.write_bytes(good.replace(b"1,2", b"1,3", 1))  # same size, one byte changed
    fs = fsspec.filesystem("artfs")
    path = f"artfs://{E}/{P}/data/v0/t.csv"
    for read in (lambda: fs.cat(path), lambda: pd.read_csv(path),
                 lambda: fs.open(path).read(4), lambda: fs.get(path, str(tmp_path / "t.csv"))):
        with pytest.raises(IntegrityError) as e:
            read()
        assert path in str(e.value) or "t.csv" in str(e.value)
    assert not (tmp_path / "t.csv").exists()
    assert fs.cat(f"artfs://{E}/{P}/data/v0/ok.csv") == b"a\n1\n"  # only that file


# -- remote: whole small blobs, ranged large ones ----------------------------------------------
@pytest.fixture(params=["s3", "gcs"])
def remote_url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str],
               monkeypatch: pytest.MonkeyPatch) -> str:
    url = make_store_url(request.param)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    Registry(url, create=True).close()
    return url


def _streaming_fs(cache: Path, monkeypatch: pytest.MonkeyPatch) -> ArtfsFileSystem:
    """The filesystem of a reader with an empty cache (the writer's holds what it logged),
    reading blobs above 1 MiB in ranges (the mount's rule is 64 MiB): test files stay small
    and servers quick."""
    monkeypatch.setenv("ARTFS_CACHE_DIR", str(cache))
    fs = fsspec.filesystem("artfs")
    assert isinstance(fs, ArtfsFileSystem)
    fs.whole_fetch_max = MiB
    return fs


def _overwrite_blob(url: str, digest: str, data: bytes) -> None:
    reg = Registry(url)
    try:
        reg.store.put(Registry.blob_key(E, digest), data)
    finally:
        reg.close()


def test_ranged_reads_at_the_end_of_a_large_remote_file(
        remote_url: str, publish: Callable[..., None], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    big = os.urandom(12 * MiB + 12345)
    publish("big", {"big.bin": big})
    fs = _streaming_fs(tmp_path / "reader-cache", monkeypatch)
    path = f"artfs://{E}/{P}/big/v0/big.bin"
    assert fs.cat_file(path, len(big) - 100) == big[-100:]
    with fs.open(path) as f:
        f.seek(len(big) - MiB)
        assert f.read() == big[-MiB:]
        f.seek(5 * MiB + 7)
        assert f.read(1000) == big[5 * MiB + 7:5 * MiB + 1007]
        blob = f.handle.blob  # the end and one block were fetched, not the whole file
        assert 0 < blob.blocks - blob.missing <= 4
    # A sequential reader goes through the whole file with read-ahead, verified at the end.
    with fs.open(path) as f:
        got = b"".join(iter(lambda: f.read(3 * MiB // 2), b""))
    assert got == big
    assert fs.cat_file(path) == big


def test_tampered_remote_blobs_name_the_path(
        remote_url: str, publish: Callable[..., None], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    big = os.urandom(6 * MiB)
    small = b"x,y\n" + b"3,4\n" * 100_000  # not packed (packs take up to 256 KiB)
    publish("bad", {"big.bin": big, "small.csv": small})
    bad_big = bytearray(big)
    bad_big[3 * MiB] ^= 0xFF  # same size: only the whole blob's hash can tell
    _overwrite_blob(remote_url, hashlib.sha256(big).hexdigest(), bytes(bad_big))
    _overwrite_blob(remote_url, hashlib.sha256(small).hexdigest(), small.replace(b"3", b"5"))
    fs = _streaming_fs(tmp_path / "reader-cache", monkeypatch)
    small_path = f"artfs://{E}/{P}/bad/v0/small.csv"
    with pytest.raises(IntegrityError) as e:
        pd.read_csv(small_path)  # a small blob: checked before its first byte
    assert small_path in str(e.value)
    big_path = f"artfs://{E}/{P}/bad/v0/big.bin"
    with fs.open(big_path) as f, pytest.raises(IntegrityError) as e:
        while f.read(MiB):  # the read reaching the end waits for the hash
            pass
    assert big_path in str(e.value)
    for read in (lambda: fs.cat_file(big_path), lambda: fs.get(big_path, str(tmp_path / "b"))):
        with pytest.raises(IntegrityError) as e:
            read()
        assert big_path in str(e.value)
    assert not (tmp_path / "b").exists()
    reg = Registry(remote_url, cache_dir=tmp_path / "reader-cache")
    try:
        assert reg.cache.get(hashlib.sha256(big).hexdigest()) is None
    finally:
        reg.close()
