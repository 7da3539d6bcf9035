"""Issue 5, remote half: reading through a mount of an S3 registry, against the same object read
by plain boto3, by `rclone mount --vfs-cache-mode full` and by `s3fs`; time to first byte; and
4 concurrent readers and random 4 KiB reads on a local-registry mount against the same files on
disk.

The S3 server is moto, started here (FACTS.md: every ranged GET costs it ~230 ms, so tools that
fetch in many small ranges are slow there, and a single-stream GET is its best case).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

import sdk
from artfs.registry import Registry
from tests.servers import boto3_pointed_at, start_moto, stop_server

from .bench_mount import bench_env, mounted
from .common import Row, make_big_file, median_time, sh, workdir

MIB = 1024**2
BUCKET = "bench"
#: Random reads per measurement: enough for a stable rate, few enough to stay quick.
RANDOM_READS = 2000


@contextmanager
def s3_env() -> Iterator[dict[str, str]]:
    """A moto server for this benchmark, with this process's boto3 pointed at it."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_moto(Path(tmp) / "moto.log")
        try:
            with boto3_pointed_at(endpoint):
                yield dict(os.environ)
        finally:
            stop_server(proc)


def _log_file(reg_url: str, cache: Path, path: Path, name: str) -> str:
    """Log one file; returns its blob key in the bucket."""
    reg = Registry(reg_url, cache_dir=cache)
    with sdk.init(job_type="bench", project="bench", entity="bench", registry=reg) as run:
        art = sdk.Artifact(name, type="dataset")
        art.add_file(path)
        run.log_artifact(art)
    digest = art.files()[0].digest
    assert digest is not None
    return "reg/" + reg.blob_key("bench", digest)


