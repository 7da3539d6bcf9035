"""A flaky network between client and bucket never leaves a half-committed version or a bad cache.

A `FaultProxy` sits between the client and the real test server (moto or fake-gcs-server) and
drops connections, answers 500/503/SlowDown and truncates bodies for a seeded fraction of the
requests. Each `log_artifact` and `download` must either succeed with the right bytes or fail
with an artfs error naming the registry; afterwards, read through a clean connection, every
version present is whole and every blob and cache file hashes to its name.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import sdk
from artfs.errors import ArtfsError
from artfs.names import ArtifactRef
from artfs.registry import Registry, init_registry
from tests.faultproxy import FaultProxy

#: Requests meeting a fault in the random-fault test: high enough that every log and download
#: meets several, low enough that the retries (botocore's, google-api-core's) ride them out.
FAULT_RATE = 0.12
SEED = 20240611
#: Versions logged and downloaded under random faults (~40 faults on either server).
ROUNDS = 4
ENTITY, PROJECT = "tester", "faults"
ENDPOINT_VAR = {"s3": "AWS_ENDPOINT_URL", "gcs": "STORAGE_EMULATOR_HOST"}
#: The last requests of a log (claim, version record, aliases, run records), each of which the
#: outage test cuts the network before.
TAIL_REQUESTS = 12


@dataclass
class Flaky:
    kind: str
    url: str
    real_endpoint: str
    proxy: FaultProxy


@pytest.fixture(params=["s3", "gcs"])
def flaky(
    request: pytest.FixtureRequest, make_bucket: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Flaky]:
    """A fresh registry reached only through a fault proxy (set as ARTFS_REGISTRY)."""
    kind = request.param
    bucket = make_bucket(kind)
    server = request.getfixturevalue(f"{kind}_server")
    proxy = FaultProxy(server.endpoint, rate=0.0, seed=SEED).start()
    url = f"{'s3' if kind == 's3' else 'gs'}://{bucket}/reg"
    monkeypatch.setenv(ENDPOINT_VAR[kind], proxy.endpoint)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    monkeypatch.setenv("ARTFS_PROJECT", PROJECT)
    init_registry(url)  # the proxy injects no faults yet
    try:
        yield Flaky(kind, url, server.endpoint, proxy)
    finally:
        proxy.stop()


@contextmanager
def direct(flaky: Flaky) -> Iterator[Registry]:
    """The same registry over a clean connection, with a cache of its own, to inspect it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENDPOINT_VAR[flaky.kind], flaky.real_endpoint)
        reg = Registry(flaky.url, create=False, cache_dir=Path(os.environ["ARTFS_CACHE_DIR"])
                       .with_name("inspect-cache"))
    try:
        yield reg
    finally:
        reg.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_registry_whole(flaky: Flaky) -> int:
    """Every version has its manifest and every blob it names, with the right bytes; every
    blob key hashes to its name; every alias names an existing version. Returns #versions."""
    count = 0
    with direct(flaky) as reg:
        for name in reg.artifacts(ENTITY, PROJECT):
            numbers = reg.versions(ENTITY, PROJECT, name)
            for n in numbers:
                v = reg.version(ArtifactRef(ENTITY, PROJECT, name, f"v{n}"), with_aliases=False)
                for entry in reg.manifest(v).values():  # raises if the manifest is missing
                    assert entry.digest is not None
                    assert reg.has_blob(ENTITY, entry.digest), f"{v.qualified}: {entry.path}"
                count += 1
            for alias, n in reg.aliases(ENTITY, PROJECT, name).items():
                assert n in numbers, f"alias {alias} of {name} names missing v{n}"
        prefix = f"entities/{ENTITY}/blobs/"
        for key in reg.store.list(prefix):
            digest = key.rsplit("/", 1)[1]
            assert hashlib.sha256(reg.store.get(key)).hexdigest() == digest, key
    return count


def assert_cache_clean(cache: Path) -> None:
    """Only whole, verified blobs under their digest; no fill left behind."""
    blobs = [p for p in (cache / "blobs").rglob("*") if p.is_file()]
    for p in blobs:
        assert sha256(p) == p.name, f"corrupt cache file {p}"
    assert list((cache / "tmp").iterdir()) == []


def assert_clear(e: ArtfsError, flaky: Flaky) -> None:
    assert flaky.url in str(e), f"error does not name the registry: {e!r}"


def stage(message: str) -> str:
    """Which step of a log an error message's key belongs to (blobs, versions, aliases…)."""
    m = re.search(r"'entities/[^/']+/(?:projects/[^/']+/(?:artifacts/[^/']+/)?)?([a-z_]+)", message)
    return m.group(1) if m else message


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


def round_files(i: int, big: int) -> dict[str, bytes]:
    """Contents for round `i`: small files that change each round, one large one each other."""
    files = {f"small/{j:02d}.bin": os.urandom(4096) for j in range(12)}
    if i % 2 == 0:
        files["big.bin"] = os.urandom(big)
    return files


