"""Metrics and health, in one place: what every process counts, and the small HTTP endpoint
(``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for Kubernetes probes) that
shows them.

Liveness means the process's main loop still turns (a heartbeat younger than its limit);
readiness means it has reached that loop and its last pass could use the database. A stuck
executor is restarted, a starting one gets no traffic; Latigo has no request traffic, but
the probes make rollouts wait for a working pod.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from time import monotonic
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from sqlalchemy import Engine

from latigo import readmodel

log = logging.getLogger(__name__)

# buckets for per-stage and per-call durations, seconds: from a fast continuous window to a day of backfill
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

TASKS_PUBLISHED = Counter("latigo_tasks_published", "Tasks published to the queue")
WINDOWS_PLANNED = Counter("latigo_windows_planned", "Windows newly planned in the ledger")
DEAD_LETTERS_EXPIRED = Counter(
    "latigo_dead_letters_expired", "Dead letters deleted for being older than retention.dead_letters"
)
PREDICTIONS_EXPIRED = Counter(
    "latigo_predictions_expired", "Prediction values deleted for being older than predictions.retention"
)
WINDOWS_COMPACTED = Counter(
    "latigo_windows_compacted", "Old done, no-data and dead windows moved from the ledger into its history as runs"
)
TASKS_HANDLED = Counter("latigo_tasks_handled", "Tasks handled by outcome", ["outcome"])
TASK_FAILURES = Counter("latigo_task_failures", "Failed task attempts by error class", ["error_class"])
METADATA_LOOKUPS = Counter(
    "latigo_metadata_lookups", "Model metadata lookups by where the answer came from (memory, table, gordo)", ["source"]
)
STAGE_SECONDS = Histogram("latigo_stage_seconds", "Time per task stage", ["stage"], buckets=DURATION_BUCKETS)
GORDO_CLIENT_SECONDS = Histogram(
    "latigo_gordo_client_seconds", "Gordo prediction calls as Latigo sees them", buckets=DURATION_BUCKETS
)
GORDO_SERVER_SECONDS = Histogram(
    "latigo_gordo_server_seconds",
    "Gordo prediction calls as Gordo reports them (Server-Timing)",
    buckets=DURATION_BUCKETS,
)
DEPENDENCY_UP = Gauge(
    "latigo_dependency_up", "1 while the dependency answers this process's probes, 0 while it is down", ["dependency"]
)
PAUSED = Gauge("latigo_paused", "Dependencies down for this executor: while above 0 it takes no new tasks")
QUEUE_DEPTH = Gauge("latigo_queue_depth", "Tasks waiting or in flight, as the scheduler last saw it")
DEAD_LETTERS = Gauge("latigo_dead_letters", "Dead letters waiting for an operator")
MODEL_LAG = Gauge(
    "latigo_model_lag_seconds", "Now minus the end of the model's newest done window", ["project", "model"]
)


class Health:
    """A heartbeat and a readiness flag, set by the process's main loop."""

    def __init__(self, stale_after: float) -> None:
        self._stale_after = stale_after
        self._last_beat: float | None = None
        self.ready = False

    def beat(self) -> None:
        self._last_beat = monotonic()

    def alive(self) -> bool:
        return self._last_beat is None or monotonic() - self._last_beat < self._stale_after


# the process's health, set by its main loop; alive until the loop has started and then stalls
HEALTH = Health(stale_after=300.0)


def observe_lags(lags: Iterable[tuple[str, str, float]]) -> None:
    MODEL_LAG.clear()
    for project, model, seconds in lags:
        MODEL_LAG.labels(project, model).set(seconds)


def observe_ledger(engine: Engine, now: datetime, since: datetime) -> None:
    """The whole service's dead letters and lags, from the read model: the leader's to
    measure (every scheduler would report the same numbers)."""
    DEAD_LETTERS.set(readmodel.dead_letter_count(engine))
    observe_lags(readmodel.lags(engine, now, since))


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:  # probes every few seconds would flood the log
        pass


def _application(health: Health) -> Callable:
    metrics = make_wsgi_app(REGISTRY)

    def answer(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok = health.alive() if path == "/healthz" else health.ready and health.alive()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not ok\n"]
        return metrics(environ, start_response)

    return answer


# the endpoints this process serves already, by (host, port): a process serves them once,
# from before it reaches its database (readiness false) to its end
_SERVING: dict[tuple[str, int], WSGIServer] = {}


def serve(host: str, port: int | None, health: Health = HEALTH) -> WSGIServer | None:
    """Serve metrics and probes on host:port in a daemon thread (port 0 or None: not at all).
    A port that is taken costs the metrics, never the process."""
    if not port:
        return None
    if (host, port) in _SERVING:
        return _SERVING[(host, port)]
    try:
        server = make_server(host, port, _application(health), handler_class=_Quiet)
    except OSError as error:
        log.warning("metrics and health endpoint not served: %s:%d: %s", host, port, error.strerror)
        return None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    _SERVING[(host, port)] = server
    log.info("metrics on http://%s:%d/metrics, probes on /healthz and /readyz", host, port)
    return server
