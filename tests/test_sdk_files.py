"""download/verify/checkout and the entries of a version, as W&B (issue 12, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

import sdk
from artfs.errors import IntegrityError, ReferenceChanged


def contents(root: str | Path) -> dict[str, bytes]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


FILES = {"model.h5": b"model", "images/cat.png": b"cat", "images/dog.png": b"dog",
         "images2/x.png": b"x", "labels/train.csv": b"a,b"}


@pytest.fixture
def logged(log_files) -> sdk.Artifact:
    return log_files("ds", FILES)


def test_path_prefix_downloads_only_entries_below_it(logged: sdk.Artifact, tmp_path: Path) -> None:
    out = logged.download(tmp_path / "a", path_prefix="images/")
    assert contents(out) == {"images/cat.png": b"cat", "images/dog.png": b"dog"}
    out = logged.download(tmp_path / "b", path_prefix="images")  # a plain prefix, as W&B
    assert sorted(contents(out)) == ["images/cat.png", "images/dog.png", "images2/x.png"]
    out = logged.download(tmp_path / "c", path_prefix="model.h5")
    assert contents(out) == {"model.h5": b"model"}
    assert contents(logged.download(tmp_path / "d", path_prefix="nothing/")) == {}


def test_skip_cache_downloads_the_same_bytes(logged: sdk.Artifact, tmp_path: Path) -> None:
    assert contents(logged.download(tmp_path / "out", skip_cache=True)) == FILES


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_allow_missing_references_skips_a_vanished_source(registry_url: str,
                                                          tmp_path: Path) -> None:
    (tmp_path / "gone.bin").write_bytes(b"soon gone")
    (tmp_path / "kept.txt").write_text("kept")
    art = sdk.Artifact("refs", type="dataset")
    art.add_reference((tmp_path / "gone.bin").as_uri())
    art.add_file(tmp_path / "kept.txt")
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    (tmp_path / "gone.bin").unlink()
    with pytest.raises(ReferenceChanged, match="gone.bin"):
        art.download(tmp_path / "strict")
    out = art.download(tmp_path / "lenient", allow_missing_references=True)
    assert contents(out) == {"kept.txt": b"kept"}


def test_verify_accepts_the_download_and_names_a_tampered_file(
        logged: sdk.Artifact, tmp_path: Path) -> None:
    out = Path(logged.download(tmp_path / "out"))
    logged.verify(out)
    (out / "images" / "dog.png").write_bytes(b"DOG")
    with pytest.raises(ValueError, match="images/dog.png"):
        logged.verify(out)
    with pytest.raises(IntegrityError):  # also an IntegrityError, as before
        logged.verify(out)


@pytest.mark.parametrize("damage", ["extra", "missing"])
def test_verify_names_a_file_that_should_not_be_there_or_is_missing(
        logged: sdk.Artifact, tmp_path: Path, damage: str) -> None:
    out = Path(logged.download(tmp_path / "out"))
    if damage == "extra":
        (out / "images" / "bird.png").write_bytes(b"bird")
        culprit = "images/bird.png"
    else:
        (out / "labels" / "train.csv").unlink()
        culprit = "labels/train.csv"
    with pytest.raises(ValueError, match=culprit):
        logged.verify(out)


def test_checkout_makes_the_folder_equal_to_the_version(
        logged: sdk.Artifact, tmp_path: Path) -> None:
    root = tmp_path / "work"
    (root / "stale" / "deep").mkdir(parents=True)
    (root / "stale" / "deep" / "old.txt").write_text("old")
    (root / "images").mkdir()
    (root / "images" / "cat.png").write_bytes(b"edited cat")
    (root / "notes.txt").write_text("mine")
    assert logged.checkout(root) == str(root)
    assert contents(root) == FILES
    assert not (root / "stale").exists()
    logged.verify(root)


def test_checkout_defaults_to_the_artifact_folder_without_version(
        logged: sdk.Artifact, tmp_path: Path) -> None:
    assert Path(logged.checkout()).resolve() == (tmp_path / "artifacts" / "ds").resolve()


def test_entries_of_a_version(logged: sdk.Artifact) -> None:
    got = sdk.Api().artifact("ds:latest")
    entry = got.get_entry("images/cat.png")
    assert (entry.path, entry.size, entry.ref) == ("images/cat.png", 3, None)
    assert len(entry.digest) == 64
    assert sorted(got.manifest.entries) == sorted(FILES)
    assert got.manifest.entries["model.h5"].size == 5
    assert [f.name for f in got.files()] == sorted(FILES)
    assert [f.name for f in got.files(names=["model.h5", "nope"])] == ["model.h5"]
    with pytest.raises(KeyError, match="nope.txt"):
        got.get_entry("nope.txt")


def test_an_entry_downloads_alone(logged: sdk.Artifact, tmp_path: Path) -> None:
    path = sdk.Api().artifact("ds:v0").get_entry("labels/train.csv").download(tmp_path / "o")
    assert Path(path).read_bytes() == b"a,b"
    assert contents(tmp_path / "o") == {"labels/train.csv": b"a,b"}
