"""Lineage of the filesystem workflow: `artfs run -- CMD` records what CMD's process tree read
through a mount and what it committed; `artfs commit --input`; `artfs lineage`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_run_tells_the_command_its_run(local_registry) -> None:
    out = artfs("run", "--job-type", "env", "--", PY, "-c",
                "import os; print(os.environ['ARTFS_RUN_ID'])").stdout.strip()
    [run] = _runs(local_registry, "env")
    assert out == f"{ENTITY}/{PROJECT}/{run.id}"


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
