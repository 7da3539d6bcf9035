"""Issue 6: writing into `@staging` and `artfs commit` against the same work done natively.

Rows: `cp` of one large file and `cp -r` of 10,000 files of 4 KiB into a staging folder vs
`cp` to local disk; the same copies into `bench.passthrough`, the least a pyfuse3 file system
does for them (the floor: what no staging design on pyfuse3 goes below), without and with
("floor+wb") the kernel's writeback cache, which was no faster once `cp` writes 1 MiB at a
time, as it does into artfs, so artfs leaves it off (see `artfs.fs.ops.Operations`);
`artfs commit` of those (local registry) vs `sha256sum` of the same bytes (the commit should
cost far less: the large file was hashed while `cp` wrote it); and, on an S3 registry
(SeaweedFS, as in bench_s3), `artfs commit` of the large file vs a plain boto3 upload of it.

Every ratio divides two medians measured in the same run. The commit figures are wall times of
the `artfs commit` command, Python start-up included. On the 2-core test machines, shared with
other jobs, the copy-in ratios vary by 2x from run to run; compare rows of one run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from artfs.registry import Registry

from .bench_mount import bench_env, mounted
from .common import Row, make_big_file, make_small_files, median_time, remove, sh, workdir
from .seaweed import start_seaweedfs, stop_server

MIB = 1024**2
GIB = 1024**3


def _artfs(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "artfs.cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def _make_unique(path: Path, n: int) -> None:
    """Change a file's first bytes, so each commit stores new bytes (not a known blob)."""
    with open(path, "r+b") as f:
        f.write(f"run {n:08d} ".encode())


def _timed_commits(env: dict[str, str], art: Path, runs: int,
                   fill: Callable[[int], None]) -> float:
    """Median time of `artfs commit` after `fill(n)` (untimed) staged new contents."""
    times = []
    for n in range(runs):
        fill(n)
        t0 = time.perf_counter()
        _artfs(env, "commit", str(art), "--type", "dataset")
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _local_rows(w: Path, big: Path, small: Path, runs: int, label: str,
                n_small: int) -> list[Row]:
    rows = []
    env = bench_env(w)
    Registry(env["ARTFS_REGISTRY"], cache_dir=w / "cache", create=True).close()
    local = w / "copy"
    with mounted(w) as (root, _):
        art = root / "big"
        art.mkdir(parents=True)
        stage = art / "@staging"
        dest = stage / big.name
        sh("cp", str(big), str(dest))
        ours = median_time(lambda: sh("cp", str(big), str(dest)), runs,
                           setup=lambda: remove(dest))
        base = median_time(lambda: sh("cp", str(big), str(local)), runs,
                           setup=lambda: remove(local))
        rows.append(Row(f"staging: cp {label} file in", ours, "cp to local disk", base,
                        "<= 2x"))

        def fill_big(n: int) -> None:
            _make_unique(big, n)
            remove(dest)
            sh("cp", str(big), str(dest))

        commit = _timed_commits(env, art, runs, fill_big)
        sha = median_time(lambda: sh("sha256sum", str(big)), runs)
        rows.append(Row(f"staging: artfs commit of {label} written by cp", commit,
                        "sha256sum of the file", sha, "<= 0.5x", note="local registry"))

        tree = root / "tree"
        tree.mkdir(parents=True)
        staged_tree = tree / "@staging" / "small"
        ours = median_time(lambda: sh("cp", "-r", str(small), str(staged_tree)), runs,
                           setup=lambda: remove(staged_tree))
        base = median_time(lambda: sh("cp", "-r", str(small), str(local)), runs,
                           setup=lambda: remove(local))
        rows.append(Row(f"staging: cp -r {n_small:,} x 4 KiB in", ours, "cp -r to local disk",
                        base, "<= 2x"))

        first = next(small.rglob("*.bin"))

        def fill_small(n: int) -> None:
            _make_unique(first, n)
            remove(staged_tree)
            sh("cp", "-r", str(small), str(staged_tree))

        commit = _timed_commits(env, tree, runs, fill_small)
        files = [str(p) for p in small.rglob("*.bin")]
        sha = median_time(lambda: subprocess.run(["sha256sum", *files], check=True,
                                                 stdout=subprocess.DEVNULL), runs)
        rows.append(Row(f"staging: artfs commit of {n_small:,} x 4 KiB", commit,
                        "sha256sum of the files", sha, "",
                        note="local registry; each run changes one file"))
    return rows


