"""Publishing for thousands of models takes a few round trips, not one per model.

Counted, not timed: the number of SQL statements a tick sends must not grow with the number
of models. (Discovery is answered by latigo.demo.fleet's list: no Gordo here serves 9,000 models.)
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import event

from latigo.components import build
from latigo.config import Config
from latigo.demo.fleet import Fleet
from latigo.scheduler import Scheduler

NOW = datetime(2026, 3, 2, 12, 7, tzinfo=timezone.utc)


def statements_per_tick(parts, project: str, models: int) -> int:
    config = Config(
        database={"url": str(parts.engine.url)}, models={"projects": [project]}, schedule={"initial_backfill": "0s"}
    )
    scheduler = Scheduler(config, Fleet(models, project), parts.ledger, parts.queue, lambda: NOW)
    depth = parts.queue.depth()
    count = 0

    def counted(*args: object) -> None:
        nonlocal count
        count += 1

    event.listen(parts.engine, "before_cursor_execute", counted)
    try:
        report = scheduler.tick()
    finally:
        event.remove(parts.engine, "before_cursor_execute", counted)
    assert report.planned == report.published_tasks == report.published_windows == models
    assert parts.queue.depth() == depth + models
    return count


def test_a_tick_for_9000_models_is_a_few_batched_statements(database_url):
    parts = build(Config(database={"url": database_url}), clock=lambda: NOW)
    try:
        few = statements_per_tick(parts, "small", 100)
        many = statements_per_tick(parts, "large", 9000)
    finally:
        parts.close()
    assert many <= few + 8, (few, many)  # a few more chunks of the same statements, not thousands more
    assert many < 40, many
