"""Bad input (README.md, "Guarantees"): the error names the culprit, and nothing changes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import artfs.hashing
import sdk
from artfs.errors import (
    ArtifactNotFound,
    CorruptRecord,
    DuplicateEntry,
    FileChangedError,
    IntegrityError,
    InvalidMetadata,
    InvalidName,
    InvalidPath,
    NotARegistry,
    RegistryTooNew,
    SourceError,
    TypeMismatch,
)
from artfs.manifest import Manifest
from artfs.registry import Registry
from tests.servers import registry_keys

ENTITY, PROJECT = "tester", "uncategorized"
ARTIFACTS = f"entities/{ENTITY}/projects/{PROJECT}/artifacts"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions(name: str) -> list[str]:
    return [a.version for a in sdk.Api().artifacts(None, name)]


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def v0(log_files) -> sdk.Artifact:
    """`ds:v0` (aliases latest, best) holding a.txt."""
    return log_files("ds", {"a.txt": b"a"}, aliases=["best"])


def log_draft(art: sdk.Artifact, aliases: list[str] | None = None) -> None:
    with sdk.init(job_type="test") as run:
        run.log_artifact(art, aliases=aliases)


# -- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "a b", "a/b", "a:b", "..", ".", "x" * 129, "é"])
def test_invalid_artifact_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidName, match="artifact name"):
        sdk.Artifact(name, type="dataset")


@pytest.mark.parametrize("project", ["my project", "..", "a/b"])
def test_invalid_project_name_is_refused_before_the_registry_is_touched(
    tmp_path: Path, project: str
) -> None:
    with pytest.raises(InvalidName, match="project"):
        sdk.init(job_type="test", project=project, registry=str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("alias", ["v3", "v0", "v07", "has space", "a/b"])
def test_invalid_alias_is_refused_at_log_and_logs_nothing(
    registry_url: str, tmp_path: Path, alias: str
) -> None:
    art = sdk.Artifact("ds", type="dataset")
    with art.new_file("a.txt") as f:
        f.write("a")
    with pytest.raises(InvalidName, match="alias"):
        log_draft(art, aliases=[alias])
    assert Registry(registry_url).artifacts(ENTITY, PROJECT) == []


def test_version_like_alias_is_refused_by_save_and_moves_nothing(v0: sdk.Artifact) -> None:
    a = sdk.Api().artifact("ds:v0")
    a.aliases.append("v3")
    a.description = "changed"
    with pytest.raises(InvalidName, match="'v3'"):
        a.save()
    got = sdk.Api().artifact("ds:v0")
    assert (got.aliases, got.description) == (["best", "latest"], None)


def test_non_json_metadata_is_refused_at_log_and_logs_nothing(registry_url: str) -> None:
    art = sdk.Artifact("ds", type="dataset", metadata={"when": object()})
    with art.new_file("a.txt") as f:
        f.write("a")
    with pytest.raises(InvalidMetadata, match="ds"):
        log_draft(art)
    assert Registry(registry_url).artifacts(ENTITY, PROJECT) == []


# -- sources ------------------------------------------------------------------------------------
def test_missing_source_file_is_named(tmp_path: Path) -> None:
    art = sdk.Artifact("ds", type="dataset")
    with pytest.raises(SourceError, match="nope.txt"):
        art.add_file(tmp_path / "nope.txt")
    assert art._contents.sources == {}


def test_dangling_symlink_source_is_named(tmp_path: Path) -> None:
    """A dangling symlink cannot be read even by root, unlike a chmod-000 file."""
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(SourceError, match="link"):
        sdk.Artifact("ds", type="dataset").add_file(tmp_path / "link")


def test_fifo_source_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SourceError, match="pipe.*not a regular file"):
        sdk.Artifact("ds", type="dataset").add_file(tmp_path / "pipe")


def test_directory_given_to_add_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a regular file"):
        sdk.Artifact("ds", type="dataset").add_file(tmp_path)


@pytest.mark.parametrize("kind", ["dangling-symlink", "fifo", "socket"])
def test_unreadable_entry_inside_add_dir_is_named_and_adds_nothing(
    tmp_path: Path, kind: str
) -> None:
    root = tmp_path / "dir"
    root.mkdir()
    (root / "ok.txt").write_text("ok")
    bad = root / "zz-bad"
    if kind == "dangling-symlink":
        bad.symlink_to(tmp_path / "gone")
    elif kind == "fifo":
        os.mkfifo(bad)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(bad))
        sock.close()
    art = sdk.Artifact("ds", type="dataset")
    with pytest.raises(SourceError, match="zz-bad"):
        art.add_dir(root)
    assert art._contents.sources == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="drops privileges from root to nobody")
def test_file_without_read_permission_is_refused(tmp_path: Path) -> None:
    """Root reads any file, so the check runs in a child that has dropped to `nobody` (after
    its imports: the interpreter's own files may be readable by root only)."""
    shared = Path(os.environ.get("TMPDIR", "/tmp")) / f"artfs-perm-{os.getpid()}"
    shared.mkdir(mode=0o755, exist_ok=True)
    secret = shared / "secret.txt"
    secret.write_text("secret")
    secret.chmod(0)
    code = (
        "import os, sys\n"
        "import sdk\n"
        "from artfs.errors import SourceError\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    sdk.Artifact('ds', type='dataset').add_file({str(secret)!r})\n"
        "except SourceError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=shared, timeout=60)
    finally:
        secret.unlink()
        shared.rmdir()
    assert proc.returncode == 3, proc.stderr
    assert "secret.txt" in proc.stdout and "not readable" in proc.stdout


def test_file_changed_between_add_and_log_logs_nothing(registry_url: str, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("one")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src, policy="immutable")
    src.write_text("two!")
    with pytest.raises(FileChangedError, match="a.txt"):
        log_draft(art)
    assert Registry(registry_url).artifacts(ENTITY, PROJECT) == []


def test_file_changed_while_being_read_logs_nothing(
    registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"x" * 100_000)
    real_open = artfs.hashing.open_source

    def open_then_append(path: Path):
        fd, before = real_open(path)
        with open(path, "ab") as f:  # another program writes while we read
            f.write(b"more")
        return fd, before

    art = sdk.Artifact("ds", type="dataset")
    art.add_file(src, policy="immutable")
    monkeypatch.setattr(artfs.hashing, "open_source", open_then_append)
    with pytest.raises(FileChangedError, match="a.txt"):
        log_draft(art)
    reg = Registry(registry_url)
    assert reg.artifacts(ENTITY, PROJECT) == []
    assert list(reg.store.list(f"entities/{ENTITY}/blobs/")) == []


def test_two_different_files_under_one_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("a")
    (tmp_path / "b" / "x.txt").write_text("b")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(tmp_path / "a" / "x.txt")
    with pytest.raises(DuplicateEntry, match="x.txt"):
        art.add_file(tmp_path / "b" / "x.txt")
    assert list(art._contents.origins.values()) == [str(tmp_path / "a" / "x.txt")]


def test_adding_the_same_file_twice_is_harmless(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(tmp_path / "x.txt")
    art.add_file(tmp_path / "x.txt")
    assert list(art._contents.sources) == ["x.txt"]


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "a/../../escape", "a\\b"])
@pytest.mark.parametrize("how", ["add_file", "add_dir", "new_file", "add_reference"])
def test_entry_name_that_could_escape_is_refused(tmp_path: Path, name: str, how: str) -> None:
    (tmp_path / "x.txt").write_text("x")
    art = sdk.Artifact("ds", type="dataset")
    with pytest.raises(InvalidPath, match="entry path"):
        if how == "add_file":
            art.add_file(tmp_path / "x.txt", name=name)
        elif how == "add_dir":
            art.add_dir(tmp_path, name=name)
        elif how == "add_reference":
            art.add_reference((tmp_path / "x.txt").as_uri(), name=name)
        else:
            with art.new_file(name) as f:
                f.write("x")
    assert art._contents.sources == {} and art._contents.refs == {}


# -- names that do not exist --------------------------------------------------------------------
def test_missing_version_lists_the_versions_that_exist(v0: sdk.Artifact) -> None:
    with pytest.raises(ArtifactNotFound, match=r"ds:v9.*versions: v0.*aliases: best, latest"):
        sdk.Api().artifact("ds:v9")


def test_missing_alias_lists_the_aliases_that_exist(v0: sdk.Artifact) -> None:
    with pytest.raises(ArtifactNotFound, match=r"ds:nope.*aliases: best, latest"):
        sdk.Api().artifact("ds:nope")


def test_missing_artifact_lists_the_artifacts_that_exist(v0: sdk.Artifact) -> None:
    with pytest.raises(ArtifactNotFound, match=r"other.*artifacts in .*: ds"):
        with sdk.init(job_type="test") as run:
            run.use_artifact("other:latest")


def test_logging_a_name_with_another_type_is_refused_at_the_call(v0: sdk.Artifact) -> None:
    art = sdk.Artifact("ds", type="model")
    with art.new_file("b.txt") as f:
        f.write("b")
    with sdk.init(job_type="test") as run, pytest.raises(TypeMismatch, match=r"'dataset'.*'model'"):
        run.log_artifact(art)
    assert versions("ds") == ["v0"]


def test_api_artifacts_with_another_type_is_refused(v0: sdk.Artifact) -> None:
    with pytest.raises(TypeMismatch, match="ds"):
        sdk.Api().artifacts("model", "ds")


# -- registries ---------------------------------------------------------------------------------
def test_non_empty_folder_is_not_taken_for_a_registry(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(NotARegistry, match="photos"):
        sdk.init(job_type="test", registry=str(folder))
    assert tree(folder) == ["cat.jpg"]


def test_file_is_not_taken_for_a_registry(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(NotARegistry, match="notes.txt"):
        sdk.Api(registry=str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "hi"


@pytest.mark.parametrize("version", [2, "2"])
def test_registry_of_a_newer_version_is_refused_by_name(registry: Registry, registry_url: str,
                                                        tmp_path: Path, version: object) -> None:
    """A later artfs may store manifests this one cannot read: it says so instead of calling
    them missing or corrupt, and writes nothing."""
    newer = json.dumps({"format": "artfs-registry", "version": version}).encode()
    registry.store.put("registry.json", newer)
    before = registry_keys(registry_url)
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(RegistryTooNew, match=f"{registry.url}.*version.*upgrade artfs"):
        with sdk.init(job_type="test", registry=registry.url) as run:
            art = sdk.Artifact("ds", type="dataset")
            art.add_file(tmp_path / "a.txt")
            run.log_artifact(art)
    assert registry_keys(registry_url) == before
    assert registry.store.get("registry.json") == newer


def test_registry_with_a_foreign_marker_is_refused(registry: Registry, registry_url: str,
                                                   tmp_path: Path) -> None:
    foreign = b'{"format": "something-else"}'
    registry.store.put("registry.json", foreign)
    before = registry_keys(registry_url)
    with pytest.raises(NotARegistry, match="registry.json"):
        sdk.Api(registry=registry.url)
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(NotARegistry, match="registry.json"):
        with sdk.init(job_type="test", registry=registry.url) as run:
            art = sdk.Artifact("ds", type="dataset")
            art.add_file(tmp_path / "a.txt")
            run.log_artifact(art)
    assert registry_keys(registry_url) == before
    assert registry.store.get("registry.json") == foreign


# -- tampering ----------------------------------------------------------------------------------
def test_manifest_parsing_refuses_an_escaping_entry() -> None:
    for path in ("../escape", "/abs", "a/./b", "a//b"):
        doc = {"format": 1, "entries": {path: {"size": 1, "digest": sha(b"x")}}}
        data = json.dumps(doc).encode()
        with pytest.raises(CorruptRecord, match="entry"):
            Manifest.from_bytes(data, expect_digest=sha(data))


def test_tampered_manifest_with_escaping_entry_writes_nothing(
    v0: sdk.Artifact, registry: Registry, tmp_path: Path
) -> None:
    evil = b"evil"
    registry.put_blob(ENTITY, evil)
    manifest = json.dumps({"format": 1, "entries": {
        "../escape": {"size": 4, "digest": sha(evil)}}}, sort_keys=True,
        separators=(",", ":")).encode()
    digest = sha(manifest)
    registry.store.put(registry.manifest_key(ENTITY, digest), manifest)
    record = json.loads(registry.store.get(f"{ARTIFACTS}/ds/versions/v0.json"))
    record.update(version=1, digest=digest)
    registry.store.put(f"{ARTIFACTS}/ds/versions/v1.json", json.dumps(record).encode())
    out = tmp_path / "dl" / "out"
    with pytest.raises(CorruptRecord, match="escape"):
        sdk.Api().artifact("ds:v1").download(out)
    assert not (tmp_path / "dl" / "escape").exists()
    assert not out.exists() or tree(out) == []


def test_version_record_pointing_at_another_manifest_is_detected(
    v0: sdk.Artifact, registry: Registry
) -> None:
    key = f"{ARTIFACTS}/ds/versions/v0.json"
    record = json.loads(registry.store.get(key))
    record["digest"] = sha(b"no such manifest")
    registry.store.put(key, json.dumps(record).encode())
    with pytest.raises(CorruptRecord, match="ds:v0"):
        sdk.Api().artifact("ds:v0").files()


def test_manifest_bytes_changed_on_disk_are_detected(
    v0: sdk.Artifact, registry: Registry
) -> None:
    key = registry.manifest_key(ENTITY, v0.digest)
    registry.store.put(key, registry.store.get(key).replace(b"a.txt", b"b.txt"))
    with pytest.raises(CorruptRecord, match=v0.digest):
        sdk.Api().artifact("ds:v0").files()


def test_corrupt_blob_fails_download_and_leaves_no_file(
    v0: sdk.Artifact, registry: Registry, tmp_path: Path
) -> None:
    digest = sha(b"a")
    registry.store.put(registry.blob_key(ENTITY, digest), b"A")
    registry.cache.clean()  # logging left the verified captured copy there
    out = tmp_path / "out"
    with pytest.raises(IntegrityError) as info:
        sdk.Api().artifact("ds:v0").download(out)
    assert all(s in str(info.value) for s in (digest, "a.txt", "ds:v0"))
    assert not out.exists() or tree(out) == []
    assert registry.cache.get(digest) is None
