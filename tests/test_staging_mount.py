"""Writing through a real mount: `@staging` with real tools, commit, crash and concurrency."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdk
from artfs.names import ArtifactRef
from artfs.registry import Registry
from artfs.staging import INTERRUPTED_NOTE
from tests.mount_fixtures import ENTITY, PROJECT, Mount, artfs, tree_of

local_only = pytest.mark.parametrize("registry_url", ["local"], indirect=True)

FILES = {"model.h5": b"weights" * 1000, "images/cat.png": b"cat" * 500, "images/dog.png": b"dog"}


def staging_of(m: Mount, name: str) -> Path:
    return m.artifact(name) / "@staging"


def _versions(registry_url: str, name: str) -> list[int]:
    reg = Registry(registry_url)
    try:
        return reg.versions(ENTITY, PROJECT, name)
    finally:
        reg.close()


def _state(registry_url: str, m: Mount, name: str) -> dict:
    """Everything a refused command must leave as it was: versions, aliases, staged files."""
    reg = Registry(registry_url)
    try:
        listing = {"versions": reg.versions(ENTITY, PROJECT, name),
                   "aliases": reg.aliases(ENTITY, PROJECT, name)}
    finally:
        reg.close()
    return {**listing, "staged": tree_of(staging_of(m, name))}


def _wait_for_log(m: Mount, line: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the mount logs `line` (an event of the mount), while `proc` still runs."""
    deadline = time.monotonic() + timeout
    while line not in m.log_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {line!r} in the mount log"
        time.sleep(0.01)


def sdk_files(name: str, version: str) -> dict[str, bytes]:
    art = sdk.Api().artifact(f"{ENTITY}/{PROJECT}/{name}:{version}")
    return tree_of(Path(art.download()))


def test_cp_into_staging_and_commit_reads_back_byte_for_byte(registry_url, log_files, mount,
                                                             tmp_path: Path) -> None:
    """The issue's example, on every store kind: cp, commit with an alias, read back."""
    log_files("bike-model", FILES)
    m = mount()
    stage = staging_of(m, "bike-model")
    assert tree_of(stage) == FILES  # starts as the latest version
    big = os.urandom(5 * 1024 * 1024 + 3)
    (tmp_path / "best.h5").write_bytes(big)
    subprocess.run(["cp", tmp_path / "best.h5", stage / "model.h5"], check=True)
    out = artfs("commit", str(m.artifact("bike-model")), "--alias", "best-ap50").stdout
    assert "committed tester/uncategorized/bike-model:v1" in out
    want = {**FILES, "model.h5": big}
    assert tree_of(m.artifact("bike-model") / "best-ap50") == want
    assert tree_of(stage) == want  # staging now shows the new version
    assert sdk_files("bike-model", "best-ap50") == want


