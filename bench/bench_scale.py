"""Issue 15: versions of many small files — does a small change cost what it changes?

One artifact of N files of 4 bytes in F folders (`--quick`: 10,000 in 100; full: 1,000,000 in
1,000 as the issue asks; `ARTFS_BENCH_SCALE=100000` picks a middle size of 100,000 in 100, the
full size's 1,000 files per folder)
next to one of 1,000 files, both logged by `artfs put` to a local registry, then a mount.
Every row compares against a baseline measured in the same run, the issue's targets beside:

- commit of a one-file change through `@staging`, big artifact vs the 1,000-file one, and the
  registry bytes that commit added (everything, blob included) vs the same on the small one;
- the first `ls` of a staging folder on a fresh mount, big vs 1,000-file artifact;
- `artfs put` of the unchanged tree vs `find -printf '%s %T@'` over it, and the first
  `artfs put` (fresh registry and hash cache) vs `cp -r` of the tree to the same disk;
- `find` over the version through a fresh mount vs `find` over the tree on disk (warm);
- peak RSS (VmHWM) of the mount after serving that `find`, the listings and both commits, vs
  the mount just started; peak RSS of the first `artfs put` (wait4's rusage) vs that of the
  1,000-file put;
- registry bytes of the first version other than blobs (manifest, records) vs the bytes of a
  `find -printf '%P %s %T@'` listing of the tree (names, sizes and times, the least a version's
  metadata says).

The absolute targets (`<= 64 KiB`, `<= 512 MiB`, 40 MB of metadata per million files) are the
issue's; the metadata one is scaled to N. Medians of several runs; each mount row gets a fresh
mount per run, so "first" means first for that mount process. Runs alternate artfs and the
baseline so a load spike from other jobs hits both; the load average is printed with the rows.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .bench_mount import bench_env, mounted
from .common import Row, make_small_files, remove, workdir

SMALL = 1_000
MIB = 1024**2


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(files, folders, runs); below the full size, 1,000 files per folder as at full size."""
    if quick:
        return 10_000, 100, 3
    n = int(os.environ.get("ARTFS_BENCH_SCALE", "1000000"))
    return n, max(1, n // 1000) if n < 1_000_000 else 1_000, 3


def _env(w: Path, tag: str) -> dict[str, str]:
    """An environment with its own registry, cache and state (so its own hash cache)."""
    return {**bench_env(w), "ARTFS_REGISTRY": str(w / f"reg-{tag}"),
            "ARTFS_CACHE_DIR": str(w / f"cache-{tag}"), "ARTFS_STATE_DIR": str(w / f"state-{tag}"),
            "ARTFS_PROJECT": "bench"}


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of `cmd`, from its own rusage (wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return elapsed, usage.ru_maxrss * 1024


def _artfs(env: dict[str, str], *args: str) -> tuple[float, int]:
    return _timed([sys.executable, "-m", "artfs.cli", *args], env)


def _put(env: dict[str, str], tree: Path, name: str) -> tuple[float, int]:
    return _artfs(env, "put", str(tree), "--name", name, "--type", "dataset", "--quiet")


def _tree_bytes(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not skip(d / n)]
        total += sum(os.lstat(d / f).st_size for f in filenames)
    return total


def _metadata_bytes(reg: Path) -> int:
    """Registry bytes other than file contents (blobs, packs)."""
    return _tree_bytes(reg, lambda p: p.name in ("blobs", "packs") and p.parent.parent.name
                       == "entities")


def _hwm(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _find(path: Path, fmt: str = "%s %T@\n") -> float:
    return _timed(["find", str(path), "-printf", fmt])[0]


def _ls(path: Path) -> float:
    return _timed(["ls", str(path)])[0]


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(quick: bool) -> list[Row]:
    n, folders, runs = _sizes(quick)
    label = f"{n:,} files"
    print(f"bench_scale: {label} in {folders:,} folders, load average "
          f"{os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    with workdir("scale") as w:
        tree = make_small_files(w / "tree", n, 4, per_dir=max(1, n // folders))
        small = make_small_files(w / "small", SMALL, 4, per_dir=100)
        rows = _put_rows(w, tree, small, n, runs, label)
        env = _env(w, "main")
        rows += _unchanged_put_rows(env, tree, runs, label)
        rows += _mount_rows(w, env, tree, n, runs, label)
    load = os.getloadavg()[0]
    for r in rows:
        r.note = f"{r.note}; load {load:.1f}" if r.note else f"load {load:.1f}"
    return rows


def _put_rows(w: Path, tree: Path, small: Path, n: int, runs: int, label: str) -> list[Row]:
    """First `artfs put` into a fresh registry per run (the last run's registry is kept as
    "main" for the other rows) against `cp -r`; its RSS and stored metadata."""
    puts, copies, rss, small_rss, meta = [], [], [], [], []
    for i in range(runs):
        tag = "main" if i == runs - 1 else f"put{i}"
        env = _env(w, tag)
        _artfs(env, "init", env["ARTFS_REGISTRY"])
        copy = w / "cp"
        t, peak = _put(env, tree, "big")
        puts.append(t)
        rss.append(peak)
        copies.append(_timed(["cp", "-r", str(tree), str(copy)])[0])
        remove(copy)
        small_rss.append(_put(env, small, "small")[1])
        meta.append(_metadata_bytes(Path(env["ARTFS_REGISTRY"])))
        if tag != "main":
            remove(*(Path(env[k]) for k in ("ARTFS_REGISTRY", "ARTFS_CACHE_DIR",
                                            "ARTFS_STATE_DIR")))
    listing = len(subprocess.run(["find", str(tree), "-printf", "%P %s %T@\n"], check=True,
                                 capture_output=True).stdout)
    meta_target = 40 * n / 1_000_000
    return [
        Row(f"scale: first artfs put, {label}", _med(puts), "cp -r of the tree", _med(copies),
            "<= 2x"),
        Row(f"scale: peak RSS of first artfs put, {label} (MiB)", _med(rss) / MIB,
            f"same, {SMALL:,}-file put", _med(small_rss) / MIB, "<= 512 MiB", unit="MiB"),
        Row(f"scale: stored metadata of the first version, {label} (MB)", _med(meta) / 1e6,
            "find -printf '%P %s %T@' text", listing / 1e6, f"<= {meta_target:g} MB",
            unit="MB", note="first version + the 1,000-file one; target 40 MB per 1 M files"),
    ]


def _unchanged_put_rows(env: dict[str, str], tree: Path, runs: int, label: str) -> list[Row]:
    puts, finds = [], []
    for _ in range(runs):
        puts.append(_put(env, tree, "big")[0])
        finds.append(_find(tree))
    return [Row(f"scale: artfs put of the unchanged tree, {label}", _med(puts),
                "find -printf '%s %T@'", _med(finds), "<= 3x")]


def _mount_rows(w: Path, env: dict[str, str], tree: Path, n: int, runs: int,
                label: str) -> list[Row]:
    """Per run a fresh mount: `find` over the version, the first `ls` of each staging folder,
    then a one-file commit to each artifact; the mount's peak RSS after all that."""
    reg = Path(env["ARTFS_REGISTRY"])
    finds, disk_finds, ls_big, ls_small = [], [], [], []
    c_big, c_small, b_big, b_small, hwm, idle = [], [], [], [], [], []
    for i in range(runs):
        with mounted(w, env) as (root, pid):
            idle.append(_hwm(pid, "VmRSS"))
            finds.append(_find(root / "big" / "latest"))
            disk_finds.append(_find(tree))
            ls_small.append(_ls(root / "small" / "@staging"))
            ls_big.append(_ls(root / "big" / "@staging"))
            for name, times, grown in (("small", c_small, b_small), ("big", c_big, b_big)):
                new = root / name / "@staging" / "d0000" / f"new{i}.bin"
                new.write_bytes(f"{name} change {i} {time.time_ns()}".encode())
                before = _tree_bytes(reg)
                times.append(_artfs(env, "commit", str(root / name), "--quiet")[0])
                grown.append(_tree_bytes(reg) - before)
            hwm.append(_hwm(pid))
    kib = 1024
    return [
        Row(f"scale: commit of a 1-file change via staging, {label}", _med(c_big),
            f"same on a {SMALL:,}-file artifact", _med(c_small), "<= 3x"),
        Row(f"scale: new registry bytes of that commit, {label} (KiB)", _med(b_big) / kib,
            f"same on a {SMALL:,}-file artifact", _med(b_small) / kib, "<= 64 KiB",
            unit="KiB"),
        Row(f"scale: first ls of a staging folder, {label}", _med(ls_big),
            f"same on a {SMALL:,}-file artifact", _med(ls_small), "<= 3x",
            note="fresh mount"),
        Row(f"scale: find over the version through the mount, {label}", _med(finds),
            "find over the tree on disk (warm)", _med(disk_finds), "<= 10x",
            note="fresh mount"),
        Row(f"scale: peak RSS of the mount (find, ls, commits), {label} (MiB)",
            _med(hwm) / MIB, "the mount just started (VmRSS)", _med(idle) / MIB,
            "<= 512 MiB", unit="MiB"),
    ]

