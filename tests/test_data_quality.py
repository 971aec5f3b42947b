"""Bad sensor data, through the executor and the real Gordo: each case has a defined outcome.

| data | outcome |
|---|---|
| NaN or inf samples | the samples are ignored; a 10-minute bucket with no finite value for some tag is not sent (the window's note says so) |
| duplicate or unsorted timestamps | sorted; a duplicate keeps the value delivered last |
| a tag with no data in the window | executor.missing_tags: no_data (default), retry, or dead |
| no data at all | the window is no_data, not a failure |
| data outside the window | read for padding, never stored |
"""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from latigo.components import build
from latigo.demo.models import tags_of
from latigo.demo.signals import signal
from latigo.executor import Executor
from latigo.ledger import PlannedWindow, State
from latigo.providers.predictions.sql import code_of
from latigo.schema import dead_letters, ledger, predictions
from latigo.task import Task
from tests.clock import Clock
from tests.test_pipeline import NOW, make_config

pytestmark = pytest.mark.integration  # every test predicts with the real Gordo server

START = NOW.replace(minute=0) - timedelta(hours=1)
WINDOW_END = START + timedelta(minutes=30)
TAGS = tags_of("pump-1")


@pytest.fixture
def parts(tmp_path, gordo_server):
    def make(**executor):
        made = build(make_config(f"sqlite:///{tmp_path}/latigo.db", gordo_server.base_url, **executor), clock=Clock(NOW))
        opened.append(made)
        return made

    opened = []
    yield make
    for made in opened:
        made.close()


def run_one(parts, revision: str) -> tuple[State, str | None]:
    task = Task(project="demo", model="pump-1", revision=revision, start=START, end=WINDOW_END)
    parts.ledger.plan([PlannedWindow("demo", "pump-1", revision, task.window)])
    parts.queue.publish([task.to_json()])
    Executor.from_components(parts).run(threading.Event(), until_idle=True)
    with parts.engine.connect() as connection:
        row = connection.execute(select(ledger.c.state, ledger.c.note, ledger.c.last_error)).one()
    return State(row.state), row.last_error or row.note


def stored_times(parts) -> list[pd.Timestamp]:
    with parts.engine.connect() as connection:
        times = connection.execute(
            select(predictions.c.time).where(predictions.c.output == code_of("total-anomaly-scaled")).order_by(predictions.c.time)
        ).scalars()
        return [pd.Timestamp(time) for time in times]


def sensor_frame() -> pd.DataFrame:
    return signal(TAGS, START - timedelta(hours=1), WINDOW_END + timedelta(hours=1))


def test_nan_and_inf_samples_are_ignored_and_empty_buckets_skipped(parts, gordo_server):
    p = parts()
    frame = sensor_frame()
    frame.loc[(frame.index >= START) & (frame.index < START + timedelta(minutes=10)), TAGS[0]] = np.nan
    frame.loc[frame.index == START + timedelta(minutes=12), TAGS[1]] = np.inf
    p.sensors.write(frame)  # the SQL store keeps NaN out and inf as it is
    state, note = run_one(p, gordo_server.revision)
    # the first bucket had no finite value for one tag: not sent; the inf was dropped as a sample
    assert state == State.DONE and note == "2 of 3 rows: no complete sensor data at 11:00"
    assert stored_times(p) == [pd.Timestamp(START + timedelta(minutes=m)) for m in (10, 20)]


def test_data_outside_the_window_is_never_stored(parts, gordo_server):
    p = parts()
    p.sensors.write(sensor_frame())
    state, _ = run_one(p, gordo_server.revision)
    assert state == State.DONE
    assert stored_times(p) == [pd.Timestamp(START + timedelta(minutes=m)) for m in (0, 10, 20)]


def test_no_data_at_all_is_a_state_not_a_failure(parts, gordo_server):
    p = parts()
    state, note = run_one(p, gordo_server.revision)
    assert state == State.NO_DATA and "no sensor data" in note
    assert stored_times(p) == []


@pytest.mark.parametrize(
    "policy, state, letters",
    [("no_data", State.NO_DATA, 0), ("retry", State.DEAD, 1), ("dead", State.DEAD, 1)],
)
def test_a_tag_without_data_follows_the_configured_policy(parts, gordo_server, policy, state, letters):
    p = parts(missing_tags=policy, max_attempts=1)
    p.sensors.write(sensor_frame().drop(columns=[TAGS[2]]))
    got, note = run_one(p, gordo_server.revision)
    assert got == state
    assert TAGS[2] in note
    with p.engine.connect() as connection:
        reasons = list(connection.execute(select(dead_letters.c.reason)).scalars())
    assert len(reasons) == letters
    if policy == "retry":
        assert reasons == ["exhausted"]  # retried as transient (data may arrive late), then given up
    if policy == "dead":
        assert reasons == ["permanent"]
