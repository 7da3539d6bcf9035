"""`artfs ui` as a user meets it: the real command on a free port, driven in Debian's chromium
through selenium, over a registry that the SDK filled with versions, metadata, aliases and a
pipeline of runs (raw → preprocess → clean → train → model)."""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

import sdk
from tests.test_ui_cli import serving

ENTITY, PROJECT = "tester", "pipeline"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: Generous for a loaded 2-core machine: starting chromium can take seconds.
WAIT_S = 60
#: Files in one folder of raw:v0: more than a page of the version's file listing (200).
MANY = 230
SCREENSHOT_COPY = Path("/work/notes/ui-version.png")


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour, so the browser has an image to decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


CLEAN = [  # (files, metadata) of clean:v0, v1, v2
    ({"train.csv": b"a,b\n1,2\n", "notes.txt": b"first cut\n"},
     {"accuracy": 0.5, "loss": 1.25, "eval": {"f1": 0.3}, "split": "random"}),
    ({"train.csv": b"a,b\n1,2\n3,4\n", "notes.txt": b"first cut\n", "test.csv": b"a,b\n5,6\n"},
     {"accuracy": 0.7, "loss": 0.75, "eval": {"f1": 0.4}, "split": "random"}),
    ({"train.csv": b"a,b\n1,2\n3,4\n7,8\n", "test.csv": b"a,b\n5,6\n", "README.md": b"# clean\n"},
     {"accuracy": 0.9, "loss": 0.5, "eval": {"f1": 0.6}, "rows": 3}),
]


def _artifact(src: Path, name: str, type_: str, files: dict[str, bytes], **kw: object
              ) -> sdk.Artifact:
    art = sdk.Artifact(name, type=type_, **kw)
    for path, data in files.items():
        f = src / name / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        art.add_file(str(f), name=path)
    return art


def _fill(root: Path) -> dict[str, str]:
    """The registry the pages show; returns the run ids by job type."""
    src = root / "src"
    runs = {}
    raw = {"data/hello.txt": b"hello from the registry\n",
           "images/red.png": _png(8, 8, (220, 30, 30)),
           **{f"many/f{i:03d}.txt": f"{i}\n".encode() for i in range(MANY)}}
    with sdk.init(project=PROJECT, job_type="collect", name="collect-raw") as run:
        run.log_artifact(_artifact(src, "raw", "dataset", raw, metadata={"rows": 10}),
                         aliases=["first"])
    runs["collect"] = run.id
    with sdk.init(project=PROJECT, job_type="preprocess", name="prep-clean",
                  config={"seed": 7, "split": 0.8}) as run:
        run.use_artifact("raw:v0")
        for i, (files, meta) in enumerate(CLEAN):
            run.log_artifact(_artifact(src / f"c{i}", "clean", "dataset", files, metadata=meta,
                                       description="third cut" if i == 2 else None),
                             aliases=["best"] if i == 2 else None)
    runs["preprocess"] = run.id
    with sdk.init(project=PROJECT, job_type="train", name="train-model") as run:
        run.use_artifact("clean:best")
        run.log_artifact(_artifact(src, "model", "model", {"w.bin": b"\0\1\2weights"}))
        run.log_artifact(_artifact(src, "scratch", "scratch", {"tmp": b"tmp"}))
    runs["train"] = run.id
    from artfs.names import ArtifactRef
    from artfs.registry import Registry
    reg = Registry()
    reg.delete_version(ArtifactRef(ENTITY, PROJECT, "scratch", "v0"), delete_aliases=True)
    reg.close()
    return runs


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("ui-registry")
    url = str(root / "registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARTFS_REGISTRY", url)
        mp.setenv("ARTFS_CACHE_DIR", str(root / "cache"))
        mp.setenv("ARTFS_STATE_DIR", str(root / "state"))
        mp.setenv("ARTFS_ENTITY", ENTITY)
        mp.chdir(root)
        from artfs.registry import init_registry
        init_registry(url)
        runs = _fill(root)
    yield url, runs


@pytest.fixture(scope="module")
def server(registry: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[str]:
    """`artfs ui --port 0` as its own process; the URL it prints. Always stopped."""
    url, _ = registry
    root = tmp_path_factory.mktemp("ui-server")
    with serving({"ARTFS_REGISTRY": url, "ARTFS_CACHE_DIR": str(root / "cache"),
                  "ARTFS_STATE_DIR": str(root / "state"), "ARTFS_ENTITY": ENTITY}) as base:
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless chromium through the system chromedriver (nothing downloaded). Always quit."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            pytest.fail(f"{program} is missing: install Debian's chromium and chromium-driver "
                        "(`make test` does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                              options=options)
    try:
        driver.set_page_load_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()


def _navigate(browser: webdriver.Chrome, action: Callable[[], object]) -> None:
    """Do `action` (a click, a choice) and wait until the page it leads to has replaced this
    one."""
    old = browser.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(browser, WAIT_S).until(lambda d: old.id != d.find_element(By.TAG_NAME,
                                                                            "html").id)


def _click(browser: webdriver.Chrome, text: str) -> None:
    """Follow the link whose text is `text`, as a user would."""
    _navigate(browser, browser.find_element(By.LINK_TEXT, text).click)


def _texts(browser: webdriver.Chrome, css: str) -> list[str]:
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]


