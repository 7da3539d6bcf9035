"""`artfs ui`'s bad inputs fail before serving, naming the culprit; a big version's folders
are read a page at a time (artfs/ui/model.py)."""

from __future__ import annotations

import hashlib
import html
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from artfs import keys
from artfs.manifest import Entry, Manifest
from artfs.names import ArtifactRef
from artfs.registry import Registry
from artfs.ui.model import (
    FolderIndex,
    Manifests,
    diff_versions,
    flatten,
    metadata_keys,
    sort_versions,
)
from tests.mount_fixtures import artfs

DIGEST = "ab" * 32
#: Generous for a loaded 2-core machine: starting the server can take seconds.
WAIT_S = 60


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[str]:
    """`artfs ui --port 0 ARGS` as its own process with `env` added; yields the URL it prints
    (without the last slash). Its log goes to a file, so it never blocks on a full pipe; the
    process is always stopped."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "artfs.cli", "ui", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **env})
        try:
            line: list[str] = []
            assert proc.stdout is not None
            reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()),
                                      daemon=True)
            reader.start()
            reader.join(WAIT_S)
            found = re.search(r"(http://\S+/)", line[0] if line else "")
            if found is None:
                proc.kill()
                proc.wait()
                log.seek(0)
                raise AssertionError(f"artfs ui printed no URL: {line!r}; log: {log.read()}")
            yield found.group(1).rstrip("/")
        finally:
            proc.terminate()
            try:
                proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def test_pages_read_a_registry_of_every_store_kind(
        registry_url: str, log_files: Callable[..., object]) -> None:
    text = b"line one\nline two\n"
    log_files("data", {"docs/readme.txt": text, "w.bin": b"\0\1\2"}, aliases=["good"])
    with serving({}) as base:  # ARTFS_REGISTRY, as the fixture set it
        page = requests.get(f"{base}/tester/uncategorized/data/good", timeout=WAIT_S)
        assert page.url.endswith("/data/v0") and "w.bin" in page.text
        assert hashlib.sha256(b"\0\1\2").hexdigest() in page.text
        preview = requests.get(f"{base}/tester/uncategorized/data/v0",
                               params={"file": "docs/readme.txt"}, timeout=WAIT_S)
        assert "line one\nline two" in html.unescape(preview.text)
        raw = requests.get(f"{base}/tester/uncategorized/data/v0/@raw/docs/readme.txt",
                           timeout=WAIT_S)
        assert raw.status_code == 200 and raw.content == text


def test_open_hands_the_page_to_the_web_browser(tmp_path: Path) -> None:
    url, opened = tmp_path / "registry", tmp_path / "opened"
    artfs("init", str(url))
    # $BROWSER is the command Python's webbrowser runs: here one that writes down the URL.
    browser = f"/bin/sh -c 'echo $0 > {opened}.tmp && mv {opened}.tmp {opened}' %s"
    with serving({"ARTFS_REGISTRY": str(url), "BROWSER": browser}, "--open") as base:
        assert base.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        deadline = time.monotonic() + WAIT_S
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert opened.read_text().strip() == base + "/"
        assert requests.get(base + "/", timeout=WAIT_S).status_code == 200


def test_ui_refuses_a_missing_registry_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-registry"
    r = artfs("ui", "--registry", str(missing), "--port", "0", check=False)
    assert r.returncode == 1 and str(missing) in r.stderr and "artfs init" in r.stderr
    assert not missing.exists()


def test_ui_refuses_a_port_out_of_range_naming_it(tmp_path: Path) -> None:
    r = artfs("ui", "--port", "70000", check=False)
    assert r.returncode == 1 and "--port 70000" in r.stderr


def test_ui_refuses_a_port_in_use_naming_it(tmp_path: Path) -> None:
    url = tmp_path / "registry"
    artfs("init", str(url))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = artfs("ui", "--registry", str(url), "--port", str(port), check=False)
    assert r.returncode == 1 and f"127.0.0.1:{port}" in r.stderr


def test_a_folder_of_a_big_version_is_read_a_page_at_a_time() -> None:
    manifest = Manifest(Entry(f"d{i % 10}/sub/f{i:06d}", 1, DIGEST) for i in range(100_000))
    index = FolderIndex(manifest)
    top, total = index.page("", 0, 200)
    assert total == 10 and [r.name for r in top] == [f"d{i}" for i in range(10)]
    assert all(r.entry is None for r in top)
    rows, total = index.page("d3/sub", 9_990, 200)
    assert total == 10_000 and len(rows) == 10
    assert rows[-1].path == "d3/sub/f099993" and rows[-1].entry == manifest["d3/sub/f099993"]
    assert index.is_folder("d3/sub") and not index.is_folder("d3/su") \
        and not index.is_folder("d3/sub/f000003")


def test_nested_metadata_becomes_dotted_columns() -> None:
    assert flatten({"eval": {"f1": 0.5, "per": {"a": 1}}, "empty": {}, "x": [1]}) == {
        "eval.f1": 0.5, "eval.per.a": 1, "empty": {}, "x": [1]}


def _version(n: int, metadata: dict) -> object:
    from artfs.records import Version
    return Version("e", "p", "n", "t", n, DIGEST, 0, 0, "2026-01-01", None, None, metadata)


def test_a_mixed_column_sorts_numbers_then_text_and_missing_last() -> None:
    vs = [_version(0, {"k": "b"}), _version(1, {}), _version(2, {"k": 3}), _version(3, {"k": 1})]
    assert [v.version for v in sort_versions(vs, "m.k", False)] == [3, 2, 0, 1]
    assert [v.version for v in sort_versions(vs, "m.k", True)] == [0, 2, 3, 1]


def test_a_diff_names_added_removed_changed_files_and_metadata() -> None:
    other = "cd" * 32
    a = Manifest([Entry("same", 1, DIGEST), Entry("gone", 1, DIGEST), Entry("edit", 1, DIGEST)])
    b = Manifest([Entry("same", 1, DIGEST), Entry("new", 2, other), Entry("edit", 2, other)])
    d = diff_versions(_version(0, {"a": 1, "b": 2}), a, _version(1, {"b": 3, "c": 4}), b)
    assert [e.path for e in d.added] == ["new"] and [e.path for e in d.removed] == ["gone"]
    assert [(o.path, n.size) for o, n in d.changed] == [("edit", 2)]
    assert [(c.key, c.kind, c.old, c.new) for c in d.metadata] == [
        ("a", "removed", 1, None), ("b", "changed", 2, 3), ("c", "added", None, 4)]


@pytest.mark.slow
def test_a_version_of_100k_files_is_shown_a_page_at_a_time(tmp_path: Path) -> None:
    url = str(tmp_path / "registry")
    artfs("init", url)
    reg = Registry(url)
    digest = reg.put_blob("tester", b"x")
    files = 100_000
    reg.commit("tester", "p", "big", "dataset", Manifest(
        Entry(f"big/f{i:06d}", 1, digest) for i in range(files)))
    reg.close()
    with serving({"ARTFS_REGISTRY": url}) as base:
        page = requests.get(f"{base}/tester/p/big/v0", params={"folder": "big"},
                            timeout=WAIT_S * 3)
        assert page.status_code == 200 and "of 100,000" in page.text
        assert len(re.findall(r'<tr class="file"', page.text)) == 200
        assert len(page.content) < 200_000
        last = requests.get(f"{base}/tester/p/big/v0",
                            params={"folder": "big", "offset": files - 50}, timeout=WAIT_S)
        shown = re.findall(r'<tr class="file" data-path="([^"]+)"', last.text)
        assert shown == [f"big/f{i:06d}" for i in range(files - 50, files)]


def test_parsed_manifests_are_kept_within_a_budget_of_entries(tmp_path: Path) -> None:
    url = str(tmp_path / "registry")
    artfs("init", url)
    reg = Registry(url)
    try:
        digest = reg.put_blob("tester", b"x")
        versions = []
        for n in range(3):
            reg.commit("tester", "p", "a", "t", Manifest(
                Entry(f"f{n}-{i}", 1, digest) for i in range(10)))
            versions.append(reg.version(ArtifactRef("tester", "p", "a", f"v{n}")))
        kept = Manifests(reg, entries_kept=20)
        first = kept.get(versions[0])
        assert kept.get(versions[0]) is first  # read once
        kept.get(versions[1])
        kept.get(versions[2])  # 30 entries > 20: the least recently used goes
        assert kept.get(versions[0]) is not first
        assert kept.get(versions[2]) is kept.get(versions[2])
    finally:
        reg.close()


def test_a_damaged_record_gives_an_error_page_naming_it_not_a_traceback(tmp_path: Path) -> None:
    url = tmp_path / "registry"
    artfs("init", str(url))
    reg = Registry(str(url))
    reg.commit("tester", "p", "a", "t", Manifest([Entry("f", 1, reg.put_blob("tester", b"x"))]))
    reg.close()
    record = keys.artifact("tester", "p", "a").version(0)
    (url / record).write_text("{not json")
    with serving({"ARTFS_REGISTRY": str(url)}) as base:
        page = requests.get(f"{base}/tester/p/a/v0", timeout=WAIT_S)
    assert page.status_code == 500 and page.headers["Content-Type"].startswith("text/html")
    assert record in html.unescape(page.text) and "Traceback" not in page.text


def test_a_key_numeric_in_some_versions_can_be_charted() -> None:
    vs = [_version(0, {"acc": 0.5, "name": "a"}), _version(1, {"acc": "n/a"}),
          _version(2, {"acc": 0.7, "eval": {"f1": True}})]
    assert metadata_keys(vs) == (["acc", "eval.f1", "name"], ["acc"])
