"""`http(s)://` references: ETag and Content-Length at add time, checked again at use time.

A URL has no version to pin, so the ETag is the check: reads send `If-Match` (nginx and most
servers answer 412 once the resource changed) and the response's own ETag is compared too, for
servers that ignore `If-Match`. A weak ETag (`W/"..."`) can never satisfy `If-Match`, so it is
only compared. `Accept-Encoding: identity` keeps Content-Length the length of the bytes the user
gets. A server that sends no ETag leaves only the length to check; artfs records what the
server gives and says so in the log, rather than downloading the whole file to hash it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..errors import AccessDenied, SourceError
from ..manifest import Entry
from ..names import check_entry_path
from .naming import entry_name
from .verify import STREAM_CHUNK, StreamCheck, changed, check_range, expected_range, vanished

log = logging.getLogger(__name__)

#: (connect, read) seconds: a dead host fails fast, a slow large download is not cut off.
TIMEOUT = (10, 60)
#: Connection errors and 5xx on these idempotent GETs are retried with backoff (0.5, 1, 2...).
RETRIES = Retry(total=5, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504),
                allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False)
BASE_HEADERS = {"Accept-Encoding": "identity"}

_local = threading.local()


def session() -> requests.Session:
    """One session per thread: requests does not promise a Session is thread-safe."""
    s = getattr(_local, "session", None)
    if s is None:
        s = requests.Session()
        adapter = HTTPAdapter(max_retries=RETRIES)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        _local.session = s
    return s


def _leaf(uri: str) -> str:
    return PurePosixPath(unquote(urlparse(uri).path)).name


def expand(uri: str, name: str | None, checksum: bool, max_objects: int) -> list[Entry]:
    """One entry; a URL is never a prefix. Its headers are read from a GET (not HEAD, which
    some servers and presigned URLs refuse) whose body is never read."""
    leaf = _leaf(uri)
    if name is None and not leaf:
        raise SourceError(f"reference {uri} names no file; pass name= to add_reference")
    path = check_entry_path(entry_name(leaf, name, None))
    if not checksum:
        return [Entry(path, None, None, uri)]
    try:
        with session().get(uri, headers=BASE_HEADERS, stream=True, timeout=TIMEOUT) as r:
            _check_add_status(uri, r)
            etag = r.headers.get("ETag")
            length = r.headers.get("Content-Length")
    except requests.RequestException as e:
        raise SourceError(f"cannot read reference {uri}: {e}") from e
    extra: dict[str, Any] = {}
    if etag:
        extra["etag"] = etag
    else:
        log.warning("reference %s: the server sends no ETag; only its length will be "
                    "checked when it is downloaded", uri)
    size = int(length) if length is not None and length.isdigit() else None
    return [Entry(path, size, None, uri, extra)]


def _check_add_status(uri: str, r: requests.Response) -> None:
    if r.status_code in (401, 403):
        raise AccessDenied(f"access denied to reference {uri} (HTTP {r.status_code})")
    if r.status_code in (404, 410):
        raise SourceError(f"reference {uri} does not exist (HTTP {r.status_code})")
    if r.status_code != 200:
        raise SourceError(f"cannot read reference {uri}: HTTP {r.status_code} {r.reason}")


def _headers(entry: Entry, extra_headers: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(BASE_HEADERS)
    etag = entry.extra.get("etag")
    if etag and not etag.startswith("W/"):
        headers["If-Match"] = etag
    if extra_headers:
        headers.update(extra_headers)
    return headers


def _check_read_status(entry: Entry, r: requests.Response, ok: tuple[int, ...]) -> None:
    if r.status_code in ok:
        recorded, got = entry.extra.get("etag"), r.headers.get("ETag")
        if recorded and got != recorded:
            raise changed(entry, f"ETag {got} differs from recorded {recorded}")
        return
    if r.status_code == 412:
        raise changed(entry, f"its ETag is no longer {entry.extra.get('etag')}")
    if r.status_code in (404, 410):
        raise vanished(entry, f"HTTP {r.status_code}")
    if r.status_code in (401, 403):
        raise AccessDenied(f"access denied reading reference {entry.ref} (entry {entry.path}): "
                           f"HTTP {r.status_code}")
    raise SourceError(f"cannot read reference {entry.ref} (entry {entry.path}): "
                      f"HTTP {r.status_code} {r.reason}")


def fetch(entry: Entry, dest: Path) -> None:
    """Download to `dest`, refusing a resource whose ETag or length is not the recorded one;
    without a checksum, whatever the URL serves now."""
    assert entry.ref is not None
    check = StreamCheck(entry)
    try:
        with session().get(entry.ref, headers=_headers(entry), stream=True,
                           timeout=TIMEOUT) as r:
            _check_read_status(entry, r, (200,))
            with open(dest, "wb") as f:
                for chunk in r.iter_content(STREAM_CHUNK):
                    check.update(chunk)
                    f.write(chunk)
    except requests.RequestException as e:
        raise SourceError(f"cannot read reference {entry.ref} (entry {entry.path}): {e}") from e
    check.check()


def read_range(entry: Entry, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` (fewer at the end), by a `Range` request; a server that
    ignores Range sends the whole body, of which only the range is kept."""
    assert entry.ref is not None
    expected = expected_range(entry, offset, length)
    if expected == 0 or length == 0:
        return b""
    want = expected if expected is not None else length
    rng = {"Range": f"bytes={offset}-{offset + want - 1}"}
    try:
        with session().get(entry.ref, headers=_headers(entry, rng), stream=True,
                           timeout=TIMEOUT) as r:
            if r.status_code == 416 and expected is None:
                return b""  # past the end of a resource whose size was not recorded
            _check_read_status(entry, r, (200, 206))
            if r.status_code == 206:
                total = r.headers.get("Content-Range", "").rpartition("/")[2]
                if entry.size is not None and total.isdigit() and int(total) != entry.size:
                    raise changed(entry, f"recorded {entry.size} bytes, now {total}")
                data = r.content
            else:
                data = _slice_of_stream(r, offset, want)
    except requests.RequestException as e:
        raise SourceError(f"cannot read reference {entry.ref} (entry {entry.path}): {e}") from e
    return check_range(entry, offset, expected, data)


def _slice_of_stream(r: requests.Response, offset: int, length: int) -> bytes:
    out = bytearray()
    pos = 0
    for chunk in r.iter_content(STREAM_CHUNK):
        start = max(0, offset - pos)
        if start < len(chunk):
            out += chunk[start:start + length - len(out)]
        pos += len(chunk)
        if len(out) >= length:
            break
    return bytes(out)
