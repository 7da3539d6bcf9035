"""The `artfs` command: ls, info, put, get, alias, cache, and the --registry option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sdk
from artfs.cli import main
from artfs.registry import Registry
from tests.servers import registry_keys

ENTITY, PROJECT = "tester", "uncategorized"


def artfs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("bb")
    return root


@pytest.fixture
def put_v0(registry_url: str, data: Path, capsys) -> None:
    assert artfs(capsys, "put", str(data), "--name", "ds", "--type", "dataset")[0] == 0


def test_put_folder_creates_a_version_with_relative_paths(
    registry_url: str, data: Path, capsys
) -> None:
    code, out, _ = artfs(capsys, "put", str(data), "--name", "ds", "--type", "dataset",
                         "--alias", "best")
    assert code == 0
    assert f"created {ENTITY}/{PROJECT}/ds:v0" in out and "best" in out
    assert sorted(e.path for e in sdk.Api().artifact("ds:best").files()) == ["a.txt", "sub/b.txt"]


def test_put_of_unchanged_files_creates_no_version(put_v0, data: Path, capsys) -> None:
    code, out, _ = artfs(capsys, "put", str(data), "--name", "ds", "--type", "dataset")
    assert code == 0 and "unchanged" in out and "ds:v0" in out
    assert len(sdk.Api().artifacts("dataset", "ds")) == 1


def test_put_several_files(registry_url: str, data: Path, capsys) -> None:
    code, _, _ = artfs(capsys, "put", str(data / "a.txt"), str(data / "sub" / "b.txt"),
                       "--name", "ds", "--type", "dataset")
    assert code == 0
    assert sorted(e.path for e in sdk.Api().artifact("ds").files()) == ["a.txt", "b.txt"]


def test_put_of_a_missing_path_names_it_and_changes_nothing(
    registry_url: str, data: Path, capsys
) -> None:
    before = registry_keys(registry_url)
    assert before  # the listing sees the new registry's marker
    code, _, err = artfs(capsys, "put", str(data), str(data / "nope"), "--name", "ds",
                         "--type", "dataset")
    assert code == 1 and "nope" in err
    assert Registry(registry_url).entities() == []
    assert registry_keys(registry_url) == before


def test_put_folder_keeps_linked_files_and_leaves_linked_folders_out(
    registry_url: str, data: Path, tmp_path: Path, capsys
) -> None:
    """As `add_dir`: a link to a file is that file's bytes; a link to a folder is not walked
    (it could loop or pull in a whole other tree)."""
    (tmp_path / "outside.txt").write_text("outside")
    (data / "linked.txt").symlink_to(tmp_path / "outside.txt")
    (data / "linked-dir").symlink_to(data / "sub")
    code, _, _ = artfs(capsys, "put", str(data), "--name", "ds", "--type", "dataset")
    assert code == 0
    files = {e.path: e.size for e in sdk.Api().artifact("ds").files()}
    assert files == {"a.txt": 1, "linked.txt": 7, "sub/b.txt": 2}


@pytest.mark.parametrize("kind", ["dangling-symlink", "fifo"])
def test_put_folder_with_an_unreadable_entry_names_it_and_changes_nothing(
    registry_url: str, data: Path, capsys, kind: str
) -> None:
    bad = data / "sub" / "zz-bad"
    if kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.symlink_to(data / "gone")
    before = registry_keys(registry_url)
    code, _, err = artfs(capsys, "put", str(data), "--name", "ds", "--type", "dataset")
    assert code == 1 and "zz-bad" in err and "not a regular file" in err
    assert registry_keys(registry_url) == before


def test_put_of_two_files_with_one_name_is_refused(
    registry_url: str, data: Path, tmp_path: Path, capsys
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("other a")
    before = registry_keys(registry_url)
    assert before  # the listing sees the new registry's marker
    code, _, err = artfs(capsys, "put", str(data), str(other), "--name", "ds", "--type", "dataset")
    assert code == 1 and "'a.txt'" in err and "added twice" in err
    assert Registry(registry_url).entities() == []
    assert registry_keys(registry_url) == before


def test_put_with_a_version_like_alias_is_refused(registry_url: str, data: Path, capsys) -> None:
    before = registry_keys(registry_url)
    assert before  # the listing sees the new registry's marker
    code, _, err = artfs(capsys, "put", str(data), "--name", "ds", "--type", "dataset",
                         "--alias", "v3")
    assert code == 1 and "'v3'" in err
    assert Registry(registry_url).entities() == []
    assert registry_keys(registry_url) == before


def test_put_with_another_type_is_refused(put_v0, registry_url: str, data: Path,
                                          capsys) -> None:
    (data / "a.txt").write_text("changed")
    before = registry_keys(registry_url)
    code, _, err = artfs(capsys, "put", str(data), "--name", "ds", "--type", "model")
    assert code == 1 and "'dataset'" in err and "'model'" in err
    assert len(sdk.Api().artifacts("dataset", "ds")) == 1
    assert registry_keys(registry_url) == before


def test_ls_walks_entities_projects_artifacts_and_versions(put_v0, capsys) -> None:
    assert artfs(capsys, "ls")[1].split() == [ENTITY]
    assert artfs(capsys, "ls", ENTITY)[1].split() == [f"{ENTITY}/{PROJECT}"]
    assert artfs(capsys, "ls", f"{ENTITY}/{PROJECT}")[1].split() == [
        f"{ENTITY}/{PROJECT}/ds", "(dataset)"
    ]
    out = artfs(capsys, "ls", f"{ENTITY}/{PROJECT}/ds")[1]
    assert out.startswith("v0\t") and "2 files" in out and out.rstrip().endswith("latest")


def test_ls_of_a_missing_artifact_lists_what_exists(put_v0, capsys) -> None:
    code, _, err = artfs(capsys, "ls", f"{ENTITY}/{PROJECT}/nope")
    assert code == 1 and "nope" in err and "ds" in err


def test_info_shows_version_facts_files_lineage_and_registry(
    put_v0, registry_url: str, capsys
) -> None:
    with sdk.init(job_type="train") as run:
        run.use_artifact("ds:v0")
    code, out, _ = artfs(capsys, "info", "ds:latest", "--json")
    info = json.loads(out)
    v = sdk.Api().artifact("ds:v0")
    assert code == 0
    assert info["registry"] == Registry(registry_url).url
    assert (info["version"], info["versions"], info["aliases"]) == ("v0", ["v0"], ["latest"])
    assert (info["digest"], info["size"]) == (v.digest, 3)
    assert [f["path"] for f in info["files"]] == ["a.txt", "sub/b.txt"]
    assert info["logged_by"] and info["used_by"] == [run.path]
    text = artfs(capsys, "info", "ds:latest")[1]
    assert all(s in text for s in (v.digest, "sub/b.txt", run.path, "registry:"))


def test_info_of_a_missing_version_lists_the_versions(put_v0, capsys) -> None:
    code, _, err = artfs(capsys, "info", "ds:v9")
    assert code == 1 and "ds:v9" in err and "versions: v0" in err


def test_get_downloads_a_version(put_v0, tmp_path: Path, capsys) -> None:
    code, _, _ = artfs(capsys, "get", "ds:latest", str(tmp_path / "out"))
    assert code == 0
    assert (tmp_path / "out" / "sub" / "b.txt").read_text() == "bb"


def test_alias_points_an_alias_at_a_version(put_v0, data: Path, capsys) -> None:
    (data / "a.txt").write_text("changed")
    artfs(capsys, "put", str(data), "--name", "ds", "--type", "dataset")
    code, out, _ = artfs(capsys, "alias", "ds:v0", "prod")
    assert code == 0 and "prod" in out and "ds:v0" in out
    assert sdk.Api().artifact("ds:prod").version == "v0"
    assert artfs(capsys, "alias", "ds:v0", "prod", "--delete")[0] == 0
    assert sdk.Api().artifact("ds:v0").aliases == []


def test_alias_that_looks_like_a_version_moves_nothing(put_v0, capsys) -> None:
    code, _, err = artfs(capsys, "alias", "ds:v0", "v1")
    assert code == 1 and "'v1'" in err
    assert sdk.Api().artifact("ds:v0").aliases == ["latest"]


def test_alias_of_a_missing_version_moves_nothing(put_v0, capsys) -> None:
    code, _, err = artfs(capsys, "alias", "ds:v5", "prod")
    assert code == 1 and "ds:v5" in err
    assert sdk.Api().artifact("ds:v0").aliases == ["latest"]


def test_cache_reports_and_cleans_without_a_registry(tmp_path: Path, capsys) -> None:
    code, out, _ = artfs(capsys, "cache", "--registry", str(tmp_path / "none"))
    assert code == 0 and "0 blobs" in out
    assert artfs(capsys, "cache", "--clean")[0] == 0
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("before", [True, False], ids=["before-command", "after-command"])
def test_registry_option_selects_the_registry(
    tmp_path: Path, data: Path, capsys, before: bool
) -> None:
    reg = str(tmp_path / "chosen")
    opt = ["--registry", reg]
    assert artfs(capsys, "init", reg)[0] == 0
    put = ["put", str(data), "--name", "ds", "--type", "dataset"]
    assert artfs(capsys, *(opt + put if before else put + opt))[0] == 0
    assert not Path(os.environ["ARTFS_REGISTRY"]).exists()
    assert artfs(capsys, "ls", "--registry", reg)[1].split() == [ENTITY]


def test_commands_do_not_create_a_named_registry(tmp_path: Path, data: Path, capsys) -> None:
    for argv in (["ls"], ["put", str(data), "--name", "ds", "--type", "dataset"]):
        code, _, err = artfs(capsys, *argv, "--registry", str(tmp_path / "none"))
        assert code == 1 and "none" in err and "artfs init" in err
    assert not (tmp_path / "none").exists()


def test_console_script_runs(put_v0, registry_url: str) -> None:
    exe = Path(sys.executable).with_name("artfs")
    proc = subprocess.run([str(exe), "info", "ds:v0", "--json"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == "v0"
