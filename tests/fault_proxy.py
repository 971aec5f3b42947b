"""A fault-injecting HTTP reverse proxy for the tests, in front of the real Gordo server.

Every request is forwarded to the upstream server unless the proxy's plan picks a fault
for it. The plan is a function ``(method, path) -> kind``; :func:`seeded` draws faults
from a seeded ``random.Random`` (the n-th matching request always gets the n-th draw) and
cycles through the kinds, so a run with enough requests injects every kind. Kinds:

``pass``       forward untouched
``error_500``  a 500 with an HTML page like Gordo's (Flask's) own
``error_503``  a 503 with a load balancer's HTML page
``reset``      close the socket without answering, with SO_LINGER 0 (a TCP RST)
``hang``       hold the connection for ``hang_s`` (past the client's read timeout), then close
``slow``       wait ``slow_s``, then forward: still succeeds within the timeout
``html_200``   a 200 with an HTML login page instead of a prediction
``cut``        forward, but close the connection after half of the answer's body
``drip``       forward, but send the answer's body a byte every ``slow_s``: each read is
               quick, the whole answer takes ages
``drip_headers``  answer ``200 OK``, then a header byte every ``slow_s``: the headers never end
``cut_headers``   answer ``200 OK`` and half a header line, then close the connection
(``cut``, ``drip`` and the header kinds are not in FAULTS: each has a test of its own)

Every request is recorded as (kind, method, path) in ``records``, and its path and body in
``requests`` (to check what Latigo sent). Waits are bounded by an
event that ``stop`` sets, so a hanging request never holds up the proxy's shutdown.

A forwarded answer (``pass``, ``slow``, ``cut``, ``drip``) can also be bent: a ``rewrite``
function ``(method, path, status, headers, body) -> (status, headers, body)`` given to the
proxy (None by default: answers go through untouched) gets the upstream answer, its path
with the query string and its headers as (name, value) pairs without the per-connection
ones, and what it returns is sent instead (Content-Length follows the new body). It is the
``rewrite`` attribute, read per request, so a test can set it to None to stop bending.
Faults that never reach the upstream server are not rewritten.
"""

from __future__ import annotations

import http.client
import itertools
import random
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence
from urllib.parse import urlsplit

FAULTS = ("error_500", "error_503", "reset", "hang", "slow", "html_200")
TRANSIENT_FAULTS = ("error_500", "error_503", "reset", "hang", "slow")
# the requests faults go to by default: Gordo's prediction and metadata routes
GORDO_WORK = r"/(anomaly/)?prediction|/metadata"
# headers that belong to one connection, not to the message (RFC 9110 7.6.1)
# (and Server and Date, which send_response writes itself)
NOT_FORWARDED = {
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
    "proxy-authenticate", "content-length", "host", "server", "date",
}
# seconds the proxy waits for the upstream server's answer
UPSTREAM_TIMEOUT = 60

PAGES = {
    "error_500": (500, "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
                       "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was "
                       "unable to complete your request.</p>\n"),
    "error_503": (503, "<html><head><title>503 Service Unavailable</title></head><body>"
                       "<h1>Service Unavailable</h1><p>No server is available to handle this request.</p>"
                       "</body></html>\n"),
    "html_200": (200, "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>"
                      "<form method=post action=/login><input name=loginfmt></form></body></html>\n"),
}

Plan = Callable[[str, str], str]
# (method, path, status, headers, body) -> (status, headers, body)
Rewrite = Callable[[str, str, int, list[tuple[str, str]], bytes], tuple[int, list[tuple[str, str]], bytes]]


def forwarded(header: str) -> bool:
    return header.lower() not in NOT_FORWARDED


def seeded(rate: float, kinds: Sequence[str] = FAULTS, seed: int = 0, only: str = GORDO_WORK) -> Plan:
    """Requests whose path matches ``only`` are faulted with probability ``rate`` (a seeded
    draw per matching request, in arrival order); faults cycle through ``kinds``."""
    rng, lock, faults = random.Random(seed), threading.Lock(), itertools.count()

    def plan(method: str, path: str) -> str:
        if not re.search(only, path):
            return "pass"
        with lock:
            return kinds[next(faults) % len(kinds)] if rng.random() < rate else "pass"

    return plan


def always(kind: str, only: str = GORDO_WORK) -> Plan:
    return lambda method, path: kind if re.search(only, path) else "pass"


class FaultProxy:
    """``with FaultProxy(upstream, plan) as proxy:`` serves on ``proxy.url`` until the block ends."""

    def __init__(
        self,
        upstream: str,
        plan: Plan,
        *,
        hang_s: float = 30.0,
        slow_s: float = 0.3,
        rewrite: Rewrite | None = None,
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.plan, self.hang_s, self.slow_s = plan, hang_s, slow_s
        self.rewrite = rewrite
        self.records: list[tuple[str, str, str]] = []
        self.requests: list[tuple[str, bytes]] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def kinds(self) -> list[str]:
        with self._lock:
            return [kind for kind, _, _ in self.records]

    def record(self, kind: str, method: str, path: str, body: bytes = b"") -> None:
        with self._lock:
            self.records.append((kind, method, path))
            self.requests.append((path, body))

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving; safe to call twice."""
        self.stopping.set()  # ends every hang, slow and drip wait at once
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a fault never lands on a reused connection

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: object) -> None:  # keep the test output quiet
        pass

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = proxy.plan(self.command, self.path)
        proxy.record(kind, self.command, self.path, body)
        if kind in PAGES:
            status, page = PAGES[kind]
            self._answer(status, [("Content-Type", "text/html; charset=utf-8")], page.encode())
        elif kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif kind == "drip_headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for byte in b"Content-Type: application/octet-stream\r\n" * 1000:
                if proxy.stopping.wait(proxy.slow_s):
                    break
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:  # the client gave up: what the test waits for
                    break
            self.close_connection = True
        elif kind == "cut_headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Ty")
            self.wfile.flush()
            self.close_connection = True
        elif kind == "hang":
            proxy.stopping.wait(proxy.hang_s)
            self.close_connection = True
        else:
            if kind == "slow":
                proxy.stopping.wait(proxy.slow_s)
            self._forward(proxy, body, kind)

    def _forward(self, proxy: FaultProxy, body: bytes, kind: str) -> None:
        host, port = proxy.upstream.hostname, proxy.upstream.port
        upstream = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT)
        try:
            headers = {name: value for name, value in self.headers.items() if forwarded(name)}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            status, content = response.status, response.read()
            kept = [(name, value) for name, value in response.getheaders() if forwarded(name)]
            rewrite = proxy.rewrite
            if rewrite is not None:
                status, kept, content = rewrite(self.command, self.path, status, kept, content)
            self._answer(status, kept, content, kind)
        finally:
            upstream.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, kind: str = "pass") -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif kind == "drip":
            proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
            for offset in range(len(body)):
                if proxy.stopping.wait(proxy.slow_s):
                    break  # stopping: leave the answer cut short
                self.wfile.write(body[offset : offset + 1])
            self.close_connection = True
        else:
            self.wfile.write(body)
