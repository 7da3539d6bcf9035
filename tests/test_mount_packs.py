"""A mount of a remote registry reads a small packed file by fetching its pack once; the pack's
other files are then served from the cache, with no request of their own."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import sdk
from artfs.registry import init_registry
from tests.faultproxy import FaultProxy
from tests.mount_fixtures import tree_of

FILES = {f"images/{i:04d}.png": os.urandom(4096) for i in range(300)}


def pack_gets(proxy: FaultProxy) -> int:
    return sum(1 for r in proxy.seen if r.method == "GET" and "/packs/" in r.path)


def test_a_pass_over_small_files_reads_each_pack_once(
    make_store_url: Callable[[str], str], request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch, mount, tmp_path: Path
) -> None:
    url = make_store_url("s3")
    init_registry(url)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    src = tmp_path / "src"
    for path, data in FILES.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    with sdk.init(job_type="prepare") as run:  # 300 x 4 KiB: one pack
        art = sdk.Artifact("ds", type="dataset")
        art.add_dir(str(src))
        run.log_artifact(art)
    server = request.getfixturevalue("s3_server")
    proxy = FaultProxy(server.endpoint, rate=0.0, seed=1).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("ARTFS_CACHE_DIR", str(tmp_path / "mount-cache"))  # a cold cache
    try:
        m = mount()
        assert tree_of(m.artifact("ds") / "v0") == FILES  # every byte, in listing order
        assert pack_gets(proxy) == 1
        blob_gets = [r for r in proxy.seen if r.method == "GET" and "/blobs/" in r.path]
        assert blob_gets == []
    finally:
        proxy.stop()
