"""Access control is the bucket's: a read-only identity can download but not log.

A moto server of its own (IAM enforcement is server-wide) is set up without authentication,
then switched to enforce IAM for every request (`/moto-api/reset-auth` with 0). The reader's
policy is the README's shape, scoped to one entity's prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

import sdk
from artfs.errors import AccessDenied
from artfs.registry import init_registry
from tests.servers import S3_UNSET_ENV, boto3_pointed_at, s3_client_env, start_moto, stop_server

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
def enforcing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enforcing]:
    """A registry holding `acme/vision/data:v0`, on a moto server that enforces IAM."""
    work = tmp_path_factory.mktemp("iam")
    proc, endpoint = start_moto(work / "moto.log")
    try:
        with boto3_pointed_at(endpoint), pytest.MonkeyPatch.context() as mp:
            mp.setenv("ARTFS_ENTITY", ENTITY)
            mp.setenv("ARTFS_CACHE_DIR", str(work / "writer-cache"))
            mp.setenv("ARTFS_STATE_DIR", str(work / "writer-state"))
            iam = boto3.session.Session().client("iam")
            iam.create_user(UserName="reader")
            iam.put_user_policy(UserName="reader", PolicyName="read-acme",
                                PolicyDocument=json.dumps(read_only_policy(BUCKET, PREFIX,
                                                                           ENTITY)))
            key = iam.create_access_key(UserName="reader")["AccessKey"]
            boto3.session.Session().client("s3").create_bucket(Bucket=BUCKET)
            url = f"s3://{BUCKET}/{PREFIX}"
            src = work / "src"
            (src / "sub").mkdir(parents=True)
            (src / "a.txt").write_text("alpha")
            (src / "sub" / "b.txt").write_text("beta")
            init_registry(url)
            with sdk.init(job_type="setup", project=PROJECT, registry=url) as run:
                art = sdk.Artifact("data", type="dataset")
                art.add_dir(str(src))
                run.log_artifact(art)
        # From here on every request must carry credentials IAM allows.
        urllib.request.urlopen(urllib.request.Request(
            endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
            # Not form-encoded, or the server parses the body away as a form.
            headers={"Content-Type": "text/plain"})).close()
        reader_env = {**s3_client_env(endpoint), "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                      "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        yield Enforcing(url, reader_env)
    finally:
        stop_server(proc)


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