def test_links_from_the_root_lead_to_an_artifact_and_its_versions(browser, server) -> None:
    browser.get(server + "/")
    _click(browser, ENTITY)
    _click(browser, PROJECT)
    assert browser.current_url == f"{server}/{ENTITY}/{PROJECT}"
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-artifact="clean"]')
    assert row.find_element(By.CSS_SELECTOR, ".type").text == "dataset"
    assert row.find_element(By.CSS_SELECTOR, ".count").text == "3"
    assert "best → v2" in row.find_element(By.CSS_SELECTOR, ".aliases").text
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row.find_element(
        By.CSS_SELECTOR, ".updated").text)
    assert sorted(_texts(browser, "table.artifacts tbody td:first-child")) == [
        "clean", "model", "raw", "scratch"]
    scratch = browser.find_element(By.CSS_SELECTOR, 'tr[data-artifact="scratch"]')
    assert scratch.find_element(By.CSS_SELECTOR, ".count").text == "0"  # its one is deleted
    _click(browser, "clean")
    assert _texts(browser, "#versions tbody td:first-child") == ["v2", "v1", "v0"]
    headers = _texts(browser, "#versions thead th")
    assert headers[:5] == ["version ▼", "aliases", "created", "size", "files"]
    assert headers[5:] == ["accuracy", "eval.f1", "loss", "rows", "split"]
    v0 = browser.find_element(By.CSS_SELECTOR, 'tr[data-version="v0"]')
    assert v0.find_element(By.CSS_SELECTOR, 'td[data-key="loss"]').text == "1.25"
    assert v0.find_element(By.CSS_SELECTOR, 'td[data-key="split"]').text == "random"


def test_the_versions_table_sorts_by_a_metadata_column(browser, server) -> None:
    browser.get(f"{server}/{ENTITY}/{PROJECT}/clean")
    _click(browser, "loss")
    assert _texts(browser, "#versions tbody td:first-child") == ["v2", "v1", "v0"]
    _click(browser, "loss ▲")
    assert _texts(browser, "#versions tbody td:first-child") == ["v0", "v1", "v2"]
    _click(browser, "rows")  # only v2 has it: the others come last
    assert _texts(browser, "#versions tbody td:first-child")[0] == "v2"


def _version_page(browser: webdriver.Chrome, server: str) -> None:
    """From the artifact page to clean:v2 by its link, as a user goes there."""
    browser.get(f"{server}/{ENTITY}/{PROJECT}/clean")
    _click(browser, "v2")
    assert browser.current_url == f"{server}/{ENTITY}/{PROJECT}/clean/v2"


def test_a_version_page_shows_files_metadata_aliases_and_its_runs(
        browser, server, registry, tmp_path: Path) -> None:
    _, runs = registry
    _version_page(browser, server)
    files = {r.get_attribute("data-path"): r.text for r in
             browser.find_elements(By.CSS_SELECTOR, "#files tr.file")}
    assert sorted(files) == ["README.md", "test.csv", "train.csv"]
    data = CLEAN[2][0]["train.csv"]
    assert f"{len(data)} B" in files["train.csv"]
    assert hashlib.sha256(data).hexdigest() in files["train.csv"]
    meta = {r.get_attribute("data-key"): r.find_element(By.TAG_NAME, "td").text
            for r in browser.find_elements(By.CSS_SELECTOR, "#metadata tr")}
    assert meta == {"accuracy": "0.9", "eval.f1": "0.6", "loss": "0.5", "rows": "3"}
    assert _texts(browser, "#aliases .alias") == ["best", "latest"]
    assert browser.find_element(By.ID, "description").text == "third cut"
    producer = browser.find_element(By.ID, "producer")
    assert producer.find_element(By.CSS_SELECTOR, ".job-type").text == "preprocess"
    assert '"seed": 7' in producer.find_element(By.CSS_SELECTOR, ".config").text
    assert _texts(browser, "#inputs a") == [f"{ENTITY}/{PROJECT}/raw:v0"]
    assert _texts(browser, "#used-by a") == ["train-model"]
    shot = tmp_path / "ui-version.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if SCREENSHOT_COPY.parent.is_dir() and not SCREENSHOT_COPY.exists():
        shutil.copy(shot, SCREENSHOT_COPY)
    _click(browser, f"{ENTITY}/{PROJECT}/raw:v0")  # the input's own page
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("raw:v0")
    assert _texts_attr(browser, "#used-by a", "href") == [
        f"{server}/{ENTITY}/{PROJECT}/@runs/{runs['preprocess']}"]


