"""Writers and commits racing on one staging folder: real `cp` processes, real commits.

The guarantee under test (SEMANTICS.md, *Committing*): a commit holds, for each path, either
bytes some writer finished (closed) or the base version's file, never a partly written one;
and no writer fails because a commit runs.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from artfs.names import ArtifactRef
from artfs.registry import Registry
from tests.mount_fixtures import ENTITY, PROJECT, artfs, tree_of

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


#: A writer that always has a file open: it opens the next before closing the one before, so
#: at every moment some file was opened after any commit began. Stops when STOP appears.
OVERLAPPING_WRITER = r"""
import os, sys, time
stage, data = sys.argv[1], open(sys.argv[2], "rb").read()
prev, i = None, 0
while not os.path.exists(os.path.join(stage, "STOP")):
    f = open(os.path.join(stage, "stream", f"s{i}.bin"), "wb")
    f.write(data[: len(data) // 2])
    f.flush()
    if prev is not None:
        prev.close()
    f.write(data[len(data) // 2:])
    prev, i = f, i + 1
    time.sleep(0.02)
prev.close()
print(i)
"""


@local_only
def test_a_stream_of_writers_does_not_starve_a_commit(registry_url, log_files, mount,
                                                     tmp_path: Path) -> None:
    """Files opened after the commit began are not waited for: it commits what was closed."""
    log_files("stream", {"a.txt": b"a"})
    m = mount()
    stage = m.artifact("stream") / "@staging"
    (stage / "stream").mkdir()
    data = os.urandom(200_000)
    (tmp_path / "data").write_bytes(data)
    writer = subprocess.Popen([sys.executable, "-c", OVERLAPPING_WRITER, str(stage),
                               str(tmp_path / "data")], stdout=subprocess.PIPE, text=True)
    try:
        while not (stage / "stream" / "s3.bin").exists():  # a few files closed already
            assert writer.poll() is None
            time.sleep(0.01)
        done = artfs("commit", str(stage), "--wait", "3")
        assert "committed" in done.stdout
    finally:
        (stage / "STOP").write_bytes(b"")
        written = int(writer.communicate(timeout=60)[0])
    v1 = _versions_contents(registry_url, "stream")[1]
    streamed = {p: d for p, d in v1.items() if p.startswith("stream/")}
    assert len(streamed) >= 3 and set(streamed.values()) == {data}  # only whole files
    assert len(streamed) < written  # the files written afterwards wait for the next commit
    artfs("commit", str(stage))
    assert len(_versions_contents(registry_url, "stream")[2]) == written + 2  # + a.txt, STOP


class _Model:
    """What a staging folder must show, operation by operation, with the bytes of every file
    some writer finished: whatever a commit takes must be one of them."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.names: dict[str, int] = {}  # path -> node
        self.published: dict[int, bytes] = {}  # node -> last finished bytes
        self.finished: set[bytes] = set(files.values())
        for i, (path, data) in enumerate(files.items()):
            self.names[path], self.published[i] = i, data
        self.next = len(files)

    def new_node(self, path: str) -> int:
        node = self.names[path] = self.next
        self.next += 1
        return node

    def finish(self, node: int, data: bytes) -> None:
        self.published[node] = data
        self.finished.add(data)

    def tree(self) -> dict[str, bytes]:
        return {p: self.published[n] for p, n in self.names.items()}


@pytest.mark.slow
@local_only
def test_seeded_interleaving_of_writers_and_commits(registry_url, log_files, mount) -> None:
    """A fixed-seed sequence of open/write/truncate/rename/unlink/close on several files at
    once while `artfs commit` runs in a loop beside it: the folder always reads as the model
    says, every file of every version is bytes some writer finished, and the last commit
    equals the model."""
    rng = random.Random(11)
    names = [f"f{i}.bin" for i in range(6)]
    base = {n: rng.randbytes(rng.randint(0, 50_000)) for n in names[:3]}
    log_files("mix", base)
    m = mount()
    stage = m.artifact("mix") / "@staging"
    model = _Model(base)
    open_fds: dict[str, tuple[int, int, bytearray]] = {}  # path -> (fd, node, bytes so far)
    stop = threading.Event()
    failures: list[str] = []
    committed: list[str] = []

    def commit_loop() -> None:
        while not stop.is_set():
            r = artfs("commit", str(stage), "--wait", "60", check=False)
            (committed if r.returncode == 0 else failures).append(r.stdout + r.stderr)

    committer = threading.Thread(target=commit_loop)
    committer.start()
    try:
        step = 0
        # The operations are the same in every run; how they interleave with commits is not.
        # At least 1,500 of them, and on until eight commits ran beside them.
        while step < 1500 or (len(committed) < 8 and step < 100_000):
            step += 1
            path = rng.choice(names)
            op = rng.choice(["open", "open", "write", "write", "write", "truncate", "close",
                             "close", "rename", "unlink"])
            if op == "open" and path not in open_fds:
                trunc = rng.random() < 0.5 or path not in model.names
                flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if trunc else 0)
                fd = os.open(stage / path, flags)
                node = model.names.get(path)
                if node is None:
                    node = model.new_node(path)
                    model.published[node] = b""
                start = b"" if trunc else model.published[node]
                open_fds[path] = (fd, node, bytearray(start))
            elif op == "write" and path in open_fds:
                fd, _, data = open_fds[path]
                off, chunk = rng.randint(0, len(data) + 1000), rng.randbytes(rng.randint(1, 9000))
                os.pwrite(fd, chunk, off)
                data.extend(b"\0" * max(0, off - len(data)))
                data[off:off + len(chunk)] = chunk
            elif op == "truncate" and path in model.names:
                size = rng.randint(0, 60_000)
                if path in open_fds:
                    fd, _, data = open_fds[path]
                    os.ftruncate(fd, size)
                    del data[size:]
                    data.extend(b"\0" * (size - len(data)))
                elif not any(n == model.names[path] for _, n, _ in open_fds.values()):
                    os.truncate(stage / path, size)
                    node = model.names[path]
                    old = model.published[node]
                    model.finish(node, old[:size] + b"\0" * (size - len(old)))
            elif op == "close" and path in open_fds:
                fd, node, data = open_fds.pop(path)
                os.close(fd)
                model.finish(node, bytes(data))
                if model.names.get(path) == node:
                    assert (stage / path).read_bytes() == bytes(data), step
            elif op == "rename" and path in model.names:
                other = rng.choice(names)
                if other != path and other not in open_fds and path not in open_fds:
                    os.rename(stage / path, stage / other)
                    model.names[other] = model.names.pop(path)
            elif op == "unlink" and path in model.names and path not in open_fds:
                os.unlink(stage / path)
                del model.names[path]
        for fd, node, data in open_fds.values():
            os.close(fd)
            model.finish(node, bytes(data))
    finally:
        stop.set()
        committer.join(timeout=120)
    assert failures == []
    want = model.tree()
    assert tree_of(stage) == want
    artfs("commit", str(stage))
    versions = _versions_contents(registry_url, "mix")
    assert len(committed) >= 8 and len(versions) > 3  # commits ran between the operations
    for number, files in versions.items():
        for path, data in files.items():
            assert data in model.finished, (number, path, len(data))
    assert versions[max(versions)] == want
