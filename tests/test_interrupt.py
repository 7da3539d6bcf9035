"""Ctrl-C and SIGTERM during `artfs put` and `artfs commit`: nothing half-done is left behind,
and the run record says the step failed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from artfs.registry import Registry, init_registry
from tests.faultproxy import FaultProxy

ENTITY, PROJECT = "tester", "uncategorized"
#: Three 16 MiB parts: the signal comes while parts 2 and 3 are held at the proxy.
BIG = 40 * 1024 * 1024


def later_parts(r) -> bool:  # noqa: ANN001 - the proxy's Request
    return r.method == "PUT" and "partNumber=" in r.path and "partNumber=1&" not in r.path + "&"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_put_aborts_the_multipart_upload_and_fails_the_run(
    signum: int, make_store_url: Callable[[str], str], request: pytest.FixtureRequest,
    tmp_path: Path
) -> None:
    url = make_store_url("s3")
    init_registry(url)
    server = request.getfixturevalue("s3_server")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(BIG))
    proxy = FaultProxy(server.endpoint, rate=0.0, seed=1).start()
    try:
        proxy.inject("hold", later_parts, times=2)
        env = {**os.environ, "ARTFS_REGISTRY": url, "AWS_ENDPOINT_URL": proxy.endpoint}
        put = subprocess.Popen([sys.executable, "-m", "artfs.cli", "put", str(src), "--name",
                                "big", "--type", "dataset"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.stalled.wait(120), "the upload never reached its second part"
            put.send_signal(signum)
            assert "stopping the transfers in flight" in put.stderr.readline()
        finally:
            proxy.release()
            out, err = put.communicate(timeout=120)
    finally:
        proxy.stop()
    assert put.returncode == 128 + signum, err
    assert f"interrupted ({signal.Signals(signum).name})" in err and "Traceback" not in err
    bucket = url.split("/")[2]
    s3 = boto3.client("s3", endpoint_url=server.endpoint)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    reg = Registry(url)
    try:
        assert reg.versions(ENTITY, PROJECT, "big") == []
        (run,) = list(reg.runs(ENTITY, PROJECT))
        assert (run.job_type, run.state) == ("put", "failed") and run.finished_at
    finally:
        reg.close()


def test_a_finished_put_closes_its_run_as_finished(registry_url: str, tmp_path: Path,
                                                   run_artfs) -> None:
    (tmp_path / "a.txt").write_text("a")
    run_artfs("put", str(tmp_path / "a.txt"), "--name", "ds", "--type", "dataset")
    reg = Registry(registry_url)
    try:
        (run,) = list(reg.runs(ENTITY, PROJECT))
        assert run.state == "finished" and run.finished_at and run.outputs
    finally:
        reg.close()


@pytest.fixture
def remote_mount(make_store_url: Callable[[str], str], request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch, mount, commit_tree, tmp_path: Path):
    """A mount of an S3 registry holding ds:v0, reached through a fault proxy, with a 1 MiB
    file (stored as a blob of its own, not packed) staged."""
    url = make_store_url("s3")
    init_registry(url)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    commit_tree("ds", {"a.txt": b"alpha"})
    server = request.getfixturevalue("s3_server")
    proxy = FaultProxy(server.endpoint, rate=0.0, seed=1).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        m = mount()
        (m.artifact("ds") / "@staging" / "big.bin").write_bytes(os.urandom(1024 * 1024))
        yield m, proxy, url
    finally:
        proxy.release()
        proxy.stop()


def interrupted_commit(m, proxy: FaultProxy, hold: Callable) -> tuple[int, str, str]:
    proxy.inject("hold", hold)
    commit = subprocess.Popen([sys.executable, "-m", "artfs.cli", "commit",
                               str(m.artifact("ds"))], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert proxy.stalled.wait(120), "the commit never reached the held request"
        commit.send_signal(signal.SIGINT)
        assert "cancelling the commit" in commit.stderr.readline()
    finally:
        proxy.release()
        out, err = commit.communicate(timeout=120)
    return commit.returncode, out, err


def test_ctrl_c_cancels_a_commit_before_its_point_of_no_return(remote_mount, run_artfs) -> None:
    m, proxy, url = remote_mount
    before = run_artfs("diff", str(m.artifact("ds"))).stdout
    code, out, err = interrupted_commit(
        m, proxy, lambda r: r.method == "PUT" and "/blobs/" in r.path)
    assert code == 130 and "Traceback" not in err
    assert "commit of tester/uncategorized/ds cancelled: nothing was committed" in err
    reg = Registry(url)
    try:
        assert reg.versions(ENTITY, PROJECT, "ds") == [0]
        commits = [r for r in reg.runs(ENTITY, PROJECT) if r.job_type == "commit"]
        assert [(r.state, bool(r.finished_at)) for r in commits] == [("failed", True)]
    finally:
        reg.close()
    assert run_artfs("diff", str(m.artifact("ds"))).stdout == before  # staging unchanged
    assert "A big.bin" in before
    assert "ds:v1" in run_artfs("commit", str(m.artifact("ds"))).stdout  # and it still works


def test_ctrl_c_after_the_point_of_no_return_says_it_committed(remote_mount) -> None:
    m, proxy, url = remote_mount
    code, out, err = interrupted_commit(
        m, proxy, lambda r: r.method == "PUT" and "/versions/v1.json" in r.path)
    assert code == 0 and "Traceback" not in err
    assert re.search(r"committed tester/uncategorized/ds:v1 .*\(too late to cancel\)", out), out
    reg = Registry(url)
    try:
        assert reg.versions(ENTITY, PROJECT, "ds") == [0, 1]
    finally:
        reg.close()
