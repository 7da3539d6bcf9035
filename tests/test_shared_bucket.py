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
import time
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
    # B fetched the new bytes from the bucket into its own cache (A's cache keeps the copy
    # add_file captured, but it is another machine's folder).
    digest = hashlib.sha256(b"second").hexdigest()
    assert (tmp_path / "b" / "cache" / "blobs" / digest[:2] / digest).read_bytes() == b"second"


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


#: How long the soak's writers keep logging. The acceptance asks for at least 30 s of racing.
SOAK_S = 30.0
#: Writers of the soak, alternating between two machines.
SOAK_WRITERS = 4

#: Logs versions of one artifact until a deadline, printing what each log got. Every third log
#: holds contents the other writers log too (`common-<k>`), so identical logs race as well.
SOAK_WRITER = """
import json, pathlib, sys, time
import sdk
name, wid, deadline, work = sys.argv[1], sys.argv[2], float(sys.argv[3]), pathlib.Path(sys.argv[4])
i = 0
while time.time() < deadline:
    text = f"common-{i // 3}" if i % 3 == 2 else f"{wid}-{i}"
    path = work / f"{wid}-{i}.txt"
    path.write_text(text)
    art = sdk.Artifact(name, type="dataset")
    art.add_file(str(path), name="value.txt")
    with sdk.init(job_type="soak") as run:
        run.log_artifact(art)
    print(json.dumps({"version": art.version, "text": text}), flush=True)
    i += 1
"""


@pytest.mark.slow
def test_soak_writers_on_two_machines_racing_for_30_s_keep_every_version_whole(
        shared_url: str, tmp_path: Path) -> None:
    deadline = time.time() + SOAK_S
    writers = []
    for i in range(SOAK_WRITERS):
        work = tmp_path / f"w{i}"
        work.mkdir()
        writers.append(start(SOAK_WRITER, machine_env(tmp_path, "ab"[i % 2], shared_url),
                             "soak", f"writer{i}", str(deadline), str(work)))
    outputs = []
    for w in writers:
        out, _ = w.communicate(timeout=SOAK_S + 300)
        assert w.returncode == 0, f"a writer failed:\n{out}"
        outputs.append([json.loads(line) for line in out.splitlines()])
    assert all(len(o) >= 2 for o in outputs), "a writer logged less than twice in the soak"
    results = [r for o in outputs for r in o]
    version_of: dict[str, set[str]] = {}
    text_of: dict[str, set[str]] = {}
    for r in results:
        version_of.setdefault(r["text"], set()).add(r["version"])
        text_of.setdefault(r["version"], set()).add(r["text"])
    # Identical contents got one version, distinct contents distinct versions...
    assert all(len(v) == 1 for v in version_of.values()), version_of
    assert all(len(t) == 1 for t in text_of.values()), text_of
    assert any(sum(r["text"] == text for r in results) > 1 for text in version_of), \
        "no two writers logged the same contents: the deduplication race never ran"
    # ...numbered from v0 without a gap, and each holds exactly what its writer logged.
    count = len(text_of)
    assert sorted(text_of, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(count)]
    specs = [f"v{i}" for i in range(count)] + ["latest"]
    found = read_versions(machine_env(tmp_path, "c", shared_url), "soak", specs)
    expected = [{"version": f"v{i}", "text": next(iter(text_of[f"v{i}"]))} for i in range(count)]
    assert found[:-1] == expected
    # `latest` may name an older version: logging known contents moves it there (SPEC §2).
    assert found[-1] in expected
    print(f"\nsoak: {len(results)} logs by {SOAK_WRITERS} writers, {count} versions")
