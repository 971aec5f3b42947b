"""Scheduler benchmark: one tick planning and publishing one window for N models, on SQLite
and on a fresh PostgreSQL 15 (fsync off). Prints time and peak Python memory per size, and
each size's time per model as a ratio to the smallest size measured in the same run: a
ratio near 1 means the cost grows linearly with the number of models.

    .venv/bin/python -m bench.scheduler [--sizes 1000,9000,100000] [--databases sqlite,postgresql]
                                        [--history 1d]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from bench import _services as services
from latigo.components import build
from latigo.config import Config, parse_duration
from latigo.demo.fleet import FLEET_REVISION, Fleet
from latigo.ledger import State
from latigo.scheduler import Scheduler
from latigo.schema import ledger
from latigo.window import Grid

# the moment of the measured tick: any time works
NOW = datetime(2026, 3, 2, 12, 7, tzinfo=UTC)
# sizes measured by default
DEFAULT_SIZES = (1000, 9000, 100_000)


def tick(database_url: str, size: int, traced: bool, history: timedelta) -> float:
    """One tick planning and publishing one window per model: seconds, or peak MiB of Python
    allocations when ``traced`` (tracemalloc slows the run, so time and memory are separate
    runs). With ``history``, the ledger first gets that much of done windows for every model,
    the previous one included: the tick is then one of a scheduler in step, not a first start."""
    project = f"fleet-{size}-{'memory' if traced else 'time'}"  # new models, even in a shared database
    config = Config(database={"url": database_url}, models={"projects": [project]}, schedule={"initial_backfill": "0s"})
    parts = build(config, clock=lambda: NOW)
    try:
        fleet = Fleet(size, project)
        scheduler = Scheduler(config, fleet, parts.ledger, parts.queue, lambda: NOW)
        fill_ledger(parts, scheduler, fleet, history)
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        report = scheduler.tick()
        elapsed = time.perf_counter() - started
        assert report.published_tasks == size and report.planned == size, report
        if traced:
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            return peak
        return elapsed
    finally:
        parts.close()


def fill_ledger(parts, scheduler: Scheduler, fleet: Fleet, history: timedelta) -> None:
    """``history`` of done windows for every model, ending just before the newest due one."""
    interval = parts.config.schedule.interval
    newest_start = Grid(interval).last_due_end(NOW, parts.config.schedule.delay) - interval
    with parts.engine.begin() as connection:
        for back in range(int(history / interval), 0, -1):
            start = newest_start - back * interval
            connection.execute(
                insert(ledger),
                [
                    {
                        "project": fleet.project, "model": name, "window_start": start, "window_end": start + interval,
                        "state": State.DONE, "revision": FLEET_REVISION, "attempts": 0, "created_at": NOW,
                        "updated_at": NOW,
                    }
                    for name in fleet.names
                ],
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--history",
        default="0s",
        help="done windows already in the ledger for every model, e.g. 1d: a scheduler in step [default: none]",
    )
    args = parser.parse_args()
    history = parse_duration(args.history)
    sizes = [int(size) for size in args.sizes.split(",")]
    databases = args.databases.split(",")
    with (
        tempfile.TemporaryDirectory() as folder,
        services.postgres_server() if "postgresql" in databases else contextlib.nullcontext() as postgres,
    ):
        urls = {
            "sqlite": lambda size, run: f"sqlite:///{Path(folder) / f'{size}-{run}.db'}",
            "postgresql": lambda size, run: postgres.url(postgres.create_database()),
        }
        print(f"{'database':<11}{'models':>8}{'seconds':>10}{'peak MiB':>10}{'per-model ratio':>17}")
        for name in databases:
            baseline = None
            for size in sizes:
                elapsed = tick(urls[name](size, "time"), size, traced=False, history=history)
                peak = tick(urls[name](size, "memory"), size, traced=True, history=history)
                per_model = elapsed / size
                baseline = baseline or per_model
                print(f"{name:<11}{size:>8}{elapsed:>10.3f}{peak:>10.1f}{per_model / baseline:>17.2f}", flush=True)


if __name__ == "__main__":
    main()
