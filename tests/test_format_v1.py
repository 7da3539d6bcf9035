"""A registry written by the first manifest format (one canonical JSON per version) stays
readable, and the same files logged again still find their version (issue 15: any later format
must keep both). `tests/fixtures/registry-v1` was written by artfs 0.1 through the SDK: `ds:v0`
(alias `first`) holds a.txt and sub/b.txt, `ds:v1` changes sub/b.txt and adds c.bin. Never
regenerate it: its point is that it was written by the old code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import sdk
from artfs.manifest import Manifest
from artfs.names import parse_ref
from artfs.registry import Registry
from tests.servers import registry_keys

FIXTURE = Path(__file__).parent / "fixtures" / "registry-v1"
V0 = "b2090a7ddbb3b311b33b558d286a41705e96b507004221778dfb66c7622520a9"
V1 = "493405130bd405fccbb72bdf27ae44ea348103a040a92b34fec01e940a1c05c0"
V1_FILES = {"a.txt": b"alpha\n", "sub/b.txt": b"beta, changed\n", "c.bin": bytes(range(256))}


@pytest.fixture
def old_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A copy, so a test that writes never changes the fixture."""
    url = str(tmp_path / "registry-v1")
    shutil.copytree(FIXTURE, url)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    monkeypatch.setenv("ARTFS_PROJECT", "proj")
    return url


def test_versions_aliases_and_digests_read_as_written(old_registry: str) -> None:
    api = sdk.Api()
    assert sorted(a.version for a in api.artifacts("dataset", "ds")) == ["v0", "v1"]
    assert api.artifact("ds:first").digest == V0
    assert api.artifact("ds:latest").digest == V1
    assert api.artifact("ds:v0").metadata == {"note": "written by the v1 manifest format"}


def test_manifests_check_against_their_digests(old_registry: str) -> None:
    reg = Registry(old_registry)
    try:
        for label, digest in (("v0", V0), ("v1", V1)):
            version = reg.version(parse_ref(f"ds:{label}", entity="tester", project="proj"))
            manifest = reg.manifest(version)
            assert manifest.digest == digest
            assert Manifest.from_bytes(manifest.to_bytes(), expect_digest=digest) == manifest
    finally:
        reg.close()


def test_files_download_with_their_bytes(old_registry: str, tmp_path: Path) -> None:
    dest = Path(sdk.Api().artifact("ds:v1").download(tmp_path / "out"))
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == V1_FILES
    old = Path(sdk.Api().artifact("ds:first").download(tmp_path / "old"))
    assert (old / "sub" / "b.txt").read_bytes() == b"beta\n"
    assert not (old / "c.bin").exists()


def test_the_same_files_logged_again_are_the_old_version(old_registry: str,
                                                         tmp_path: Path) -> None:
    src = tmp_path / "src"
    for path, data in V1_FILES.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    before = {k for k in registry_keys(old_registry) if "/artifacts/" in k}
    with sdk.init(job_type="test", project="proj") as run:
        art = sdk.Artifact("ds", type="dataset")
        art.add_dir(src)
        run.log_artifact(art)
    assert art.version == "v1" and art.digest == V1
    after = {k for k in registry_keys(old_registry) if "/artifacts/" in k}
    assert {k for k in after - before if "/versions/" in k} == set()
