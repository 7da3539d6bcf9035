"""Issue 5, remote half: reading through a mount of an S3 registry, against the same object read
by plain boto3, by `rclone mount --vfs-cache-mode full` and by `s3fs`; time to first byte of a
big remote file; and 4 concurrent readers and random 4 KiB reads on a local-registry mount
against the same files on disk.

The S3 server is SeaweedFS (bench/seaweed.py), started here: moto copies the whole object for
every ranged GET, which made any client that fetches in ranges look slow and measured moto, not
the client. Every remote row starts from a fresh mount and an empty artfs cache; the boto3
baselines reuse one warm client, so they carry no connection set-up.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import boto3

import sdk
from artfs.registry import Registry
from tests.servers import boto3_pointed_at

from .bench_mount import bench_env, mounted
from .common import Row, failed_row, make_big_file, median_time, remove, workdir
from .seaweed import start_seaweedfs, stop_server

MIB = 1024**2
GIB = 1024**3
BUCKET = "bench"
#: Random reads per measurement: enough for a stable rate, few enough to stay quick.
RANDOM_READS = 2000


@contextmanager
def s3_env(w: Path) -> Iterator[dict[str, str]]:
    """A SeaweedFS server with the bench bucket, and this process's boto3 pointed at it; yields
    the environment for child processes (the artfs mount, rclone, s3fs)."""
    proc, endpoint = start_seaweedfs(w / "seaweedfs", w / "seaweedfs.log")
    try:
        with boto3_pointed_at(endpoint):
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield dict(os.environ)
    finally:
        stop_server(proc)


def _log_file(reg_url: str, cache: Path, path: Path, name: str) -> str:
    """Log one file to the registry at `reg_url` (in BUCKET); returns its blob key."""
    reg = Registry(reg_url, cache_dir=cache, create=True)
    with sdk.init(job_type="bench", project="bench", entity="bench", registry=reg) as run:
        art = sdk.Artifact(name, type="dataset")
        art.add_file(path)
        run.log_artifact(art)
    digest = art.files()[0].digest
    assert digest is not None
    return reg_url.removeprefix(f"s3://{BUCKET}/") + "/" + reg.blob_key("bench", digest)


@contextmanager
def peer_mount(kind: str, mnt: Path, env: dict[str, str]) -> Iterator[Path]:
    """rclone or s3fs mounted on the bench bucket. Raises where it did not mount: s3fs in
    particular exits or serves an empty tree without a word, so its output goes to a log."""
    mnt.mkdir(parents=True, exist_ok=True)
    endpoint = env["AWS_ENDPOINT_URL"]
    log = mnt.parent / f"{kind}.log"
    if kind == "rclone":
        penv = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
        penv.update(RCLONE_CONFIG_B_TYPE="s3", RCLONE_CONFIG_B_PROVIDER="Other",
                    RCLONE_CONFIG_B_ENDPOINT=endpoint, RCLONE_CONFIG_B_ENV_AUTH="true")
        cmd = ["rclone", "mount", f"b:{BUCKET}", str(mnt), "--vfs-cache-mode", "full",
               "--cache-dir", str(mnt.parent / "rclone-cache")]
    else:
        pw = mnt.parent / "s3fs.passwd"
        pw.write_text(f"{env['AWS_ACCESS_KEY_ID']}:{env['AWS_SECRET_ACCESS_KEY']}\n")
        pw.chmod(0o600)
        penv = env
        # SeaweedFS serves buckets by path only.
        cmd = ["s3fs", BUCKET, str(mnt), "-f", "-o", f"url={endpoint}", "-o",
               "use_path_request_style", "-o", f"passwd_file={pw}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=penv, stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            if os.path.ismount(mnt):
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.ismount(mnt):
            raise RuntimeError(f"{kind} did not mount {mnt}:\n{log.read_text()[-2000:]}")
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(mnt.parent / "rclone-cache", ignore_errors=True)


def _read_all(path: Path) -> int:
    """Read `path` to the end in 1 MiB reads into one buffer; returns the bytes read."""
    buf = bytearray(MIB)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def _read_checked(path: Path, size: int) -> None:
    """Read all of `path`, failing if it is not `size` bytes (a peer serving nothing)."""
    got = _read_all(path)
    if got != size:
        raise RuntimeError(f"read {got} bytes of {path}, expected {size}")


@contextmanager
def _root_only(cm: AbstractContextManager[tuple[Path, int]]) -> Iterator[Path]:
    """`mounted` as the peers' mounts: the root alone, so one timing loop serves all three."""
    with cm as (root, _):
        yield root


