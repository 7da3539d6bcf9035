"""Issue 4: add_reference of an S3 prefix against a plain paginated list_objects_v2.

Both run against one moto server in its own process. Requests are counted with a botocore
`before-send` hook on each client, so the table shows whether artfs spends requests a plain
listing would not (it should spend one HEAD more: the "is it an object?" check).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import boto3

import sdk
from artfs.refs import s3 as refs_s3
from tests.servers import boto3_pointed_at, start_moto, stop_server

from .common import Row, median_time, workdir

#: Parallel PUTs while filling the bucket: moto takes ~130 sequential small PUTs/s.
FILL_THREADS = 16


@contextmanager
def moto_env() -> Iterator[str]:
    """A moto server, with boto3's standard configuration pointed at it; restored after."""
    with workdir("refs") as w:
        log = w / "moto.log"
        proc, endpoint = start_moto(log)
        try:
            with boto3_pointed_at(endpoint):
                yield endpoint
        finally:
            stop_server(proc)


def fill(client: Any, bucket: str, prefix: str, count: int) -> None:
    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/d{i // 100:03d}/f{i:05d}.bin",
                          Body=b"x" * 64)

    with ThreadPoolExecutor(FILL_THREADS) as pool:
        list(pool.map(put, range(count)))


class RequestCounter:
    """Counts HTTP requests a boto3 client sends (retries included)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        client.meta.events.register("before-send.s3", self._hook)

    def _hook(self, **_: Any) -> None:
        self.count += 1


def plain_listing(client: Any, bucket: str, prefix: str, op: str = "list_objects_v2") -> int:
    n = 0
    for page in client.get_paginator(op).paginate(Bucket=bucket, Prefix=prefix):
        n += len(page.get("Contents", page.get("Versions", ())))
    return n


def run(quick: bool) -> list[Row]:
    count = 2_000 if quick else 10_000
    runs = 3 if quick else 5
    rows: list[Row] = []
    with moto_env():
        setup = boto3.client("s3")
        baseline_client = boto3.client("s3")
        ours_counter = RequestCounter(refs_s3.client())
        base_counter = RequestCounter(baseline_client)
        for versioned in (False, True):
            bucket = f"artfs-bench-refs-{'v' if versioned else 'u'}"
            setup.create_bucket(Bucket=bucket)
            if versioned:
                setup.put_bucket_versioning(Bucket=bucket,
                                            VersioningConfiguration={"Status": "Enabled"})
            fill(setup, bucket, "data", count)
            uri = f"s3://{bucket}/data"

            def ours(uri: str = uri) -> None:
                art = sdk.Artifact("bench", type="dataset")
                art.add_reference(uri, max_objects=count)
                assert len(art._contents.refs) == count

            def base(bucket: str = bucket, op: str = "list_objects_v2") -> None:
                assert plain_listing(baseline_client, bucket, "data/", op) == count

            ours(), base()  # warm connections and imports
            ours_counter.count = base_counter.count = 0
            t_ours = median_time(ours, runs)
            t_base = median_time(base, runs)
            kind = "versioned" if versioned else "unversioned"
            name = f"add_reference s3 prefix, {count} objects ({kind})"
            rows.append(Row(
                name, t_ours, "list_objects_v2 pages", t_base, "<= 1.5",
                note=f"requests {ours_counter.count // runs} vs {base_counter.count // runs}"))
            if versioned:
                # Version ids come only from ListObjectVersions, which moto answers by
                # deep-copying every version in the bucket for every page (O(n) per page):
                # that listing is the floor for any tool that records version ids.
                base_counter.count = 0
                t_versions = median_time(lambda: base(op="list_object_versions"), runs)
                rows.append(Row(
                    name, t_ours, "list_object_versions pages", t_versions, "",
                    note=f"requests {ours_counter.count // runs} vs "
                         f"{base_counter.count // runs}"))
    return rows