@local_only
def test_real_tools_match_a_shadow_copy_on_local_disk(registry_url, log_files, mount,
                                                      tmp_path: Path) -> None:
    log_files("ds", FILES)
    m = mount()
    stage = staging_of(m, "ds")
    shadow = tmp_path / "shadow"
    shutil.copytree(m.artifact("ds") / "latest", shadow)
    src = tmp_path / "src"
    for i in range(30):
        f = src / f"d{i % 3}" / f"sub{i % 2}" / f"f{i}.bin"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(random.Random(i).randint(0, 70_000)))
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        tar.add(src, arcname="tarred")

    def both(*cmd: str) -> None:
        for root in (stage, shadow):
            subprocess.run([c.replace("{}", str(root)) for c in cmd], check=True,
                           capture_output=True)
        assert tree_of(stage) == tree_of(shadow), cmd

    both("cp", "-r", str(src), "{}/copied")
    both("rsync", "-a", f"{src}/", "{}/synced")
    both("tar", "-x", "-f", str(tmp_path / "a.tar"), "-C", "{}")
    both("mv", "{}/copied/d0", "{}/moved")
    both("mv", "{}/images/cat.png", "{}/moved/cat.png")
    both("rm", "-r", "{}/synced/d1")
    both("truncate", "-s", "1234", "{}/model.h5")
    both("truncate", "-s", "100000", "{}/images/dog.png")
    patch = tmp_path / "patch"
    patch.write_bytes(os.urandom(10_000))
    both("dd", f"if={patch}", "of={}/tarred/d1/sub1/f1.bin", "bs=1000", "seek=3",
         "conv=notrunc", "status=none")
    both("sh", "-c", "printf appended >> {}/moved/cat.png")
    mtimes = {p: (shadow / p).stat().st_mtime_ns for p in ("synced/d0/sub0/f0.bin",)}
    assert (stage / "synced/d0/sub0/f0.bin").stat().st_mtime_ns == mtimes[
        "synced/d0/sub0/f0.bin"]  # rsync -a kept the mtime
    changed = artfs("diff", str(stage)).stdout
    assert "A moved/cat.png" in changed and "D images/cat.png" in changed
    artfs("commit", str(stage))
    assert tree_of(m.artifact("ds") / "v1") == tree_of(shadow)
    assert sdk_files("ds", "v1") == tree_of(shadow)


@local_only
def test_random_writes_match_a_shadow_copy(registry_url, log_files, mount,
                                           tmp_path: Path) -> None:
    """2,000 seeded random writes, truncations, renames and unlinks on both trees."""
    log_files("rnd", {f"f{i}": os.urandom(3000 * i) for i in range(4)})
    m = mount()
    stage = staging_of(m, "rnd")
    shadow = tmp_path / "shadow"
    shutil.copytree(m.artifact("rnd") / "latest", shadow)
    rng = random.Random(6)
    names = [f"f{i}" for i in range(8)]
    for step in range(2000):
        op = rng.choice(["write", "write", "write", "truncate", "rename", "unlink", "append"])
        name, other = rng.choice(names), rng.choice(names)
        data = rng.randbytes(rng.randint(0, 20_000))
        off, size = rng.randint(0, 40_000), rng.randint(0, 50_000)
        for root in (stage, shadow):
            path = root / name
            if op in ("write", "append"):
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if op == "append" else 0)
                fd = os.open(path, flags)
                try:
                    if op == "append":
                        os.write(fd, data)
                    else:
                        os.pwrite(fd, data, off)
                finally:
                    os.close(fd)
            elif op == "truncate" and path.exists():
                os.truncate(path, size)
            elif op == "rename" and path.exists():
                os.rename(path, root / other)
            elif op == "unlink" and path.exists():
                path.unlink()
        if step % 250 == 0:
            assert tree_of(stage) == tree_of(shadow), step
            for n in os.listdir(shadow):
                assert (stage / n).stat().st_size == (shadow / n).stat().st_size
    assert tree_of(stage) == tree_of(shadow)
    artfs("commit", str(stage))
    assert tree_of(m.artifact("rnd") / "latest") == tree_of(shadow)


@local_only
def test_sizes_and_mtimes_are_right_while_a_file_is_open(registry_url, log_files, mount) -> None:
    log_files("open", FILES)
    m = mount()
    path = staging_of(m, "open") / "growing.bin"
    with open(path, "wb") as f:
        for i in range(1, 4):
            f.write(b"x" * 1000)
            f.flush()
            st = os.stat(path)
            assert st.st_size == 1000 * i
            assert abs(st.st_mtime_ns - time.time_ns()) < 5e9
        os.fsync(f.fileno())
        assert os.fstat(f.fileno()).st_size == 3000


