"""A real HTTP server for reference tests: Debian's nginx serving a folder on 127.0.0.1.

Loaded as a pytest plugin. nginx sends what real static servers send (ETag as mtime-size,
Content-Length, Accept-Ranges, 206 for Range, 412 for a failed If-Match); a second location
serves the same folder with `etag off`, for the "server sends no ETag" case, and `/denied/`
answers 403 to everything.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import STARTUP_TIMEOUT_S, stop_server

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """\
daemon off;
{user}worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /noetag/ {{
            alias {root}/;
            etag off;
        }}
        location /denied/ {{
            return 403;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class HttpServer:
    """`url(rel)` is `root/rel` served with ETags; `url(rel, etag=False)` without;
    `base + '/denied/...'` is always 403."""

    root: Path
    base: str

    def url(self, rel: str, etag: bool = True) -> str:
        return f"{self.base}/{'' if etag else 'noetag/'}{rel}"


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (apt-get install nginx)")
    work = tmp_path_factory.mktemp("nginx")
    root = work / "www"
    root.mkdir()
    (work / "tmp").mkdir()
    (root / "ready").write_text("ok")
    for attempt in range(3):
        port = _free_port()  # nginx cannot report a port picked by the OS: retry on a race
        conf = work / "nginx.conf"
        conf.write_text(CONFIG.format(work=work, root=root, port=port, user=_user_line()))
        log = work / "error.log"
        with open(work / "stderr.log", "wb") as out:
            proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work)],
                                    stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        if _wait(proc, base + "/ready"):
            break
        stop_server(proc)
        if attempt == 2:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"nginx did not start:\n{text}{(work / 'stderr.log').read_text()}")
    try:
        yield HttpServer(root, base)
    finally:
        stop_server(proc)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_line() -> str:
    # Started as root, nginx's workers would switch to `nobody`, who cannot read pytest's
    # private temp folders: keep them as the user running the tests.
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};\n"


def _wait(proc: subprocess.Popen[bytes], url: str) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False  # most likely the port was taken meanwhile
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.05)
    return False
