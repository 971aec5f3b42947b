"""One deadline per HTTP call (latigo.calls), against a real local HTTP server that answers
slowly in every part of the exchange."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import monotonic
from typing import Iterator

import pytest

from latigo import calls

# how long the server waits between two bytes when it drips
DRIP_S = 0.1
# the calls' limit in these tests, seconds
LIMIT = 1.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: connections go back to the pool

    def do_GET(self) -> None:
        stop: threading.Event = self.server.stop  # type: ignore[attr-defined]
        kind = self.path.strip("/").split("?")[0]
        if kind == "drip-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self._drip(b"X-Slow: " + b"x" * 200, stop)
        elif kind == "drip-body":
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            self._drip(b"y" * 200, stop)
        elif kind == "drip-close-delimited":  # no length: the end of the body is the end of the stream
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            self._drip(b"z" * 200, stop)
            self.close_connection = True
        else:  # quick, after a pause given in the path: /quick?0.6
            pause = float(self.path.split("?")[1]) if "?" in self.path else 0
            stop.wait(pause)
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _drip(self, data: bytes, stop: threading.Event) -> None:
        for byte in data:
            if stop.wait(DRIP_S):
                return
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:  # the client gave up: what the tests wait for
                return

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.stop = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.stop.set()  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


def get(http, url: str, limit: float = LIMIT) -> bytes:
    with calls.deadline(limit), http.get(url, timeout=(1.0, 5.0), stream=True) as response:
        return response.raw.read()


@pytest.mark.parametrize("kind", ["drip-headers", "drip-body", "drip-close-delimited"])
def test_a_dripping_answer_is_cut_at_the_deadline_wherever_it_drips(server, kind):
    """Every read gets a byte well within the 5 s read timeout; the whole answer would take
    20 s. The call ends at its 1 s deadline as CallTimedOut, a transient error; a body
    without a length, cut there, is not taken for a whole one."""
    http = calls.session()
    started = monotonic()
    with pytest.raises(calls.CallTimedOut, match="no complete answer within 1 s"):
        get(http, f"{server}/{kind}")
    assert LIMIT <= monotonic() - started < LIMIT + 0.8


def test_an_earlier_calls_deadline_never_cuts_a_later_call_on_the_same_connection(server):
    """Call 1 ends at once, and its deadline passes while call 2, on the same pooled
    connection, is still waiting for its answer: call 2 is not cut."""
    http = calls.session(max_connections=1)
    assert get(http, f"{server}/quick", limit=0.5) == b"ok"
    started = monotonic()
    assert get(http, f"{server}/quick?0.8", limit=5) == b"ok"  # call 1's deadline passes meanwhile
    assert monotonic() - started >= 0.8


def test_the_task_deadline_caps_every_call_inside_it(server):
    http = calls.session()
    started = monotonic()
    with calls.task_deadline(0.5), pytest.raises(calls.CallTimedOut):
        get(http, f"{server}/drip-body", limit=30)
    assert monotonic() - started < 1.3
    with calls.task_deadline(0.0), pytest.raises(calls.CallTimedOut, match="task's deadline has passed"):
        get(http, f"{server}/quick")
    assert calls.remaining(30) == 30  # outside a task: the call's own limit


def test_deadlines_of_calls_in_many_threads_are_their_own(server):
    """The watcher serves every thread: a slow call is cut, quick ones beside it are not."""
    http = calls.session(max_connections=8)
    outcomes: dict[str, object] = {}

    def one(name: str, url: str, limit: float) -> None:
        try:
            outcomes[name] = get(http, url, limit)
        except calls.CallTimedOut as error:
            outcomes[name] = error

    threads = [threading.Thread(target=one, args=("slow", f"{server}/drip-body", 0.5))]
    threads += [threading.Thread(target=one, args=(f"quick-{n}", f"{server}/quick?0.7", 3)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert isinstance(outcomes.pop("slow"), calls.CallTimedOut)
    assert outcomes == {f"quick-{n}": b"ok" for n in range(4)}


def test_framing():
    assert calls.framed({"Content-Length": "0"}) and calls.framed({"Transfer-Encoding": "chunked"})
    assert not calls.framed({"Content-Type": "application/json"})
