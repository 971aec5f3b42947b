"""One deadline per outgoing HTTP call, enforced from connect to the last body byte.

``requests`` (urllib3 underneath) bounds each wait for bytes with its read timeout; a server
that answers ``200 OK`` and then drips a header byte a second never trips it, and holds the
caller for ever. Here every call made through a :func:`session` runs under a deadline: a
single watcher thread shuts the call's socket down when the deadline passes, the blocked read
returns, and the call ends as :class:`CallTimedOut`, a transient error, wherever it was (the
status line, the headers, the body).

The deadline of a call is the smaller of its own limit and what is left of the task it
serves (:func:`task_deadline`, set by the executor), so no task outlives
``executor.task_deadline``.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from time import monotonic
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from latigo.errors import TransientError

# the end (monotonic seconds) of the task the current thread works on, if any
_TASK_END: contextvars.ContextVar[float | None] = contextvars.ContextVar("task_end", default=None)
# the call the current thread is making, if any: the connections it uses register with it
_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("call", default=None)


class CallTimedOut(TransientError):
    """A call did not end within its deadline (or its task's)."""


class TaskExpired(CallTimedOut):
    """The task's time ran out, not the call's: the server is not to blame, and its
    backend's table leaves the error a task's own rather than the server's outage."""


@contextmanager
def task_deadline(seconds: float) -> Iterator[None]:
    """Calls made inside end no later than ``seconds`` from now."""
    token = _TASK_END.set(monotonic() + seconds)
    try:
        yield
    finally:
        _TASK_END.reset(token)


def remaining(limit: float) -> float:
    """The time a call may take: ``limit``, or less if the current task ends sooner; a task
    already past its deadline is CallTimedOut before anything is sent."""
    end = _TASK_END.get()
    left = limit if end is None else min(limit, end - monotonic())
    if left <= 0:
        raise TaskExpired("the task's deadline has passed")
    return left


class _Call:
    """One call under way: the sockets it used, and whether its deadline cut it."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.expired = False
        # ended: its connections went back to the pool, where the next call may use them
        self.ended = False
        self.lock = threading.Lock()

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self.lock:
            self.sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def expire(self) -> None:
        with self.lock:
            if self.ended:
                return
            self.expired = True
            sockets = list(self.sockets)
        for sock in sockets:
            _shut(sock)

    def end(self) -> None:
        with self.lock:
            self.ended = True
            self.sockets.clear()


def _shut(sock: socket.socket) -> None:
    """Make any blocked read on the socket return: shut down (closing it from another thread
    would not wake the reader). The socket itself is kept, not its connection: http.client
    hands a close-delimited answer's socket to the response and forgets it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed or not connected: nothing is blocked on it
        pass


class _Watcher:
    """One daemon thread for every deadline of the process: a heap of (deadline, call)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Call]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, call: _Call) -> None:
        with self._wake:
            heapq.heappush(self._heap, (deadline, next(self._order), call))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="call-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap:
                    self._wake.wait()
                deadline, _, call = self._heap[0]
                wait = deadline - monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
            call.expire()


_WATCHER = _Watcher()


class _Watched:
    """A urllib3 connection whose socket joins the current call: when it connects, and when
    a pooled one is used again."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


def _attach(connection: Any) -> None:
    call = _CALL.get()
    if call is not None:
        call.attach(getattr(connection, "sock", None))


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections are watched: ``send`` takes ``deadline`` (seconds
    for the whole call, answer included when not streamed) besides ``timeout``."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPConnectionPool,
            "https": _WatchedHTTPSConnectionPool,
        }


def session(max_connections: int = 10) -> requests.Session:
    """A requests session whose calls go through watched connections; use :func:`call`."""
    http = requests.Session()
    adapter = DeadlineAdapter(pool_connections=1, pool_maxsize=max_connections, max_retries=0)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


@contextmanager
def deadline(limit: float) -> Iterator[_Call]:
    """Everything inside (the request, its headers, reading its body) ends within ``limit``
    seconds, or what is left of the task; a cut call raises CallTimedOut. Exceptions raised
    inside because the deadline shut the socket become CallTimedOut too."""
    seconds = remaining(limit)
    # cut by the task's deadline rather than the call's own
    timed_out = TaskExpired if seconds < limit else CallTimedOut
    call = _Call()
    token = _CALL.set(call)
    _WATCHER.watch(monotonic() + seconds, call)
    try:
        yield call
    except Exception as error:
        if call.expired:
            raise timed_out(f"no complete answer within {seconds:.3g} s") from error
        raise
    finally:
        _CALL.reset(token)
        call.end()  # the watcher's entry stays until its time, and then does nothing
    if call.expired:  # cut just as it ended: a close-delimited body may look complete
        raise timed_out(f"no complete answer within {seconds:.3g} s")


def framed(headers: Any) -> bool:
    """Whether an answer says where it ends (a length, or chunks). http.client reads headers
    up to the end of the stream when a server stops mid-headers, so an answer cut there looks
    whole but for what was lost; servers that frame every answer (Gordo's gunicorn,
    InfluxDB's queries) are thereby known to have been cut."""
    return "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
