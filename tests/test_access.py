"""Access control is the bucket's: a read-only identity can download but not log.

The moto server that enforces IAM for every request (`iam_s3` in tests/servers.py) holds the
registry, written by its admin identity. The reader's policy is the README's shape, scoped to
one entity's prefix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

import sdk
from artfs.errors import AccessDenied
from artfs.registry import init_registry
from tests.servers import S3_UNSET_ENV, IamS3, identity_env

ENTITY, PROJECT = "acme", "vision"
BUCKET, PREFIX = "ml-registry", "prod"


def read_only_policy(bucket: str, prefix: str, entity: str) -> dict[str, object]:
    """The README's example: read everything of one entity, nothing else, no writes."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/registry.json",
                          f"arn:aws:s3:::{bucket}/{prefix}/entities/{entity}/*"]},
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}",
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/entities/{entity}/*",
                                                        f"{prefix}/entities/"]}}},
        ],
    }


@dataclass(frozen=True)
class Enforcing:
    url: str
    #: boto3 variables for the read-only identity.
    reader_env: dict[str, str]


@pytest.fixture(scope="module")
def enforcing(iam_s3: IamS3, tmp_path_factory: pytest.TempPathFactory) -> Enforcing:
    """A registry holding `acme/vision/data:v0`, on a moto server that enforces IAM."""
    work = tmp_path_factory.mktemp("iam")
    url = f"s3://{BUCKET}/{PREFIX}"
    iam_s3.client("s3").create_bucket(Bucket=BUCKET)
    with identity_env(iam_s3.admin_env), pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARTFS_ENTITY", ENTITY)
        mp.setenv("ARTFS_CACHE_DIR", str(work / "writer-cache"))
        mp.setenv("ARTFS_STATE_DIR", str(work / "writer-state"))
        src = work / "src"
        (src / "sub").mkdir(parents=True)
        (src / "a.txt").write_text("alpha")
        (src / "sub" / "b.txt").write_text("beta")
        init_registry(url)
        with sdk.init(job_type="setup", project=PROJECT, registry=url) as run:
            art = sdk.Artifact("data", type="dataset")
            art.add_dir(str(src))
            run.log_artifact(art)
    return Enforcing(url, iam_s3.identity(read_only_policy(BUCKET, PREFIX, ENTITY)))


@pytest.fixture
def as_reader(enforcing: Enforcing, monkeypatch: pytest.MonkeyPatch) -> Enforcing:
    for name in S3_UNSET_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in enforcing.reader_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ARTFS_ENTITY", ENTITY)
    monkeypatch.setenv("ARTFS_PROJECT", PROJECT)
    monkeypatch.setenv("ARTFS_REGISTRY", enforcing.url)
    return enforcing


def test_the_server_enforces_the_policy(as_reader: Enforcing) -> None:
    """Without this, the tests below would prove nothing."""
    s3 = boto3.session.Session().client("s3")  # boto3.client() would reuse cached credentials
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/entities/{ENTITY}/x", Body=b"x")
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/entities/other/x")


def test_a_read_only_identity_can_download(as_reader: Enforcing, tmp_path: Path) -> None:
    art = sdk.Api().artifact("data:latest")
    dest = Path(art.download(tmp_path / "dl"))
    assert (dest / "a.txt").read_text() == "alpha"
    assert (dest / "sub" / "b.txt").read_text() == "beta"


def test_a_read_only_identity_gets_access_denied_naming_the_registry_when_logging(
    as_reader: Enforcing, tmp_path: Path
) -> None:
    (tmp_path / "new.txt").write_text("new")
    with pytest.raises(AccessDenied) as exc:
        # Starting a run already writes its record, so the refusal may come from init().
        with sdk.init(job_type="train") as run:
            art = sdk.Artifact("data", type="dataset")
            art.add_file(str(tmp_path / "new.txt"))
            run.log_artifact(art).wait()
    assert "access denied" in str(exc.value) and as_reader.url in str(exc.value)
    assert sdk.Api().artifact("data:latest").version == "v0"


def test_cli_put_as_a_read_only_identity_is_a_clear_error_not_a_traceback(
    as_reader: Enforcing, tmp_path: Path
) -> None:
    (tmp_path / "new.txt").write_text("new")
    proc = subprocess.run(
        [sys.executable, "-m", "artfs.cli", "put", str(tmp_path / "new.txt"), "--name", "data",
         "--type", "dataset", "--registry", as_reader.url],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("artfs: error: access denied")
    assert as_reader.url in proc.stderr and "Traceback" not in proc.stderr
