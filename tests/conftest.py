"""Shared fixtures: an isolated cache/state per test and a registry on every store kind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Store kinds the SDK suite runs against (one parametrised suite, not three copies).
STORE_KINDS = ["local"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the user's real cache, registry or identity."""
    monkeypatch.setenv("ARTFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ARTFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ARTFS_REGISTRY", str(tmp_path / "default-registry"))
    monkeypatch.setenv("ARTFS_ENTITY", "tester")
    monkeypatch.delenv("ARTFS_PROJECT", raising=False)
    monkeypatch.delenv("ARTFS_CACHE_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(params=STORE_KINDS)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh empty registry location of each kind, also set as ARTFS_REGISTRY."""
    if request.param == "local":
        url = str(tmp_path / "registry")
    else:
        url = request.getfixturevalue("make_store_url")(request.param)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    return url


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """The seeds' example project: images/{cat,dog}.png, checkpoints/model.h5, model.h5."""
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    (root / "images" / "cat.png").write_bytes(b"cat-bytes")
    (root / "images" / "dog.png").write_bytes(b"dog-bytes")
    (root / "checkpoints" / "model.h5").write_bytes(b"checkpoint-model")
    (root / "model.h5").write_bytes(b"model")
    os.chdir(root)
    return root