def _timed_reads(mount: Callable[[], AbstractContextManager[Path]], rel: str, size: int,
                 runs: int, setup: Callable[[], object] = lambda: None) -> tuple[float, float]:
    """Medians of (mount start, first read of `rel`) over `runs` fresh mounts, calling `setup`
    (untimed) before each. Mount start is timed apart: it is paid once per mount, not per
    file, and differs by tool."""
    starts, reads = [], []
    for _ in range(runs):
        setup()
        t0 = time.perf_counter()
        with mount() as root:
            t1 = time.perf_counter()
            _read_checked(root / rel, size)
            reads.append(time.perf_counter() - t1)
        starts.append(t1 - t0)
    return statistics.median(starts), statistics.median(reads)


def _logged_remotely(w: Path, env: dict[str, str], registry: str, name: str,
                     size: int) -> tuple[str, dict[str, str]]:
    """Log a `size`-byte file `name` to a registry of the bench bucket; returns its blob key and
    the environment of a mount of that registry. The local copies are removed."""
    reg_url = f"s3://{BUCKET}/{registry}"
    src = make_big_file(w / f"{name}.bin", size)
    key = _log_file(reg_url, w / "cache-log", src, name)
    remove(src, w / "cache-log")
    return key, {**bench_env(w), **env, "ARTFS_REGISTRY": reg_url}


def _sequential_rows(w: Path, env: dict[str, str], size: int, runs: int) -> list[Row]:
    """First sequential read of one file: artfs mount vs boto3 and the peer mounts."""
    s3 = boto3.client("s3")
    key, menv = _logged_remotely(w, env, "reg", "big", size)
    label = f"{size // MIB} MiB"

    def single_get() -> None:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
        while body.read(8 * MIB):
            pass

    start, ours = _timed_reads(lambda: _root_only(mounted(w, menv)), "big/v0/big.bin", size,
                               runs, lambda: remove(w / "cache"))
    boto = median_time(lambda: s3.download_file(BUCKET, key, str(w / "dl.bin")), runs,
                       lambda: remove(w / "dl.bin"))
    remove(w / "dl.bin")
    single = median_time(single_get, runs)
    name = f"mount S3: first read of {label}, fresh mount"
    rows = [Row(name, ours, "boto3 download_file", boto, "<= 1.11 (>= 0.9x speed)",
                note=f"{size / ours / 1e6:.0f} MB/s; mount start {start:.2f} s, not timed"),
            Row(name, ours, "one get_object streamed", single)]
    for kind in ("rclone", "s3fs"):
        # A peer that is missing or fails still gets its row, marked FAILED: a silently
        # shorter table reads as if the comparison had been made.
        if shutil.which(kind) is None:
            rows.append(failed_row(name, ours, f"{kind} mount (cold)", "< 1 (ahead)",
                                   f"{kind} not installed"))
            continue
        try:
            start, peer = _timed_reads(
                lambda kind=kind: peer_mount(kind, w / f"{kind}-mnt", env), key, size, runs)
        except (RuntimeError, OSError) as e:
            print(f"mount_remote: {kind} failed: {e}", file=sys.stderr)
            rows.append(failed_row(name, ours, f"{kind} mount (cold)", "< 1 (ahead)", e))
            continue
        rows.append(Row(name, ours, f"{kind} mount (cold)", peer, "< 1 (ahead)",
                        note=f"{size / peer / 1e6:.0f} MB/s; mount start {start:.2f} s"))
    return rows


