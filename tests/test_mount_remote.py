"""Large files of a remote registry read through a real mount: the block path on real servers.

Blobs above `WHOLE_FETCH_MAX` are not fetched whole but lazily, in ranged GETs, and verified once
complete (SEMANTICS.md, *Verification*). These tests store files just above that limit on the S3
and GCS test servers and read them through `artfs mount` with ordinary tools. The mount reaches
the server through a `FaultProxy` (no faults unless a test aims one), whose request list shows
which ranges were fetched: proof that the block path ran, not the whole-blob fetch.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from artfs.fs.reader import PART, WHOLE_FETCH_MAX
from artfs.manifest import Entry, Manifest
from artfs.registry import Registry
from tests.faultproxy import FaultProxy, Request
from tests.mount_fixtures import ENTITY, PROJECT, Mount

MiB = 1024 * 1024
#: Just above the whole-fetch limit, and not a whole number of blocks: the block path, with a
#: short last block.
BIG = WHOLE_FETCH_MAX + 3 * MiB + 17
ENDPOINT_VAR = {"s3": "AWS_ENDPOINT_URL", "gcs": "STORAGE_EMULATOR_HOST"}
#: Bound on waits for something the mount does after a read returns (hash, join the cache).
SETTLE_S = 120.0

#: Reads a file backwards in 4 MiB steps and prints its SHA-256: a reader no read-ahead helps.
BACKWARDS = """
import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
step = 4 * 1024 * 1024
chunks = []
for off in reversed(range(0, size, step)):
    chunks.append(os.pread(fd, step, off))
print(hashlib.sha256(b"".join(reversed(chunks))).hexdigest())
"""
#: Reads a file whole with Python's `open` and prints its SHA-256.
FORWARDS = """
import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())
"""


@dataclass
class Remote:
    """A registry holding `big/v0` with two large files and a small one."""

    kind: str
    url: str
    #: The real server (the mount goes through a proxy to it).
    endpoint: str
    files: dict[str, bytes]

    def digest(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()


def commit_files(url: str, name: str, files: dict[str, bytes]) -> None:
    reg = Registry(url, create=True)
    try:
        digests = {p: reg.put_blob(ENTITY, data) for p, data in files.items()}
        manifest = Manifest(Entry(p, len(files[p]), d) for p, d in digests.items())
        reg.commit(ENTITY, PROJECT, name, "dataset", manifest)
    finally:
        reg.close()


@pytest.fixture(scope="module", params=["s3", "gcs"])
def remote(request: pytest.FixtureRequest, make_bucket: Callable[..., str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """Stored once per server kind: uploading 130 MiB is the slow part."""
    kind = request.param
    url = f"{'s3' if kind == 's3' else 'gs'}://{make_bucket(kind)}/reg"
    server = request.getfixturevalue(f"{kind}_server")
    files = {"big.bin": os.urandom(BIG), "big2.bin": os.urandom(BIG - MiB),
             "small.txt": b"small file"}
    work = tmp_path_factory.mktemp("remote-writer")
    with pytest.MonkeyPatch.context() as mp:  # the writer's cache is not the mount's
        mp.setenv("ARTFS_CACHE_DIR", str(work / "cache"))
        mp.setenv("ARTFS_STATE_DIR", str(work / "state"))
        commit_files(url, "big", files)
    yield Remote(kind, url, server.endpoint, files)


@pytest.fixture
def proxy(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A fault-free proxy to the server, which mounts started afterwards go through."""
    p = FaultProxy(remote.endpoint, rate=0.0, seed=1).start()
    monkeypatch.setenv(ENDPOINT_VAR[remote.kind], p.endpoint)
    monkeypatch.setenv("ARTFS_REGISTRY", remote.url)
    try:
        yield p
    finally:
        p.release()
        p.stop()


def blob_gets(proxy: FaultProxy, digest: str) -> list[Request]:
    return [r for r in proxy.seen if r.method == "GET" and digest in r.path]


