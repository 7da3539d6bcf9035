"""Registries are created on purpose: `artfs init`; nothing else creates one, except the
embedded default registry on its first use."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import sdk
from artfs import config
from artfs.cli import main
from artfs.errors import NotARegistry, RegistryMissing
from artfs.registry import Registry
from artfs.store import open_store


def artfs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=["local", "s3", "gcs"])
def fresh_url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str],
              tmp_path: Path) -> str:
    """A location of each kind where no registry exists (a local one that does not exist)."""
    if request.param == "local":
        return str(tmp_path / "typo")
    return make_store_url(request.param)


def untouched(url: str) -> bool:
    if "://" not in url:
        return not os.path.lexists(url)
    return list(open_store(url).list("")) == []


def test_init_creates_a_registry_once(fresh_url: str, capsys) -> None:
    code, out, _ = artfs(capsys, "init", fresh_url)
    assert code == 0 and "created" in out and fresh_url.rstrip("/").split("/")[-1] in out
    assert Registry(fresh_url).entities() == []
    code, out, _ = artfs(capsys, "init", fresh_url)
    assert code == 0 and "already an artfs registry" in out


def test_init_uses_the_registry_option_or_variable(tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert artfs(capsys, "init", "--registry", str(tmp_path / "by-option"))[0] == 0
    monkeypatch.setenv("ARTFS_REGISTRY", str(tmp_path / "by-env"))
    assert artfs(capsys, "init")[0] == 0
    assert (tmp_path / "by-option" / "registry.json").is_file()
    assert (tmp_path / "by-env" / "registry.json").is_file()


def test_init_refuses_a_folder_holding_something_else(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"meow")
    code, _, err = artfs(capsys, "init", str(folder))
    assert code == 1 and "photos" in err and "not an artfs registry" in err
    assert os.listdir(folder) == ["cat.jpg"]


@pytest.mark.parametrize("argv", [
    ["ls"], ["ls", "tester/uncategorized"], ["info", "ds"], ["get", "ds", "out"],
    ["alias", "ds:v0", "best"],
    ["put", "data.txt", "--name", "ds", "--type", "dataset"],
], ids=["ls", "ls-project", "info", "get", "alias", "put"])
def test_commands_refuse_a_location_that_is_not_a_registry(
    fresh_url: str, argv: list[str], capsys, tmp_path: Path
) -> None:
    (tmp_path / "data.txt").write_text("x")
    code, _, err = artfs(capsys, *argv, "--registry", fresh_url)
    assert code == 1
    assert f"no artfs registry at {fresh_url}" in err and f"artfs init {fresh_url}" in err
    assert "Traceback" not in err
    assert untouched(fresh_url) and not (tmp_path / "out").exists()


def test_mount_refuses_a_location_that_is_not_a_registry(fresh_url: str, tmp_path: Path,
                                                         run_artfs) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = run_artfs("mount", str(mnt), "--registry", fresh_url, check=False)
    assert out.returncode == 1 and f"artfs init {fresh_url}" in out.stderr
    assert not os.path.ismount(mnt) and untouched(fresh_url)


def test_sdk_reads_and_logs_refuse_a_location_that_is_not_a_registry(
    fresh_url: str, tmp_path: Path
) -> None:
    with pytest.raises(RegistryMissing, match="artfs init"):
        sdk.Api(registry=fresh_url).artifact("ds")
    with pytest.raises(RegistryMissing, match="artfs init"):
        sdk.init(job_type="train", registry=fresh_url)
    assert untouched(fresh_url)
    assert issubclass(RegistryMissing, NotARegistry)


def test_embedded_registry_is_created_on_first_put(tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARTFS_REGISTRY")
    embedded = Path(config.embedded_registry())
    assert embedded.is_relative_to(tmp_path) and not embedded.exists()
    (tmp_path / "data.txt").write_text("x")
    code, out, _ = artfs(capsys, "put", "data.txt", "--name", "ds", "--type", "dataset")
    assert code == 0 and "ds:v0" in out
    assert (embedded / "registry.json").is_file()


def test_embedded_registry_is_created_on_first_log_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ARTFS_REGISTRY")
    (tmp_path / "data.txt").write_text("x")
    with sdk.init(job_type="train") as run:
        art = sdk.Artifact("ds", type="dataset")
        art.add_file(str(tmp_path / "data.txt"))
        run.log_artifact(art)
    assert sdk.Api().artifact("ds").version == "v0"
    assert (Path(config.embedded_registry()) / "registry.json").is_file()