def _ttfb_rows(w: Path, env: dict[str, str], size: int, runs: int, quick: bool) -> list[Row]:
    """Time to first byte of a big remote file: open + the first 4 KiB, and open + the last
    1 MiB, on a fresh mount with an empty cache (path lookup included: a fresh mount knows no
    names), against ranged get_object calls for the same bytes."""
    s3 = boto3.client("s3")
    key, menv = _logged_remotely(w, env, "ttfb", "huge", size)

    def fresh_mount(read: Callable[[Path], object]) -> tuple[float, float]:
        """(lookup + open + read, lookup alone): the `stat` does the lookups `open` would."""
        remove(w / "cache")
        with mounted(w, menv) as (root, _):
            path = root / "huge" / "v0" / "huge.bin"
            t0 = time.perf_counter()
            path.stat()
            t1 = time.perf_counter()
            read(path)
            return time.perf_counter() - t0, t1 - t0

    def head(path: Path) -> None:
        with open(path, "rb", buffering=0) as f:
            assert len(f.read(4096)) == 4096

    def tail(path: Path) -> None:
        with open(path, "rb", buffering=0) as f:
            f.seek(size - MIB)
            buf = bytearray(MIB)
            got = 0
            while got < MIB and (n := f.readinto(memoryview(buf)[got:])):
                got += n
            assert got == MIB

    def ranged(first: int, last: int) -> None:
        body = s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={first}-{last}")["Body"]
        assert len(body.read()) == last - first + 1

    label = f"{size // MIB} MiB" + (" (quick)" if quick else "")
    rows = []
    for what, read, first, last in (("first 4 KiB", head, 0, 4095),
                                    ("last 1 MiB", tail, size - MIB, size - 1)):
        times = [fresh_mount(read) for _ in range(runs)]
        ours = statistics.median(t for t, _ in times)
        lookup = statistics.median(t for _, t in times)
        base = median_time(lambda first=first, last=last: ranged(first, last), runs)
        rows.append(Row(f"mount S3: open + {what} of {label}", ours,
                        f"get_object Range {what}", base,
                        note=f"{ours * 1e3:.1f} ms vs {base * 1e3:.1f} ms; of which path "
                             f"lookup {lookup * 1e3:.1f} ms; fresh mount"))
    return rows


def _read_tree(root: Path) -> int:
    """Read every file below `root` as a training epoch would: walk, open, read each whole."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                total += len(f.read())
    return total


def _small_files_rows(w: Path, env: dict[str, str], count: int, runs: int) -> list[Row]:
    """Issue 13: a cold pass over many 4 KiB files (stored in ~8 MiB packs) through a fresh
    mount with an empty cache, against `artfs get` of the same version into an empty folder,
    also with an empty cache. Mount start is not timed (paid once per mount)."""
    reg_url = f"s3://{BUCKET}/small"
    src = w / "small-src"
    for i in range(count):
        f = src / f"d{i // 1000:02d}" / f"f{i:05d}.bin"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(4096))
    reg = Registry(reg_url, cache_dir=w / "cache-log", create=True)
    with sdk.init(job_type="bench", project="bench", entity="bench", registry=reg) as run:
        art = sdk.Artifact("small", type="dataset")
        art.add_dir(str(src))
        run.log_artifact(art)
    reg.close()
    remove(src, w / "cache-log")
    menv = {**bench_env(w), **env, "ARTFS_REGISTRY": reg_url}

    def mount_pass() -> float:
        remove(w / "cache")
        with mounted(w, menv) as (root, _):
            t0 = time.perf_counter()
            assert _read_tree(root / "small" / "v0") == count * 4096
            return time.perf_counter() - t0

    ours = statistics.median(mount_pass() for _ in range(runs))
    out = w / "small-get"
    base = median_time(
        lambda: subprocess.run([sys.executable, "-m", "artfs.cli", "get", "--quiet",
                                "bench/bench/small:v0", str(out)], env=menv, check=True,
                               capture_output=True),
        runs, lambda: remove(w / "cache", out))
    remove(out)
    return [Row(f"mount S3: cold pass over {count:,} x 4 KiB files", ours,
                "artfs get of the same version", base, "<= 1.5",
                note=f"{count / ours:.0f} files/s through the mount, {count / base:.0f} by get; "
                     "fresh mount, empty cache")]


def _remote_rows(w: Path, quick: bool, runs: int) -> list[Row]:
    with s3_env(w) as env:
        rows = _small_files_rows(w, env, 2_000 if quick else 10_000, runs)
        rows += _sequential_rows(w, env, 256 * MIB if quick else GIB, runs)
        rows += _ttfb_rows(w, env, 512 * MIB if quick else 4 * GIB, max(runs, 5), quick)
    return rows


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
    reg = Registry(str(w / "reg"), cache_dir=w / "cache", create=True)
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
    rows: list[Row] = []
    with workdir("mount-remote") as w:
        rows += _remote_rows(w, quick, 3 if quick else 5)
    with workdir("mount-parallel") as w:
        rows += _local_rows(w, 64 * MIB if quick else 256 * MIB, 3)
    return rows