def fetched_bytes(proxy: FaultProxy, digest: str) -> int:
    """Bytes of the blob the mount asked the server for; fails on a GET without a range."""
    total = 0
    for r in blob_gets(proxy, digest):
        rng = r.byte_range()
        assert rng is not None, f"the blob was fetched whole, not in ranges: {r}"
        assert rng[1] - rng[0] + 1 <= PART, r
        total += rng[1] - rng[0] + 1
    return total


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait for something the mount does in the background; fail naming it if it never does."""
    deadline = time.monotonic() + SETTLE_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def cached_blob(digest: str) -> Path:
    return Path(os.environ["ARTFS_CACHE_DIR"]) / "blobs" / digest[:2] / digest


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_sequential_read_fetches_each_byte_once_in_ranges_then_caches_the_verified_blob(
        remote: Remote, proxy: FaultProxy, mount: Callable[..., Mount]) -> None:
    m = mount()
    path = m.artifact("big") / "v0" / "big.bin"
    assert path.stat().st_size == BIG
    out = subprocess.run(["cat", path], capture_output=True, check=True).stdout
    assert out == remote.files["big.bin"]
    digest = remote.digest("big.bin")
    assert fetched_bytes(proxy, digest) == BIG
    assert len(blob_gets(proxy, digest)) > 1
    # Once hashed whole, the blob joins the shared cache; a reopen is served from there.
    wait_for(cached_blob(digest).exists, "the verified blob joined the cache")
    assert sha256_of(cached_blob(digest)) == digest
    gets = len(blob_gets(proxy, digest))
    Path("/proc/sys/vm/drop_caches").write_text("1\n")  # the kernel's pages too
    assert path.read_bytes() == remote.files["big.bin"]
    assert len(blob_gets(proxy, digest)) == gets


def test_reading_the_last_mib_fetches_only_a_few_mib(
        remote: Remote, proxy: FaultProxy, mount: Callable[..., Mount]) -> None:
    """SEMANTICS.md: reading 1 MiB at the end of a large file transfers about 1-2 MiB."""
    m = mount()
    with open(m.artifact("big") / "v0" / "big.bin", "rb") as f:
        f.seek(-MiB, os.SEEK_END)
        assert f.read() == remote.files["big.bin"][-MiB:]
    assert MiB <= fetched_bytes(proxy, remote.digest("big.bin")) <= 2 * MiB + 17
    assert not cached_blob(remote.digest("big.bin")).exists()  # incomplete: never cached


def test_concurrent_readers_in_separate_processes_all_get_the_right_bytes(
        remote: Remote, proxy: FaultProxy, mount: Callable[..., Mount]) -> None:
    m = mount()
    v0 = m.artifact("big") / "v0"
    readers = {
        "cat big.bin": (["cat", str(v0 / "big.bin")], "big.bin"),
        "python big.bin": ([sys.executable, "-c", FORWARDS, str(v0 / "big.bin")], "big.bin"),
        "backwards big.bin": ([sys.executable, "-c", BACKWARDS, str(v0 / "big.bin")],
                              "big.bin"),
        "backwards big2.bin": ([sys.executable, "-c", BACKWARDS, str(v0 / "big2.bin")],
                               "big2.bin"),
        "cat big2.bin": (["cat", str(v0 / "big2.bin")], "big2.bin"),
    }
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (cmd, _) in readers.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=SETTLE_S)
        assert proc.returncode == 0, f"{name}: {err.decode()}"
        path = readers[name][1]
        got = out.strip().decode() if name.startswith(("python", "backwards")) else \
            hashlib.sha256(out).hexdigest()
        assert got == remote.digest(path), f"{name} read wrong bytes"
    assert fetched_bytes(proxy, remote.digest("big.bin")) >= BIG
    assert (v0 / "small.txt").read_bytes() == b"small file"


def test_a_corrupted_large_object_is_eio_for_that_file_only(
        remote: Remote, proxy: FaultProxy, mount: Callable[..., Mount]) -> None:
    good = os.urandom(BIG)
    commit_files(remote.url, "corrupt", {"bad.bin": good})
    digest = hashlib.sha256(good).hexdigest()
    bad = bytearray(good)
    bad[BIG // 2] ^= 0xFF  # same size, one bit flipped: only the whole-blob hash can tell
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENDPOINT_VAR[remote.kind], remote.endpoint)
        reg = Registry(remote.url)
        reg.store.put(Registry.blob_key(ENTITY, digest), bytes(bad))
        reg.close()
    m = mount()
    path = m.artifact("corrupt") / "v0" / "bad.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        # Bytes are served as they arrive, before the whole blob can be hashed: reading on may
        # get them all or meet the verdict part-way (SEMANTICS.md says so).
        try:
            while os.read(fd, MiB):
                pass
        except OSError as e:
            assert e.errno == errno.EIO
        wait_for(lambda: f"blob {digest}: blob does not match its digest" in m.log_text(),
                 "the mount logged the digest mismatch")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next read reaches the mount
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 0)
        assert e.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert not cached_blob(digest).exists()
    log = m.log_text()
    assert "EIO: " in log and "corrupt:v0" in log and "bad.bin" in log and digest in log
    # Only that file: the other large file of the registry reads whole, and the mount is up.
    other = m.artifact("big") / "v0" / "big2.bin"
    assert subprocess.run(["cat", other], capture_output=True, check=True).stdout == \
        remote.files["big2.bin"]
    assert os.path.ismount(m.root)


def test_parts_cut_off_midway_are_fetched_again(
        remote: Remote, proxy: FaultProxy, mount: Callable[..., Mount]) -> None:
    digest = remote.digest("big.bin")
    proxy.inject("truncate", lambda r: digest in r.path and r.range is not None, times=3)
    m = mount()
    path = m.artifact("big") / "v0" / "big.bin"
    assert subprocess.run(["cat", path], capture_output=True, check=True).stdout == \
        remote.files["big.bin"]
    assert proxy.counts["truncate"] == 3
    wait_for(cached_blob(digest).exists, "the verified blob joined the cache")
    assert "EIO" not in m.log_text()


def test_a_stalled_part_holds_only_its_reader(
        remote: Remote, proxy: FaultProxy, mount: Callable[..., Mount]) -> None:
    digest = remote.digest("big.bin")
    def holds_32_mib(r: Request) -> bool:
        first, last = r.byte_range() or (-1, -1)
        return digest in r.path and first <= 32 * MiB <= last

    # The part holding 32 MiB: the reader is mid-file when the server stops sending.
    proxy.inject("stall", holds_32_mib)
    m = mount()
    v0 = m.artifact("big") / "v0"
    reader = subprocess.Popen([sys.executable, "-c", FORWARDS, str(v0 / "big.bin")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proxy.stalled.wait(SETTLE_S), "no request for the part at 32 MiB"
        # Meanwhile the mount serves everything else, large files from the same server included.
        assert (v0 / "small.txt").read_bytes() == b"small file"
        with open(v0 / "big2.bin", "rb") as f:
            f.seek(-MiB, os.SEEK_END)
            assert f.read() == remote.files["big2.bin"][-MiB:]
        assert "big" in os.listdir(m.root / ENTITY / PROJECT)
        assert reader.poll() is None, "the reader finished although its part never arrived"
    finally:
        proxy.release()
        out, err = reader.communicate(timeout=SETTLE_S)
    assert reader.returncode == 0, err.decode()
    assert out.decode().strip() == digest
    assert proxy.counts["stall"] == 1


def test_a_large_object_missing_from_the_bucket_is_eio_for_that_file_only(
        remote: Remote, proxy: FaultProxy, mount: Callable[..., Mount]) -> None:
    data = os.urandom(BIG)
    commit_files(remote.url, "vanished", {"gone.bin": data})
    digest = hashlib.sha256(data).hexdigest()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENDPOINT_VAR[remote.kind], remote.endpoint)
        reg = Registry(remote.url)
        reg.store.delete(Registry.blob_key(ENTITY, digest))
        reg.close()
    m = mount()
    path = m.artifact("vanished") / "v0" / "gone.bin"
    assert path.stat().st_size == BIG  # listing is metadata only
    with pytest.raises(OSError) as e:
        path.read_bytes()
    assert e.value.errno == errno.EIO
    assert blob_gets(proxy, digest), "the mount never asked the server for the blob"
    log = m.log_text()
    assert "EIO: " in log and "vanished:v0" in log and "gone.bin" in log and digest in log
    other = m.artifact("big") / "v0" / "big2.bin"
    assert subprocess.run(["cat", other], capture_output=True, check=True).stdout == \
        remote.files["big2.bin"]
    assert os.path.ismount(m.root)
