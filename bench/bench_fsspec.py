"""Issue 21: reading a 1 GiB file of an S3 registry through `artfs://` (fsspec), against a
direct boto3 download of the same object and a first read through a fresh artfs mount.

The S3 server is SeaweedFS (bench/seaweed.py; moto copies the whole object for every ranged
GET). Every artfs row starts from an empty cache and a new filesystem object (no instance
cache); the boto3 baseline reuses one warm client, so it carries no connection set-up.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import boto3

from artfs.fsspec_fs import ArtfsFileSystem

from .bench_mount import mounted
from .bench_mount_remote import BUCKET, _logged_remotely, _read_checked, s3_env
from .common import Row, remove, workdir

MIB = 1024**2
GIB = 1024**3
#: What a reader asks for per call (pandas and pyarrow read in blocks of this order).
READ_SIZE = MIB


def _fs(w: Path, reg_url: str, part: int | None = None, window: int | None = None
        ) -> ArtfsFileSystem:
    fs = ArtfsFileSystem(registry=reg_url, cache_dir=str(w / "cache"), skip_instance_cache=True)
    if part is not None:
        fs.part_size = part
    if window is not None:
        fs.read_ahead_max = window
    return fs


def _read_open(fs: ArtfsFileSystem, path: str, size: int) -> None:
    got = 0
    with fs.open(path) as f:
        while chunk := f.read(READ_SIZE):
            got += len(chunk)
    if got != size:
        raise RuntimeError(f"read {got} bytes of {path}, expected {size}")


def _rows(w: Path, env: dict[str, str], size: int, runs: int) -> list[Row]:
    """Every way of reading once per round, rounds repeated: on a shared machine the load
    changes by the minute, and interleaving gives each row the same share of it."""
    s3 = boto3.client("s3")
    key, menv = _logged_remotely(w, env, "reg", "big", size)
    reg_url = menv["ARTFS_REGISTRY"]
    path = "artfs://bench/bench/big/v0/big.bin"
    label = f"{size // MIB} MiB"
    dest = w / "dl.bin"

    def fresh(part: int | None = None, window: int | None = None) -> ArtfsFileSystem:
        remove(w / "cache", dest)
        return _fs(w, reg_url, part, window)

    def mount_read() -> float:
        remove(w / "cache")
        with mounted(w, menv) as (root, _):
            t0 = time.perf_counter()
            _read_checked(root / "big" / "v0" / "big.bin", size)
            return time.perf_counter() - t0

    cpu: dict[str, list[float]] = {}

    def timed(fn: Callable[[], object]) -> float:
        """Wall time of `fn`; this process's CPU time (every thread) goes to `cpu["last"]`."""
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        cpu["last"] = [time.process_time() - c0]
        return wall

    def boto3_download() -> float:
        remove(dest)
        return timed(lambda: s3.download_file(BUCKET, key, str(dest)))

    def artfs(call: Callable[[ArtfsFileSystem], object], part: int | None = None,
              window: int | None = None) -> Callable[[], float]:
        def way() -> float:
            fs = fresh(part, window)
            return timed(lambda: call(fs))
        return way

    ways: dict[str, Callable[[], float]] = {
        "boto3": boto3_download,
        "open16": artfs(lambda fs: _read_open(fs, path, size)),
        "open32": artfs(lambda fs: _read_open(fs, path, size), 32 * MIB, 256 * MIB),
        "get": artfs(lambda fs: fs.get(path, str(dest))),
        "cat": artfs(lambda fs: fs.cat_file(path)),
        "mount": mount_read,
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(runs):
        for name, way in ways.items():
            cpu["last"] = [float("nan")]  # the mount's CPU is another process's
            times[name].append(way())
            cpu.setdefault(name, []).extend(cpu["last"])
    remove(dest, w / "cache")
    med = {k: statistics.median(v) for k, v in times.items()}
    boto = med["boto3"]

    def note(k: str, what: str) -> str:
        used = statistics.median(cpu[k])
        spent = "" if math.isnan(used) else (
            f"; CPU {used:.2f} s (boto3 {statistics.median(cpu['boto3']):.2f})")
        return (f"{size / med[k] / 1e6:.0f} MB/s; {what}{spent}; runs "
                + " ".join(f"{t:.2f}" for t in times[k]) + " (boto3 "
                + " ".join(f"{t:.2f}" for t in times["boto3"]) + ")")

    base = "boto3 download_file"
    return [
        Row(f"artfs:// open+read {label} in 1 MiB reads", med["open16"], base, boto, "<= 1.2",
            note=note("open16", "16 MiB ranged GETs, verified by the last read")),
        Row(f"artfs:// open+read {label}, 32 MiB GETs, 256 MiB window", med["open32"], base,
            boto, note=note("open32", "larger parts, as many in flight: the experiment")),
        Row(f"artfs:// get {label}", med["get"], base, boto, "<= 1.2",
            note=note("get", "verified before it gets its name")),
        Row(f"artfs:// cat_file {label} (whole)", med["cat"], base, boto,
            note=note("cat", "whole into the cache, verified, then into memory")),
        Row(f"mount S3: first read of {label}, fresh mount", med["mount"], base, boto,
            note=note("mount", "mount start not timed")),
    ]


def run(quick: bool) -> list[Row]:
    with workdir("fsspec") as w, s3_env(w) as env:
        return _rows(w, env, 256 * MIB if quick else GIB, 3 if quick else 5)
