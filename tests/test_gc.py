"""`artfs gc`, TTL and --keep-last (issue 20) on every store kind: what gc frees, what it keeps,
and that every live version still downloads and verifies afterwards."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

import sdk
from artfs import keys
from artfs.cli import main
from artfs.names import ArtifactRef
from artfs.registry import Registry
from tests.test_delete import snapshot

E, P = "tester", "uncategorized"
#: Above packs.PACK_BLOB_MAX: stored as a blob of its own on every store.
BIG = 300 * 1024


def artfs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored_bytes(url: str) -> int:
    """Bytes of everything below the entity's blobs, packs and manifests."""
    reg = Registry(url)
    try:
        return sum(i.size for prefix in (keys.blobs(E), keys.packs(E), keys.manifests(E))
                   for i in reg.store.list_info(prefix))
    finally:
        reg.close()


def age_past_newest(url: str) -> None:
    """Wait until the store's clock is a second past its newest object: S3 servers stamp
    objects in whole seconds, and `--grace 0` keeps what is not older than the gc's start."""
    reg = Registry(url)
    try:
        newest = max(i.mtime for i in reg.store.list_info(keys.ENTITIES))
        probe = f"{keys.ENTITIES}{E}/gc/clock"
        while True:
            reg.store.put(probe, b"{}")
            info = reg.store.head(probe)
            assert info is not None
            if info.mtime >= newest + 1.0:
                return
    finally:
        reg.close()


def check_live(names: list[str], tmp: Path) -> None:
    """Each version downloads into an empty folder and verifies, from an emptied cache."""
    assert main(["cache", "--clean"]) == 0
    for name in names:
        art = sdk.Api().artifact(name)
        dest = tmp / "check" / name.replace(":", "-")
        art.download(str(dest))
        art.verify(str(dest))


