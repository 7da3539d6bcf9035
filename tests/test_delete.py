"""Deleting versions and artifacts (issue 20): tombstones, aliases by consent, numbers never
reused, "deleted" rather than "not found" from the SDK, the CLI and lineage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import sdk
from artfs.cli import main
from artfs.errors import ArtifactDeleted, ArtifactNotFound, VersionHasAliases
from artfs.names import ArtifactRef
from artfs.registry import Registry
from tests.servers import registry_keys


def artfs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ref(label: str, name: str = "ds") -> ArtifactRef:
    return ArtifactRef("tester", "uncategorized", name, label)


def snapshot(url: str) -> dict[str, object]:
    """Every key with its bytes: "changes nothing" is this, equal before and after."""
    reg = Registry(url)
    try:
        return {"keys": registry_keys(url), **{k: reg.store.get(k) for k in reg.store.list("")}}
    finally:
        reg.close()


def test_delete_version_keeps_numbers_and_says_deleted(
        registry_url: str, log_files: Callable[..., sdk.Artifact]) -> None:
    log_files("ds", {"a.txt": b"zero"})
    log_files("ds", {"a.txt": b"one"})
    art = sdk.Api().artifact("ds:v0")
    art.delete()
    assert art.state == "DELETED"
    reg = Registry(registry_url)
    try:
        assert reg.versions("tester", "uncategorized", "ds") == [1]
        with pytest.raises(ArtifactDeleted, match=r"ds:v0 was deleted at .* by \S+@"):
            reg.version(ref("v0"))
        with pytest.raises(ArtifactNotFound, match="deleted"):
            sdk.Api().artifact("ds:v0")
        # The same files logged again are a new version with a new number.
        log_files("ds", {"a.txt": b"zero"})
        assert reg.versions("tester", "uncategorized", "ds") == [1, 2]
        assert reg.version(ref("latest")).version == 2
        assert reg.version(ref("v0"), include_deleted=True).deleted
    finally:
        reg.close()


def test_aliased_version_needs_consent_and_nothing_changes(
        registry_url: str, log_files: Callable[..., sdk.Artifact],
        capsys: pytest.CaptureFixture[str]) -> None:
    log_files("ds", {"a.txt": b"zero"}, aliases=["best"])
    log_files("ds", {"a.txt": b"one"})
    before = snapshot(registry_url)
    with pytest.raises(VersionHasAliases, match=r"ds:v0 has aliases best"):
        sdk.Api().artifact("ds:v0").delete()
    code, _, err = artfs(capsys, "delete", "ds:v1")
    assert code == 1 and "ds:v1 has aliases latest" in err and "--delete-aliases" in err
    code, _, err = artfs(capsys, "delete", "ds:best")
    assert code == 1 and "ds:v0 has aliases best" in err
    assert snapshot(registry_url) == before


def test_deleting_latest_with_consent_moves_latest_back(
        registry_url: str, log_files: Callable[..., sdk.Artifact],
        capsys: pytest.CaptureFixture[str]) -> None:
    for data in (b"zero", b"one", b"two"):
        log_files("ds", {"a.txt": data})
    code, out, _ = artfs(capsys, "delete", "ds:v2", "--delete-aliases")
    assert code == 0 and "deleted tester/uncategorized/ds:v2 and its aliases latest" in out
    reg = Registry(registry_url)
    try:
        assert reg.aliases("tester", "uncategorized", "ds") == {"latest": 1}
        code, out, _ = artfs(capsys, "ls", "tester/uncategorized/ds")
        assert [line.split("\t")[0] for line in out.splitlines()] == ["v0", "v1"]
        code, _, err = artfs(capsys, "info", "ds:v2")
        assert code == 1 and "ds:v2 was deleted at" in err
        code, _, err = artfs(capsys, "get", "ds:v2", "out")
        assert code == 1 and "was deleted" in err and not Path("out").exists()
        log_files("ds", {"a.txt": b"three"})
        assert reg.version(ref("latest")).version == 3
    finally:
        reg.close()


def test_delete_all_and_lineage_shows_deleted(
        registry_url: str, log_files: Callable[..., sdk.Artifact],
        capsys: pytest.CaptureFixture[str]) -> None:
    log_files("ds", {"a.txt": b"zero"}, aliases=["best"])
    log_files("ds", {"a.txt": b"one"})
    with sdk.init(job_type="train") as run:
        run.use_artifact("ds:v0")
        run_id = run.id
    code, out, _ = artfs(capsys, "delete", "tester/uncategorized/ds", "--all")
    assert code == 0 and "deleted 2 versions of tester/uncategorized/ds: v0, v1" in out
    reg = Registry(registry_url)
    try:
        assert reg.versions("tester", "uncategorized", "ds") == []
        assert reg.aliases("tester", "uncategorized", "ds") == {}
    finally:
        reg.close()
    used = sdk.Api().run(f"tester/uncategorized/{run_id}").used_artifacts()
    assert [(a.version, a.state) for a in used] == [("v0", "DELETED")]
    code, out, _ = artfs(capsys, "lineage", "ds:v0")
    assert code == 0 and out.startswith("tester/uncategorized/ds:v0 (deleted at ")
    code, _, err = artfs(capsys, "delete", "ds:v0", "--delete-aliases")
    assert code == 1 and "was deleted" in err
    code, _, err = artfs(capsys, "delete", "nope", "--all")
    assert code == 1 and "nope not found" in err
    code, _, err = artfs(capsys, "delete", "ds")
    assert code == 1 and "say which version of ds" in err
