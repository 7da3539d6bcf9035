"""Issue 5: reading through the mount (local registry) against reading the same bytes directly.

Rows: sequential read of one large file through the mount vs `cat` of its registry blob file
(source warm and after dropping the page cache), a second read through the mount (kernel page
cache, keep_cache), the first-open verification vs OpenSSL's SHA-256 of the blob, and `find` /
`ls -lR` / `du` over a version of 100,000 files in 1,000 folders vs the same tree on disk
(tests/test_mount_lifecycle.py checks those see every file; the times are claimed here).

The kernel's read request size is measured in each run (`kernel_read_size`: the sizes of the
mount's read replies, seen with strace) and printed in the note of the first-read row: 1 MiB
with the mount's read-ahead (mount.READ_AHEAD_KB) applied, 128 KiB without.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sdk
from artfs.manifest import Entry, Manifest
from artfs.registry import Registry

from .common import Row, drop_caches, median_time, remove, sh, workdir

GIB = 1024**3
MIB = 1024**2


def bench_env(w: Path) -> dict[str, str]:
    return {**os.environ, "ARTFS_REGISTRY": str(w / "reg"), "ARTFS_CACHE_DIR": str(w / "cache"),
            "ARTFS_STATE_DIR": str(w / "state"), "ARTFS_ENTITY": "bench"}


@contextmanager
def mounted(w: Path, env: dict[str, str] | None = None) -> Iterator[tuple[Path, int]]:
    """A fresh mount (so a fresh kernel page cache for its files) of the bench registry
    (or of the registry `env` names)."""
    mnt = w / "mnt"
    mnt.mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-m", "artfs.cli", "mount", str(mnt)],
                         capture_output=True, text=True, env=env or bench_env(w), check=True)
    pid = int(re.search(r"pid (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
    try:
        yield mnt / "bench" / "bench", pid
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or "Z" in _state(pid):
                break
            time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def kernel_read_size(pid: int, path: Path) -> str:
    """The read request size the kernel sends while `dd` reads 64 MiB of `path`: the most
    common payload of the mount's read replies (writev to /dev/fuse, 16-byte header), by strace.
    """
    if shutil.which("strace") is None:
        return "unknown (no strace)"
    with tempfile.NamedTemporaryFile("r") as out:
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=writev", "-o", out.name,
                                   "-p", str(pid)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)  # attached to every thread by then
            subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "count=16"],
                           check=True, capture_output=True)
        finally:
            tracer.terminate()
            tracer.wait()
        replies = Counter(int(n) - 16 for n in re.findall(r"= (\d+)$", out.read(), re.M)
                          if int(n) > 4096 + 16)
    if not replies:
        return "unknown (no read replies seen)"
    size, _ = replies.most_common(1)[0]
    return f"{size // 1024} KiB"


def _cat(path: Path) -> None:
    sh("cat", str(path))


def _commit_tree(w: Path, files: int, per_dir: int) -> None:
    reg = Registry(str(w / "reg"), cache_dir=w / "cache", create=True)
    digests = [reg.put_blob("bench", os.urandom(4096)) for _ in range(64)]
    manifest = Manifest(Entry(f"d{i // per_dir:04d}/f{i:06d}.bin", 4096, digests[i % 64])
                        for i in range(files))
    reg.commit("bench", "bench", "tree", "dataset", manifest)
    reg.close()


def _tree_on_disk(root: Path, files: int, per_dir: int) -> None:
    data = os.urandom(4096)
    for i in range(files):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.bin").write_bytes(data)


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    runs = 3 if quick else 5
    size = 256 * MIB if quick else GIB
    n_files = 20_000 if quick else 100_000
    label = f"{size // MIB} MiB"
    with workdir("mount") as w:
        src = w / "big.bin"
        with open(src, "wb") as f:
            for _ in range(size // (16 * MIB)):
                f.write(os.urandom(16 * MIB))
        reg = Registry(str(w / "reg"), cache_dir=w / "cache", create=True)
        with sdk.init(job_type="bench", project="bench", entity="bench", registry=reg) as r:
            art = sdk.Artifact("big", type="dataset")
            art.add_file(src)
            r.log_artifact(art)
        blob = reg.blob_file("bench", art.manifest["big.bin"].digest)
        reg.close()
        remove(src)

        # First open hashes the blob once (verification); later opens are a stat. Touching the
        # blob makes it unverified again, as for a registry written by another machine.
        def first_open() -> float:
            os.utime(blob)
            with mounted(w) as (root, _):
                t0 = time.perf_counter()
                with open(root / "big" / "v0" / "big.bin", "rb"):
                    pass
                return time.perf_counter() - t0

        verify = statistics.median(first_open() for _ in range(runs))
        # OpenSSL's SHA-256 is the fair floor: coreutils sha256sum has no SHA-NI path (FACTS.md).
        sha = median_time(lambda: sh("openssl", "dgst", "-sha256", str(blob)), runs)
        rows.append(Row(f"mount: first open of a {label} file (verify)", verify,
                        "openssl dgst -sha256 of the blob", sha, "<= 1.5"))

        def fresh_mount_read(cold: bool) -> float:
            with mounted(w) as (root, _):
                if cold:
                    drop_caches()
                t0 = time.perf_counter()
                _cat(root / "big" / "v0" / "big.bin")
                return time.perf_counter() - t0

        with mounted(w) as (root, pid):
            request = kernel_read_size(pid, root / "big" / "v0" / "big.bin")
        _cat(blob)
        warm = median_time(lambda: _cat(blob), runs)
        ours = statistics.median(fresh_mount_read(False) for _ in range(runs))
        rows.append(Row(f"mount: sequential read {label}, source warm", ours,
                        "cat blob file, warm", warm, f"<= {size / 1e9:.2f} s (1 GB/s)",
                        note=f"fresh mount each run; {size / ours / 1e9:.2f} GB/s; kernel "
                             f"read requests {request}"))
        cold_base = median_time(lambda: _cat(blob), runs, setup=drop_caches)
        cold = statistics.median(fresh_mount_read(True) for _ in range(runs))
        rows.append(Row(f"mount: sequential read {label}, cold", cold,
                        "cat blob file, cold", cold_base, ""))
        with mounted(w) as (root, _):
            path = root / "big" / "v0" / "big.bin"
            _cat(path)
            again = median_time(lambda: _cat(path), runs)
            rows.append(Row(f"mount: second read {label} (page cache)", again,
                            "cat blob file, warm", warm, "<= 2x",
                            note=f"{size / again / 1e9:.2f} GB/s"))

        per_dir = 100
        _commit_tree(w, n_files, per_dir)
        disk = w / "tree"
        _tree_on_disk(disk, n_files, per_dir)
        n = f"{n_files // 1000}k files"

        def through_mount(*cmd: str) -> float:
            with mounted(w) as (root, _):
                t0 = time.perf_counter()
                sh(*cmd, str(root / "tree" / "v0"))
                return time.perf_counter() - t0

        for cmd in (("find",), ("ls", "-lR"), ("du", "-s", "--apparent-size")):
            first = statistics.median(through_mount(*cmd) for _ in range(runs))
            sh(*cmd, str(disk))
            base = median_time(lambda cmd=cmd: sh(*cmd, str(disk)), runs)
            rows.append(Row(f"mount: {' '.join(cmd)} over {n} in {n_files // per_dir} folders",
                            first, f"{' '.join(cmd)} on disk, warm", base,
                            "<= 2 s" if cmd == ("find",) else "",
                            note="fresh mount each run (index kept)"))
    return rows