@local_only
def test_commit_refuses_files_open_for_writing_naming_them(registry_url, log_files,
                                                           mount) -> None:
    log_files("busy", FILES)
    m = mount()
    stage = staging_of(m, "busy")
    (stage / "closed.bin").write_bytes(b"closed")
    before = _state(registry_url, m, "busy")
    with open(stage / "half.bin", "wb") as f:
        f.write(b"half")
        f.flush()
        r = artfs("commit", str(m.artifact("busy")), "--alias", "best", check=False)
        assert r.returncode == 1 and "half.bin" in r.stderr and "--wait" in r.stderr
        assert _state(registry_url, m, "busy") == {**before, "staged": {
            **before["staged"], "half.bin": b"half"}}  # no version, no alias, nothing lost
    assert "committed" in artfs("commit", str(m.artifact("busy"))).stdout


@local_only
def test_commit_waits_for_writers_with_wait(registry_url, log_files, mount) -> None:
    """The commit waits for the file open when it started, and takes its final bytes."""
    log_files("wait", FILES)
    m = mount()
    with open(staging_of(m, "wait") / "late.bin", "wb") as f:
        f.write(b"first half, ")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "artfs.cli", "commit",
                                 str(m.artifact("wait")), "--wait", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_log(m, "waiting up to 60.0 s for 1 file(s) open for writing: late.bin", proc)
        assert proc.poll() is None and _versions(registry_url, "wait") == [0]
        f.write(b"second half")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (m.artifact("wait") / "v1" / "late.bin").read_bytes() == b"first half, second half"


@local_only
def test_staged_files_survive_a_remount(registry_url, log_files, mount) -> None:
    log_files("keep", FILES)
    m = mount()
    (staging_of(m, "keep") / "new.txt").write_bytes(b"new")
    (staging_of(m, "keep") / "model.h5").unlink()
    subprocess.run(["fusermount3", "-u", str(m.root)], check=True)
    assert m.wait_gone()
    m2 = mount()
    want = {**FILES, "new.txt": b"new"}
    del want["model.h5"]
    assert tree_of(staging_of(m2, "keep")) == want
    assert "A new.txt" in artfs("diff", str(m2.artifact("keep"))).stdout


@local_only
def test_discard_and_stage_empty(registry_url, log_files, mount) -> None:
    log_files("disc", FILES)
    m = mount()
    stage = staging_of(m, "disc")
    (stage / "new.txt").write_bytes(b"new")
    artfs("discard", str(stage))
    assert tree_of(stage) == FILES
    artfs("stage", "--empty", str(stage))
    assert os.listdir(stage) == []
    (stage / "only.txt").write_bytes(b"only")
    artfs("commit", str(stage))
    assert tree_of(m.artifact("disc") / "latest") == {"only.txt": b"only"}


@local_only
def test_mkdir_creates_a_new_artifact_that_needs_a_type(registry, mount) -> None:
    m = mount()
    new = m.root / "acme" / "bikes" / "bike-model"
    new.mkdir(parents=True)
    (new / "@staging" / "model.h5").write_bytes(b"m")
    r = artfs("commit", str(new), "--alias", "best-ap50", check=False)
    assert r.returncode == 1 and "--type" in r.stderr
    assert registry.artifacts("acme", "bikes") == []  # refused: nothing in the registry
    assert tree_of(new / "@staging") == {"model.h5": b"m"}
    artfs("commit", str(new), "--type", "model", "--alias", "best-ap50")
    assert (new / "best-ap50" / "model.h5").read_bytes() == b"m"
    assert registry.version(ArtifactRef("acme", "bikes", "bike-model", "v0")).type == "model"


