"""Two machines sharing one bucket, simulated as separate processes with separate caches.

Each "machine" is a set of processes with its own ARTFS_CACHE_DIR and ARTFS_STATE_DIR; they
share only the bucket (the server endpoints come from the environment tests/servers.py sets).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from artfs.cli import main
from artfs.registry import init_registry

#: A long-lived reader: for each line on stdin, resolve `name:latest` (or `name:vN`) again with
#: the same Api object (no restart) and print what it holds.
READER = """
import json, sys, tempfile
import sdk
api = sdk.Api()
print("ready", flush=True)
for line in sys.stdin:
    spec = line.strip()
    art = api.artifact(spec if ":" in spec else spec + ":latest")
    dest = art.download(tempfile.mkdtemp())
    print(json.dumps({"version": art.version,
                      "text": open(dest + "/value.txt").read()}), flush=True)
"""

#: A writer: prepare, say so, wait for the start signal, then log one version.
WRITER = """
import json, sys
import sdk
name, text, path = sys.argv[1:4]
open(path, "w").write(text)
run = sdk.init(job_type="write")
art = sdk.Artifact(name, type="dataset")
art.add_file(path, name="value.txt")
print("ready", flush=True)
sys.stdin.readline()
run.log_artifact(art)
run.finish()
print(json.dumps({"version": art.version, "text": text}), flush=True)
"""


def machine_env(root: Path, name: str, registry: str) -> dict[str, str]:
    return {
        **os.environ,
        "ARTFS_REGISTRY": registry,
        "ARTFS_CACHE_DIR": str(root / name / "cache"),
        "ARTFS_STATE_DIR": str(root / name / "state"),
    }


def start(script: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def expect_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"process exited with {proc.wait()} before answering"
    return line.strip()


def write(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def log_one(env: dict[str, str], tmp: Path, name: str, text: str) -> dict[str, str]:
    """Log one version from its own process (a writer run to completion)."""
    proc = start(WRITER, env, name, text, str(tmp / f"{name}-{text}.txt"))
    assert expect_line(proc) == "ready"
    write(proc, "go")
    result = json.loads(expect_line(proc))
    assert proc.wait(timeout=60) == 0
    return result


@pytest.fixture(params=["s3", "gcs"])
def shared_url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]) -> str:
    url = make_store_url(request.param)
    init_registry(url)
    return url


def test_reader_sees_a_new_alias_from_another_machine_without_restarting(
    shared_url: str, tmp_path: Path
) -> None:
    a = machine_env(tmp_path, "a", shared_url)
    b = machine_env(tmp_path, "b", shared_url)
    assert log_one(a, tmp_path, "model", "first")["version"] == "v0"
    reader = start(READER, b)
    try:
        assert expect_line(reader) == "ready"
        write(reader, "model")
        assert json.loads(expect_line(reader)) == {"version": "v0", "text": "first"}
        assert log_one(a, tmp_path, "model", "second")["version"] == "v1"
        write(reader, "model")
        assert json.loads(expect_line(reader)) == {"version": "v1", "text": "second"}
    finally:
        assert reader.stdin is not None
        reader.stdin.close()
        assert reader.wait(timeout=60) == 0
    # B fetched the new bytes into its own cache; A's cache was never involved.
    digest = hashlib.sha256(b"second").hexdigest()
    assert (tmp_path / "b" / "cache" / "blobs" / digest[:2] / digest).read_bytes() == b"second"
    assert not (tmp_path / "a" / "cache" / "blobs" / digest[:2] / digest).exists()


def test_eight_writers_on_two_machines_get_distinct_versions_holding_their_bytes(
        shared_url: str, tmp_path: Path) -> None:
    envs = [machine_env(tmp_path, m, shared_url) for m in ("a", "b")]
    writers = [start(WRITER, envs[i % 2], "race", f"writer-{i}", str(tmp_path / f"w{i}.txt"))
               for i in range(8)]
    try:
        for w in writers:
            assert expect_line(w) == "ready"
        for w in writers:  # as close to simultaneous as separate processes get
            write(w, "go")
        results = [json.loads(expect_line(w)) for w in writers]
    finally:
        codes = [w.wait(timeout=120) for w in writers]
    assert codes == [0] * 8
    versions = sorted(int(r["version"][1:]) for r in results)
    assert versions == list(range(8)), f"lost or doubled versions: {results}"
    # Each version holds the bytes of the writer that got its number, read from a third cache.
    assert read_versions(machine_env(tmp_path, "c", shared_url), "race",
                         [f"v{i}" for i in range(8)] + ["latest"]) == \
        [{"version": r["version"], "text": r["text"]}
         for r in sorted(results, key=lambda r: int(r["version"][1:]))] + \
        [{"version": "v7", "text": next(r["text"] for r in results if r["version"] == "v7")}]


def read_versions(env: dict[str, str], name: str, specs: list[str]) -> list[dict[str, str]]:
    """What one reader process finds at `name:spec` for each spec, in order."""
    reader = start(READER, env)
    try:
        assert expect_line(reader) == "ready"
        found = []
        for spec in specs:
            write(reader, f"{name}:{spec}")
            found.append(json.loads(expect_line(reader)))
    finally:
        assert reader.stdin is not None
        reader.stdin.close()
        assert reader.wait(timeout=60) == 0
    return found


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_registry_option_selects_a_bucket_and_info_shows_it(
    kind: str, make_store_url: Callable[[str], str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = make_store_url(kind)
    assert main(["init", url]) == 0
    (tmp_path / "f.txt").write_text("x")
    # ARTFS_REGISTRY (set by isolated_env) names a local folder: the option must win.
    assert main(["put", str(tmp_path / "f.txt"), "--name", "ds", "--type", "dataset",
                 "--registry", url]) == 0
    capsys.readouterr()
    assert main(["--registry", url, "info", "ds", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["registry"] == url and info["version"] == "v0"
    assert main(["info", "ds", "--registry", url]) == 0
    assert f"registry:    {url}" in capsys.readouterr().out
    assert not Path(os.environ["ARTFS_REGISTRY"]).exists()
