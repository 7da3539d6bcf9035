"""Issue 17: what attributing opens to `artfs run` runs costs a cold read through the mount.

Every row reads the 10,000 small files of one version through a fresh mount (so nothing is in
the kernel's page cache for it; the version index is kept) with one Python reader, and compares
with the same read through a mount whose attribution is switched off (`Attribution.opened`
replaced by a no-op in the mount process before it forks: the mount as it was before issue 17).
Runs of the two are interleaved, medians of several.

- no run announced: what every user who never types `artfs run` pays (target ≤ 1.1×);
- inside `artfs run`: every open walks to the run; the one version is recorded once;
- beside a run: another run is announced, the reader is not in it (each open walks its
  ancestry once, then reads one /proc file).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from artfs.manifest import Entry, Manifest
from artfs.registry import Registry

from .bench_mount import bench_env
from .common import Row, workdir

#: Reads every file below argv[1] and prints the seconds it took (timed inside, so the
#: start-up of `artfs run` around it is not counted).
READER = """
import os, sys, time
t0 = time.perf_counter()
for d, _, names in os.walk(sys.argv[1]):
    for n in names:
        with open(os.path.join(d, n), "rb") as f:
            f.read()
print(time.perf_counter() - t0)
"""
#: `artfs mount` with attribution off; the patch survives the fork into the mount process.
MOUNT_UNATTRIBUTED = (
    "import sys\n"
    "from artfs.fs import attribution\n"
    "async def opened(self, pid, view):\n"
    "    return None\n"
    "attribution.Attribution.opened = opened\n"
    "from artfs.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n")


def _commit_tree(w: Path, files: int, per_dir: int) -> None:
    reg = Registry(str(w / "reg"), cache_dir=w / "cache", create=True)
    digests = [reg.put_blob("bench", os.urandom(4096)) for _ in range(64)]
    manifest = Manifest(Entry(f"d{i // per_dir:04d}/f{i:06d}.bin", 4096, digests[i % 64])
                        for i in range(files))
    reg.commit("bench", "bench", "small", "dataset", manifest)
    reg.close()


def _mount(w: Path, env: dict[str, str], attributed: bool) -> Path:
    mnt = w / "mnt"
    mnt.mkdir(exist_ok=True)
    head = ["-m", "artfs.cli"] if attributed else ["-c", MOUNT_UNATTRIBUTED]
    subprocess.run([sys.executable, *head, "mount", str(mnt)], env=env, check=True,
                   capture_output=True)
    return mnt


def _unmount(mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True, capture_output=True)
    for _ in range(200):
        if not os.path.ismount(mnt):
            return
        time.sleep(0.05)


def _read(w: Path, env: dict[str, str], attributed: bool, how: str) -> float:
    mnt = _mount(w, env, attributed)
    version = mnt / "bench" / "bench" / "small" / "latest"
    reader = [sys.executable, "-c", READER, str(version)]
    beside = None
    try:
        if how == "inside":
            reader = [sys.executable, "-m", "artfs.cli", "run", "--project", "bench",
                      "--job-type", "bench", "--", *reader]
        elif how == "beside":
            beside = subprocess.Popen([sys.executable, "-m", "artfs.cli", "run", "--project",
                                       "bench", "--", "sleep", "600"], env=env)
            folder = next((w / "state" / "runs").glob("*"), None)
            while folder is None or not any(folder.glob("*.json")):
                time.sleep(0.05)
                folder = next((w / "state" / "runs").glob("*"), None)
        out = subprocess.run(reader, env=env, check=True, capture_output=True, text=True)
        return float(out.stdout.split()[-1])
    finally:
        if beside is not None:
            beside.terminate()
            beside.wait()
        _unmount(mnt)


def run(quick: bool) -> list[Row]:
    runs = 3 if quick else 5
    files = 10_000
    cases = (("alone", "<= 1.1", "no run announced"),
             ("inside", "", "inside `artfs run`"),
             ("beside", "", "another run announced, reader outside it"))
    with workdir("lineage") as w:
        env = bench_env(w)
        _commit_tree(w, files, 100)
        _read(w, env, True, "alone")  # builds the version index once, as a mount keeps it
        base: list[float] = []
        ours: dict[str, list[float]] = {how: [] for how, _, _ in cases}
        for _ in range(runs):  # interleaved: the load of a shared machine hits all alike
            base.append(_read(w, env, False, "alone"))
            for how in ours:
                ours[how].append(_read(w, env, True, how))
    return [Row(f"lineage: cold read of {files // 1000}k × 4 KiB files, {label}",
                statistics.median(ours[how]), "same read, attribution off",
                statistics.median(base), target,
                note="fresh mount each run; reader times itself")
            for how, target, label in cases]
