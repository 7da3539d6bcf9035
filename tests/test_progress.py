"""Byte-based progress on a terminal for put, get and download(); nothing when the output is
not a terminal, or with --quiet."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from artfs.registry import init_registry

ARTFS = [sys.executable, "-m", "artfs.cli"]
#: Big enough that moving it to and from the S3 test server takes well over the bar's delay.
SIZE = 192 * 1024 * 1024


def on_terminal(argv: list[str]) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal; its exit code and what the terminal showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=slave, timeout=300)
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def shows_a_byte_bar(screen: str) -> bool:
    """A bar with sizes in bytes, a rate and a time left, e.g. `120M/192M [00:00<00:00,
    250MB/s]`."""
    size, rate = r"\d+(\.\d+)?[kMG]?", r"\d+(\.\d+)?[kMG]?B/s"
    return bool(re.search(rf"{size}/192M \[\d\d:\d\d<\d\d:\d\d, *{rate}\]", screen))


@pytest.fixture
def s3_registry(make_store_url: Callable[[str], str], monkeypatch: pytest.MonkeyPatch,
                tmp_path: Path) -> Path:
    url = make_store_url("s3")
    init_registry(url)
    monkeypatch.setenv("ARTFS_REGISTRY", url)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.write(os.urandom(SIZE))
    return big


@pytest.mark.slow
def test_put_and_get_show_bytes_rate_and_time_left_on_a_terminal(s3_registry: Path,
                                                                  tmp_path: Path) -> None:
    code, screen = on_terminal([*ARTFS, "put", str(s3_registry), "--name", "big", "--type",
                                "dataset"])
    assert code == 0 and shows_a_byte_bar(screen), screen[-2000:]
    code, screen = on_terminal([*ARTFS, "get", "big", str(tmp_path / "out")])
    assert code == 0 and shows_a_byte_bar(screen), screen[-2000:]
    assert (tmp_path / "out" / "big.bin").stat().st_size == SIZE


@pytest.mark.slow
def test_sdk_download_shows_progress_on_a_terminal(s3_registry: Path, tmp_path: Path) -> None:
    subprocess.run([*ARTFS, "put", str(s3_registry), "--name", "big", "--type", "dataset"],
                   check=True, capture_output=True, timeout=300)
    script = (f"import sdk; sdk.Api().artifact('big').download({str(tmp_path / 'dl')!r})")
    code, screen = on_terminal([sys.executable, "-c", script])
    assert code == 0 and shows_a_byte_bar(screen), screen[-2000:]


@pytest.mark.slow
def test_quiet_or_no_terminal_shows_nothing(s3_registry: Path, tmp_path: Path) -> None:
    code, screen = on_terminal([*ARTFS, "put", str(s3_registry), "--name", "big", "--type",
                                "dataset", "--quiet"])
    assert code == 0 and screen == ""
    out = subprocess.run([*ARTFS, "get", "big", str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stderr == ""
    code, screen = on_terminal([*ARTFS, "get", "-q", "big", str(tmp_path / "again")])
    assert code == 0 and screen == ""


@pytest.mark.slow
def test_commit_shows_the_bytes_the_mount_uploads(s3_registry: Path, commit_tree, mount) -> None:
    commit_tree("ds", {"a.txt": b"alpha"})
    m = mount()
    shutil.copy(s3_registry, m.artifact("ds") / "@staging" / "big.bin")
    code, screen = on_terminal([*ARTFS, "commit", str(m.artifact("ds"))])
    assert code == 0 and shows_a_byte_bar(screen), screen[-2000:]
    (m.artifact("ds") / "@staging" / "other.bin").write_bytes(os.urandom(SIZE))
    code, screen = on_terminal([*ARTFS, "commit", "--quiet", str(m.artifact("ds"))])
    assert code == 0 and screen == ""
