"""A small fault-injecting HTTP proxy for tests: a flaky network in front of a real server.

Clients point their endpoint (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST) at the proxy; it
forwards each request to the real server unchanged (Host header included, so signatures and
URLs the server builds stay valid) except that a seeded fraction of requests meets one fault:

- ``drop_before``: the connection closes before the request reaches the server;
- ``drop_after``: the server handles the request, then the connection closes before the
  response: the write happened but the client cannot know (the case conditional writes must
  recognise when they are resent);
- ``error_500`` / ``error_503`` / ``slowdown``: an error answered in the server's place
  (``slowdown`` is S3's throttling reply, 503 with code SlowDown);
- ``truncate``: the response headers promise the full body, then the connection closes halfway.

`outage_after(n)` drops every request after the next `n`, to place a hard failure at each step
of a commit. `inject(fault, when, times)` aims a fault at the next requests a predicate picks
(say, the ranged GETs of one blob), and can also ``stall``: send the headers and half the body,
then hold the rest until the test calls `release()`, or ``hold`` a request before forwarding
it until then (`stalled` is set meanwhile, so a test waits on that event, not a clock).
Counters say how many faults of each kind were injected (`outage` apart), so a test can prove
faults happened rather than assume it; `seen` lists every request as (method, path, Range).
"""

from __future__ import annotations

import collections
import http.client
import random
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: Every fault the proxy can inject; `FaultProxy(faults=...)` picks a subset.
FAULTS = ("drop_before", "drop_after", "error_500", "error_503", "slowdown", "truncate")

#: Faults only `inject` aims (never drawn at random): a stalled response waits for `release`
#: with half its body sent; a held request waits for it before it is forwarded at all.
AIMED_FAULTS = (*FAULTS, "stall", "hold")
#: How long a stalled response waits for `release` before it goes on by itself, so a failing
#: test cannot leave a client hanging forever.
STALL_LIMIT_S = 120.0

#: Hop-by-hop headers (RFC 9110 §7.6.1) are the proxy's own business, never forwarded.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-connection", "proxy-authenticate", "proxy-authorization"}

_S3_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    "<Message>injected by faultproxy</Message></Error>"
)
_ERRORS = {
    "error_500": (500, "InternalError"),
    "error_503": (503, "ServiceUnavailable"),
    "slowdown": (503, "SlowDown"),
}


@dataclass(frozen=True)
class Request:
    """One request the proxy saw; `range` is its Range header, if any."""

    method: str
    path: str
    range: str | None

    def byte_range(self) -> tuple[int, int] | None:
        """(first, last) byte of a `bytes=a-b` Range header."""
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.range or "")
        return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass
class _Aimed:
    fault: str
    when: Callable[[Request], bool]
    times: int


class FaultProxy:
    """A threaded proxy on 127.0.0.1 in front of `upstream` (``http://host:port``)."""

    def __init__(self, upstream: str, *, rate: float, seed: int,
                 faults: tuple[str, ...] = FAULTS) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rate = rate
        self.faults = faults
        self.counts: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._outage_in: int | None = None
        #: Requests seen, faulty or not.
        self.requests = 0
        #: Every request, in arrival order.
        self.seen: list[Request] = []
        self._aimed: list[_Aimed] = []
        #: Set while a ``stall`` fault holds a response; `release` lets it go on.
        self.stalled = threading.Event()
        self._release = threading.Event()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def injected(self) -> int:
        """Faults injected so far, of every kind."""
        with self._lock:
            return sum(n for kind, n in self.counts.items() if kind != "outage")

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def outage_after(self, requests: int | None) -> None:
        """Fail every request after the next `requests` ones; None ends the outage."""
        with self._lock:
            self._outage_in = requests

    def inject(self, fault: str, when: Callable[[Request], bool], times: int = 1) -> None:
        """Give the next `times` requests for which `when(request)` holds the fault `fault`."""
        if fault not in AIMED_FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {AIMED_FAULTS}")
        with self._lock:
            self._aimed.append(_Aimed(fault, when, times))

    def release(self) -> None:
        """Let every stalled response (and any later one) go on."""
        self._release.set()

    def choose_for(self, request: Request) -> str | None:
        """The fault for `request`: an aimed one if it matches, else as `choose`."""
        with self._lock:
            self.seen.append(request)
            for aimed in self._aimed:
                if aimed.times > 0 and aimed.when(request):
                    aimed.times -= 1
                    self.requests += 1
                    return aimed.fault
        return self.choose()

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self.rate = rate

    def choose(self) -> str | None:
        """The fault for the next request, or None to forward it untouched."""
        with self._lock:
            self.requests += 1
            if self._outage_in is not None:
                if self._outage_in <= 0:
                    self.counts["outage"] += 1
                    return "outage"
                self._outage_in -= 1
            if self._rng.random() < self.rate:
                return self._rng.choice(self.faults)
            return None

    def record(self, kind: str) -> None:
        """Count a fault when it is actually injected (a truncation needs a body to cut)."""
        with self._lock:
            self.counts[kind] += 1

    def summary(self) -> str:
        with self._lock:
            return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up on dropped connections; that is the point, not a proxy bug


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        pass  # the counters are the log

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _drop(self) -> None:
        """Close the connection without a response, as a reset network would."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port,
                                          timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST", "PATCH"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _handle(self) -> None:
        body = self._read_body()
        fault = self.owner.choose_for(Request(self.command, self.path, self.headers.get("Range")))
        if fault == "outage":
            return self._drop()
        if fault == "drop_before":
            self.owner.record(fault)
            return self._drop()
        if fault == "hold":
            self.owner.record(fault)
            self.owner.stalled.set()
            self.owner._release.wait(STALL_LIMIT_S)
        if fault in _ERRORS:
            self.owner.record(fault)
            status, code = _ERRORS[fault]
            payload = _S3_ERROR.format(code=code).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return None
        status, reason, headers, data = self._forward(body)
        if fault == "drop_after":
            self.owner.record(fault)
            return self._drop()
        self.send_response(status, reason)
        head = self.command == "HEAD"  # its Content-Length is the object's, not this body's
        for name, value in headers:
            low = name.lower()
            if low not in _HOP_BY_HOP and (head or low != "content-length"):
                self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if head:
            return None
        if fault == "truncate" and len(data) > 1:
            self.owner.record(fault)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return self._drop()
        if fault == "stall" and len(data) > 1:
            self.owner.record(fault)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.owner.stalled.set()
            self.owner._release.wait(STALL_LIMIT_S)
            self.wfile.write(data[len(data) // 2:])
            return None
        self.wfile.write(data)
        return None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle  # noqa: N815