@local_only
def test_symlinks_are_refused_and_versions_stay_read_only(registry_url, log_files,
                                                          mount) -> None:
    log_files("ro", FILES)
    m = mount()
    stage = staging_of(m, "ro")
    (stage / "staged.txt").write_bytes(b"staged")
    before, changes = _state(registry_url, m, "ro"), artfs("diff", str(stage)).stdout
    for fn, args, code in [(os.symlink, ("model.h5", stage / "link"), errno.EPERM),
                           (os.link, (stage / "model.h5", stage / "hard"), errno.EPERM),
                           (os.mkfifo, (stage / "fifo",), errno.EPERM),
                           (os.rmdir, (stage / "images",), errno.ENOTEMPTY),
                           (os.rename, (stage / "images", stage / "images" / "in"),
                            errno.EINVAL),
                           (os.open, (m.artifact("ro") / "v0" / "new", os.O_CREAT), errno.EROFS),
                           (os.unlink, (m.artifact("ro") / "v0" / "model.h5",), errno.EROFS)]:
        with pytest.raises(OSError) as info:
            fn(*args)
        assert info.value.errno == code, (fn, args)
    assert _state(registry_url, m, "ro") == before  # nothing changed anywhere
    assert artfs("diff", str(stage)).stdout == changes
    assert tree_of(m.artifact("ro") / "v0") == FILES


#: Kills of the mount during a commit, each at a random point of it.
KILLS = 20


