"""Concurrent and killed writers (versioning in `sdk/__init__.py`, protocol in `registry.py`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import sdk
from artfs.manifest import Manifest
from artfs.registry import Registry, Source, init_registry
from artfs.store.local import TMP_DIR, LocalStore
from tests.faultproxy import FaultProxy, Request

ENTITY, PROJECT = "tester", "uncategorized"
WRITERS = 8
#: Large enough to take the streaming upload path, not the read-it-whole path of small files.
BIG = 16 * 1024 * 1024
#: Three 16 MiB parts (S3 multipart, GCS resumable chunks): killed while the second goes up.
MULTIPART_BIG = 40 * 1024 * 1024
ENDPOINT_VAR = {"s3": "AWS_ENDPOINT_URL", "gcs": "STORAGE_EMULATOR_HOST"}

#: Waits for a start signal so that all writers commit at the same moment, not one by one as
#: their interpreters finish starting.
WRITER = """
import pathlib, sys, time
import sdk
src, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
art = sdk.Artifact("shared", type="dataset")
art.add_file(src, name="data.bin")
with sdk.init(job_type="writer") as run:
    run.log_artifact(art)
print(art.version, flush=True)
"""

#: Stalls once its source is copied into a registry temp file (local) or hashed (object stores,
#: before any upload), so the parent can kill it at a known point of the copy.
SLOW_WRITER = """
import sys, time
import artfs.store.base as base
import artfs.store.local as local
import sdk
def stall(real):
    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        print("uploading", flush=True)
        time.sleep(600)
        return result
    return wrapper
local.copy_and_hash = stall(local.copy_and_hash)
base.hash_file = stall(base.hash_file)
art = sdk.Artifact("big", type="dataset")
art.add_file(sys.argv[1], policy="immutable")  # read at upload, inside log_artifact
with sdk.init(job_type="writer") as run:
    run.log_artifact(art)
"""


def run_writers(tmp_path: Path, payloads: list[bytes]) -> list[str]:
    """Start one writer process per payload, release them together, return their versions."""
    go = tmp_path / "go"
    procs = []
    for i, data in enumerate(payloads):
        src = tmp_path / f"src{i}.bin"
        src.write_bytes(data)
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, str(src), str(go)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        out.append(stdout.strip())
    return out


def assert_aliases_point_at_existing_versions(reg: Registry, name: str) -> None:
    existing = set(reg.versions(ENTITY, PROJECT, name))
    for alias, number in reg.aliases(ENTITY, PROJECT, name).items():
        assert number in existing, f"alias {alias} → v{number}, which does not exist"


def test_concurrent_writers_of_different_contents_get_distinct_versions(
    registry_url: str, tmp_path: Path
) -> None:
    payloads = [f"writer {i}".encode() * 1000 for i in range(WRITERS)]
    printed = run_writers(tmp_path, payloads)
    assert sorted(printed) == [f"v{i}" for i in range(WRITERS)]
    reg = Registry(registry_url)
    assert reg.versions(ENTITY, PROJECT, "shared") == list(range(WRITERS))
    stored = {sdk.Api().artifact(f"shared:v{i}").get_path("data.bin").digest
              for i in range(WRITERS)}
    assert len(stored) == WRITERS  # every writer's contents kept, none doubled
    assert reg.aliases(ENTITY, PROJECT, "shared") == {"latest": WRITERS - 1}
    assert_aliases_point_at_existing_versions(reg, "shared")


def test_concurrent_writers_of_identical_contents_make_one_version(
    registry_url: str, tmp_path: Path
) -> None:
    printed = run_writers(tmp_path, [b"same bytes" * 1000] * WRITERS)
    assert printed == ["v0"] * WRITERS
    reg = Registry(registry_url)
    assert reg.versions(ENTITY, PROJECT, "shared") == [0]
    assert reg.aliases(ENTITY, PROJECT, "shared") == {"latest": 0}


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_writer_killed_mid_copy_leaves_no_version_and_the_next_one_succeeds(
    registry_url: str, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(BIG))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(src)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "uploading", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    reg = Registry(registry_url)
    assert reg.versions(ENTITY, PROJECT, "big") == []
    art = sdk.Artifact("big", type="dataset")
    art.add_file(src)
    with sdk.init(job_type="writer") as run:
        run.log_artifact(art)
    assert art.version == "v0"
    assert (Path(art.download(tmp_path / "out")) / "big.bin").read_bytes() == src.read_bytes()


#: Logs its file (argv[1]) once and says which version it got.
LOG_ONCE = """
import sys
import sdk
art = sdk.Artifact("big", type="dataset")
art.add_file(sys.argv[1])
with sdk.init(job_type="writer") as run:
    run.log_artifact(art)
