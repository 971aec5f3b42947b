"""The SQL prediction store's layout before and after migration 0013, side by side.

    .venv/bin/python -m bench.layouts [--models 20] [--days 2] [--databases sqlite,postgresql]

Each layout gets a fresh database, and the same answers: the 20-tag model's (``gordo_answer``,
8 output groups, 103 series, 3 times a window), stored one window per call as continuous
operation does, for every model and window of the span, at the revision the demo fleet
serves (a Gordo revision is a timestamp: 10 digits).

- ``per value``: the table before 0013, one row per (project, model, time, output, tag)
  with its key and the (output, time) index, stored as its store did (delete the span,
  then one executemany of the rows);
- ``per group``: Latigo's store now (``SqlPredictions``): one row per (project, model,
  time, output) with the values packed, the tags in ``prediction_tags``, on PostgreSQL
  partitioned by day.

Timed: the store of each window (mean); one model's three charted outputs over a day (the
status page's read); one output of every model over the newest 6 hours (``latigo
predictions``). Bytes: every table of the layout with its indexes and partitions
(SQLite's ``dbstat``, PostgreSQL's ``pg_total_relation_size`` after ``VACUUM ANALYZE``),
over the model-windows stored. Each figure is printed with its ratio to ``per value`` in
the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from sqlalchemy import Column, Engine, Float, Index, MetaData, String, Table, delete, select

from bench import _services as services
from bench._history import gordo_answer
from bench.growth import table_bytes
from latigo import db
from latigo.demo.fleet import FLEET_REVISION
from latigo.frames import output_series
from latigo.providers.predictions.sql import SqlPredictions, read
from latigo.schema import UTCDateTime
from latigo.window import Window

# the windows' interval, and the end of the span stored
INTERVAL = timedelta(minutes=30)
END = datetime(2026, 3, 1, tzinfo=UTC)
# what the reads ask for: the page's charted outputs, and `latigo predictions`' default
CHARTED = ["total-anomaly-confidence", "total-anomaly-scaled", "tag-anomaly-scaled"]
RECENT = timedelta(hours=6)

# the table before migration 0013, in its own metadata
_before = MetaData()
per_value = Table(
    "predictions_per_value",
    _before,
    Column("project", String(200), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("time", UTCDateTime(), primary_key=True),
    Column("output", String(64), primary_key=True),
    Column("tag", String(200), primary_key=True),
    Column("value", Float),
    Column("revision", String(40), nullable=False),
    Index("ix_per_value_output_time", "output", "time"),
)


class PerValue:
    """The store before migration 0013, as it wrote and read."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        _before.create_all(engine)

    def store(self, project: str, model: str, revision: str, span: Window, answer: pd.DataFrame) -> None:
        series, values = output_series(answer)
        times = answer.index.to_pydatetime()
        rows = [
            {"project": project, "model": model, "time": moment, "output": output, "tag": tag,
             "value": None if value != value else value, "revision": revision}
            for moment, row in zip(times, values.tolist())
            for (output, tag), value in zip(series, row)
        ]  # fmt: skip
        columns = per_value.c
        with self._engine.begin() as connection:
            connection.execute(
                delete(per_value).where(
                    columns.project == project,
                    columns.model == model,
                    columns.time >= span.start,
                    columns.time < span.end,
                )
            )
            connection.execute(per_value.insert(), rows)

    def chart(self, project: str, model: str, start: datetime, end: datetime) -> int:
        columns = per_value.c
        query = select(columns.output, columns.time, columns.value).where(
            columns.project == project, columns.model == model, columns.output.in_(CHARTED),
            columns.time >= start, columns.time < end,
        )  # fmt: skip
        with self._engine.connect() as connection:
            return len(connection.execute(query).all())

    def recent(self, since: datetime) -> int:
        columns = per_value.c
        query = select(columns.time, columns.model, columns.tag, columns.value).where(
            columns.output == CHARTED[0], columns.time >= since
        )
        with self._engine.connect() as connection:
            return len(pd.DataFrame(connection.execute(query).all()))


class PerGroup:
    """Latigo's store now."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._store = SqlPredictions(engine)
        self.store = self._store.store

    def chart(self, project: str, model: str, start: datetime, end: datetime) -> int:
        return len(read(self._engine, outputs=CHARTED, projects=[project], model=model, start=start, end=end))

    def recent(self, since: datetime) -> int:
        return len(read(self._engine, outputs=CHARTED[:1], start=since))


def measure(engine: Engine, layout: str, models: int, days: int) -> dict[str, float]:
    db.upgrade(engine)
    store = PerValue(engine) if layout == "per value" else PerGroup(engine)
    tables = [per_value.name] if layout == "per value" else ["predictions", "prediction_tags"]
    windows = int(timedelta(days=days) / INTERVAL)
    start = END - windows * INTERVAL
    answers = [gordo_answer(Window(start + k * INTERVAL, start + (k + 1) * INTERVAL), k) for k in range(windows)]
    stored = 0.0
    for k, answer in enumerate(answers):
        window = Window(start + k * INTERVAL, start + (k + 1) * INTERVAL)
        for model in range(models):
            began = time.perf_counter()
            store.store("bench", f"model-{model:05d}", FLEET_REVISION, window, answer)
            stored += time.perf_counter() - began
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")

    def timed(call: Callable[[], int], repeat: int = 20) -> float:
        began = time.perf_counter()
        for _ in range(repeat):
            assert call() > 0
        return (time.perf_counter() - began) / repeat

    return {
        "bytes / model-window": sum(table_bytes(engine, tables).values()) / (models * windows),
        "store / window, ms": stored / (models * windows) * 1e3,
        "chart read (1 model, 3 outputs, 1 day), ms": timed(
            lambda: store.chart("bench", "model-00000", END - timedelta(days=1), END)
        )
        * 1e3,
        "recent read (all models, 1 output, 6 h), ms": timed(lambda: store.recent(END - RECENT)) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    databases = args.databases.split(",")
    with (
        tempfile.TemporaryDirectory() as folder,
        services.postgres_server() if "postgresql" in databases else contextlib.nullcontext() as postgres,
    ):
        for database in databases:
            results = {}
            for layout in ("per value", "per group"):
                if database == "sqlite":
                    url = f"sqlite:///{Path(folder) / (layout.replace(' ', '-') + '.db')}"
                else:
                    assert postgres is not None
                    url = postgres.url(postgres.create_database())
                engine = db.create_engine(url)
                try:
                    results[layout] = measure(engine, layout, args.models, args.days)
                finally:
                    engine.dispose()
            print(f"\n{database}: {args.models} models x {args.days} days, one window per store")
            print(f"  {'figure':48} {'per value':>12} {'per group':>12} {'ratio':>8}")
            for figure, before in results["per value"].items():
                after = results["per group"][figure]
                print(f"  {figure:48} {before:12.2f} {after:12.2f} {after / before:8.3f}")


if __name__ == "__main__":
    main()
