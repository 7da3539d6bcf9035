"""The W&B Artifacts documentation's table of resulting contents, exact."""

from __future__ import annotations

from pathlib import Path

import pytest

import sdk


def logged_paths(build) -> list[str]:
    art = sdk.Artifact("example", type="dataset")
    build(art)
    with sdk.init(job_type="test") as run:
        run.log_artifact(art)
    return sorted(e.path for e in art.files())


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda a: a.add_file("model.h5"), ["model.h5"]),
        (lambda a: a.add_file("checkpoints/model.h5"), ["model.h5"]),
        (lambda a: a.add_file("model.h5", name="models/mymodel.h5"), ["models/mymodel.h5"]),
        (lambda a: a.add_dir("images"), ["cat.png", "dog.png"]),
        (lambda a: a.add_dir("images", name="images"), ["images/cat.png", "images/dog.png"]),
    ],
    ids=["file", "nested-file", "renamed-file", "dir", "named-dir"],
)
def test_add_file_and_dir_naming(registry_url: str, project_dir: Path, build, expected) -> None:
    assert logged_paths(build) == expected


def test_new_file_naming(registry_url: str, project_dir: Path) -> None:
    def build(a: sdk.Artifact) -> None:
        with a.new_file("hello.txt") as f:
            f.write("hello")

    assert logged_paths(build) == ["hello.txt"]


@pytest.mark.parametrize(
    ("target", "name", "expected"),
    [
        ("model.h5", None, ["model.h5"]),
        ("checkpoints/model.h5", None, ["model.h5"]),
        ("model.h5", "models/mymodel.h5", ["models/mymodel.h5"]),
        ("images", None, ["cat.png", "dog.png"]),
        ("images", "images", ["images/cat.png", "images/dog.png"]),
    ],
)
def test_file_reference_naming(registry_url: str, project_dir: Path, target, name, expected):
    uri = (project_dir / target).as_uri()
    assert logged_paths(lambda a: a.add_reference(uri, name=name)) == expected
