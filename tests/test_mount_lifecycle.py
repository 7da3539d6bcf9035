"""Mounting, unmounting, signals, stale mounts and concurrency of a real mount process."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import sdk
from artfs.fs.mount import READ_AHEAD_KB


def test_mount_returns_when_usable_and_umount_stops_the_process(commit_tree, mount,
                                                                 run_artfs) -> None:
    commit_tree("ds", {"a.txt": b"a"})
    m = mount()
    assert (m.artifact("ds") / "v0" / "a.txt").read_bytes() == b"a"
    out = run_artfs("umount", str(m.root))
    assert "unmounted" in out.stdout
    assert not os.path.ismount(m.root)
    assert m.wait_gone(5)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may raise a mount's read-ahead")
def test_read_ahead_is_raised_once_the_mount_answers(commit_tree, mount) -> None:
    """Written before the kernel's INIT request is answered, the INIT reply lowers it back to
    128 KiB, and reads arrive in 128 KiB requests instead of 1 MiB ones."""
    commit_tree("ds", {"a.txt": b"a"})
    m = mount()
    device = subprocess.run(["mountpoint", "-d", str(m.root)], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() == str(
        READ_AHEAD_KB)
    assert "read-ahead of" in m.log_text()


def test_mounting_over_a_non_empty_folder_is_refused(tmp_path: Path, run_artfs) -> None:
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    out = run_artfs("mount", str(target), check=False)
    assert out.returncode != 0 and "not empty" in out.stderr and str(target) in out.stderr
    assert not os.path.ismount(target)
    assert os.listdir(target) == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"


def test_mounting_twice_on_one_folder_is_refused(commit_tree, mount, run_artfs) -> None:
    commit_tree("ds", {"a.txt": b"a"})
    m = mount()
    out = run_artfs("mount", str(m.root), check=False)
    assert out.returncode != 0 and "already a mount point" in out.stderr
    # The first mount is untouched: same process, still serving.
    assert (m.artifact("ds") / "v0" / "a.txt").read_bytes() == b"a"
    assert os.path.ismount(m.root) and not m.wait_gone(0)
    assert [line for line in open(m.log) if "unmounted" in line] == []


def test_a_named_registry_that_does_not_exist_is_a_clear_error(tmp_path: Path,
                                                               run_artfs) -> None:
    (tmp_path / "mnt").mkdir()
    out = run_artfs("mount", str(tmp_path / "mnt"), "--registry", str(tmp_path / "nope"),
                    check=False)
    assert out.returncode != 0 and "no artfs registry" in out.stderr
    assert str(tmp_path / "nope") in out.stderr
    assert not os.path.ismount(tmp_path / "mnt") and os.listdir(tmp_path / "mnt") == []
    assert not (tmp_path / "nope").exists()  # not created by the refusal


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(commit_tree, mount, signum: int) -> None:
    commit_tree("ds", {"a.txt": b"a"})
    m = mount()
    os.listdir(m.artifact("ds") / "v0")
    os.kill(m.pid, signum)
    assert m.wait_gone(10)
    assert not os.path.ismount(m.root)
    assert "unmounted" in m.log_text()


def test_unmount_with_a_reader_still_open(commit_tree, mount, run_artfs) -> None:
    commit_tree("ds", {"big.bin": os.urandom(4 * 1024 * 1024)})
    m = mount()
    with open(m.artifact("ds") / "v0" / "big.bin", "rb") as reader:
        reader.read(1024)
        busy = run_artfs("umount", str(m.root), check=False)
        assert busy.returncode != 0 and "busy" in busy.stderr and "--lazy" in busy.stderr
        assert os.path.ismount(m.root)
        run_artfs("umount", "--lazy", str(m.root))
        assert not os.path.ismount(m.root)
    assert m.wait_gone(10)


def test_remount_after_the_mount_process_was_killed(commit_tree, mount) -> None:
    commit_tree("ds", {"a.txt": b"a"})
    m = mount()
    os.kill(m.pid, signal.SIGKILL)
    assert m.wait_gone(5)
    with pytest.raises(OSError) as e:
        os.listdir(m.root)
    assert e.value.errno == errno.ENOTCONN  # the stale mount the kill left behind
    again = mount()
    assert again.root == m.root
    assert (again.artifact("ds") / "v0" / "a.txt").read_bytes() == b"a"


def threads_waiting_on_fuse(pid: int) -> int:
    """Threads of `pid` asleep in a request to a FUSE file system (the kernel's wait channel).
    For a mount process, these can only be reads from another FUSE mount."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if "request_wait_answer" in (task / "wchan").read_text():
                count += 1
        except OSError:
            pass  # the thread has just exited
    return count


@pytest.mark.timeout(120)
def test_sixteen_readers_stuck_on_slow_sources_do_not_block_the_mount(
        commit_tree, mount, tmp_path: Path) -> None:
    """16 readers of references whose source is frozen, plus listings and a stored read that
    must still be served: blocking work is on worker threads, never the FUSE loop."""
    files = {f"s{i:02d}.bin": bytes([i]) * 200_000 for i in range(16)}
    commit_tree("sources", files)
    source_mount = mount(name="source-mnt")
    src_dir = source_mount.artifact("sources") / "v0"
    art = sdk.Artifact("refs", type="dataset")
    art.add_reference(src_dir.as_uri())
    art.add_file(__file__, name="stored.py")
    with sdk.init() as run:
        run.log_artifact(art)
    m = mount()
    refs = m.artifact("refs") / "v0"
    assert len(os.listdir(refs)) == 17

    results: dict[str, bytes] = {}
    os.kill(source_mount.pid, signal.SIGSTOP)
    try:
        readers = [threading.Thread(target=lambda n=n: results.__setitem__(
            n, (refs / n).read_bytes()), daemon=True) for n in files]
        for t in readers:
            t.start()
        # Every reader is stuck once a thread of the mount waits on the frozen source for each.
        deadline = time.monotonic() + 60
        while (stuck := threads_waiting_on_fuse(m.pid)) < len(files):
            assert time.monotonic() < deadline, f"only {stuck} reads reached the source"
            time.sleep(0.05)
        assert not results, "sources are frozen: no reader can have finished"
        # A hang here (a blocked FUSE loop) fails the test through its timeout.
        assert (refs / "stored.py").read_bytes() == Path(__file__).read_bytes()
        assert "refs" in os.listdir(m.artifact("refs").parent)
        assert not results and all(t.is_alive() for t in readers)
    finally:
        os.kill(source_mount.pid, signal.SIGCONT)
    for t in readers:
        t.join(30)
    assert results == files
    m.force_unmount()


def test_make_mount_style_default_registry_is_created(tmp_path: Path, mount) -> None:
    """`make mount` runs `artfs mount ~/artifacts` on the embedded default registry, which may
    not exist yet on a fresh machine."""
    env_registry = os.environ.pop("ARTFS_REGISTRY")
    try:
        os.environ["XDG_DATA_HOME"] = str(tmp_path / "xdg")
        assert not (tmp_path / "xdg" / "artfs").exists()
        m = mount()
        assert os.listdir(m.root) == []
        assert (tmp_path / "xdg" / "artfs" / "registry.json").is_file()
    finally:
        os.environ["ARTFS_REGISTRY"] = env_registry
        os.environ.pop("XDG_DATA_HOME", None)
    subprocess.run(["ls", m.root], check=True)


@pytest.mark.slow
def test_find_du_ls_over_100000_files_see_every_file(commit_tree, mount) -> None:
    files = {f"d{i // 100:03d}/f{i % 100:02d}.bin": bytes([i % 7]) * (i % 7 + 1)
             for i in range(100_000)}
    commit_tree("huge", files)
    m = mount()
    v0 = m.artifact("huge") / "v0"
    found = subprocess.run(["find", v0, "-type", "f"], capture_output=True, check=True)
    assert found.stdout.count(b"\n") == 100_000
    du = subprocess.run(["du", "-s", "--apparent-size", "-B1", v0], capture_output=True,
                        text=True, check=True)
    assert int(du.stdout.split()[0]) == sum(len(d) for d in files.values())
    # ls -l asks for two extended attributes per file, but once per mount: the mount
    # answers "not supported" for namespaces other than user., which ls remembers.
    ls = subprocess.run(["ls", "-lR", v0], capture_output=True, check=True)
    assert ls.stdout.count(b".bin\n") == 100_000 and not ls.stderr
