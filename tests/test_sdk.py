"""SDK behaviour (`sdk/__init__.py`): versioning, dedupe, aliases, lineage, download, verify."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sdk
from artfs import transfer
from artfs.errors import ArtifactNotFound, FileChangedError, IntegrityError, ReferenceChanged
from artfs.registry import Registry

ENTITY, PROJECT = "tester", "uncategorized"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def contents(root: str | Path) -> dict[str, bytes]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- versioning ---------------------------------------------------------------------------------
def test_first_log_creates_v0_with_latest(log_files) -> None:
    art = log_files("ds", {"a.txt": b"a"})
    assert (art.version, art.aliases) == ("v0", ["latest"])
    assert sdk.Api().artifact("ds:latest").version == "v0"


def test_changed_contents_create_the_next_version(log_files) -> None:
    log_files("ds", {"a.txt": b"a"})
    art = log_files("ds", {"a.txt": b"b"})
    assert art.version == "v1"
    assert sdk.Api().artifact("ds").version == "v1"


def test_same_contents_create_no_version_and_move_aliases(log_files) -> None:
    log_files("ds", {"a.txt": b"a"})
    log_files("ds", {"a.txt": b"b"})
    again = log_files("ds", {"a.txt": b"a"}, aliases=["best"])
    assert again.version == "v0"
    assert [a.version for a in sdk.Api().artifacts("dataset", "ds")] == ["v1", "v0"]
    assert sdk.Api().artifact("ds:best").version == "v0"
    assert sdk.Api().artifact("ds:latest").version == "v0"


def test_latest_is_always_added_to_given_aliases(log_files) -> None:
    art = log_files("ds", {"a.txt": b"a"}, aliases=["best", "prod"])
    assert art.aliases == ["best", "latest", "prod"]


def test_alias_moves_to_the_newer_version(log_files) -> None:
    log_files("ds", {"a.txt": b"a"}, aliases=["best"])
    log_files("ds", {"a.txt": b"b"}, aliases=["best"])
    assert sdk.Api().artifact("ds:v0").aliases == []
    assert sdk.Api().artifact("ds:v1").aliases == ["best", "latest"]


def test_digest_depends_on_paths_not_just_bytes(log_files) -> None:
    a = log_files("ds", {"a.txt": b"same"})
    b = log_files("ds", {"b.txt": b"same"})
    assert a.digest != b.digest and b.version == "v1"


def test_identical_files_are_stored_once_across_artifacts(log_files, registry) -> None:
    log_files("one", {"x.bin": b"shared bytes"})
    log_files("two", {"y.bin": b"shared bytes"})
    blobs = list(registry.store.list(f"entities/{ENTITY}/blobs/"))
    assert blobs == [registry.blob_key(ENTITY, sha(b"shared bytes"))]


def test_versions_follow_call_order_even_when_first_upload_is_slowest(
    registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Registry.ingest_files

    def slow_first(self, entity, sources, *args, **kwargs):
        sources = list(sources)
        if any(s.path == "slow" for s in sources):
            time.sleep(0.5)
        return real(self, entity, sources, *args, **kwargs)

    monkeypatch.setattr(Registry, "ingest_files", slow_first)
    arts = []
    with sdk.init(job_type="test") as run:
        for i in range(5):
            art = sdk.Artifact("ordered", type="dataset")
            with art.new_file("slow" if i == 0 else "fast", mode="wb") as f:
                f.write(str(i).encode())
            arts.append(run.log_artifact(art))
    assert [a.version for a in arts] == ["v0", "v1", "v2", "v3", "v4"]
    assert [a.files()[0].path for a in arts] == ["slow", "fast", "fast", "fast", "fast"]


def test_log_artifact_returns_before_upload_and_wait_joins(
    registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real = Registry.ingest_files

    def gated(self, *args, **kwargs):
        gate.wait(10)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Registry, "ingest_files", gated)
    art = sdk.Artifact("bg", type="dataset")
    with art.new_file("a.txt") as f:
        f.write("a")
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
        assert art._version is None  # still uploading: the call did not block
        gate.set()
        assert art.wait().version == "v0"


@pytest.fixture
def changed_after_add(tmp_path: Path) -> sdk.Artifact:
    """An artifact whose one file changed after `add_file(policy="immutable")`: its upload
    fails in the background."""
    src = tmp_path / "a.txt"
    src.write_text("before")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src, policy="immutable")
    src.write_text("after, longer")
    return art


def test_background_error_surfaces_at_wait_and_at_finish(
    registry_url: str, changed_after_add: sdk.Artifact
) -> None:
    art = changed_after_add
    run = sdk.init(job_type="test")
    run.log_artifact(art)
    with pytest.raises(FileChangedError, match="a.txt"):
        art.wait()
    with pytest.raises(FileChangedError):
        run.finish()


def test_background_error_surfaces_at_end_of_with_block(
    registry_url: str, changed_after_add: sdk.Artifact
) -> None:
    art = changed_after_add
    with pytest.raises(FileChangedError), sdk.init(job_type="test") as run:
        run.log_artifact(art)


def test_background_error_is_noted_on_an_exception_leaving_the_with_block(
    registry_url: str, changed_after_add: sdk.Artifact
) -> None:
    art = changed_after_add
    with pytest.raises(RuntimeError) as info, sdk.init(job_type="test") as run:
        run.log_artifact(art)
        raise RuntimeError("user code failed")
    assert any("FileChangedError" in note for note in info.value.__notes__)


# -- the handle on a logged version -------------------------------------------------------------
def test_logged_artifact_exposes_version_facts(log_files) -> None:
    art = log_files("ds", {"a.txt": b"aaa", "d/b.txt": b"bb"}, aliases=["best"])
    got = sdk.Api().artifact("ds:best")
    assert (got.name, got.type, got.version) == ("ds:v0", "dataset", "v0")
    assert got.digest == art.digest and len(got.digest) == 64
    assert got.size == 5
    assert got.aliases == ["best", "latest"]
    assert got.created_at.startswith(time.strftime("%Y"))


def test_files_lists_every_entry_with_size_and_digest(log_files) -> None:
    art = log_files("ds", {"a.txt": b"aaa", "d/b.txt": b"bb"})
    assert [(e.path, e.size, e.digest, e.ref) for e in art.files()] == [
        ("a.txt", 3, sha(b"aaa"), None),
        ("d/b.txt", 2, sha(b"bb"), None),
    ]


def test_use_artifact_accepts_every_qualified_form(log_files) -> None:
    log_files("ds", {"a.txt": b"a"}, aliases=["best"])
    with sdk.init(job_type="test") as run:
        specs = ["ds", "ds:v0", "ds:best", f"{PROJECT}/ds:v0", f"{ENTITY}/{PROJECT}/ds:best"]
        assert {run.use_artifact(s).qualified_name for s in specs} == {
            f"{ENTITY}/{PROJECT}/ds:v0"
        }


def test_use_artifact_logs_a_draft_once(registry_url: str, tmp_path: Path) -> None:
    def draft() -> sdk.Artifact:
        art = sdk.Artifact("ds", type="dataset")
        with art.new_file("hello.txt") as f:
            f.write("hello")
        return art

    with sdk.init(job_type="test") as run:
        first = run.use_artifact(draft())
        second = run.use_artifact(draft())
    assert first.version == second.version == "v0"
    assert len(sdk.Api().artifacts("dataset", "ds")) == 1


def test_new_file_writes_text_or_bytes(registry_url: str, tmp_path: Path) -> None:
    art = sdk.Artifact("ds", type="dataset")
    with art.new_file("t.txt") as f:
        f.write("héllo")
    with art.new_file("b.bin", mode="wb") as f:
        f.write(b"\x00\x01")
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    assert contents(art.download(tmp_path / "out")) == {
        "b.bin": b"\x00\x01", "t.txt": "héllo".encode(),
    }


def test_description_and_metadata_are_stored_at_log_time(registry_url: str) -> None:
    art = sdk.Artifact("ds", type="dataset", description="bikes", metadata={"n": 2})
    with art.new_file("a.txt") as f:
        f.write("a")
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    got = sdk.Api().artifact("ds:v0")
    assert (got.description, got.metadata) == ("bikes", {"n": 2})


def test_save_persists_description_metadata_and_aliases(log_files) -> None:
    log_files("ds", {"a.txt": b"a"})
    a = sdk.Api().artifact(f"{ENTITY}/{PROJECT}/ds:latest")
    a.description = "edited"
    a.metadata["k"] = "v"
    a.aliases.append("best")
    a.save()
    got = sdk.Api().artifact("ds:best")
    assert (got.version, got.description, got.metadata) == ("v0", "edited", {"k": "v"})


def test_save_removes_an_alias_dropped_from_the_list(log_files) -> None:
    log_files("ds", {"a.txt": b"a"}, aliases=["best"])
    a = sdk.Api().artifact("ds:v0")
    a.aliases.remove("best")
    a.save()
    assert sdk.Api().artifact("ds:v0").aliases == ["latest"]


def test_saving_a_stale_handle_does_not_drag_latest_back(log_files) -> None:
    log_files("ds", {"a.txt": b"a"})
    stale = sdk.Api().artifact("ds:v0")  # loaded while latest → v0
    log_files("ds", {"a.txt": b"b"})
    stale.description = "edited"
    stale.save()
    assert sdk.Api().artifact("ds:latest").version == "v1"


# -- lineage ------------------------------------------------------------------------------------
def test_logged_by_and_used_by_form_the_lineage(log_files) -> None:
    with sdk.init(job_type="preprocess") as producer:
        art = sdk.Artifact("ds", type="dataset")
        with art.new_file("a.txt") as f:
            f.write("a")
        producer.log_artifact(art)
    with sdk.init(job_type="train") as consumer:
        consumer.use_artifact("ds:v0")
    got = sdk.Api().artifact("ds:v0")
    assert got.logged_by().path == producer.path
    assert [r.path for r in got.used_by()] == [consumer.path]
    assert [r.job_type for r in got.used_by()] == ["train"]


def test_run_lists_used_and_logged_artifacts(log_files) -> None:
    log_files("raw", {"a.txt": b"a"})
    with sdk.init(job_type="train") as run:
        run.use_artifact("raw:latest")
        model = sdk.Artifact("model", type="model")
        with model.new_file("w.bin", mode="wb") as f:
            f.write(b"w")
        run.log_artifact(model)
        assert [a.qualified_name for a in run.logged_artifacts()] == [
            f"{ENTITY}/{PROJECT}/model:v0"
        ]
    past = sdk.Api().run(run.path)
    assert [a.qualified_name for a in past.used_artifacts()] == [f"{ENTITY}/{PROJECT}/raw:v0"]
    assert [a.qualified_name for a in past.logged_artifacts()] == [
        f"{ENTITY}/{PROJECT}/model:v0"
    ]


def test_api_artifacts_lists_every_version_newest_first(log_files) -> None:
    for data in (b"0", b"1", b"2"):
        log_files("ds", {"a.txt": data})
    assert [a.version for a in sdk.Api().artifacts("dataset", "ds")] == ["v2", "v1", "v0"]


# -- download and verify ------------------------------------------------------------------------
def test_download_writes_every_file(log_files, tmp_path: Path) -> None:
    art = log_files("ds", {"a.txt": b"a", "d/e/b.txt": b"b"})
    path = art.download(tmp_path / "out")
    assert contents(path) == {"a.txt": b"a", "d/e/b.txt": b"b"}


def test_download_defaults_to_artifacts_name_version(log_files, tmp_path: Path) -> None:
    art = log_files("ds", {"a.txt": b"a"})
    assert Path(art.download()).resolve() == (tmp_path / "artifacts" / "ds:v0").resolve()
    assert contents(tmp_path / "artifacts" / "ds:v0") == {"a.txt": b"a"}


def test_download_leaves_a_present_correct_file_untouched(log_files, tmp_path: Path) -> None:
    art = log_files("ds", {"a.txt": b"a", "b.txt": b"b"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_bytes(b"a")
    inode = (out / "a.txt").stat().st_ino
    art.download(out)
    assert (out / "a.txt").stat().st_ino == inode
    assert contents(out) == {"a.txt": b"a", "b.txt": b"b"}


def test_download_replaces_a_same_size_file_with_other_bytes(log_files, tmp_path: Path) -> None:
    art = log_files("ds", {"a.txt": b"right"})
    out = Path(art.download(tmp_path / "out"))
    st = (out / "a.txt").stat()
    (out / "a.txt").write_bytes(b"wrong")
    os.utime(out / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    art.download(out)
    assert (out / "a.txt").read_bytes() == b"right"


def test_second_download_hashes_nothing(
    log_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = log_files("ds", {f"f{i}.txt": str(i).encode() for i in range(20)})
    out = art.download(tmp_path / "out")

    def refuse(*args, **kwargs):
        raise AssertionError("a verified, unchanged file was hashed again")

    monkeypatch.setattr(transfer, "copy_and_hash", refuse)
    assert art.download(out) == out


def test_download_never_hard_links_registry_files(log_files, tmp_path: Path) -> None:
    art = log_files("ds", {"a.txt": b"original"})
    out = Path(art.download(tmp_path / "out"))
    assert (out / "a.txt").stat().st_nlink == 1
    (out / "a.txt").write_bytes(b"user edit")
    assert contents(art.download(tmp_path / "again")) == {"a.txt": b"original"}


@pytest.mark.parametrize("registry_url", ["s3", "gcs"], indirect=True)
def test_large_remote_files_download_straight_to_the_folder_verified(
        log_files, registry: Registry, tmp_path: Path) -> None:
    big = os.urandom(5 * 1024 * 1024)
    art = log_files("ds", {"big.bin": big, "small.txt": b"small"})
    registry.cache.clean()  # logging left the captured copy there
    out = Path(art.download(tmp_path / "out"))
    assert contents(out) == {"big.bin": big, "small.txt": b"small"}
    cached = [p.stat().st_size for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]
    assert len(big) not in cached  # the user's copy is the only one written

    registry.store.put(registry.blob_key(ENTITY, sha(big)), big[:-1] + b"!")
    with pytest.raises(IntegrityError, match="big.bin"):
        art.download(tmp_path / "again")
    assert not (tmp_path / "again" / "big.bin").exists()
    assert not list((tmp_path / "again").rglob("*.artfs-partial"))


def test_get_path_downloads_only_that_entry(log_files, tmp_path: Path) -> None:
    art = log_files("ds", {"a.txt": b"a", "d/b.txt": b"b"})
    entry = art.get_path("d/b.txt")
    path = entry.download(tmp_path / "out")
    assert Path(path).read_bytes() == b"b"
    assert contents(tmp_path / "out") == {"d/b.txt": b"b"}


def test_get_path_of_an_unknown_entry_names_it(log_files) -> None:
    art = log_files("ds", {"a.txt": b"a"})
    with pytest.raises(KeyError, match="nope.txt"):
        art.get_path("nope.txt")


def test_verify_accepts_an_exact_download(log_files, tmp_path: Path) -> None:
    art = log_files("ds", {"a.txt": b"a", "d/b.txt": b"b"})
    out = art.download(tmp_path / "out")
    assert contents(out) == {"a.txt": b"a", "d/b.txt": b"b"}
    art.verify(out)  # raises IntegrityError on any difference (next test)


@pytest.mark.parametrize("damage", ["modified", "missing", "extra"])
def test_verify_names_the_damaged_file(log_files, tmp_path: Path, damage: str) -> None:
    art = log_files("ds", {"a.txt": b"a", "d/b.txt": b"b"})
    out = Path(art.download(tmp_path / "out"))
    culprit = {"modified": "d/b.txt", "missing": "a.txt", "extra": "c.txt"}[damage]
    if damage == "modified":
        (out / culprit).write_bytes(b"B")
    elif damage == "missing":
        (out / culprit).unlink()
    else:
        (out / culprit).write_bytes(b"c")
    with pytest.raises(IntegrityError, match=culprit):
        art.verify(out)


# -- references ---------------------------------------------------------------------------------
def test_file_reference_downloads_its_bytes_and_keeps_its_uri(
    registry_url: str, tmp_path: Path
) -> None:
    src = tmp_path / "ext.bin"
    src.write_bytes(b"external")
    art = sdk.Artifact("refs", type="dataset")
    art.add_reference(src.as_uri())
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    entry = art.get_path("ext.bin")
    assert entry.ref == src.as_uri()
    assert Path(entry.download(tmp_path / "out")).read_bytes() == b"external"


def test_changed_file_reference_fails_download_by_name(registry_url: str, tmp_path: Path) -> None:
    src = tmp_path / "ext.bin"
    src.write_bytes(b"external")
    art = sdk.Artifact("refs", type="dataset")
    art.add_reference(src.as_uri())
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    src.write_bytes(b"EXTERNAL")
    with pytest.raises(ReferenceChanged, match="ext.bin"):
        art.download(tmp_path / "out")
    assert not (tmp_path / "out" / "ext.bin").exists()


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_a_run_never_finished_still_commits_and_reports_a_failed_log_at_exit(
        registry_url: str, tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_bytes(b"ok")
    (tmp_path / "gone.txt").write_bytes(b"gone")
    script = """
import os, sdk
run = sdk.init(job_type="script")
good = sdk.Artifact("good", type="dataset"); good.add_file("ok.txt")
run.log_artifact(good)
bad = sdk.Artifact("bad", type="dataset"); bad.add_file("gone.txt", policy="immutable")
os.remove("gone.txt")
run.log_artifact(bad)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert "gone.txt" in done.stderr and "failed" in done.stderr
    assert "Traceback" not in done.stderr
    assert sdk.Api().artifact("good:latest").version == "v0"
    with pytest.raises(ArtifactNotFound):
        sdk.Api().artifact("bad:latest")
