"""gc beside a writer logging in a loop, and gc killed at random points (issue 20): real
processes racing, bounded by time with minimum counts of events."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artfs import keys
from artfs.cli import main
from artfs.gc import Collector
from artfs.names import ArtifactRef
from artfs.registry import Registry
from tests.test_gc import age_past_newest, check_live

E, P = "tester", "uncategorized"

#: Logs versions of `stream` for at least argv[1] seconds and 8 versions, until the file
#: argv[3] exists, appending each committed label to argv[2].
#: Every version has a unique small and (every third) large file, a file shared by all, and
#: the bytes of version i-3's small file — usually a version deleted by then, so its blob is
#: exactly what a gc collects while this log may be reusing it.
WRITER = r"""
import os, sys, time
import sdk
deadline = time.monotonic() + float(sys.argv[1])
out = open(sys.argv[2], "a")
i = 0
while time.monotonic() < deadline or i < 8 or not os.path.exists(sys.argv[3]):
    src = f"src{i}"
    os.makedirs(src)
    files = {"unique.txt": f"v{i} ".encode() * 50, "shared.txt": b"shared by all",
             "old.txt": f"v{max(i - 3, 0)} ".encode() * 50}
    if i % 3 == 0:
        files["big.bin"] = os.urandom(300 * 1024)
    art = sdk.Artifact("stream", type="dataset")
    for name, data in files.items():
        with open(f"{src}/{name}", "wb") as f:
            f.write(data)
        art.add_file(f"{src}/{name}", name=name)
    with sdk.init(job_type="writer") as run:
        run.log_artifact(art)
    art.wait()
    out.write(art.version + "\n")
    out.flush()
    i += 1
"""


def missing_objects(url: str) -> list[str]:
    """Objects some live version needs that the store lacks (an empty list: all whole)."""
    reg = Registry(url)
    try:
        present = set(reg.store.list(keys.ENTITIES))
        missing = []
        for project in reg.projects(E):
            for name in reg.artifacts(E, project):
                for n in reg.versions(E, project, name):
                    v = reg.version(ArtifactRef(E, project, name, f"v{n}"), with_aliases=False)
                    mkey = keys.manifest(E, v.digest)
                    if mkey not in present:
                        missing.append(mkey)
                        continue
                    for e in reg.catalog.manifest(v).values():
                        key = keys.pack(E, e.pack.pack) if e.pack else keys.blob(E, e.digest)
                        if e.ref is None and key not in present:
                            missing.append(f"{v.qualified}: {e.path} ({key})")
        return missing
    finally:
        reg.close()


@pytest.mark.slow
def test_writer_loses_nothing_while_gc_runs_repeatedly(registry_url: str,
                                                       tmp_path: Path) -> None:
    log = tmp_path / "committed.txt"
    log.touch()
    work = tmp_path / "writer"
    work.mkdir()
    stop = tmp_path / "stop"
    errors = tmp_path / "writer.err"
    with open(errors, "wb") as err_file:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, "30", str(log), str(stop)],
                                  cwd=work, stderr=err_file)
    began = time.monotonic()
    reg = Registry(registry_url)
    gcs = 0
    deleted: set[int] = set()
    try:
        while writer.poll() is None:
            if gcs >= 5:
                stop.touch()  # the writer also runs its 30 s and 8 versions
            if time.monotonic() - began > 600:
                pytest.fail("the writer did not stop in 10 min (stuck waiting for a gc?)")
            live = reg.versions(E, P, "stream")
            for n in live[:-3]:  # old ones go; the writer reuses their bytes three later
                reg.delete_version(ArtifactRef(E, P, "stream", f"v{n}"))
                deleted.add(n)
            Collector(reg.store, reg.catalog, grace=0).run([E])
            gcs += 1
        writer.wait(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, errors.read_text()
    committed = {int(line[1:]) for line in log.read_text().split()}
    assert len(committed) >= 8 and gcs >= 5, (len(committed), gcs)
    assert set(reg.versions(E, P, "stream")) == committed - deleted
    assert deleted, "no version was old enough to delete: the race was not exercised"
    reg.close()
    assert missing_objects(registry_url) == []
    age_past_newest(registry_url)
    assert main(["gc", "--grace", "0"]) == 0
    assert missing_objects(registry_url) == []
    check_live([f"stream:v{n}" for n in sorted(committed - deleted)][-2:], tmp_path)


@pytest.mark.slow
def test_gc_killed_at_random_points_then_rerun(
        registry_url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / "unique.txt").write_bytes(f"v{i} ".encode() * 40)
        (src / "big.bin").write_bytes(os.urandom(300 * 1024))
        (src / f"extra{i}.txt").write_bytes(os.urandom(1000))
        assert main(["put", str(src), "--name", "ds", "--type", "dataset", "-q"]) == 0
    for n in (0, 2, 3):
        assert main(["delete", f"ds:v{n}"]) == 0
    age_past_newest(registry_url)
    rng = random.Random(20)
    env = {**os.environ, "ARTFS_REGISTRY": registry_url}
    gc = [sys.executable, "-m", "artfs.cli", "gc", "--grace", "0"]
    # How long a whole gc process takes here and now (a dry run does all but the deletes):
    # the kills land at random points inside that span, start-up included.
    began = time.monotonic()
    subprocess.run([*gc, "--dry-run"], env=env, check=True, stdout=subprocess.DEVNULL)
    span = time.monotonic() - began
    kills = attempts = 0
    while kills < 10:
        attempts += 1
        assert attempts <= 40, f"only {kills} of 40 gcs were still running when killed"
        proc = subprocess.Popen(gc, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.1, 0.9) * span)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
        assert missing_objects(registry_url) == []
    reg = Registry(registry_url)
    try:
        live = reg.versions(E, P, "ds")
        assert main(["gc", "--grace", "0"]) == 0
        # The last run took over from whichever killed gc held the state, and let it go.
        assert json.loads(reg.store.get(keys.gc_state(E)))["running"] is None
    finally:
        reg.close()
    assert missing_objects(registry_url) == []
    assert live == [1, 4, 5]
    check_live([f"ds:v{n}" for n in live], tmp_path)
    # Everything a deleted version alone held is gone: the blobs left are the live ones.
    reg = Registry(registry_url)
    try:
        needed = {e.digest for n in live for e in reg.catalog.manifest(
            reg.version(ArtifactRef(E, P, "ds", f"v{n}"))).values()}
        stored = {k.rsplit("/", 1)[-1] for k in reg.store.list(keys.blobs(E))}
        assert stored <= needed
        assert len(list(reg.store.list(keys.manifests(E)))) == len(live)
    finally:
        reg.close()
