"""`sdk.init` with W&B's keywords, modes, and what artfs does not cover (issue 12, item 6)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import sdk
from artfs.errors import ArtfsError
from artfs.registry import Registry

ENTITY, PROJECT = "tester", "uncategorized"


def draft(name: str = "ds", text: str = "a") -> sdk.Artifact:
    art = sdk.Artifact(name, type="dataset")
    with art.new_file("a.txt") as f:
        f.write(text)
    return art


def test_init_records_name_config_tags_notes_and_group(registry_url: str) -> None:
    with sdk.init(job_type="train", name="baseline", config={"lr": 0.1, "layers": [64, 64]},
                  tags=["exp", "cpu"], notes="first try", group="sweep-1") as run:
        run.config.update({"epochs": 3})
        run.config.batch = 32
        art = run.log_artifact(draft())
    by = sdk.Api().artifact("ds:v0").logged_by()
    assert by.path == run.path and by.name == "baseline"
    assert by.config == {"lr": 0.1, "layers": [64, 64], "epochs": 3, "batch": 32}
    assert by.config.lr == 0.1
    assert (by.tags, by.notes, by.group, by.job_type) == (("exp", "cpu"), "first try",
                                                         "sweep-1", "train")
    assert art.logged_by().config["epochs"] == 3


def test_init_takes_an_argparse_namespace_and_include_exclude_keys(registry_url: str) -> None:
    ns = argparse.Namespace(lr=0.1, seed=7, secret="x")
    with sdk.init(job_type="train", config=ns, config_exclude_keys=["secret"]) as run:
        run.log_artifact(draft())
    assert sdk.Api().artifact("ds:v0").logged_by().config == {"lr": 0.1, "seed": 7}


def test_a_config_that_is_not_json_is_refused_naming_it(registry_url: str) -> None:
    with pytest.raises(ArtfsError, match="config.*not JSON-serialisable"):
        sdk.init(job_type="train", config={"model": object()})
    assert sdk.run is None


@pytest.mark.parametrize("call", ["log", "define_metric", "watch", "alert", "log_code"])
def test_non_artifact_features_say_artfs_covers_artifacts_only(registry_url: str,
                                                              call: str) -> None:
    with sdk.init(job_type="train") as run:
        with pytest.raises(NotImplementedError, match=rf"(?i)run\.{call}\(\).*artifacts only"):
            getattr(run, call)({"loss": 0.1})
        with pytest.raises(NotImplementedError, match="(?i)summary.*artifacts only"):
            run.summary  # noqa: B018


@pytest.mark.parametrize("keyword", ["sync_tensorboard", "save_code", "monitor_gym"])
def test_unsupported_init_features_are_refused_naming_them(registry_url: str,
                                                           keyword: str) -> None:
    with pytest.raises(NotImplementedError, match=keyword):
        sdk.init(job_type="train", **{keyword: True})


def test_init_accepts_the_keywords_that_change_nothing_here(registry_url: str,
                                                            tmp_path: Path) -> None:
    with sdk.init(entity="acme", project="p", dir=str(tmp_path), reinit=True, force=False,
                  allow_val_change=True, settings={"silent": True}, mode="online",
                  job_type="eval") as run:
        run.log_artifact(draft())
    assert sdk.Api().artifact("acme/p/ds:v0").logged_by().job_type == "eval"


def test_disabled_mode_logs_and_uses_nothing(registry_url: str) -> None:
    run = sdk.init(job_type="train", mode="disabled")
    art = draft()
    result = run.log_artifact(art)
    result.wait()  # as W&B's: a stand-in whose every call does nothing
    assert run.use_artifact("ds:latest") is None
    assert run.log({"loss": 1}) is None and run.summary == {}
    run.finish()
    assert art.is_draft()
    assert not sdk.Api().artifact_exists("ds")


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_offline_mode_works_on_a_local_registry(registry_url: str) -> None:
    with sdk.init(job_type="train", mode="offline") as run:
        assert run.offline
        run.log_artifact(draft())
    assert sdk.Api().artifact("ds:v0").version == "v0"


@pytest.mark.parametrize("registry_url", ["s3"], indirect=True)
def test_offline_mode_on_a_remote_registry_fails_saying_why(registry_url: str) -> None:
    with pytest.raises(ArtfsError, match=r"offline.*local path.*s3://"):
        sdk.init(job_type="train", mode="offline")
    assert list(Registry(registry_url).store.list(f"entities/{ENTITY}/")) == []


def test_an_unknown_mode_is_refused_naming_it(registry_url: str) -> None:
    with pytest.raises(ValueError, match="'sometimes'"):
        sdk.init(job_type="train", mode="sometimes")


def test_id_and_resume_continue_a_run(registry_url: str) -> None:
    with sdk.init(job_type="train", id="run-42", config={"a": 1}) as first:
        first.log_artifact(draft("one"))
    with pytest.raises(sdk.RunExistsError, match="run-42.*resume"):
        sdk.init(job_type="train", id="run-42")
    with sdk.init(job_type="train", id="run-42", resume="allow", config={"b": 2}) as again:
        again.log_artifact(draft("two"))
    past = sdk.Api().run(f"{ENTITY}/{PROJECT}/run-42")
    assert [a.name for a in past.logged_artifacts()] == ["one:v0", "two:v0"]
    assert past.config == {"a": 1, "b": 2}
    with pytest.raises(sdk.RunExistsError, match="run-43"):
        sdk.init(job_type="train", id="run-43", resume="must")


def test_a_run_whose_log_failed_is_recorded_as_failed(registry_url: str,
                                                       tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    art = sdk.Artifact("ds", type="dataset")
    art.add_file(tmp_path / "a.txt", policy="immutable")
    (tmp_path / "a.txt").write_text("changed")
    with pytest.raises(ArtfsError, match="a.txt"), sdk.init(job_type="train") as run:
        run.log_artifact(art)
    assert sdk.Api().run(run.path).state == "failed"
    with sdk.init(job_type="train") as ok:
        ok.log_artifact(draft())
    assert sdk.Api().run(ok.path).state == "finished"


def test_sdk_run_is_the_active_run(registry_url: str) -> None:
    assert sdk.run is None
    with sdk.init(job_type="train") as run:
        assert sdk.run is run
        sdk.log_artifact(draft())
    assert sdk.run is None
    assert sdk.Api().artifact("ds:v0").logged_by().path == run.path


WANDB_SCRIPT = """
import sdk as wandb

