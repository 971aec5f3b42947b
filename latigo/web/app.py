"""The status page's WSGI application and its server: a small route table of compiled
patterns, each answering one kind of page from the database at every request (the app
holds no state). The standard library's WSGI server runs it, a request per thread.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from latigo import readmodel
from latigo.clock import Clock, system_clock
from latigo.config import Config, InfluxPredictionsConfig
from latigo.web.data import Heatmap, heatmap, model_page
from latigo.web.layout import DEFAULT_HOURS, MAX_HOURS, PAGE_SIZE, bounded
from latigo.web.render import render_heatmap, render_model, render_not_found

log = logging.getLogger(__name__)

# the responses' policy: no script, nothing from elsewhere, only the page's own style
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'"
# the longest filter a request may give (it is matched against every model's name)
MAX_QUERY = 200

# (status, content type, text): one answer
Answer = tuple[str, str, str]


class NotFound(Exception):
    pass


@dataclass(frozen=True)
class Request:
    """One GET, as the pages need it."""

    now: datetime
    hours: int
    params: dict[str, str]
    # the route's named groups (WSGI has decoded the path already)
    path: dict[str, str]


class StatusApp:
    """The WSGI application; reads the database at every request, holds no state."""

    def __init__(self, engine: Engine, config: Config, clock: Clock = system_clock, page_size: int = PAGE_SIZE) -> None:
        self._engine = engine
        self._config = config
        self._clock = clock
        self._page_size = page_size
        # the route table: a path pattern and the page answering it, first match wins
        self._routes: list[tuple[re.Pattern[str], Callable[[Request], Answer]]] = [
            (re.compile(r"/"), self._index),
            (re.compile(r"/api/status\.json"), self._status_json),
            # a model's name may hold a slash: the rest of the path is the name
            (re.compile(r"/model/(?P<project>[^/]+)/(?P<model>.+)"), self._model),
        ]

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            status, kind, text = "405 Method Not Allowed", "text/plain", "GET only\n"
        else:
            # WSGI hands the path over as latin-1; names are UTF-8
            path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
            params = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
            status, kind, text = self._route(path, params)
        body = text.encode("utf-8")
        start_response(
            status,
            [
                ("Content-Type", f"{kind}; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("Content-Security-Policy", CSP),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [] if method == "HEAD" else [body]

    def _route(self, path: str, params: dict[str, str]) -> Answer:
        """The answer of one GET: the first route whose pattern matches the whole path."""
        now = self._clock()
        try:
            for pattern, page in self._routes:
                found = pattern.fullmatch(path)
                if found:
                    hours = bounded(params.get("hours"), DEFAULT_HOURS, 1, MAX_HOURS)
                    return page(Request(now, hours, params, found.groupdict()))
            raise NotFound(f"nothing at {path}")
        except NotFound as missing:
            return "404 Not Found", "text/html", render_not_found(now, self._config, str(missing))
        except SQLAlchemyError as error:
            log.warning("status page: the database failed: %s", error)
            reason = str(error).splitlines()[0]  # the driver's words, without the statement
            return "503 Service Unavailable", "text/plain", f"the Latigo database cannot be read: {reason}\n"

    def _heatmap(self, request: Request) -> Heatmap:
        page_number = bounded(request.params.get("page"), 1, 1, 1_000_000)
        query = request.params.get("q", "")[:MAX_QUERY]
        return heatmap(self._engine, self._config, request.now, request.hours, query, page_number, self._page_size)

    def _index(self, request: Request) -> Answer:
        return "200 OK", "text/html", render_heatmap(self._heatmap(request), self._config)

    def _status_json(self, request: Request) -> Answer:
        data = self._heatmap(request).to_dict(self._config)
        return "200 OK", "application/json", json.dumps(data, indent=1)

    def _model(self, request: Request) -> Answer:
        project, model = request.path["project"], request.path["model"]
        if not readmodel.model_known(self._engine, project, model):
            raise NotFound(f"no model {project}/{model} in the ledger")
        charted = not isinstance(self._config.predictions, InfluxPredictionsConfig)
        page = model_page(self._engine, self._config, request.now, project, model, request.hours, charted)
        return "200 OK", "text/html", render_model(page, self._config)


class _Server(ThreadingMixIn, WSGIServer):
    """A request per thread, so one slow browser never holds the page up for the others."""

    daemon_threads = True


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # to the log, not stderr
        log.debug("%s %s", self.address_string(), format % args)


def serve(app: Callable, host: str, port: int) -> WSGIServer:
    """Serve ``app`` on host:port (0: any free port, see ``server_port``) in a daemon thread;
    ``shutdown()`` then ``server_close()`` stop it."""
    server = make_server(host, port, app, server_class=_Server, handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    return server
