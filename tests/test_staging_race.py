"""Writers and commits racing on one staging folder: real `cp` processes, real commits.

The guarantee under test (SEMANTICS.md, *Committing*): a commit holds, for each path, either
bytes some writer finished (closed) or the base version's file, never a partly written one;
and no writer fails because a commit runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artfs.names import ArtifactRef
from artfs.registry import Registry
from tests.mount_fixtures import ENTITY, PROJECT, artfs

local_only = pytest.mark.parametrize("registry_url", ["local"], indirect=True)

#: Each loop rewrites these names over and over.
NAMES = [f"race/{i}.bin" for i in range(20)]
#: How long the writers and the commit loop race (the issue asks for at least 30 s).
RACE_S = 32

#: One `cp` loop: copies SRC over every name in turn until the deadline, then prints how many
#: copies it made and how many failed (each failure's message goes to stderr).
CP_LOOP = r"""
end=$1; src=$2; dst=$3; n=0; failed=0
while [ "$(date +%s)" -lt "$end" ]; do
  for i in $(seq 0 19); do
    cp "$src" "$dst/race/$i.bin" || failed=$((failed + 1))
    n=$((n + 1))
  done
done
echo "$n $failed"
"""


def _versions_contents(registry_url: str, name: str) -> dict[int, dict[str, bytes]]:
    reg = Registry(registry_url)
    try:
        out = {}
        for number in reg.versions(ENTITY, PROJECT, name):
            v = reg.version(ArtifactRef(ENTITY, PROJECT, name, f"v{number}"))
            out[number] = {p: reg.blob_file(ENTITY, e.digest).read_bytes()
                           for p, e in reg.manifest(v).items()}
        return out
    finally:
        reg.close()


@pytest.mark.slow
@local_only
def test_cp_loops_and_commit_loop_never_commit_a_partial_file(registry_url, log_files, mount,
                                                              tmp_path: Path) -> None:
    """Two `cp` loops overwrite the same 20 names from two variants of different sizes while
    `artfs commit --wait 5` runs in a loop: no `cp` fails, no commit fails, and every file of
    every committed version equals one variant byte for byte."""
    big, small = os.urandom(1_800_000), os.urandom(300_001)
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "small").write_bytes(small)
    log_files("race", {p: big for p in NAMES})
    m = mount()
    stage = m.artifact("race") / "@staging"
    assert sorted(os.listdir(stage / "race")) == sorted(os.path.basename(p) for p in NAMES)
    end = int(time.time()) + RACE_S
    loops = [subprocess.Popen(["sh", "-c", CP_LOOP, "cp-loop", str(end), str(tmp_path / src),
                               str(stage)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for src in ("big", "small")]
    commits = refused = 0
    errors: list[str] = []
    while any(p.poll() is None for p in loops):
        r = subprocess.run([sys.executable, "-m", "artfs.cli", "commit", str(stage),
                            "--wait", "5"], capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            commits += "committed" in r.stdout
        else:
            refused += 1
            errors.append(r.stderr)
    results = [p.communicate(timeout=60) for p in loops]
    for out, err in results:
        copies, failed = map(int, out.split())
        assert copies > 0
        assert failed == 0, err[-2000:]
    assert refused == 0, errors[:3]
    assert commits >= 2  # the race was run against real commits
    artfs("commit", str(stage))  # what the writers left last is whole as well
    versions = _versions_contents(registry_url, "race")
    assert len(versions) >= commits + 1
    for number, files in versions.items():
        assert sorted(files) == sorted(NAMES), number
        for path, data in files.items():
            assert data in (big, small), (number, path, len(data))