run = wandb.init(project="bikes", job_type="train", config={"lr": 0.01}, tags=["demo"])
for i in range(3):
    with open("model.h5", "w") as f:
        f.write(f"weights {i}")
    artifact = wandb.Artifact("bike-model", type="model", metadata={"index": i})
    artifact.add_file("model.h5")
    run.log_artifact(artifact, aliases=["best"] if i == 1 else None)
run.finish()

api = wandb.Api()
best = api.artifact("bikes/bike-model:best")
print(best.name, best.qualified_name.split("/", 1)[1], best.metadata["index"])
print(best.logged_by().config["lr"])
print([a.version for a in api.artifacts("model", "bikes/bike-model")])
print([a.version for a in api.artifacts("model", "bikes/bike-model",
                                        filters={"metadata.index": {"$gte": 1}})])
with wandb.init(project="bikes", job_type="eval") as run:
    art = run.use_artifact("bike-model:v2")
    path = art.download()
    print(open(path + "/model.h5").read())
    draft = art.new_draft()
    draft.remove("model.h5")
    with draft.new_file("README.md") as f:
        f.write("no weights")
    run.log_artifact(draft)
print(wandb.Api().artifact("bikes/bike-model:latest").name)
"""


@pytest.mark.parametrize("registry_url", ["local"], indirect=True)
def test_a_wandb_artifacts_script_runs_after_import_sdk_as_wandb(
        registry_url: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", WANDB_SCRIPT], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "bike-model:v1 bikes/bike-model:v1 1",
        "0.01",
        "['v2', 'v1', 'v0']",
        "['v2', 'v1']",
        "weights 2",
        "bike-model:v3",
    ]