def test_delete_then_gc_frees_the_unique_bytes(
        registry_url: str, log_files: Callable[..., sdk.Artifact], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    shared = {"shared-small.txt": b"s" * 100, "shared-big.bin": os.urandom(BIG)}
    log_files("ds", {**shared, "a.txt": b"zero"})
    one = {"b.txt": os.urandom(2000), "b.bin": os.urandom(BIG + 1)}
    log_files("ds", {**shared, **one})
    log_files("ds", {**shared, "c.txt": b"two"})
    reg = Registry(registry_url)
    v1 = reg.version(ArtifactRef(E, P, "ds", "v1"))
    manifest_size = reg.store.head(keys.manifest(E, v1.digest)).size  # type: ignore[union-attr]
    reg.close()
    assert main(["delete", "ds:v1"]) == 0
    age_past_newest(registry_url)
    before = stored_bytes(registry_url)
    code, out, _ = artfs(capsys, "gc", "--dry-run", "--grace", "0")
    assert code == 0 and "would free" in out
    assert stored_bytes(registry_url) == before
    code, out, _ = artfs(capsys, "gc", "--grace", "0")
    assert code == 0 and "2 live versions" in out, out
    freed = before - stored_bytes(registry_url)
    assert freed == sum(len(b) for b in one.values()) + manifest_size
    assert f"freed {freed:,} B" in out or "KiB" in out
    check_live(["ds:v0", "ds:v2"], tmp_path)
    # Nothing left to collect: a second run frees nothing and changes nothing it should not.
    code, out, _ = artfs(capsys, "gc", "--grace", "0")
    assert code == 0 and "freed nothing" in out
    code, out, _ = artfs(capsys, "cache")
    assert code == 0 and "blob" in out


def test_grace_keeps_recent_garbage(
        registry_url: str, log_files: Callable[..., sdk.Artifact],
        capsys: pytest.CaptureFixture[str]) -> None:
    log_files("ds", {"a.bin": os.urandom(BIG)})
    log_files("ds", {"b.bin": os.urandom(BIG)})
    assert main(["delete", "ds:v0"]) == 0
    before = stored_bytes(registry_url)
    code, out, _ = artfs(capsys, "gc")  # default grace: an hour
    assert code == 0 and "freed nothing" in out and "newer than the grace period" in out
    assert stored_bytes(registry_url) == before


def test_keep_last_and_ttl_delete_exactly_what_they_should(
        registry_url: str, log_files: Callable[..., sdk.Artifact],
        capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(6):
        log_files("ds", {"f.txt": f"version {i}".encode()},
                  aliases=["best"] if i == 1 else None)
    log_files("other", {"f.txt": b"other"})
    code, out, _ = artfs(capsys, "retain", "tester/uncategorized/ds", "--keep-last", "3")
    assert code == 0 and "keeps the last 3 versions" in out
    # v4 expires through the CLI, v5 and other:v0 (both latest) through the SDK's TTL.
    code, out, _ = artfs(capsys, "ttl", "ds:v4", "0s")
    assert code == 0 and "ds:v4 expires at" in out
    for name in ("ds:v5", "other:v0"):
        art = sdk.Api().artifact(name)
        art.ttl = timedelta(0)
        art.save()
        assert sdk.Api().artifact(name).ttl == timedelta(0)
    art = sdk.Api().artifact("ds:v3")
    art.ttl = timedelta(days=30)
    art.save()
    code, out, _ = artfs(capsys, "gc", "--dry-run")
    assert code == 0 and "would expire tester/uncategorized/ds:v0, " in out
    code, out, _ = artfs(capsys, "gc")
    assert code == 0
    assert "expired tester/uncategorized/ds:v0, tester/uncategorized/ds:v2, " \
           "tester/uncategorized/ds:v4, tester/uncategorized/ds:v5, " \
           "tester/uncategorized/other:v0" in out, out
    reg = Registry(registry_url)
    try:
        # v1 has an alias of the user's; v3 is among the last 3 and expires in 30 days.
        assert reg.versions(E, P, "ds") == [1, 3]
        assert reg.aliases(E, P, "ds") == {"best": 1, "latest": 3}
        assert reg.versions(E, P, "other") == []
        assert reg.version(ArtifactRef(E, P, "ds", "v3")).expires_at is not None
    finally:
        reg.close()
    code, out, _ = artfs(capsys, "ttl", "ds:v3", "none")
    assert code == 0 and "ds:v3 never expires" in out
    assert sdk.Api().artifact("ds:v3").ttl is None


def test_a_ttl_set_before_logging_applies_to_the_version(registry_url: str,
                                                        tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"short-lived")
    art = sdk.Artifact("tmp", type="dataset")
    art.add_file(str(tmp_path / "f.txt"))
    art.ttl = timedelta(days=2)
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    assert sdk.Api().artifact("tmp:v0").ttl == timedelta(days=2)
    assert main(["gc"]) == 0
    assert sdk.Api().artifact("tmp:v0").state == "COMMITTED"


def test_bad_durations_and_policies_change_nothing(
        registry_url: str, log_files: Callable[..., sdk.Artifact],
        capsys: pytest.CaptureFixture[str]) -> None:
    log_files("ds", {"f.txt": b"zero"})
    assert main(["delete", "ds:v0", "--delete-aliases"]) == 0
    before = snapshot(registry_url)
    for argv, culprit in ((["gc", "--grace", "soon"], "invalid --grace 'soon'"),
                          (["ttl", "ds:v0", "30x"], "was deleted"),
                          (["retain", "ds", "--keep-last", "0"], "not 0"),
                          (["retain", "ds:v0", "--keep-last", "2"], "not 'ds:v0'"),
                          (["retain", "nope", "--keep-last", "2"], "nope not found")):
        code, _, err = artfs(capsys, *argv)
        assert code == 1 and culprit in err, (argv, err)
    log_files("ds", {"f.txt": b"one"})
    before = snapshot(registry_url)
    code, _, err = artfs(capsys, "ttl", "ds:v1", "30x")
    assert code == 1 and "invalid TTL '30x'" in err
    assert snapshot(registry_url) == before