def log_and_download(flaky: Flaky, tmp_path: Path, rounds: int, big: int
                     ) -> tuple[int, int, list[str]]:
    """Log then download `rounds` versions; returns (logged, downloaded, error messages)."""
    logged = downloaded = 0
    errors: list[str] = []
    cache = Path(os.environ["ARTFS_CACHE_DIR"])
    for i in range(rounds):
        src, dest = tmp_path / f"src{i}", tmp_path / f"dest{i}"
        files = round_files(i, big)
        write_files(src, files)
        try:
            with sdk.init(job_type="faults") as run:
                art = sdk.Artifact("data", type="dataset")
                art.add_dir(str(src))
                run.log_artifact(art).wait()
            logged += 1
        except ArtfsError as e:
            assert_clear(e, flaky)
            errors.append(f"log {i}: {e}")
            continue
        try:
            art.download(dest)
            downloaded += 1
        except ArtfsError as e:
            assert_clear(e, flaky)
            errors.append(f"download {i}: {e}")
            assert not [p for p in dest.rglob("*.artfs-partial")]
            continue
        got = {p.relative_to(dest).as_posix(): p.read_bytes()
               for p in dest.rglob("*") if p.is_file()}
        assert got == files, f"round {i}: downloaded bytes differ"
        assert_cache_clean(cache)
    assert_cache_clean(cache)
    return logged, downloaded, errors


def test_random_faults_never_corrupt_a_version_or_the_cache(
    flaky: Flaky, tmp_path: Path
) -> None:
    # 20 MiB goes up and down in parts on S3 (16 MiB threshold) and resumably on GCS.
    flaky.proxy.set_rate(FAULT_RATE)
    logged, downloaded, errors = log_and_download(flaky, tmp_path, rounds=ROUNDS, big=20 * 2**20)
    flaky.proxy.set_rate(0.0)
    versions = assert_registry_whole(flaky)
    print(f"\n[{flaky.kind}] faults injected: {flaky.proxy.summary()}; "
          f"logged {logged}/{ROUNDS}, downloaded {downloaded}/{logged}, versions {versions}; "
          f"errors: {errors or 'none'}")
    for kind in ("drop_before", "drop_after", "truncate"):
        assert flaky.proxy.counts[kind] > 0, f"no {kind} fault was injected"
    assert flaky.proxy.counts["error_500"] + flaky.proxy.counts["error_503"] \
        + flaky.proxy.counts["slowdown"] > 0
    # Retries ride out faults at this rate: most operations must succeed, not just fail cleanly.
    assert logged >= ROUNDS - 1 and downloaded >= logged - 1
    assert versions >= logged


def test_an_outage_at_any_step_of_a_commit_leaves_no_half_version(
    flaky: Flaky, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forbid_claim_waits: None
) -> None:
    """The network dies after the n-th request, for n spread over a whole log; logging the same
    files again once it is back yields one whole version with the right bytes, promptly."""
    import artfs.store.gcs as gcs_store
    import artfs.store.s3 as s3_store

    # Fail fast instead of retrying through each outage for a minute.
    monkeypatch.setattr(s3_store, "MAX_ATTEMPTS", 1)
    monkeypatch.setattr(gcs_store, "DEFAULT_RETRY", gcs_store.DEFAULT_RETRY.with_timeout(0.5))
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(300_000)}
    src = tmp_path / "src"
    write_files(src, files)

    def log() -> sdk.Artifact:
        with sdk.init(job_type="outage") as run:
            art = sdk.Artifact("data", type="dataset")
            art.add_dir(str(src))
            run.log_artifact(art).wait()
        return art

    log()  # creates the registry and the artifact
    before = flaky.proxy.requests
    files["a.txt"] = b"alpha-0"
    write_files(src, files)
    log()
    per_log = flaky.proxy.requests - before
    stages: dict[int, str] = {}
    # Outages spread over the bytes, and at every one of the last requests: the claim, the
    # version record and the aliases are a request or two each, and parallel uploads and
    # retries shift where they fall, so a stride could step over them.
    points = sorted(set(range(1, per_log, max(1, per_log // 8)))
                    | set(range(max(1, per_log - TAIL_REQUESTS), per_log)))
    for n in points:
        files["a.txt"] = f"alpha-{n}".encode()
        write_files(src, files)
        before = assert_registry_whole(flaky)
        flaky.proxy.outage_after(n)
        try:
            log()
        except ArtfsError as e:
            assert_clear(e, flaky)
            stages[n] = stage(str(e))
        flaky.proxy.outage_after(None)
        # A failed log leaves no version or one whole version (it may fail after the record).
        assert assert_registry_whole(flaky) in ((before, before + 1) if n in stages
                                                else (before + 1,))
        # The same files again, without waiting (forbid_claim_waits) on the digest claim the
        # failed log may have left.
        art = log()
        dest = tmp_path / f"dest{n}"
        art.download(dest)
        assert {p.relative_to(dest).as_posix(): p.read_bytes()
                for p in dest.rglob("*") if p.is_file()} == files
    assert_cache_clean(Path(os.environ["ARTFS_CACHE_DIR"]))
    print(f"\n[{flaky.kind}] outage after n of {per_log} requests; failed at: {stages}; "
          f"{flaky.proxy.summary()}")
    assert flaky.proxy.counts["outage"] > 0
    # The failures hit every step of a commit: bytes or manifest, claim, number, aliases.
    hit = set(stages.values())
    assert {"versions", "aliases"} <= hit and hit & {"blobs", "manifests"} and len(hit) >= 5
