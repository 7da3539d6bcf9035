"""Issue 3: logging and downloading against S3 (SeaweedFS started here) vs plain boto3.

Baselines, measured in the same run against the same server:
- one big file: boto3 `upload_file` / `download_file` with default settings, and a single-stream
  `get_object` read;
- many small files, like with like: artfs sends them as a few packs (artfs/packs.py), ~1
  request per 8 MiB, so the baseline packs too: a tar of the folder built in memory and sent
  with boto3's `upload_fileobj` (fetched with `download_fileobj` and unpacked);
- many small files, unlike (labelled so): a boto3 loop of put_object / get_object, one request
  per file, on `artfs.registry.TRANSFER_WORKERS` threads, what a naive client does.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

from artfs.registry import TRANSFER_WORKERS
from tests.servers import boto3_pointed_at

from .common import Row, log_artifact, make_big_file, make_small_files, median_time, remove, workdir
from .seaweed import start_seaweedfs, stop_server

MiB = 1024**2
GIB = 1024**3


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    runs = 3 if quick else 5
    big_size = 256 * MiB if quick else GIB
    n_small = 2_000 if quick else 10_000
    with workdir("s3") as w:
        proc, endpoint = start_seaweedfs(w / "seaweedfs", w / "seaweedfs.log")
        try:
            with boto3_pointed_at(endpoint):
                rows += _measure(w, runs, big_size, n_small)
        finally:
            stop_server(proc)
    return rows


def _measure(w: Path, runs: int, big_size: int, n_small: int) -> list[Row]:
    rows: list[Row] = []
    client = boto3.session.Session().client(
        "s3", config=Config(max_pool_connections=max(10, TRANSFER_WORKERS))
    )
    big = make_big_file(w / "big.bin", big_size)
    small = make_small_files(w / "small", n_small, 4096)
    small_files = _files(small)
    cache = w / "cache"
    label = f"{big_size // MiB} MiB"

    def fresh_bucket() -> str:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        return bucket

    buckets: list[str] = []

    def new_registry() -> None:
        remove(cache, w / "dl")
        buckets.append(fresh_bucket())

    def url() -> str:
        return f"s3://{buckets[-1]}/reg"

    # -- one big file ----------------------------------------------------------------------
    ours = median_time(lambda: log_artifact(url(), cache, "big", lambda a: a.add_file(big)), runs,
                       new_registry)
    base = median_time(lambda: client.upload_file(str(big), buckets[-1], "big.bin"), runs,
                       new_registry)
    rows.append(Row(f"S3 log_artifact 1 file of {label}", ours, "boto3 upload_file", base,
                    "<= 1.2"))

    new_registry()
    big_art = log_artifact(url(), cache, "big", lambda a: a.add_file(big))
    client.upload_file(str(big), buckets[-1], "big.bin")
    bucket = buckets[-1]

    def clear_dl() -> None:
        # Empty the cache without removing its folder: the open registry keeps using it.
        remove(cache / "blobs", cache / "tmp", w / "dl", w / "copy")
        (cache / "blobs").mkdir()
        (cache / "tmp").mkdir()

    ours = median_time(lambda: big_art.download(w / "dl"), runs, clear_dl)
    base = median_time(lambda: client.download_file(bucket, "big.bin", str(w / "copy")), runs,
                       clear_dl)

    def single_get() -> None:
        body = client.get_object(Bucket=bucket, Key="big.bin")["Body"]
        with open(w / "copy", "wb") as f:
            shutil.copyfileobj(body, f, 8 * MiB)

    single = median_time(single_get, runs, clear_dl)
    rows.append(Row(f"S3 download() 1 file of {label}", ours, "boto3 download_file", base,
                    "<= 1.2"))
    rows.append(Row(f"S3 download() 1 file of {label}", ours, "single get_object stream",
                    single, "<= 1.2"))

    # -- many small files ------------------------------------------------------------------
    def boto_put_all() -> None:
        bucket = buckets[-1]

        def put(p: Path) -> None:
            client.put_object(Bucket=bucket, Key=p.relative_to(small).as_posix(),
                              Body=p.read_bytes())

        with ThreadPoolExecutor(TRANSFER_WORKERS) as pool:
            list(pool.map(put, small_files))

    def boto_put_packed() -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(small, arcname=".")
        buf.seek(0)
        client.upload_fileobj(buf, buckets[-1], "small.tar")

    ours = median_time(lambda: log_artifact(url(), cache, "small", lambda a: a.add_dir(str(small))),
                       runs, new_registry)
    packed = median_time(boto_put_packed, runs, new_registry)
    base = median_time(boto_put_all, runs, new_registry)
    rows.append(Row(f"S3 log_artifact {n_small} x 4 KiB", ours,
                    "boto3 upload_fileobj of a tar (packed, like artfs)", packed, "<= 1.5"))
    rows.append(Row(f"S3 log_artifact {n_small} x 4 KiB", ours,
                    f"boto3 put_object x{TRANSFER_WORKERS} threads", base, "<= 1.0",
                    note="unlike: artfs packs, this baseline makes one request per file"))

    new_registry()
    small_art = log_artifact(url(), cache, "small", lambda a: a.add_dir(str(small)))
    boto_put_all()
    bucket = buckets[-1]
    keys = [p.relative_to(small).as_posix() for p in small_files]

    def boto_get_all() -> None:
        dest = w / "copy"

        def get(key: str) -> None:
            target = dest / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

        with ThreadPoolExecutor(TRANSFER_WORKERS) as pool:
            list(pool.map(get, keys))

    boto_put_packed()

    def boto_get_packed() -> None:
        buf = io.BytesIO()
        client.download_fileobj(bucket, "small.tar", buf)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            tar.extractall(w / "copy", filter="data")

    ours = median_time(lambda: small_art.download(w / "dl"), runs, clear_dl)
    packed = median_time(boto_get_packed, runs, clear_dl)
    base = median_time(boto_get_all, runs, clear_dl)
    rows.append(Row(f"S3 download() {n_small} x 4 KiB", ours,
                    "boto3 download_fileobj of a tar, unpacked (like artfs)", packed, "<= 1.5"))
    rows.append(Row(f"S3 download() {n_small} x 4 KiB", ours,
                    f"boto3 get_object x{TRANSFER_WORKERS} threads", base, "<= 1.0",
                    note="unlike: artfs fetches packs, this baseline one request per file"))
    return rows
