"""Shared fixtures: an isolated cache/state per test and a registry on every store kind."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sdk
from artfs.registry import Registry, init_registry

pytest_plugins = ["tests.servers", "tests.mount_fixtures", "tests.http_server"]

#: Store kinds the SDK suite runs against (one parametrised suite, not three copies).
STORE_KINDS = ["local", "s3", "gcs"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the user's real cache, registry or identity."""
    monkeypatch.setenv("ARTFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ARTFS_STATE_DIR", str(tmp_path / "state"))
    # The embedded registry (created on first use, unlike any other) lives in this test's folder.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("ARTFS_REGISTRY", str(tmp_path / "xdg-data" / "artfs"))
    monkeypatch.setenv("ARTFS_ENTITY", "tester")
    monkeypatch.delenv("ARTFS_PROJECT", raising=False)
    monkeypatch.delenv("ARTFS_CACHE_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(params=STORE_KINDS)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh empty registry of each kind (made by `artfs init`), also set as ARTFS_REGISTRY."""
    if request.param == "local":
        url = str(tmp_path / "registry")
    else:
        url = request.getfixturevalue("make_store_url")(request.param)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    init_registry(url)
    return url


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """W&B's documented example project: images/{cat,dog}.png, checkpoints/model.h5, model.h5."""
    root = tmp_path / "project"
    (root / "images").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    (root / "images" / "cat.png").write_bytes(b"cat-bytes")
    (root / "images" / "dog.png").write_bytes(b"dog-bytes")
    (root / "checkpoints" / "model.h5").write_bytes(b"checkpoint-model")
    (root / "model.h5").write_bytes(b"model")
    os.chdir(root)
    return root


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    """The registry behind `registry_url`, opened directly (to inspect or tamper with keys)."""
    reg = Registry(registry_url)
    yield reg
    reg.close()


@pytest.fixture
def log_files(registry_url: str, tmp_path: Path) -> Callable[..., sdk.Artifact]:
    """`log_files(name, {entry path: bytes}, aliases=..., type=...)` → the logged Artifact."""
    counter = itertools.count()

    def log(name: str, files: dict[str, bytes], *, type: str = "dataset",
            aliases: list[str] | None = None, project: str | None = None) -> sdk.Artifact:
        src = tmp_path / f"src-{next(counter)}"
        art = sdk.Artifact(name, type=type)
        for path, data in files.items():
            f = src / path
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
            art.add_file(f, name=path)
        with sdk.init(job_type="test", project=project) as run:
            run.log_artifact(art, aliases=aliases)
        return art

    return log


@pytest.fixture
def forbid_claim_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail at once if a log waits for another writer's digest claim to expire, instead of
    asserting on a clock: the commit protocol's only wait is the sleep between looks at a claim."""
    import time

    import artfs.commits

    class NoSleep:
        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            raise AssertionError(f"the log waited {seconds} s on a digest claim")

    monkeypatch.setattr(artfs.commits, "time", NoSleep())
