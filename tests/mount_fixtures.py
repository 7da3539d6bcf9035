"""Real mounts for tests: `artfs mount` in the background, always unmounted in teardown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from artfs.manifest import Entry, Manifest
from artfs.registry import Registry

ENTITY = "tester"
PROJECT = "uncategorized"


def tree_of(root: Path) -> dict[str, bytes]:
    """Every file below `root` by relative path: what ordinary tools see, compared whole."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out

def artfs(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the `artfs` command line in a subprocess, as a user would."""
    result = subprocess.run([sys.executable, "-m", "artfs.cli", *args], capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"artfs {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


@pytest.fixture
def run_artfs() -> Callable[..., subprocess.CompletedProcess]:
    """`run_artfs(*args, check=True)`: the command line in a subprocess."""
    return artfs


def commit(name: str, files: dict[str, bytes], *, entity: str = ENTITY,
           project: str = PROJECT, aliases: tuple[str, ...] = ()) -> None:
    """Commit a version straight through the registry: each distinct content is stored once,
    so trees of many thousand files cost a manifest, not thousands of source files."""
    reg = Registry(os.environ["ARTFS_REGISTRY"])
    try:
        digests = {data: reg.put_blob(entity, data) for data in set(files.values())}
        manifest = Manifest(Entry(p, len(d), digests[d]) for p, d in files.items())
        reg.commit(entity, project, name, "dataset", manifest, aliases=aliases)
    finally:
        reg.close()


@pytest.fixture
def commit_tree() -> Callable[..., None]:
    """`commit_tree(name, {path: bytes})` on ARTFS_REGISTRY, without the SDK."""
    return commit


@dataclass
class Mount:
    """One running mount."""

    root: Path
    pid: int
    log: Path

    def artifact(self, name: str, entity: str = ENTITY, project: str = PROJECT) -> Path:
        return self.root / entity / project / name

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_gone(self, timeout: float = 15.0) -> bool:
        """True once the mount process has fully exited."""
        return wait_gone(self.pid, timeout)

    def force_unmount(self) -> None:
        force_unmount(self)


def _alive(pid: int) -> bool:
    """False once every thread has exited: a zombie leader can outlive its other threads."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return tasks != [str(pid)] or stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def force_unmount(m: Mount) -> None:
    """Unmount whatever state the mount is in: live, busy, stopped or dead."""
    try:
        os.kill(m.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    for cmd in (["fusermount3", "-u", str(m.root)], ["fusermount3", "-u", "-z", str(m.root)]):
        if not os.path.ismount(m.root) and not _stale(m.root):
            break
        subprocess.run(cmd, capture_output=True, timeout=30)
    if not wait_gone(m.pid, 10):
        try:
            os.kill(m.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(m.pid, 5)
    if _stale(m.root):
        subprocess.run(["fusermount3", "-u", "-z", str(m.root)], capture_output=True)


def _stale(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError:
        return True
    return False


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """`mount(*extra_args, name='mnt')` mounts ARTFS_REGISTRY with `artfs mount`."""
    mounts: list[Mount] = []

    def start(*extra: str, name: str = "mnt") -> Mount:
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        out = artfs("mount", str(root), *extra)
        match = re.search(r"pid (\d+), log (.+)\)", out.stdout)
        assert match, out.stdout
        m = Mount(root, int(match.group(1)), Path(match.group(2)))
        mounts.append(m)
        assert os.path.ismount(root)
        return m

    yield start
    for m in mounts:
        force_unmount(m)