def _texts_attr(browser: webdriver.Chrome, css: str, attr: str) -> list[str]:
    return [e.get_attribute(attr) or "" for e in browser.find_elements(By.CSS_SELECTOR, css)]


def test_the_lineage_graph_links_every_node_upstream_and_downstream(
        browser, server, registry) -> None:
    _, runs = registry
    _version_page(browser, server)
    nodes = browser.find_elements(By.CSS_SELECTOR, "svg#lineage a.node")
    found = {n.get_attribute("data-node"): n for n in nodes}
    q = f"{ENTITY}/{PROJECT}"
    chain = [f"r:{q}/{runs['collect']}", f"v:{q}/raw:v0", f"r:{q}/{runs['preprocess']}",
             f"v:{q}/clean:v2", f"r:{q}/{runs['train']}", f"v:{q}/model:v0"]
    assert set(found) == {*chain, f"v:{q}/scratch:v0"}
    assert "gone" in found[f"v:{q}/scratch:v0"].get_dom_attribute("class").split()
    assert "deleted" in found[f"v:{q}/scratch:v0"].text
    for node in nodes:
        assert urlsplit(node.get_dom_attribute("href")).path.startswith(f"/{ENTITY}/{PROJECT}/")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg#lineage path.edge")) == 6
    xs = [float(found[k].find_element(By.TAG_NAME, "rect").get_attribute("x")) for k in chain]
    assert xs == sorted(xs) and len(set(xs)) == len(chain)  # inputs left, users right
    # One run each way:
    _navigate(browser, browser.find_element(By.CSS_SELECTOR, 'a.depth[href*="depth=1#"]').click)
    shown = {n.get_dom_attribute("data-node") for n in browser.find_elements(
        By.CSS_SELECTOR, "svg#lineage a.node")}
    assert shown == {f"v:{q}/raw:v0", f"r:{q}/{runs['preprocess']}", f"v:{q}/clean:v2",
                     f"r:{q}/{runs['train']}", f"v:{q}/model:v0", f"v:{q}/scratch:v0"}
    found = {n.get_dom_attribute("data-node"): n for n in browser.find_elements(
        By.CSS_SELECTOR, "svg#lineage a.node")}
    found[f"r:{q}/{runs['train']}"].click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "/@runs/" in d.current_url)
    assert browser.find_element(By.CSS_SELECTOR, ".job-type").text == "train"
    assert _texts(browser, "ul.inputs a") == [f"{q}/clean:v2"]
    assert _texts(browser, "ul.outputs a") == [f"{q}/model:v0", f"{q}/scratch:v0"]


def test_text_and_image_files_are_previewed(browser, server) -> None:
    browser.get(f"{server}/{ENTITY}/{PROJECT}/raw/v0")
    _click(browser, "data/")
    _click(browser, "hello.txt")
    assert browser.find_element(By.CSS_SELECTOR, "#preview pre.text-preview").text == \
        "hello from the registry"
    browser.get(f"{server}/{ENTITY}/{PROJECT}/raw/v0?folder=images")
    _click(browser, "red.png")
    img = browser.find_element(By.CSS_SELECTOR, "#preview img.image-preview")
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return arguments[0].complete", img))
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 8


def test_a_big_folder_is_listed_a_page_at_a_time(browser, server) -> None:
    browser.get(f"{server}/{ENTITY}/{PROJECT}/raw/v0")
    _click(browser, "many/")
    first = _texts_attr(browser, "#files tr.file", "data-path")
    assert len(first) == 200 and first[0] == "many/f000.txt"
    _click(browser, "next →")
    rest = _texts_attr(browser, "#files tr.file", "data-path")
    assert rest == [f"many/f{i:03d}.txt" for i in range(200, MANY)]


def test_the_chart_has_a_point_per_version_and_a_chooser_for_the_key(
        browser, server, tmp_path: Path) -> None:
    browser.get(f"{server}/{ENTITY}/{PROJECT}/clean")
    assert browser.save_screenshot(str(tmp_path / "ui-artifact.png"))
    chart = browser.find_element(By.ID, "chart")
    assert chart.get_attribute("data-key") == "accuracy"
    path = chart.find_element(By.CSS_SELECTOR, "path.line").get_attribute("d")
    points = re.findall(r"[ML] ([\d.]+) ([\d.]+)", path)
    assert len(points) == len(CLEAN)
    ys = [float(y) for _, y in points]
    assert ys[0] > ys[1] > ys[2]  # accuracy rises; SVG y grows downwards
    _navigate(browser, lambda: Select(browser.find_element(By.ID, "chart-key"))
              .select_by_visible_text("loss"))  # ui.js submits the chooser on change
    chart = browser.find_element(By.ID, "chart")
    assert chart.get_attribute("data-key") == "loss"
    ys = [float(y) for _, y in re.findall(r"[ML] ([\d.]+) ([\d.]+)", chart.find_element(
        By.CSS_SELECTOR, "path.line").get_attribute("d"))]
    assert len(ys) == len(CLEAN) and ys[0] < ys[1] < ys[2]  # loss falls


