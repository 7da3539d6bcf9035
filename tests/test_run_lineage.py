"""Lineage of the filesystem workflow: `artfs run -- CMD` records what CMD's process tree read
through a mount and what it committed; `artfs commit --input`; `artfs lineage`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sdk
from artfs.registry import Registry, init_registry
from tests.mount_fixtures import ENTITY, PROJECT, artfs

PY = sys.executable


@pytest.fixture
def local_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = str(tmp_path / "registry")
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    init_registry(url)
    return url


def _runs(url: str, job_type: str | None = None) -> list:
    reg = Registry(url)
    try:
        return [r for r in reg.runs(ENTITY, PROJECT) if job_type in (None, r.job_type)]
    finally:
        reg.close()


def test_run_returns_the_exit_status_and_closes_the_run_with_it(local_registry) -> None:
    ok = artfs("run", "--job-type", "good", "--name", "n1", "--config", '{"lr": 0.1}', "--",
               PY, "-c", "pass")
    bad = artfs("run", "--job-type", "bad", "--", PY, "-c", "import sys; sys.exit(3)",
                check=False)
    killed = artfs("run", "--job-type", "killed", "--", PY, "-c",
                   "import os, signal; os.kill(os.getpid(), signal.SIGTERM)", check=False)
    assert ok.returncode == 0 and bad.returncode == 3 and killed.returncode == 128 + 15
    [good] = _runs(local_registry, "good")
    assert (good.state, good.name, good.config) == ("finished", "n1", {"lr": 0.1})
    assert good.finished_at is not None
    assert [r.state for r in _runs(local_registry, "bad")] == ["failed"]
    assert [r.state for r in _runs(local_registry, "killed")] == ["failed"]


def test_run_tells_the_command_its_run_and_registry(local_registry, monkeypatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("ARTFS_REGISTRY", str(tmp_path / "elsewhere"))
    out = artfs("run", "--registry", local_registry, "--job-type", "env", "--", PY, "-c",
                "import os; print(os.environ['ARTFS_RUN_ID'], os.environ['ARTFS_REGISTRY'])"
                ).stdout.split()
    [run] = _runs(local_registry, "env")
    assert out == [f"{ENTITY}/{PROJECT}/{run.id}", local_registry]


def test_a_command_that_cannot_run_fails_naming_it_and_the_run_is_failed(local_registry) -> None:
    r = artfs("run", "--job-type", "missing", "--", "no-such-command-xyz", check=False)
    assert r.returncode == 127 and "no-such-command-xyz" in r.stderr
    assert [x.state for x in _runs(local_registry, "missing")] == ["failed"]


@pytest.mark.parametrize("args, culprit", [
    (["--config", "{not json", "--", "true"], "--config"),
    (["--config", "[1, 2]", "--", "true"], "--config"),
    ([], "no command"),
])
def test_bad_run_arguments_fail_naming_the_culprit_and_record_no_run(
        local_registry, args, culprit) -> None:
    r = artfs("run", *args, check=False)
    assert r.returncode != 0 and culprit in r.stderr
    assert _runs(local_registry) == []


def test_sdk_init_inside_artfs_run_joins_the_run(local_registry, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("data")
    artfs("put", str(tmp_path / "f.txt"), "--name", "raw", "--type", "dataset")
    script = tmp_path / "train.py"
    script.write_text(
        "import sdk\n"
        "run = sdk.init(job_type='ignored', config={'epochs': 2})\n"
        "run.use_artifact('raw:latest')\n"
        "a = sdk.Artifact('model', type='model')\n"
        f"a.add_file({str(tmp_path / 'f.txt')!r})\n"
        "run.log_artifact(a)\n"
        "run.finish()\n"
        "print(run.id)\n")
    out = artfs("run", "--job-type", "train", "--config", '{"lr": 1}', "--", PY,
                str(script)).stdout.strip()
    [run] = _runs(local_registry, "train")
    assert _runs(local_registry, "ignored") == []
    assert out == run.id and run.state == "finished"
    assert run.inputs == [f"{ENTITY}/{PROJECT}/raw:v0"]
    assert run.outputs == [f"{ENTITY}/{PROJECT}/model:v0"]
    assert run.config == {"lr": 1, "epochs": 2}


def test_sdk_outside_artfs_run_starts_its_own_run(local_registry) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTFS_RUN")}
    subprocess.run([PY, "-c", "import sdk; sdk.init(job_type='alone').finish()"], env=env,
                   check=True)
    assert [r.state for r in _runs(local_registry, "alone")] == ["finished"]


def _version(url: str, name: str, number: int):
    reg = Registry(url)
    try:
        v = reg.version_record(ENTITY, PROJECT, name, number)
        return v, [f"{r.entity}/{r.project}/{r.id}" for r in reg.used_by(v)]
    finally:
        reg.close()


def _reading_outside(path: Path) -> subprocess.Popen:
    """A process outside any run that keeps opening `path` until its stdin closes."""
    return subprocess.Popen(
        [PY, "-c", "import sys, select\n"
                   f"while not select.select([sys.stdin], [], [], 0.01)[0]:\n"
                   f"    open({str(path)!r}, 'rb').read()\n"],
        stdin=subprocess.PIPE)


@pytest.mark.slow
def test_a_run_records_what_its_process_tree_read_and_committed(
        local_registry, commit_tree, mount, tmp_path: Path) -> None:
    commit_tree("raw", {"data.txt": b"old"})
    commit_tree("raw", {"data.txt": b"new", "more.txt": b"more"})  # latest is v1
    commit_tree("other", {"x.bin": b"x"})
    commit_tree("model", {"w.bin": b"w0"})
    m = mount()
    outside = _reading_outside(m.artifact("other") / "v0" / "x.bin")
    script = (
        f'cat "{m.artifact("raw")}/latest/data.txt" "{m.artifact("raw")}/latest/more.txt" '
        f'> "{tmp_path}/copy" && '
        f'(cat "{m.artifact("raw")}/v1/data.txt" > /dev/null) && '
        f'printf trained > "{m.artifact("model")}/@staging/w.bin" && '
        f'"{PY}" -m artfs.cli commit "{m.artifact("model")}"')
    try:
        r = artfs("run", "--job-type", "train", "--", "bash", "-c", script)
    finally:
        outside.communicate(timeout=30)
    assert outside.returncode == 0 and "committed" in r.stdout
    [run] = _runs(local_registry, "train")
    path = f"{ENTITY}/{PROJECT}/{run.id}"
    assert run.inputs == [f"{ENTITY}/{PROJECT}/raw:v1"]  # once, as the version latest named
    assert run.outputs == [f"{ENTITY}/{PROJECT}/model:v1"] and run.state == "finished"
    model, _ = _version(local_registry, "model", 1)
    assert model.logged_by == path
    assert _version(local_registry, "raw", 1)[1] == [path]
    assert _version(local_registry, "raw", 0)[1] == []
    assert _version(local_registry, "other", 0)[1] == []  # read, but outside the run
    assert _runs(local_registry, "commit") == []  # the commit used the run, not its own


@pytest.mark.slow
def test_reads_through_a_mount_without_artfs_run_record_nothing(
        local_registry, commit_tree, mount) -> None:
    commit_tree("raw", {"data.txt": b"d"})
    m = mount()
    artfs("run", "--job-type", "elsewhere", "--", PY, "-c", "pass")  # a run that read nothing
    assert (m.artifact("raw") / "v0" / "data.txt").read_bytes() == b"d"
    assert _version(local_registry, "raw", 0)[1] == []
    assert [r.inputs for r in _runs(local_registry)] == [[]]


def _staged_commit(m, *args: str, check: bool = True):
    (m.artifact("model") / "@staging" / "w.bin").write_bytes(b"trained")
    return artfs("commit", str(m.artifact("model")), *args, check=check)


@pytest.mark.slow
def test_commit_input_and_job_type_name_the_lineage(local_registry, commit_tree, mount) -> None:
    commit_tree("raw", {"data.txt": b"d"})
    commit_tree("labels", {"l.txt": b"l"})
    commit_tree("model", {"w.bin": b"w0"})
    m = mount()
    _staged_commit(m, "--input", "raw:v0", "--input", f"{PROJECT}/labels:latest",
                   "--job-type", "fit")
    [run] = _runs(local_registry, "fit")
    assert run.inputs == [f"{ENTITY}/{PROJECT}/raw:v0", f"{ENTITY}/{PROJECT}/labels:v0"]
    assert _version(local_registry, "model", 1)[0].logged_by == f"{ENTITY}/{PROJECT}/{run.id}"
    assert _version(local_registry, "labels", 0)[1] == [f"{ENTITY}/{PROJECT}/{run.id}"]


@pytest.mark.slow
@pytest.mark.parametrize("args, culprit", [
    (["--input", "raw:v7"], "raw"),
    (["--input", "nosuch:latest"], "nosuch"),
    (["--input", "bad name!:v0"], "bad name!"),
    (["--job-type", "no/slash"], "no/slash"),
])
def test_a_bad_commit_input_fails_before_anything_is_committed(
        local_registry, commit_tree, mount, args, culprit) -> None:
    commit_tree("raw", {"data.txt": b"d"})
    commit_tree("model", {"w.bin": b"w0"})
    m = mount()
    r = _staged_commit(m, "--input", "raw:v0", *args, check=False)
    assert r.returncode != 0 and culprit in r.stderr, r.stderr
    reg = Registry(local_registry)
    try:
        assert reg.versions(ENTITY, PROJECT, "model") == [0]
    finally:
        reg.close()
    assert _runs(local_registry) == [] and _version(local_registry, "raw", 0)[1] == []
    assert (m.artifact("model") / "@staging" / "w.bin").read_bytes() == b"trained"


def _pipeline(tmp_path: Path) -> dict[str, str]:
    """raw → prep → clean → train → model → eval → report, logged with the SDK; run paths."""
    (tmp_path / "f").write_text("f")
    runs = {}
    steps = [("prep", None, "raw"), ("prep", "raw:v0", "clean"), ("train", "clean:v0", "model"),
             ("eval", "model:v0", "report")]
    for job, used, made in steps:
        with sdk.init(job_type=job, name=f"{job}-{made}") as run:
            if used:
                run.use_artifact(used)
            art = sdk.Artifact(made, type="data")
            art.add_file(str(tmp_path / "f"), name=made)
            run.log_artifact(art)
        runs[made] = f"{ENTITY}/{PROJECT}/{run.id}"
    return runs


def test_lineage_prints_the_graph_as_an_indented_tree(local_registry, tmp_path: Path) -> None:
    runs = _pipeline(tmp_path)
    q = f"{ENTITY}/{PROJECT}/"
    out = artfs("lineage", "model:v0", "--up", "1", "--down", "2").stdout.splitlines()
    assert out == [
        f"{q}model:v0",
        f"  made by run {runs['model']} 'train-model' (train, finished)",
        f"    from {q}clean:v0",
        f"  used by run {runs['report']} 'eval-report' (eval, finished)",
        f"    made {q}report:v0",
    ]
    deep = artfs("lineage", "report:latest", "--down", "0").stdout
    assert f"from {q}raw:v0" in deep and f"from {q}clean:v0" in deep and "used by" not in deep


def test_info_lists_the_inputs_and_users_of_a_version(local_registry, tmp_path: Path) -> None:
    runs = _pipeline(tmp_path)
    out = artfs("info", "model:v0").stdout
    assert f"inputs:      {ENTITY}/{PROJECT}/clean:v0\n" in out
    assert f"used_by:     {runs['report']}\n" in out


def test_lineage_refuses_a_negative_depth_naming_it(local_registry, tmp_path: Path) -> None:
    r = artfs("lineage", "x:v0", "--up", "-2", check=False)
    assert r.returncode == 1 and "-2" in r.stderr