@pytest.mark.slow
@local_only
def test_kill_9_at_random_points_of_commits_leaves_a_whole_version_or_none(
        registry_url, log_files, mount, tmp_path: Path) -> None:
    """Each round stages one more file (written backwards, so the commit hashes it), starts a
    commit and kills the mount at a random delay after it began: either no new version and
    the command says the mount ended, or a new version holding exactly the staged files; in
    both cases the next mount shows every staged byte."""
    log_files("crash", FILES)
    rng = random.Random(9)
    want = dict(FILES)
    outcomes = []
    for i in range(KILLS):
        m = mount(name=f"mnt{i}")
        stage = staging_of(m, "crash")
        assert tree_of(stage) == want, i  # nothing lost by the kill before
        data = rng.randbytes(rng.randint(1, 12) * 1024 * 1024)
        with open(stage / f"round{i}.bin", "wb") as f:
            for off in range(len(data) - (1 << 20), -(1 << 20), -(1 << 20)):
                f.seek(max(off, 0))
                f.write(data[max(off, 0):off + (1 << 20)])
        want[f"round{i}.bin"] = data
        before = _versions(registry_url, "crash")
        proc = subprocess.Popen([sys.executable, "-m", "artfs.cli", "commit", str(stage)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_log(m, "committing the staging folder", proc)
        time.sleep(rng.uniform(0, 0.4))  # the kill's point in the commit, not a wait for it
        os.kill(m.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert m.wait_gone()
        m.force_unmount()
        after = _versions(registry_url, "crash")
        if after == before:
            assert "mount again" in err, (i, out, err)
            outcomes.append("none")
            continue
        assert after == [*before, before[-1] + 1], i
        reg = Registry(registry_url)
        try:
            v = reg.version(ArtifactRef(ENTITY, PROJECT, "crash", f"v{after[-1]}"))
            got = {p: reg.blob_file(ENTITY, e.digest).read_bytes()
                   for p, e in reg.manifest(v).items()}
        finally:
            reg.close()
        assert got == want, i  # whole: every staged file, every byte
        outcomes.append("version")
    m = mount(name="last")
    assert tree_of(staging_of(m, "crash")) == want
    artfs("commit", str(m.artifact("crash")))
    assert sdk_files("crash", "latest") == want
    assert len(outcomes) == KILLS


@local_only
def test_two_mounts_committing_one_artifact_each_make_their_own_version(
        registry_url, log_files, mount, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    log_files("race", FILES)
    m1 = mount(name="one")
    monkeypatch.setenv("ARTFS_STATE_DIR", str(tmp_path / "state-two"))  # another machine
    m2 = mount(name="two")
    (staging_of(m1, "race") / "one.txt").write_bytes(b"one")
    (staging_of(m2, "race") / "two.txt").write_bytes(b"two")
    results: list[str] = []

    def commit(m: Mount) -> None:
        results.append(artfs("commit", str(m.artifact("race"))).stdout)

    threads = [threading.Thread(target=commit, args=(m,)) for m in (m1, m2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.split()[1] for r in results) == ["tester/uncategorized/race:v1",
                                                     "tester/uncategorized/race:v2"]
    got = sorted(tuple(sorted(sdk_files("race", v))) for v in ("v1", "v2"))
    assert got == [(*sorted(FILES), "one.txt"), (*sorted(FILES), "two.txt")]  # none merged
    assert sdk_files("race", "latest") == sdk_files("race", "v2")


def test_sdk_commits_a_folder_without_a_mount(registry_url, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    for path, data in FILES.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    with sdk.init(job_type="commit") as run:
        run.log_artifact(sdk.Artifact.from_dir(folder, "scripted", type="dataset"))
    assert sdk_files("scripted", "v0") == FILES



@local_only
def test_a_second_mount_with_the_same_state_serves_staging_read_only(registry_url, log_files,
                                                                      mount) -> None:
    log_files("shared", FILES)
    m1 = mount(name="one")
    m2 = mount(name="two")
    (staging_of(m1, "shared") / "a.txt").write_bytes(b"a")
    assert (staging_of(m2, "shared") / "a.txt").read_bytes() == b"a"
    with pytest.raises(OSError) as info:
        (staging_of(m2, "shared") / "b.txt").write_bytes(b"b")
    assert info.value.errno == errno.EROFS
    r = artfs("commit", str(m2.artifact("shared")), check=False)
    assert r.returncode == 1 and f"pid {m1.pid}" in r.stderr


@local_only
def test_files_written_in_order_are_hashed_while_written(registry_url, log_files, mount,
                                                         tmp_path: Path) -> None:
    log_files("hashed", FILES)
    m = mount()
    stage = staging_of(m, "hashed")
    data = os.urandom(3 * 1024 * 1024 + 5)  # large writes: hashed beside the writes
    (tmp_path / "in-order.bin").write_bytes(data)
    subprocess.run(["cp", tmp_path / "in-order.bin", stage], check=True)
    digest = os.getxattr(stage / "in-order.bin", "user.artfs.digest").decode()
    assert digest == hashlib.sha256(data).hexdigest()
    with open(stage / "model.h5", "r+b") as f:  # copied up, then written out of order
        f.seek(10)
        f.write(b"patched")
    with pytest.raises(OSError) as info:
        os.getxattr(stage / "model.h5", "user.artfs.digest")
    assert info.value.errno == errno.ENODATA


@local_only
def test_rmdir_removes_new_names_never_committed(registry_url, log_files, mount) -> None:
    log_files("kept", FILES)
    m = mount()
    new = m.root / "acme" / "bikes" / "bike-model"
    new.mkdir(parents=True)
    (new / "@staging" / "model.h5").write_bytes(b"m")
    for path, err in [(new, errno.ENOTEMPTY), (m.root / "acme", errno.ENOTEMPTY),
                      (m.artifact("kept"), errno.EROFS), (m.root / ENTITY, errno.EROFS),
                      (m.artifact("kept") / "v0", errno.EROFS)]:
        with pytest.raises(OSError) as info:
            path.rmdir()
        assert info.value.errno == err, path
    (new / "@staging" / "model.h5").unlink()
    new.rmdir()
    (m.root / "acme" / "bikes").rmdir()
    (m.root / "acme").rmdir()
    assert "acme" not in os.listdir(m.root)
    fresh = m.artifact("fresh")  # a new artifact in a project the registry has
    fresh.mkdir()
    assert "fresh" in os.listdir(fresh.parent)
    fresh.rmdir()
    assert "fresh" not in os.listdir(fresh.parent)
    fresh.mkdir()  # made again: an empty, working staging folder
    assert os.listdir(fresh / "@staging") == []
    (fresh / "@staging" / "a.txt").write_bytes(b"a")
    artfs("commit", str(fresh), "--type", "dataset")
    with pytest.raises(OSError) as info:
        fresh.rmdir()
    assert info.value.errno == errno.EROFS  # committed now
    subprocess.run(["fusermount3", "-u", str(m.root)], check=True)
    assert m.wait_gone()
    m2 = mount(name="mnt2")
    assert "acme" not in os.listdir(m2.root)


@local_only
def test_staged_bytes_survive_kill_9_of_the_mount(registry_url, log_files, mount,
                                                  tmp_path: Path) -> None:
    """Closed files and writes already answered are in the page cache, the tree in the WAL:
    a crash of the mount process (not of the machine) loses none of them."""
    log_files("kill", FILES)
    m = mount()
    stage = staging_of(m, "kill")
    src = tmp_path / "src"
    for i in range(300):
        (src / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 7}" / f"f{i}.bin").write_bytes(os.urandom(4096 + i))
    subprocess.run(["cp", "-r", str(src), str(stage / "small")], check=True)
    big = os.urandom(9 * 1024 * 1024 + 7)
    (tmp_path / "big.bin").write_bytes(big)
    subprocess.run(["cp", str(tmp_path / "big.bin"), str(stage)], check=True)
    (stage / "model.h5").unlink()
    open_file = open(stage / "open.bin", "wb")  # noqa: SIM115 - the mount dies under it
    open_file.write(b"answered" * 1000)
    open_file.flush()
    want = {**tree_of(stage)}
    os.kill(m.pid, signal.SIGKILL)  # at once: before any WAL checkpoint
    with pytest.raises(OSError) as info:
        open_file.close()
    assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert m.wait_gone()
    m.force_unmount()
    m2 = mount(name="mnt2")
    stage2 = staging_of(m2, "kill")
    assert tree_of(stage2) == want
    assert f"A! open.bin  {INTERRUPTED_NOTE}" in artfs("diff", str(stage2)).stdout
    refused = artfs("commit", str(stage2), check=False)
    assert refused.returncode == 1
    assert "open.bin" in refused.stderr and "--force" in refused.stderr
    assert Registry(registry_url).versions(ENTITY, PROJECT, "kill") == [0]
    assert tree_of(stage2) == want
    artfs("commit", "--force", str(stage2))
    assert sdk_files("kill", "v1") == want
    assert "no changes" in artfs("diff", str(stage2)).stdout


_NAMES = st.sampled_from(["f0", "f1", "f2", "sub/f3"])
_OPS = st.one_of(
    st.tuples(st.just("pwrite"), _NAMES, st.integers(0, 200_000), st.integers(0, 5000)),
    st.tuples(st.just("append"), _NAMES, st.integers(0, 5000)),
    # In order from 0 in chunks the mount hashes on its own threads, then maybe one write
    # elsewhere in the same open file, which must drop the running hash.
    st.tuples(st.just("stream"), _NAMES, st.integers(1, 4), st.booleans()),
    st.tuples(st.just("truncate"), _NAMES, st.integers(0, 150_000)),
    st.tuples(st.just("rename"), _NAMES, _NAMES),
    st.tuples(st.just("unlink"), _NAMES),
)


def _written(op: tuple) -> int:
    """How many bytes `op` writes."""
    if op[0] == "pwrite":
        return op[3]
    if op[0] == "append":
        return op[2]
    return op[2] * 300 * 1024 if op[0] == "stream" else 0


def _apply(root: Path, op: tuple, data: bytes) -> None:
    """One operation on a tree (the staging folder or its shadow); `data` is the bytes it
    writes, the same for both."""
    kind, path = op[0], root / op[1]
    path.parent.mkdir(exist_ok=True)
    if kind in ("pwrite", "append"):
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if kind == "append" else 0)
        fd = os.open(path, flags)
        try:
            os.pwrite(fd, data, op[2]) if kind == "pwrite" else os.write(fd, data)
        finally:
            os.close(fd)
    elif kind == "stream":
        chunk = len(data) // op[2]
        with open(path, "wb", buffering=0) as f:
            for i in range(op[2]):
                f.write(data[i * chunk:(i + 1) * chunk])
            if op[3]:
                os.pwrite(f.fileno(), b"out of order", 7)
    elif kind == "truncate" and path.exists():
        os.truncate(path, op[2])
    elif kind == "rename" and path.exists():
        path.rename(root / op[2])
    elif kind == "unlink" and path.exists():
        path.unlink()


@local_only
def test_random_operations_match_a_shadow_copy_property(registry_url, log_files, mount,
                                                        tmp_path: Path) -> None:
    """Hypothesis (derandomized, so seeded) sequences of writes, streams, truncations, renames
    and unlinks, starting from the latest version's base files each time: the staging folder
    must equal the same operations on local disk, and every digest the mount recorded must be
    the bytes' SHA-256. A failure shrinks to a minimal sequence."""
    latest = {"f0": os.urandom(5000), "f1": os.urandom(70_000), "sub/f3": b"three"}
    log_files("prop", latest)
    m = mount()
    stage = staging_of(m, "prop")
    shadow = tmp_path / "shadow"

    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(st.lists(_OPS, max_size=12))
    def check(ops: list[tuple]) -> None:
        artfs("discard", str(stage))
        shutil.rmtree(shadow, ignore_errors=True)
        shutil.copytree(m.artifact("prop") / "latest", shadow)
        rng = random.Random(len(ops))
        for op in ops:
            data = rng.randbytes(_written(op))
            for root in (stage, shadow):
                _apply(root, op, data)
        got = tree_of(stage)
        assert got == tree_of(shadow), ops
        for path, data in got.items():
            try:
                digest = os.getxattr(stage / path, "user.artfs.digest").decode()
            except OSError as e:
                assert e.errno == errno.ENODATA, (path, e)
                continue  # not known until a commit hashes it
            assert digest == hashlib.sha256(data).hexdigest(), (path, ops)
            checked.append(path)

    checked: list[str] = []
    check()
    assert len(checked) > 20  # recorded digests were compared, not only skipped


@local_only
def test_a_file_removed_while_open_keeps_working(registry_url, log_files, mount) -> None:
    """As on a local disk, also once the kernel asks for its attributes again (after the TTL),
    and while other files are created and removed around it."""
    log_files("open-rm", FILES)
    m = mount()
    stage = staging_of(m, "open-rm")
    with open(stage / "kept-open", "wb+") as f:
        f.write(b"still mine")
        f.flush()
        (stage / "kept-open").unlink()
        for i in range(30):
            (stage / f"new{i}").write_bytes(b"new" * i)
            (stage / f"new{i}").unlink()
        time.sleep(1.5)  # past the attribute TTL
        f.seek(0)
        assert f.read() == b"still mine"
        f.write(b", and more")
        f.seek(0)
        assert f.read() == b"still mine, and more"
    assert tree_of(stage) == FILES


@local_only
def test_commands_after_the_mount_died_say_it_is_not_running(registry_url, log_files,
                                                             mount) -> None:
    log_files("dead", FILES)
    m = mount()
    stage = staging_of(m, "dead")
    (stage / "new.txt").write_bytes(b"new")
    os.kill(m.pid, signal.SIGKILL)
    assert m.wait_gone()
    for args in (["diff", str(stage)], ["commit", str(m.artifact("dead"))],
                 ["info", str(stage / "new.txt")]):
        r = artfs(*args, check=False)
        assert r.returncode == 1, args
        assert f"the mount at {m.root} is not running (ENOTCONN" in r.stderr, args
        assert f"artfs mount {m.root}" in r.stderr and "Traceback" not in r.stderr
    m.force_unmount()
    m2 = mount()
    # "A!" when the kill came before the kernel's release of the file (just after close).
    assert re.search(r"^A!? new.txt", artfs("diff", str(staging_of(m2, "dead"))).stdout, re.M)