@contextmanager
def peer_mount(kind: str, mnt: Path, env: dict[str, str]) -> Iterator[Path]:
    """rclone or s3fs mounted on the bench bucket; skipped (raises) where the tool is missing."""
    mnt.mkdir(parents=True, exist_ok=True)
    endpoint = env["AWS_ENDPOINT_URL"]
    if kind == "rclone":
        penv = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
        penv.update(RCLONE_CONFIG_B_TYPE="s3", RCLONE_CONFIG_B_PROVIDER="Other",
                    RCLONE_CONFIG_B_ENDPOINT=endpoint, RCLONE_CONFIG_B_ENV_AUTH="true")
        proc = subprocess.Popen(["rclone", "mount", f"b:{BUCKET}", str(mnt),
                                 "--vfs-cache-mode", "full", "--cache-dir",
                                 str(mnt.parent / "rclone-cache")], env=penv,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        pw = mnt.parent / "s3fs.passwd"
        pw.write_text(f"{env['AWS_ACCESS_KEY_ID']}:{env['AWS_SECRET_ACCESS_KEY']}\n")
        pw.chmod(0o600)
        proc = subprocess.Popen(["s3fs", BUCKET, str(mnt), "-f", "-o", f"url={endpoint}",
                                 "-o", "use_path_request_style", "-o", f"passwd_file={pw}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{kind} did not mount {mnt}")
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(mnt.parent / "rclone-cache", ignore_errors=True)


def _remote_rows(w: Path, size: int, runs: int) -> list[Row]:
    rows: list[Row] = []
    big = make_big_file(w / "big.bin", size)
    label = f"{size // MIB} MiB"
    with s3_env() as env:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        reg_url = f"s3://{BUCKET}/reg"
        key = _log_file(reg_url, w / "cache-log", big, "big")
        menv = {**bench_env(w), **env, "ARTFS_REGISTRY": reg_url}

        def fresh_cache() -> None:
            shutil.rmtree(w / "cache", ignore_errors=True)

        def via_mount() -> None:
            with mounted(w, menv) as (root, _):
                sh("cat", str(root / "big" / "v0" / "big.bin"))

        def ttfb() -> None:
            with mounted(w, menv) as (root, _):
                t0 = time.perf_counter()
                with open(root / "big" / "v0" / "big.bin", "rb") as f:
                    f.read(4096)
                ttfb_times.append(time.perf_counter() - t0)

        ours = median_time(via_mount, runs, fresh_cache)
        boto = median_time(lambda: s3.download_file(BUCKET, key, str(w / "dl.bin")), runs)
        single = median_time(lambda: _single_get(s3, key), runs)
        rows.append(Row(f"mount S3: first read of {label}", ours, "boto3 download_file", boto,
                        ">= 0.9x"))
        rows.append(Row(f"mount S3: first read of {label}", ours, "single-stream GET", single))
        for kind in ("rclone", "s3fs"):
            if shutil.which(kind) is None:
                continue
            pmnt = w / f"{kind}-mnt"

            def peer(kind: str = kind, pmnt: Path = pmnt) -> None:
                with peer_mount(kind, pmnt, env) as root:
                    sh("cat", str(root / key))

            rows.append(Row(f"mount S3: first read of {label}", ours, f"{kind} mount (cold)",
                            median_time(peer, runs), "ahead"))
        ttfb_times: list[float] = []
        median_time(ttfb, runs, fresh_cache)
        ttfb_times.sort()
        rows.append(Row(f"mount S3: time to first 4 KiB of {label}",
                        ttfb_times[len(ttfb_times) // 2], "single-stream GET", single,
                        note="ratio is TTFB / whole-object GET time"))
    return rows


def _single_get(s3, key: str) -> None:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    while body.read(8 * MIB):
        pass


def _read_all(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(MIB):
            pass


def _parallel(paths: list[Path]) -> None:
    threads = [threading.Thread(target=_read_all, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _random_reads(path: Path, size: int) -> None:
    rng = random.Random(7)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(RANDOM_READS):
            os.pread(fd, 4096, rng.randrange(0, size - 4096) & ~4095)
    finally:
        os.close(fd)


def _local_rows(w: Path, size: int, runs: int) -> list[Row]:
    """4 concurrent readers and random reads, mount vs the same files on local disk."""
    files = [make_big_file(w / f"p{i}.bin", size) for i in range(4)]
    reg = Registry(str(w / "reg"), cache_dir=w / "cache")
    with sdk.init(job_type="bench", project="bench", entity="bench", registry=reg) as run:
        art = sdk.Artifact("four", type="dataset")
        for f in files:
            art.add_file(f)
        run.log_artifact(art)
    rows = []
    with mounted(w) as (root, _):
        mounted_files = [root / "four" / "v0" / f.name for f in files]
        _parallel(mounted_files)
        ours = median_time(lambda: _parallel(mounted_files), runs)
        base = median_time(lambda: _parallel(files), runs)
        rows.append(Row(f"mount local: 4 threads x {size // MIB} MiB (warm)", ours,
                        "same files on disk", base,
                        note="from the kernel's page cache of the mount"))
        parallel_base = base
        ours = median_time(lambda: _random_reads(mounted_files[0], size), runs)
        base = median_time(lambda: _random_reads(files[0], size), runs)
        rows.append(Row(f"mount local: {RANDOM_READS} random 4 KiB reads", ours,
                        "same file on disk", base,
                        note=f"{RANDOM_READS / ours:.0f} IOPS vs {RANDOM_READS / base:.0f}; "
                             "from the kernel's page cache of the mount"))

    def fresh_mount(read: Callable[[list[Path]], object]) -> float:
        """`read` on a fresh mount: every read is a FUSE request (no kernel cache yet). Files
        are opened once before timing: the first open verifies the blob."""
        with mounted(w) as (root, _):
            paths = [root / "four" / "v0" / f.name for f in files]
            for p in paths:
                with open(p, "rb"):
                    pass
            t0 = time.perf_counter()
            read(paths)
            return time.perf_counter() - t0

    ours = statistics.median(fresh_mount(_parallel) for _ in range(runs))
    rows.append(Row(f"mount local: 4 threads x {size // MIB} MiB, fresh mount", ours,
                    "same files on disk", parallel_base,
                    note=f"{4 * size / ours / 1e9:.2f} GB/s"))
    ours = statistics.median(fresh_mount(lambda paths: _random_reads(paths[0], size))
                             for _ in range(runs))
    rows.append(Row(f"mount local: {RANDOM_READS} random 4 KiB reads, fresh mount", ours,
                    "same file on disk", base,
                    note=f"{RANDOM_READS / ours:.0f} IOPS vs {RANDOM_READS / base:.0f}"))
    return rows


def run(quick: bool) -> list[Row]:
    runs = 3
    size = 256 * MIB if quick else 1024 * MIB
    rows: list[Row] = []
    with workdir("mount-remote") as w:
        rows += _remote_rows(w, size, runs)
    with workdir("mount-parallel") as w:
        rows += _local_rows(w, 64 * MIB if quick else 256 * MIB, runs)
    return rows
