"""``latigo demo``: the whole service on this machine, on demo data, in one command.

A local real Gordo serves the demo models, the feeder writes synthetic sensor data with
injected anomalies (history first, then live), and the scheduler and executors run as child
processes until Ctrl-C. A progress line per model shows windows arriving.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from urllib.parse import urlsplit

from latigo import status as report
from latigo.components import build
from latigo.config import Config
from latigo.demo import gordo
from latigo.demo.feeder import LiveFeed, feed
from latigo.demo.models import DEMO_PROJECT, model_names
from latigo.service import run_service
from latigo.window import Grid

log = logging.getLogger(__name__)

# sensor history fed beyond the initial backfill, so the first windows have data
HISTORY_MARGIN = timedelta(hours=2)
# how often the demo prints its progress
PROGRESS_EVERY_S = 30.0


def run_demo(config: Config, history: timedelta | None) -> int:
    if DEMO_PROJECT not in config.models.projects:
        log.warning("project %r is not in models.projects; the demo models will not be scheduled", DEMO_PROJECT)
    port = urlsplit(config.models.base_url).port or 80
    log.info("setting up the local Gordo (first time: about a minute)")
    venv = gordo.ensure_venv()
    revision_dir = gordo.build_models(venv, gordo.DEFAULT_ROOT, gordo.DEFAULT_REVISION)
    server = gordo.serve(venv, revision_dir, port, model_names(), gordo.DEFAULT_LOG)
    log.info("Gordo serves %s on %s (log: %s)", ", ".join(model_names()), config.models.base_url, gordo.DEFAULT_LOG)
    parts = build(config)
    stop_progress = threading.Event()
    live = None
    try:
        now = Grid(timedelta(minutes=1)).floor(parts.clock())
        depth = history or config.schedule.initial_backfill + config.schedule.interval + HISTORY_MARGIN
        log.info("feeding %s of demo sensor history", depth)
        feed(parts.sensors, now - depth, now)
        live = LiveFeed(parts.sensors, now, parts.clock)
        live.start()
        threading.Thread(target=_progress, args=(parts, stop_progress), daemon=True).start()
        return run_service(config.run.executors, config.metrics.port)
    finally:
        stop_progress.set()
        if live is not None:
            live.stopped.set()
        gordo.stop(server)
        parts.close()


def _progress(parts, stop: threading.Event) -> None:
    while not stop.wait(PROGRESS_EVERY_S):
        try:
            statuses = report.model_statuses(parts.engine, parts.config.schedule.interval)
        except Exception:  # progress is a courtesy; the service goes on
            continue
        table = report.status_table(statuses, parts.clock())
        if not table.empty:
            log.info("progress:\n%s\n(see predictions: .venv/bin/latigo predictions)", table.to_string(index=False))
