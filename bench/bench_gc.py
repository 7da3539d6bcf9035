"""Issue 20: `artfs gc` of a large registry on S3 (SeaweedFS started here) against a plain
`list_objects_v2` walk of the same bucket, in time and in requests.

Setup (untimed, and the slow part): the registry is generated directly through the Store with
many threads — blob objects of a few bytes, one manifest and one version record per version
naming its share of the blobs — instead of logging through the SDK, which would take hours at
full size (10,000 versions, 1,000,000 blobs: ~1 M PUTs, about half an hour on 2 cores). Each
timed run first deletes a fresh 2 % of the versions (tombstones, untimed) and waits until the
objects are a second old (S3 stamps whole seconds), then runs `gc --grace 0`, which must list
everything, read every live version record and manifest, and delete the dead versions' blobs
and manifests. The baseline walks every key of the bucket with boto3's list_objects_v2
paginator: the least any collector must do to see what is stored.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3

from artfs import keys
from artfs.gc import Collector
from artfs.names import ArtifactRef
from artfs.records import encode, now_iso
from artfs.registry import Registry, init_registry
from tests.servers import boto3_pointed_at

from .common import Row, workdir
from .seaweed import start_seaweedfs, stop_server

E, P = "bench", "gc"
#: Versions per artifact: a registry is many artifacts, not one with 10,000 versions.
PER_ARTIFACT = 100
THREADS = 32


def run(quick: bool) -> list[Row]:
    versions, blobs = (500, 20_000) if quick else (10_000, 1_000_000)
    runs = 3
    with workdir("gc") as w:
        proc, endpoint = start_seaweedfs(w / "seaweedfs", w / "seaweedfs.log")
        try:
            with boto3_pointed_at(endpoint):
                return _measure(w, versions, blobs, runs)
        finally:
            stop_server(proc)


def _build(reg: Registry, versions: int, blobs: int) -> list[tuple[str, int]]:
    """Store `blobs` blobs shared out over `versions` versions (every version also names a few
    blobs of the one before, as real versions repeat files); returns (artifact, number)."""
    store = reg.store
    per = blobs // versions
    digests = [hashlib.sha256(f"blob {i}".encode()).hexdigest() for i in range(blobs)]

    def put_blob(i: int) -> None:
        store.put(keys.blob(E, digests[i]), f"blob {i}".encode())

    def put_version(v: int) -> tuple[str, int]:
        name, number = f"art{v // PER_ARTIFACT}", v % PER_ARTIFACT
        mine = range(v * per, (v + 1) * per)
        shared = range(max(v - 1, 0) * per, max(v - 1, 0) * per + min(5, per))
        entries = {f"f{i}": {"digest": digests[i], "size": len(f"blob {i}")}
                   for i in (*mine, *shared)}
        data = json.dumps({"format": "artfs-manifest-v1", "entries": entries},
                          sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(data).hexdigest()
        store.put(keys.manifest(E, digest), data)
        art = keys.artifact(E, P, name)
        if number == 0:
            store.put(art.record, encode({"type": "dataset", "created_at": now_iso()}))
        store.put(art.version(number), encode({
            "version": number, "type": "dataset", "digest": digest, "size": 0,
            "file_count": len(entries), "created_at": now_iso(), "logged_by": None}))
        return name, number

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(put_blob, range(blobs), chunksize=256))
        return list(pool.map(put_version, range(versions)))


def _age(reg: Registry) -> None:
    """Until the store's clock is a second past the last write (see the module docstring)."""
    probe = f"{keys.ENTITIES}{E}/gc/clock"
    reg.store.put(probe, b"{}")
    first = reg.store.head(probe)
    assert first is not None
    while True:
        time.sleep(0.2)
        reg.store.put(probe, b"{}")
        now = reg.store.head(probe)
        assert now is not None
        if now.mtime >= first.mtime + 1.0:
            return


def _counting(client: Any) -> Counter[str]:
    """Requests `client` sends, by operation name."""
    counts: Counter[str] = Counter()
    client.meta.events.register("before-call.s3", lambda model, **_: counts.update(
        [model.name]))
    return counts


def _measure(w: Path, versions: int, blobs: int, runs: int) -> list[Row]:
    bucket = f"bench-gc-{uuid.uuid4().hex[:8]}"
    client = boto3.session.Session().client("s3")
    client.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/reg"
    init_registry(url)
    reg = Registry(url, cache_dir=w / "cache")
    t0 = time.perf_counter()
    live = _build(reg, versions, blobs)
    setup = time.perf_counter() - t0
    rng = random.Random(20)
    ours_t, base_t, ours_req, base_pages, deletes, freed = [], [], [], [], [], []
    for _ in range(runs):
        doomed = rng.sample(live, max(1, len(live) // 50))
        for name, number in doomed:
            reg.delete_version(ArtifactRef(E, P, name, f"v{number}"), delete_aliases=True)
            live.remove((name, number))
        _age(reg)
        counts = _counting(reg.store._client)  # noqa: SLF001 - the bench counts requests
        t0 = time.perf_counter()
        report = Collector(reg.store, reg.catalog, grace=0).run([E])[0]
        ours_t.append(time.perf_counter() - t0)
        ours_req.append(sum(counts.values()))
        deletes.append(counts["DeleteObjects"])
        freed.append(report.freed["blobs"].count + report.freed["manifests"].count)
        reg.store._client.meta.events.unregister("before-call.s3")  # noqa: SLF001

        pages = 0
        t0 = time.perf_counter()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            pages += 1
            len(page.get("Contents", []))
        base_t.append(time.perf_counter() - t0)
        base_pages.append(pages)
    reg.close()

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    size = f"{versions:,} versions, {blobs:,} blobs"
    note = (f"setup {setup:.0f} s; per run: 2% of versions deleted, {med(freed):,.0f} objects "
            f"freed in {med(deletes):.0f} DeleteObjects; list walk {med(base_pages):.0f} pages")
    return [
        Row(f"S3 gc --grace 0 of {size}", med(ours_t), "list_objects_v2 walk", med(base_t),
            "<= 10", note=note),
        Row(f"S3 gc requests ({size})", med(ours_req), "list_objects_v2 pages",
            med(base_pages), "", unit="req"),
    ]