print(art.version, flush=True)
"""


def second_part_upload(kind: str) -> Callable[[Request], bool]:
    """Picks the upload of the file's second part: S3's UploadPart 2, GCS's second chunk of
    its resumable upload (both 16 MiB parts)."""
    if kind == "s3":
        return lambda r: r.method == "PUT" and "partNumber=2&" in r.path + "&"
    chunks = itertools.count()
    return lambda r: r.method == "PUT" and "upload_id=" in r.path and next(chunks) == 1


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_writer_killed_during_the_multipart_upload_leaves_no_version_and_the_next_succeeds(
    kind: str, make_store_url: Callable[[str], str], request: pytest.FixtureRequest,
    tmp_path: Path
) -> None:
    url = make_store_url(kind)
    init_registry(url)
    server = request.getfixturevalue(f"{kind}_server")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(MULTIPART_BIG))
    proxy = FaultProxy(server.endpoint, rate=0.0, seed=1).start()
    try:
        proxy.inject("hold", second_part_upload(kind))
        env = {**os.environ, "ARTFS_REGISTRY": url, ENDPOINT_VAR[kind]: proxy.endpoint}
        writer = subprocess.Popen([sys.executable, "-c", LOG_ONCE, str(src)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.stalled.wait(120), "the upload never reached its second part"
            assert writer.poll() is None
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
            proxy.release()
    finally:
        proxy.stop()
    assert proxy.counts["hold"] == 1
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    reg = Registry(url)
    assert reg.versions(ENTITY, PROJECT, "big") == []
    assert reg.store.head(Registry.blob_key(ENTITY, digest)) is None  # never completed
    reg.close()
    # The same file logged again makes the version, whole.
    art = sdk.Artifact("big", type="dataset")
    art.add_file(src)
    with sdk.init(job_type="writer", registry=url) as run:
        run.log_artifact(art)
    assert art.version == "v0"
    assert (Path(art.download(tmp_path / "out")) / "big.bin").read_bytes() == src.read_bytes()


def test_registry_open_sweeps_temp_files_of_a_killed_writer(tmp_path: Path) -> None:
    """Local stores only: object stores have no temp files (a failed upload leaves nothing)."""
    url = str(tmp_path / "registry")
    Registry(url, create=True).close()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(BIG))
    env = {**os.environ, "ARTFS_REGISTRY": url}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(src)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "uploading", proc.stderr.read()
        assert os.listdir(Path(url) / TMP_DIR), "the writer should be mid-copy into .tmp"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    live = LocalStore(url).temp_path()  # a temp file of this live process must survive
    live.write_bytes(b"in progress")
    Registry(url).close()
    assert os.listdir(Path(url) / TMP_DIR) == [live.name]


def test_digest_claim_of_a_dead_writer_is_taken_over(
    registry: Registry, tmp_path: Path, forbid_claim_waits: None
) -> None:
    """A writer that died between claiming the digest and taking a number blocks nobody."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "a.txt").write_text("a")
    manifest = Manifest(registry.ingest_files(ENTITY, [Source("a.txt", tmp_path / "a.txt")])
                        .values())
    claim = {"claim": "dead", "host": socket.gethostname(), "pid": dead.pid, "at": time.time()}
    prefix = f"entities/{ENTITY}/projects/{PROJECT}/artifacts/ds/"
    registry.store.put(prefix + f"digests/{manifest.digest}.json", json.dumps(claim).encode())
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(tmp_path / "a.txt")
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    assert art.version == "v0" and art.digest == manifest.digest


def test_failed_commit_gives_its_digest_claim_back(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    forbid_claim_waits: None
) -> None:
    """Otherwise the same contents logged again by this live process would wait for the TTL."""
    (tmp_path / "a.txt").write_text("a")

    def log() -> sdk.Artifact:
        art = sdk.Artifact("ds", type="dataset")
        art.add_file(tmp_path / "a.txt")
        with sdk.init(job_type="test", registry=registry) as run:
            run.log_artifact(art)
        return art

    real = registry.store.put_if_absent

    def fail_on_version(key: str, data: bytes) -> bool:
        if "/versions/" in key:
            raise OSError("disk full")
        return real(key, data)

    monkeypatch.setattr(registry.store, "put_if_absent", fail_on_version)
    with pytest.raises(OSError, match="disk full"):
        log()
    assert registry.versions(ENTITY, PROJECT, "ds") == []  # nothing committed, no alias
    assert registry.aliases(ENTITY, PROJECT, "ds") == {}
    monkeypatch.setattr(registry.store, "put_if_absent", real)
    assert log().version == "v0"
