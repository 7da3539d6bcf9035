"""What `artfs --help`, `--version` and the mount's options tell a newcomer."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from pathlib import Path

import pytest

from artfs.cli import build_parser, main
from artfs.fs.mount import mounted_source


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"artfs {importlib.metadata.version('artfs')}"


def test_every_option_and_argument_of_every_command_has_help() -> None:
    missing = [f"{name} {a.dest}" for name, p in subcommands().items() for a in p._actions
               if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []


def test_help_says_what_a_user_needs_not_internals() -> None:
    top = build_parser().format_help()
    assert "artfs.fs" not in top
    commands = subcommands()
    assert "@staging" in commands["mount"].format_help() and "@staging" in top
    assert "read-only directory tree" not in top
    for name in ("put", "commit"):
        alias = next(a for a in commands[name]._actions if a.dest == "alias")
        assert "repeat" in alias.help, name
    assert "'uncategorized'" in commands["ls"].format_help()  # the --project default
    assert "ARTFS_ENTITY" in top and "login" in top


def test_mount_options_place_cache_state_and_log(commit_tree, mount, tmp_path: Path) -> None:
    commit_tree("ds", {"a.txt": b"alpha"})
    cache, state, log = tmp_path / "c", tmp_path / "s", tmp_path / "logs" / "m.log"
    m = mount("--cache-dir", str(cache), "--state-dir", str(state), "--log-file", str(log))
    assert m.log == log and "serving" in log.read_text()
    assert (m.artifact("ds") / "v0" / "a.txt").read_bytes() == b"alpha"
    assert any((state / "mounts").glob("*.pid"))  # the mount's pid file
    assert (cache / "fs-work").is_dir() and (cache / "fs-index").exists()
    assert not (Path(os.environ["ARTFS_CACHE_DIR"]) / "fs-work").exists()


def test_mount_source_is_the_registry_url(commit_tree, mount) -> None:
    commit_tree("ds", {"a.txt": b"alpha"})
    m = mount()
    assert mounted_source(m.root) == ("fuse.artfs", os.environ["ARTFS_REGISTRY"])


def test_a_busy_mount_point_says_which_registry_it_serves(commit_tree, mount,
                                                          run_artfs) -> None:
    commit_tree("ds", {"a.txt": b"alpha"})
    m = mount()
    out = run_artfs("mount", str(m.root), "--registry", "/elsewhere", check=False)
    assert out.returncode == 1
    assert f"serving {os.environ['ARTFS_REGISTRY']}" in out.stderr
