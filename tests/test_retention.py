"""predictions.retention: no prediction older than the setting survives the leader's upkeep
(SQL: bounded deletes, on SQLite and PostgreSQL), and on InfluxDB the setting becomes the
database's default retention policy, which InfluxDB enforces itself (real InfluxDB)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from latigo.components import build
from latigo.config import Config, InfluxPredictionsConfig
from latigo.demo.fleet import Fleet
from latigo.providers.predictions.influx import RETENTION_POLICY, InfluxPredictions
from latigo.scheduler import Scheduler
from latigo.schema import predictions
from latigo.window import Window
from tests.clock import Clock

NOW = datetime(2026, 3, 30, 12, 7, tzinfo=UTC)
# the predictions kept: everything newer than NOW - RETENTION
RETENTION = timedelta(days=2)


def answer(start: datetime, hours: int) -> pd.DataFrame:
    """A 2-tag answer every 10 minutes from ``start``, shaped like Gordo's."""
    index = pd.date_range(start, periods=hours * 6, freq="10min", tz="UTC", name="time")
    columns = pd.MultiIndex.from_tuples([("model-output", "A"), ("model-output", "B"), ("total-anomaly-scaled", "")])
    return pd.DataFrame(np.ones((len(index), 3)), index=index, columns=columns)


def test_no_prediction_older_than_the_retention_survives_the_upkeep(database_url):
    settings = Config(database={"url": database_url}, models={"projects": ["fleet"]},
                      predictions={"retention": "2d"})  # fmt: skip
    fleet = Fleet(3, "fleet")
    with build(settings, clock=Clock(NOW)) as parts:
        start = NOW - timedelta(days=5)
        for name in fleet.names:  # five days each: three of them older than the retention
            span = Window(start, NOW)
            parts.predictions.store("fleet", name, "1", span, answer(start, 5 * 24))
        scheduler = Scheduler(settings, fleet, parts.ledger, parts.queue, Clock(NOW), predictions=parts.predictions)
        report = scheduler.tick()

        cutoff = NOW - RETENTION
        with parts.engine.connect() as connection:
            oldest = connection.execute(select(func.min(predictions.c.time))).scalar()
            kept = connection.execute(select(func.count()).select_from(predictions)).scalar()
        assert oldest >= cutoff
        newer = sum(1 for t in answer(start, 5 * 24).index if t >= cutoff)
        # a row per time and output group: two groups
        assert kept == 3 * 2 * newer
        assert report.predictions_expired == 3 * 2 * (5 * 24 * 6 - newer)
        assert scheduler.tick().predictions_expired == 0


def test_without_a_retention_nothing_is_deleted(sqlite_url):
    settings = Config(database={"url": sqlite_url}, models={"projects": ["fleet"]})
    fleet = Fleet(1, "fleet")
    with build(settings, clock=Clock(NOW)) as parts:
        start = NOW - timedelta(days=400)
        parts.predictions.store("fleet", fleet.names[0], "1", Window(start, NOW), answer(start, 2))
        scheduler = Scheduler(settings, fleet, parts.ledger, parts.queue, Clock(NOW), predictions=parts.predictions)
        assert scheduler.tick().predictions_expired == 0


def policies(influx_server, database: str) -> dict[str, tuple[str, bool]]:
    [result] = influx_server.query(f'SHOW RETENTION POLICIES ON "{database}"')
    [series] = result["series"]
    columns = series["columns"]
    return {row[0]: (row[columns.index("duration")], row[columns.index("default")]) for row in series["values"]}


def test_on_influxdb_the_retention_is_the_databases_default_policy(influx_server, influx_database):
    def store(days: str) -> InfluxPredictions:
        config = InfluxPredictionsConfig(type="influx", url=influx_server.url, database=influx_database, retention=days)
        return InfluxPredictions(config)

    first = store("30d")
    assert first.expire("p", "m", NOW) == 0
    assert policies(influx_server, influx_database)[RETENTION_POLICY] == ("720h0m0s", True)
    first.close()
    second = store("60d")  # changed: the policy follows
    second.expire("p", "m", NOW)
    assert policies(influx_server, influx_database)[RETENTION_POLICY] == ("1440h0m0s", True)
    second.close()
