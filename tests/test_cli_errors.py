"""Expected conditions end in one line naming the problem, never a traceback; ARTFS_DEBUG=1
shows the traceback too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ARTFS = [sys.executable, "-m", "artfs.cli"]


def shell(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.fixture
def many_files(commit_tree) -> None:
    """More `artfs info` output than a pipe holds, so a reader that stops early is noticed."""
    commit_tree("ds", {f"dir/file-{i:05d}.bin": b"x" for i in range(1500)})
    commit_tree("other", {"a": b"a"})


@pytest.mark.parametrize("command, lines", [("ls tester/uncategorized", 0), ("info ds", 2)])
def test_a_reader_that_stops_early_is_not_a_traceback(many_files, command: str,
                                                      lines: int) -> None:
    cmd = " ".join(ARTFS)
    out = shell(f"{cmd} {command} | head -{lines}; exit ${{PIPESTATUS[0]}}")
    assert len(out.stdout.splitlines()) == lines
    assert out.stderr == ""
    assert out.returncode == 141  # as if killed by SIGPIPE, like other Unix tools


def test_artfs_debug_shows_the_traceback_of_a_broken_pipe(many_files) -> None:
    cmd = " ".join(ARTFS)
    out = shell(f"{cmd} info ds | head -1", ARTFS_DEBUG="1")
    assert "Traceback" in out.stderr and "BrokenPipeError" in out.stderr


@pytest.mark.parametrize("argv, culprit", [
    (["info", "bad name"], "'bad name'"),
    (["info", "ds:v9"], "ds:v9"),
    (["ls", "--registry", "/nonexistent/registry"], "artfs init"),
    (["get", "ds", "/proc/forbidden"], "/proc/forbidden"),
    (["put", "missing.txt", "--name", "ds", "--type", "dataset"], "missing.txt"),
    (["put", "/etc/hostname", "--name", "ds", "--type", "dataset", "--metadata", "{"],
     "--metadata"),
], ids=["bad-name", "missing-version", "missing-registry", "unwritable-dest",
        "missing-source", "bad-json"])
def test_expected_errors_are_one_line(commit_tree, argv: list[str], culprit: str) -> None:
    commit_tree("ds", {"a.txt": b"a"})
    out = subprocess.run([*ARTFS, *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode in (1, 2)
    assert out.stderr.startswith("artfs: error:") and culprit in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
    debug = subprocess.run([*ARTFS, *argv], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "ARTFS_DEBUG": "1"})
    assert "Traceback" in debug.stderr and culprit in debug.stderr


def test_an_unreachable_store_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_MAX_ATTEMPTS": "1"}
    out = subprocess.run([*ARTFS, "ls", "--registry", "s3://bucket/reg"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 1 and "s3://bucket/reg" in out.stderr
    assert "Traceback" not in out.stderr