def test_the_diff_of_two_versions_lists_files_and_metadata_changes(
        browser, server, tmp_path: Path) -> None:
    browser.get(f"{server}/{ENTITY}/{PROJECT}/clean")
    Select(browser.find_element(By.ID, "diff-a")).select_by_visible_text("v0")
    Select(browser.find_element(By.ID, "diff-b")).select_by_visible_text("v2")
    _navigate(browser, browser.find_element(By.ID, "diff-go").click)
    assert browser.save_screenshot(str(tmp_path / "ui-diff.png"))

    def paths(table: str) -> list[str]:
        return _texts_attr(browser, f"#{table} tr[data-path]", "data-path")
    assert paths("files-added") == ["README.md", "test.csv"]
    assert paths("files-removed") == ["notes.txt"]
    assert paths("files-changed") == ["train.csv"]
    changes = {r.get_attribute("data-key"): [c.text for c in r.find_elements(By.TAG_NAME, "td")]
               for r in browser.find_elements(By.CSS_SELECTOR, "#metadata-diff tbody tr")}
    assert changes == {
        "description": ["changed", "-", "third cut"],
        "accuracy": ["changed", "0.5", "0.9"], "eval.f1": ["changed", "0.3", "0.6"],
        "loss": ["changed", "1.25", "0.5"], "rows": ["added", "", "3"],
        "split": ["removed", "random", ""]}


BAD = {  # path → what the 404 page must name
    "/nobody": "'nobody'",
    f"/{ENTITY}/nope": f"{ENTITY}/nope",
    f"/{ENTITY}/{PROJECT}/missing": f"{ENTITY}/{PROJECT}/missing",
    f"/{ENTITY}/{PROJECT}/clean/v99": "clean:v99",
    f"/{ENTITY}/{PROJECT}/clean/no-such-alias": "no-such-alias",
    f"/{ENTITY}/{PROJECT}/clean/v2?folder=nowhere": "'nowhere'",
    f"/{ENTITY}/{PROJECT}/clean/v2?file=gone.txt": "'gone.txt'",
    f"/{ENTITY}/{PROJECT}/clean/v2/@raw/gone.txt": "'gone.txt'",
    f"/{ENTITY}/{PROJECT}/@runs/zzz": "zzz",
    f"/{ENTITY}/{PROJECT}/clean/@diff?a=v0&b=v7": "clean:v7",
    "/@static/nothing.css": "/@static/nothing.css",
    f"/{ENTITY}/{PROJECT}/clean/v2/and/more": "/and/more",
    f"/{ENTITY}/{PROJECT}/scratch/v0": "scratch:v0 was deleted",
}


@pytest.mark.parametrize("path", list(BAD))
def test_a_bad_url_gives_a_404_page_naming_what_was_not_found(browser, server, path) -> None:
    response = requests.get(server + path, timeout=WAIT_S)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Traceback" not in response.text
    browser.get(server + path)
    message = browser.find_element(By.CSS_SELECTOR, ".error-message").text
    assert BAD[path] in message, message
    assert "404" in browser.find_element(By.TAG_NAME, "h1").text


def test_a_bad_query_gives_a_400_page_naming_it(server) -> None:
    for query, named in (("clean?sort=colour", "sort='colour'"),
                         ("clean?chart=split", "chart='split'"),
                         ("raw/v0?offset=-3", "offset='-3'"), ("raw/v0?depth=99", "depth='99'")):
        response = requests.get(f"{server}/{ENTITY}/{PROJECT}/{query}", timeout=WAIT_S)
        assert response.status_code == 400 and named in html.unescape(response.text)
        assert "Traceback" not in response.text


def test_every_asset_comes_from_the_server_itself(browser, server) -> None:
    for path in (f"/{ENTITY}/{PROJECT}/clean", f"/{ENTITY}/{PROJECT}/clean/v2",
                 f"/{ENTITY}/{PROJECT}/raw/v0?folder=images&file=images/red.png"):
        browser.get(server + path)
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(u.startswith(server + "/") for u in loaded), loaded
        assert "default-src 'self'" in requests.get(
            server + path, timeout=WAIT_S).headers["Content-Security-Policy"]
