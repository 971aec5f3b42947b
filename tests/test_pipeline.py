"""Scheduler and executors against the real local Gordo server, on SQLite and PostgreSQL.

A controllable clock stands in for time; everything else is real: Gordo's own server with
the demo models, the database, the SQL queue, the synthetic sensor feed.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import func, select

from latigo.components import Components, build
from latigo.config import Config
from latigo.demo.feeder import feed
from latigo.demo.models import tags_of
from latigo.demo.signals import anomalies
from latigo.executor import Executor
from latigo.ledger import PlannedWindow, State
from latigo.providers.predictions.sql import read as read_predictions
from latigo.scheduler import Scheduler
from latigo.schema import dead_letters, ledger, predictions
from latigo.status import prediction_duplicates
from latigo.task import Task
from tests.clock import Clock

# the moment the tests' clock starts at: any time works, the demo data is defined for all
NOW = datetime(2026, 3, 2, 12, 7, tzinfo=UTC)
# the window grid point before NOW: tasks lie on the grid
HOUR = NOW.replace(minute=0)
# Gordo's anomaly endpoint answers these groups for models with thresholds
ANOMALY_GROUPS = {
    "model-input", "model-output", "tag-anomaly-scaled", "tag-anomaly-unscaled", "total-anomaly-scaled",
    "total-anomaly-unscaled", "anomaly-confidence", "total-anomaly-confidence",
}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def make_config(database_url: str, gordo_url: str, **executor: object) -> Config:
    return Config(
        database={"url": database_url},
        models={"base_url": gordo_url, "projects": ["demo"], "read_timeout": 20},
        schedule={"initial_backfill": "3h", "max_task_span": "1h"},
        executor={"retry_base": "1s", **executor},
    )


@pytest.fixture
def parts(database_url, gordo_server, clock):
    with build(make_config(database_url, gordo_server.base_url), clock=clock) as components:
        feed(components.sensors, NOW - timedelta(hours=5), NOW)
        yield components


def scheduler_for(parts: Components) -> Scheduler:
    return Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, parts.clock)


def drain(parts: Components) -> int:
    return Executor.from_components(parts).run(threading.Event(), until_idle=True)


def ledger_states(parts: Components) -> dict[tuple[str, str], int]:
    query = select(ledger.c.model, ledger.c.state, func.count()).group_by(ledger.c.model, ledger.c.state)
    with parts.engine.connect() as connection:
        return {(model, state): count for model, state, count in connection.execute(query)}


def stored(parts: Components) -> pd.DataFrame:
    return read_predictions(parts.engine)[["model", "time", "output", "tag", "value"]]


def test_every_due_window_of_every_model_is_predicted_once(parts, gordo_server, clock):
    scheduler = scheduler_for(parts)
    report = scheduler.tick()
    # 12:07 with a 5 min delay: the newest due window is [11:30, 12:00); 3 h of backfill before it
    windows_per_model = 7
    assert report.models == len(gordo_server.models)
    assert report.planned == windows_per_model * len(gordo_server.models)
    # coalesced into tasks of at most one hour (two windows)
    assert report.published_tasks == 4 * len(gordo_server.models)

    drain(parts)

    states = ledger_states(parts)
    for model in gordo_server.models:
        assert states == {**states, (model, State.DONE): windows_per_model}
    assert set(state for _, state in states) == {State.DONE}

    rows = stored(parts)
    first, end = datetime(2026, 3, 2, 8, 30, tzinfo=UTC), datetime(2026, 3, 2, 12, tzinfo=UTC)
    for model in gordo_server.models:
        mine = rows[rows.model == model]
        times = pd.to_datetime(mine.time, utc=True)
        # one prediction per 10 min resolution step, from the first window's start to the last one's end
        assert sorted(times.unique()) == list(pd.date_range(first, end, freq="10min", inclusive="left"))
        assert set(mine.output) == ANOMALY_GROUPS
        tags = set(mine[mine.output == "tag-anomaly-scaled"].tag)
        assert tags == set(tags_of(model))
    assert prediction_duplicates(parts.engine) == 0

    # nothing new is due: a second tick plans nothing
    assert scheduler.tick().planned == 0
    # half an hour later exactly one more window per model is due, and predicted
    feed(parts.sensors, NOW, NOW + timedelta(minutes=30))
    clock.advance(timedelta(minutes=30))
    assert scheduler.tick().planned == len(gordo_server.models)
    drain(parts)
    assert len(stored(parts)) == len(rows) + len(rows) // windows_per_model


def test_injected_anomalies_stand_out(parts, gordo_server):
    scheduler_for(parts).tick()
    drain(parts)
    rows = stored(parts)
    totals = rows[(rows.output == "total-anomaly-scaled") & (rows.model == "compressor-1")].set_index("time").value
    totals.index = pd.to_datetime(totals.index, utc=True)
    faults = anomalies(tags_of("compressor-1"), NOW - timedelta(hours=4), NOW)
    assert faults, "the demo data should have an anomaly in these hours"
    during = pd.concat([totals[(totals.index >= f.start) & (totals.index < f.end)] for f in faults])
    outside = totals.drop(during.index)
    assert len(during) and len(outside)
    assert during.max() > 5 * outside.median()


def test_a_redelivered_task_stores_nothing_twice(parts):
    task = Task(project="demo", model="pump-1", revision=parts.model_info.latest_revision("demo"),
                start=HOUR - timedelta(hours=2), end=HOUR - timedelta(hours=1))
    parts.queue.publish([task.to_json(), task.to_json()])
    assert drain(parts) == 2
    rows = stored(parts)
    assert len(rows) == 6 * (5 * 3 + 3)  # 6 steps x (5 per-tag groups x 3 tags + 3 totals)
    assert prediction_duplicates(parts.engine) == 0


def test_malformed_messages_are_dead_lettered_and_the_loop_goes_on(parts):
    good = Task(project="demo", model="pump-1", revision=parts.model_info.latest_revision("demo"),
                start=HOUR - timedelta(hours=1), end=HOUR - timedelta(minutes=30))
    parts.queue.publish([b"\x00not json", b'{"version": 1, "project": "demo"}', good.to_json()])
    assert drain(parts) == 3
    with parts.engine.connect() as connection:
        letters = connection.execute(select(dead_letters.c.reason, dead_letters.c.error, dead_letters.c.body)).all()
    assert sorted(reason for reason, _, _ in letters) == ["malformed", "malformed"]
    assert any("model: Field required" in error for _, error, _ in letters)
    assert {body for _, _, body in letters} == {b"\x00not json", b'{"version": 1, "project": "demo"}'}
    assert len(stored(parts)) > 0
    assert parts.queue.depth() == 0


def test_a_gone_revision_is_replanned_at_the_latest(parts, gordo_server):
    latest = parts.model_info.latest_revision("demo")
    stale = Task(project="demo", model="pump-1", revision="1000", start=HOUR - timedelta(hours=1),
                 end=HOUR - timedelta(minutes=30))
    parts.queue.publish([stale.to_json()])
    assert drain(parts) == 2  # the stale task, then its re-planned twin
    rows = stored(parts)
    assert len(rows) and set(rows.model) == {"pump-1"}
    with parts.engine.connect() as connection:
        revisions = set(connection.execute(select(predictions.c.revision)).scalars())
    assert revisions == {latest}


def test_an_unreachable_gordo_pauses_the_executor_and_costs_the_task_no_attempt(database_url, clock):
    """Gordo refuses every connection and its /healthcheck too: an outage, not the task's
    failure. The task goes back to the queue unattempted, however often it is tried, and
    nothing is dead-lettered; the executor takes no work while Gordo is down."""
    unreachable = "http://127.0.0.1:9"  # discard port: nothing listens
    parts = build(make_config(database_url, unreachable, max_attempts=2), clock=clock)
    try:
        task = Task(project="demo", model="pump-1", revision="1", start=HOUR - timedelta(hours=1),
                    end=HOUR - timedelta(minutes=30))
        parts.ledger.plan([PlannedWindow("demo", "pump-1", "1", task.window)])
        parts.queue.publish([task.to_json()])
        executor = Executor.from_components(parts)
        for delivery in range(1, 5):  # more deliveries than max_attempts
            [message] = parts.queue.receive(1, timedelta(0))
            assert message.deliveries == delivery
            assert executor.handle(message) == State.QUEUED
            clock.advance(timedelta(seconds=2))  # past the put-back delay
        assert set(executor._outages.paused) == {"gordo"}
        with parts.engine.connect() as connection:
            assert connection.execute(select(dead_letters)).all() == []
            [(state, attempts)] = connection.execute(select(ledger.c.state, ledger.c.attempts)).all()
        assert (state, attempts) == (State.PLANNED, 0)
        assert parts.queue.depth() == 1
    finally:
        parts.close()


def test_sensors_from_and_predictions_into_influxdb(tmp_path, gordo_server, influx_server, influx_database, clock):
    """The same pipeline with both data sides in a real InfluxDB 1.x, in gordo-client's layout."""
    influx = {"type": "influx", "url": influx_server.url, "database": influx_database}
    config = make_config(f"sqlite:///{tmp_path}/latigo.db", gordo_server.base_url).model_copy(
        update={
            "sensors": Config(sensors=influx).sensors,
            "predictions": Config(predictions={**influx, "extra_tags": {"site": "demo-site"}}).predictions,
        }
    )
    parts = build(config, clock=clock)
    try:
        feed(parts.sensors, NOW - timedelta(hours=5), NOW)
        scheduler = scheduler_for(parts)
        scheduler.tick()
        drain(parts)
        assert {state for _, state in ledger_states(parts)} == {State.DONE}
        totals = influx_server.points(
            'SELECT "sensor_value" FROM "total-anomaly-scaled" GROUP BY *', influx_database
        )
        per_machine = pd.Series([row["machine"] for row in totals]).value_counts().to_dict()
        # 7 windows x 3 steps of 10 minutes, for every model, once
        assert per_machine == {model: 21 for model in gordo_server.models}
        assert {row["sensor_name"] for row in totals} == {"total-anomaly-scaled"}
        assert {row["site"] for row in totals} == {"demo-site"}
        per_tag = influx_server.points(
            "SELECT count(\"sensor_value\") FROM \"tag-anomaly-scaled\" WHERE machine = 'pump-1' GROUP BY sensor_name",
            influx_database,
        )
        assert {row["sensor_name"]: row["count"] for row in per_tag} == {tag: 21 for tag in tags_of("pump-1")}

        # predicting the same windows again (a redelivery) overwrites, never duplicates
        task = Task(project="demo", model="pump-1", revision=gordo_server.revision,
                    start=HOUR - timedelta(hours=2), end=HOUR - timedelta(hours=1))
        parts.queue.publish([task.to_json()])
        drain(parts)
        again = influx_server.points(
            "SELECT count(\"sensor_value\") FROM \"total-anomaly-scaled\" WHERE machine = 'pump-1'", influx_database
        )
        assert again[0]["count"] == 21
    finally:
        parts.close()