def _floor_rows(w: Path, big: Path, small: Path, runs: int, label: str,
                n_small: int) -> list[Row]:
    """The copy-in rows again, into `bench.passthrough`, without and with the kernel's
    writeback cache (artfs mounts without it: see `artfs.fs.ops.Operations`)."""
    return [*_floor_variant(w, big, small, runs, label, n_small, writeback=False),
            *_floor_variant(w, big, small, runs, label, n_small, writeback=True)]


def _floor_variant(w: Path, big: Path, small: Path, runs: int, label: str, n_small: int, *,
                   writeback: bool) -> list[Row]:
    """Each run copies to a new name: the floor file system cannot delete."""
    mnt, backing, local = w / f"floor-mnt-{writeback}", w / "floor-files", w / "floor-copy"
    mnt.mkdir()
    backing.mkdir()
    floor = "floor+wb:" if writeback else "floor:"
    names = (f"run{i}" for i in range(2 * runs))
    try:
        with _passthrough(mnt, backing, writeback):
            ours = median_time(lambda: sh("cp", str(big), str(mnt / next(names))), runs)
            base = median_time(lambda: sh("cp", str(big), str(local)), runs,
                               setup=lambda: remove(local))
            rows = [Row(f"{floor} cp {label} file into a pyfuse3 pass-through", ours,
                        "cp to local disk", base, "", note="no hashing, no SQLite")]
            ours = median_time(lambda: sh("cp", "-r", str(small), str(mnt / next(names))),
                               runs)
            base = median_time(lambda: sh("cp", "-r", str(small), str(local)), runs,
                               setup=lambda: remove(local))
            rows.append(Row(f"{floor} cp -r {n_small:,} x 4 KiB into it", ours,
                            "cp -r to local disk", base, ""))
            return rows
    finally:
        remove(backing, local)


@contextmanager
def _passthrough(mnt: Path, backing: Path, writeback: bool) -> Iterator[None]:
    args = ["--writeback"] if writeback else []
    proc = subprocess.Popen([sys.executable, "-m", "bench.passthrough", *args, str(mnt),
                             str(backing)])
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bench.passthrough did not mount")
            time.sleep(0.05)
        yield
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        proc.wait(timeout=30)


def _s3_rows(w: Path, big: Path, runs: int, label: str) -> list[Row]:
    """On SeaweedFS, as bench_s3: moto copies the whole object for every ranged GET and
    measures itself more than the client (bench/seaweed.py)."""
    import boto3

    from tests.servers import S3_TEST_ENV, s3_client_env

    proc, endpoint = start_seaweedfs(w / "seaweedfs", w / "seaweedfs.log")
    try:
        env = {**bench_env(w), **S3_TEST_ENV, **s3_client_env(endpoint),
               "ARTFS_STATE_DIR": str(w / "state-s3"), "ARTFS_CACHE_DIR": str(w / "cache-s3")}
        env.pop("AWS_CA_BUNDLE", None)
        s3 = boto3.session.Session(aws_access_key_id=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
                                   region_name=S3_TEST_ENV["AWS_DEFAULT_REGION"]
                                   ).client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        env["ARTFS_REGISTRY"] = "s3://bench/reg"
        subprocess.run([sys.executable, "-m", "artfs.cli", "init", env["ARTFS_REGISTRY"]],
                       env=env, check=True, capture_output=True)
        with mounted(w, env) as (root, _):
            art = root / "big"
            art.mkdir(parents=True)
            dest = art / "@staging" / big.name

            def fill(n: int) -> None:
                _make_unique(big, n + 1000)
                remove(dest)
                sh("cp", str(big), str(dest))

            commit = _timed_commits(env, art, runs, fill)
        upload = median_time(lambda: s3.upload_file(str(big), "bench", "plain/big.bin"), runs)
        return [Row(f"staging: artfs commit of {label} to S3 (SeaweedFS)", commit,
                    "boto3 upload_file", upload, "<= 1.5")]
    finally:
        stop_server(proc)


def run(quick: bool) -> list[Row]:
    runs = 3
    size = 256 * MIB if quick else GIB
    n_small = 2_000 if quick else 10_000
    label = f"{size // MIB} MiB"
    with workdir("staging") as w:
        big = make_big_file(w / "big.bin", size)
        small = make_small_files(w / "small", n_small, 4096)
        rows = _local_rows(w, big, small, runs, label, n_small)
        rows += _floor_rows(w, big, small, runs, label, n_small)
        rows += _s3_rows(w, big, runs, label)
    return rows
