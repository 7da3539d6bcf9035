"""Timing helpers and the result table shared by every benchmark module."""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sdk
from artfs.registry import Registry


@dataclass
class Row:
    """One comparison: our median against a baseline median from the same run."""

    name: str
    ours: float
    baseline_name: str
    baseline: float
    target: str = ""
    unit: str = "s"
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")

    def meets_target(self) -> bool | None:
        """Whether the row meets its target; None where it states none. A target reads
        `<= 2.0` (the ratio) or `<= 2 s` / `<= 512 MiB` (our own value, in the row's unit);
        text after it is a comment. A row whose measurement failed (NaN) misses its target."""
        m = _TARGET.match(self.target)
        if m is None:
            return None
        op, limit, unit = m.group(1), float(m.group(2)), m.group(3)
        if unit not in (None, "x", self.unit):
            return False  # a target in another unit than the row's value cannot be met
        value = self.ratio if unit in (None, "x") else self.ours
        if math.isnan(value):
            return False
        return {"<=": value <= limit, "<": value < limit, ">=": value >= limit,
                ">": value > limit}[op]


#: `<op> <number>[x| s| KiB| MiB| MB]` at the start of a target; see `Row.meets_target`. The
#: number may not be cut short (`512 MiB` is never read as 51).
_TARGET = re.compile(
    r"^\s*(<=|<|>=|>)\s*([0-9]*\.?[0-9]+)(?![0-9.])\s*(x|s|KiB|MiB|MB)?(?!\s*[A-Za-z/])")


def failed_row(name: str, ours: float, baseline_name: str, target: str, error: object) -> Row:
    """A comparison whose baseline could not be measured: printed as failed, never dropped."""
    return Row(name, ours, baseline_name, float("nan"), target, note=f"FAILED: {error}")


def median_time(fn: Callable[[], object], runs: int, setup: Callable[[], object] | None = None
                ) -> float:
    """Median wall time of `fn` over `runs`, calling `setup` (untimed) before each."""
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def remove(*paths: Path) -> None:
    """Remove files or folders that may not exist."""
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def drop_caches() -> bool:
    """Drop the page cache (root only); False where the kernel refuses."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_chars() -> int:
    """Bytes this process has read through read-like syscalls (cache hits included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


@contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A scratch folder on the same disk as the repository (not tmpfs), removed afterwards."""
    base = Path(os.environ.get("ARTFS_BENCH_DIR", "/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f"artfs-bench-{name}-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_big_file(path: Path, size: int) -> Path:
    chunk = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
            chunk = chunk[1:] + chunk[:1]  # distinct 16 MiB chunks, no block-level repeats
    return path


def make_small_files(root: Path, count: int, size: int, per_dir: int = 100) -> Path:
    for i in range(count):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.bin").write_bytes(os.urandom(size))
    return root


def print_table(rows: list[Row]) -> None:
    head = f"{'benchmark':58} {'artfs':>9} {'baseline':>9} {'ratio':>6}  {'target':10} baseline"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.name:58} {r.ours:9.3f} {r.baseline:9.3f} {r.ratio:6.2f}  {r.target:10} "
              f"{r.baseline_name}{' — ' + r.note if r.note else ''}")


def log_artifact(url: str | Path, cache: Path, name: str,
                 add: Callable[[sdk.Artifact], object]) -> sdk.Artifact:
    """Log one dataset artifact `name` filled by `add(artifact)` to the registry at `url`."""
    reg = Registry(str(url), cache_dir=cache, create=True)
    with sdk.init(job_type="bench", project="bench", entity="bench", registry=reg) as run:
        art = sdk.Artifact(name, type="dataset")
        add(art)
        run.log_artifact(art)
    return art
