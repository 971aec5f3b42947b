"""Windowed (LSTM) models over sensor data with gaps: the scheduler and executors against
real Keras LSTMs built by Gordo's own builder and served by a full Gordo install with
TensorFlow (tests/windowed_fixture.py). Nothing here is mocked.

Twelve hours of 10-minute data with gaps of several lengths: shorter than the lookback,
longer, at a task's start, at a task's end, and across the boundary of two windows inside
one task. For every window, in every grouping of windows into tasks (one window a task as
live windows are, two-hour backfill tasks, one task for all history), the test checks its
ledger state, note and row counts, the stored timestamps, and values equal to direct Gordo
calls on each contiguous run of the data; that no Gordo call held rows from both sides of a
gap; and that nothing was dead-lettered.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import requests
from sqlalchemy import delete, select

from latigo.backfill import Backfill, Mode
from latigo.components import Components, build
from latigo.config import Config
from latigo.demo.signals import signal
from latigo.executor import Executor
from latigo.ledger import State
from latigo.providers.predictions.sql import read as read_predictions
from latigo.scheduler import Scheduler
from latigo.schema import dead_letters, ledger, sensor_data
from tests.clock import Clock
from tests.fault_proxy import FaultProxy, always

pytestmark = pytest.mark.integration

UTC = UTC
# the test's clock: the newest due window is [17:30, 18:00)
NOW = datetime(2026, 3, 2, 18, 7, tzinfo=UTC)
# the sensor data: 72 ten-minute steps from 06:00 to 18:00
DATA_START = datetime(2026, 3, 2, 6, tzinfo=UTC)
STEPS = 72
STEP = timedelta(minutes=10)
INTERVAL = timedelta(minutes=30)
# history planned at first sight: the windows from 06:00 on
INITIAL_BACKFILL = "690m"
# steps without data, by what each gap tests; with 2-hour tasks, tasks start at steps 0, 12, 24, 36, ...
GAPS = {
    "shorter than the lookback, inside a task": range(13, 15),
    "longer than the lookback, at a task's start": range(24, 32),
    "at a task's end": range(45, 48),
    "across the boundary of two windows of one task": range(56, 59),
}
# the groupings of windows into tasks (schedule.max_task_span)
GROUPINGS = {"one window a task": "30m", "two-hour tasks": "2h", "one task": "1d"}
# Gordo's answers are float32 from TensorFlow: a row predicted in calls of different sizes
# differs in the last bits only
RTOL, ATOL = 1e-5, 1e-6
# Gordo's timeouts here: a windowed model's call takes well under a second
READ_TIMEOUT = 30


def present_steps(gaps=GAPS) -> list[int]:
    missing = {step for gap in gaps.values() for step in gap}
    return [step for step in range(STEPS) if step not in missing]


def at(step: int) -> datetime:
    return DATA_START + STEP * step


def sensor_frame(tags: list[str], steps: list[int]) -> pd.DataFrame:
    """One sample per step, at the step's own time, so resampling leaves the values as they are."""
    values = signal(tags, DATA_START, DATA_START + STEP * STEPS, step=STEP)
    return values.iloc[steps]


def contiguous_runs(steps: list[int]) -> list[list[int]]:
    found: list[list[int]] = []
    for step in steps:
        if found and found[-1][-1] == step - 1:
            found[-1].append(step)
        else:
            found.append([step])
    return found


def predicted_steps(steps: list[int], lookback: int) -> set[int]:
    """The steps a prediction is stored for: those with ``lookback`` contiguous rows before them."""
    return {step for run in contiguous_runs(steps) for step in run[lookback:]}


@dataclass(frozen=True)
class Expected:
    state: State
    stored: int
    note: str | None


def expected_windows(steps: list[int], lookback: int) -> dict[datetime, Expected]:
    """What every window should end as, said plainly from the data layout."""
    present, stored = set(steps), predicted_steps(steps, lookback)
    result = {}
    for first in range(0, STEPS, 3):
        mine = range(first, first + 3)
        count = sum(step in stored for step in mine)
        note = None
        if not any(step in present for step in mine):
            note = "0 of 3 rows: no sensor data in the window"
        elif count < 3:
            causes, position = [], 0
            while position < 3:
                step = mine[position]
                kind = "stored" if step in stored else "lookback" if step in present else "no data"
                end = position
                while end + 1 < 3 and (
                    "stored" if mine[end + 1] in stored else "lookback" if mine[end + 1] in present else "no data"
                ) == kind:
                    end += 1
                span = f"{at(step):%H:%M}" + (f"–{at(mine[end]):%H:%M}" if end > position else "")
                if kind == "no data":
                    causes.append(f"no complete sensor data at {span}")
                elif kind == "lookback":
                    causes.append(f"{span} follow{'' if end > position else 's'} a gap; the model needs {lookback} earlier rows")
                position = end + 1
            note = f"{count} of 3 rows: " + "; ".join(causes)
        result[at(first)] = Expected(State.DONE if count else State.NO_DATA, count, note)
    return result


def direct_predictions(gordo, model: str, revision: str, tags: list[str], steps: list[int]) -> pd.DataFrame:
    """Gordo's own answer for each contiguous run of the data, asked for directly (JSON, by
    plain requests), as (time, output, tag) -> value."""
    frame = sensor_frame(tags, steps)
    rows = []
    for run in contiguous_runs(steps):
        X = frame.loc[[at(step) for step in run]]
        if len(run) < gordo.min_rows[model]:
            continue
        columns = {tag: {moment.isoformat(): float(value) for moment, value in X[tag].items()} for tag in tags}
        answer = requests.post(
            f"{gordo.base_url}/gordo/v0/{gordo.project}/{model}/anomaly/prediction",
            params={"revision": revision},
            json={"X": columns, "y": columns},
            timeout=(3, 60),
        )
        assert answer.status_code == 200, answer.text[:300]
        for output, by_tag in answer.json()["data"].items():
            if output in ("start", "end"):
                continue
            for tag, by_time in by_tag.items():
                for moment, value in by_time.items():
                    rows.append((pd.Timestamp(moment).tz_convert("UTC"), output, tag or output, value))
    table = pd.DataFrame(rows, columns=["time", "output", "tag", "value"])
    return table.set_index(["time", "output", "tag"])["value"].sort_index()


def make_config(database_url: str, gordo_url: str, project: str, span: str, predictions_config=None) -> Config:
    config = Config(
        database={"url": database_url},
        models={"base_url": gordo_url, "projects": [project], "read_timeout": READ_TIMEOUT},
        schedule={"initial_backfill": INITIAL_BACKFILL, "max_task_span": span, "backlog_limit": 10_000},
        executor={"retry_base": "1s", "concurrency": 2},
    )
    if predictions_config is not None:
        config = config.model_copy(update={"predictions": Config(predictions=predictions_config).predictions})
    return config


def run_until_settled(parts: Components) -> None:
    """Tick and drain until no window is planned, queued or failed (history is published in
    backlog-sized slices, failed windows wait for their backoff)."""
    scheduler = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, parts.clock)
    for _ in range(20):
        scheduler.tick()
        Executor.from_components(parts).run(threading.Event(), until_idle=True)
        with parts.engine.connect() as connection:
            open_windows = connection.execute(
                select(ledger.c.window_start).where(ledger.c.state.in_([State.PLANNED, State.QUEUED, State.FAILED]))
            ).all()
        if not open_windows:
            return
        parts.clock.advance(timedelta(seconds=5))  # past any retry backoff
    raise AssertionError(f"windows still open: {open_windows[:5]}")


def ledger_rows(parts: Components, model: str) -> dict[datetime, tuple]:
    query = select(
        ledger.c.window_start, ledger.c.state, ledger.c.note, ledger.c.stored_rows, ledger.c.expected_rows,
        ledger.c.revision,
    ).where(ledger.c.model == model)
    with parts.engine.connect() as connection:
        return {row.window_start: tuple(row)[1:] for row in connection.execute(query)}


def stored(parts: Components, model: str) -> pd.Series:
    table = read_predictions(parts.engine, model=model)[["time", "output", "tag", "value", "revision"]]
    table["time"] = pd.to_datetime(table["time"], utc=True)
    return table.set_index(["time", "output", "tag"]).sort_index()


def gordo_requests(proxy: FaultProxy) -> list[list[pd.Timestamp]]:
    """The row times of every prediction request Latigo sent."""
    found = []
    for path, body in proxy.requests:
        if path.split("?")[0].endswith("prediction"):
            document = json.loads(body)
            found.append(sorted(pd.Timestamp(moment) for moment in next(iter(document["X"].values()))))
    return found


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture(scope="module")
def direct(windowed_gordo):
    """Gordo's own answers on each contiguous run, per model: the reference values."""
    return {
        model: direct_predictions(windowed_gordo, model, windowed_gordo.revision_b, windowed_gordo.tags, present_steps())
        for model in windowed_gordo.models
    }


def assert_windows_and_values(parts, gordo, direct, steps) -> None:
    for model in gordo.models:
        lookback = max(gordo.models[model], gordo.min_rows[model] - 1)
        expected = expected_windows(steps, lookback)
        rows = ledger_rows(parts, model)
        assert set(rows) == set(expected), model
        for start, want in expected.items():
            state, note, stored_rows, expected_rows, _ = rows[start]
            assert (state, stored_rows, expected_rows, note) == (want.state, want.stored, 3, want.note), (model, start)
        table = stored(parts, model)
        times = sorted(set(table.index.get_level_values("time")))
        assert times == [pd.Timestamp(at(step)) for step in sorted(predicted_steps(steps, lookback))], model
        reference = direct[model].loc[table.index]
        np.testing.assert_allclose(table["value"].to_numpy(), reference.to_numpy(), rtol=RTOL, atol=ATOL)
        # every group Gordo answers, for every tag, at every stored time
        assert len(table) == len(direct[model].loc[times]) if times else table.empty


@pytest.mark.parametrize("grouping", list(GROUPINGS))
def test_every_window_of_a_gappy_day_ends_true(tmp_path, windowed_gordo, direct, clock, grouping):
    with FaultProxy(windowed_gordo.base_url, always("pass")) as proxy:
        config = make_config(f"sqlite:///{tmp_path}/latigo.db", proxy.url, windowed_gordo.project, GROUPINGS[grouping])
        parts = build(config, clock=clock)
        try:
            parts.sensors.write(sensor_frame(windowed_gordo.tags, present_steps()))
            run_until_settled(parts)
            assert_windows_and_values(parts, windowed_gordo, direct, present_steps())
            with parts.engine.connect() as connection:
                assert connection.execute(select(dead_letters)).all() == []
        finally:
            parts.close()
    calls = gordo_requests(proxy)
    assert calls, "Latigo called Gordo"
    present = {pd.Timestamp(at(step)) for step in present_steps()}
    for rows in calls:
        # no call holds rows from both sides of a gap, or too few rows for the model
        assert all(b - a == pd.Timedelta(STEP) for a, b in zip(rows, rows[1:])), rows
        assert set(rows) <= present and len(rows) >= min(windowed_gordo.min_rows.values())
    if grouping == "one task":
        # history is one task per model, the newest window another: one call per run each
        runs = len(contiguous_runs(present_steps()))
        assert len(calls) <= len(windowed_gordo.models) * (runs + 1)


def test_the_stored_values_do_not_depend_on_how_windows_were_grouped(tmp_path, windowed_gordo, clock):
    """The gaps above, and one sensor out on its own (steps 40 to 44: a window without it,
    and one with it part of the time)."""
    results = {}
    one_sensor_out = [at(step) for step in range(40, 45)]
    for grouping, span in GROUPINGS.items():
        config = make_config(f"sqlite:///{tmp_path}/{span}.db", windowed_gordo.base_url, windowed_gordo.project, span)
        parts = build(config, clock=Clock(NOW))
        try:
            parts.sensors.write(sensor_frame(windowed_gordo.tags, present_steps()))
            with parts.engine.begin() as connection:
                connection.execute(
                    delete(sensor_data).where(
                        sensor_data.c.tag == windowed_gordo.tags[0], sensor_data.c.time.in_(one_sensor_out)
                    )
                )
            run_until_settled(parts)
            results[grouping] = {
                model: (stored(parts, model)["value"], {k: v[:4] for k, v in ledger_rows(parts, model).items()})
                for model in windowed_gordo.models
            }
        finally:
            parts.close()
    first, *others = results.values()
    notes = {row[1] for _, windows in first.values() for row in windows.values()}
    assert f"0 of 3 rows: no data for tags {windowed_gordo.tags[0]} in the window" in notes
    assert "1 of 3 rows: no complete sensor data at 12:40–12:50" in notes  # steps 39-41: 12:40, 12:50 out
    for other in others:
        for model in windowed_gordo.models:
            values, windows = first[model]
            assert other[model][1] == windows  # states, notes, rows: identical
            assert other[model][0].index.equals(values.index)
            np.testing.assert_allclose(other[model][0].to_numpy(), values.to_numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("store", ["sql", "influx"])
def test_re_prediction_after_a_new_gap_and_after_it_is_filled_leaves_exactly_the_new_rows(
    tmp_path, windowed_gordo, direct, clock, store, request
):
    """Data is withdrawn (a new gap), or arrives late (the gap filled); ``backfill --mode all``
    predicts the day again: the ledger and the store show exactly the new run."""
    influx = None
    if store == "influx":
        server, database = request.getfixturevalue("influx_server"), request.getfixturevalue("influx_database")
        influx = {"type": "influx", "url": server.url, "database": database}
    config = make_config(f"sqlite:///{tmp_path}/latigo.db", windowed_gordo.base_url, windowed_gordo.project, "2h", influx)
    parts = build(config, clock=clock)
    every_step = list(range(STEPS))
    full = {
        model: direct_predictions(windowed_gordo, model, windowed_gordo.revision_b, windowed_gordo.tags, every_step)
        for model in windowed_gordo.models
    }

    def check(steps: list[int], reference) -> None:
        if store == "sql":
            assert_windows_and_values(parts, windowed_gordo, reference, steps)
        else:
            assert_influx_rows(parts, windowed_gordo, reference, steps, server, database)

    try:
        parts.sensors.write(sensor_frame(windowed_gordo.tags, every_step))
        run_until_settled(parts)
        check(every_step, full)

        withdraw(parts, [step for gap in GAPS.values() for step in gap])
        predict_again(parts, windowed_gordo.project)
        check(present_steps(), direct)

        parts.sensors.write(sensor_frame(windowed_gordo.tags, every_step))
        predict_again(parts, windowed_gordo.project)
        check(every_step, full)
    finally:
        parts.close()


def assert_influx_rows(parts, gordo, reference, steps, server, database) -> None:
    """The ledger's windows as expected, and InfluxDB holding exactly the expected points of
    every model (each per-tag group once per tag, each total once, at the expected times)."""
    for model, offset in gordo.models.items():
        lookback = max(offset, gordo.min_rows[model] - 1)
        expected = expected_windows(steps, lookback)
        rows = ledger_rows(parts, model)
        assert {start: (row[0], row[2], row[1]) for start, row in rows.items()} == {
            start: (want.state, want.stored, want.note) for start, want in expected.items()
        }
        want = [pd.Timestamp(at(step)) for step in sorted(predicted_steps(steps, lookback))]
        points = server.points(f"SELECT \"sensor_value\" FROM \"total-anomaly-scaled\" WHERE machine = '{model}'", database)
        assert [pd.Timestamp(point["time"], tz="UTC") for point in points] == want
        total = reference[model].xs(("total-anomaly-scaled", "total-anomaly-scaled"), level=("output", "tag"))
        np.testing.assert_allclose([point["sensor_value"] for point in points], total.loc[want].to_numpy(), rtol=RTOL, atol=ATOL)
        every = server.points(f"SELECT count(\"sensor_value\") FROM /.*/ WHERE machine = '{model}' GROUP BY sensor_name", database)
        assert sum(row["count"] for row in every) == len(reference[model].loc[want])


def withdraw(parts: Components, steps: list[int]) -> None:
    with parts.engine.begin() as connection:
        connection.execute(delete(sensor_data).where(sensor_data.c.time.in_([at(step) for step in steps])))


def predict_again(parts: Components, project: str, revision: str | None = None) -> None:
    backfill = Backfill.from_components(parts)
    start, end = backfill.range(DATA_START, DATA_START + STEP * STEPS)
    models = backfill.models([project])
    if revision is not None:
        models = [model.__class__(model.project, model.name, revision) for model in models]
    backfill.plan(models, start, end, Mode.ALL)
    run_until_settled(parts)


def test_a_new_revision_leaves_exactly_its_own_rows_in_sql_and_influxdb(
    tmp_path, windowed_gordo, direct, clock, influx_server, influx_database
):
    """The day predicted at revision A on complete data, then at the latest revision B after
    the data got gaps: every row of A that B did not produce is gone, in both stores."""
    for store in ("sql", "influx"):
        influx = {"type": "influx", "url": influx_server.url, "database": influx_database} if store == "influx" else None
        config = make_config(
            f"sqlite:///{tmp_path}/{store}.db", windowed_gordo.base_url, windowed_gordo.project, "2h", influx
        )
        parts = build(config, clock=Clock(NOW))
        try:
            every_step = list(range(STEPS))
            parts.sensors.write(sensor_frame(windowed_gordo.tags, every_step))
            predict_again(parts, windowed_gordo.project, revision=windowed_gordo.revision_a)
            at_a = {
                model: direct_predictions(windowed_gordo, model, windowed_gordo.revision_a, windowed_gordo.tags, every_step)
                for model in windowed_gordo.models
            }
            if store == "sql":
                assert_windows_and_values(parts, windowed_gordo, at_a, every_step)
                assert {revision for model in at_a for revision in stored(parts, model)["revision"]} == {
                    windowed_gordo.revision_a
                }
            else:
                assert_influx_rows(parts, windowed_gordo, at_a, every_step, influx_server, influx_database)
            withdraw(parts, [step for gap in GAPS.values() for step in gap])
            predict_again(parts, windowed_gordo.project)  # the latest: B
            if store == "sql":
                assert_windows_and_values(parts, windowed_gordo, direct, present_steps())
                for model in windowed_gordo.models:
                    assert set(stored(parts, model)["revision"]) == {windowed_gordo.revision_b}
            else:
                assert_influx_rows(parts, windowed_gordo, direct, present_steps(), influx_server, influx_database)
            for model in windowed_gordo.models:
                assert {row[4] for row in ledger_rows(parts, model).values()} == {windowed_gordo.revision_b}
        finally:
            parts.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_outages_of_random_lengths_leave_every_window_true(tmp_path, windowed_gordo, clock, seed):
    """Random outages (1 to 15 steps, anywhere, several a day) and a random grouping: every
    window's ledger outcome agrees with the rows stored, the values with Gordo's own answers
    on each run, and no outage makes a dead letter."""
    rng = np.random.default_rng(seed)
    gaps = {f"gap {n}": range(start, start + length) for n, (start, length) in enumerate(
        zip(rng.integers(0, STEPS, rng.integers(1, 7)), rng.integers(1, 16, 7))
    )}
    steps = present_steps(gaps)
    span = str(rng.choice(["30m", "1h", "2h", "1d"]))
    reference = {
        model: direct_predictions(windowed_gordo, model, windowed_gordo.revision_b, windowed_gordo.tags, steps)
        for model in windowed_gordo.models
    }
    parts = build(make_config(f"sqlite:///{tmp_path}/latigo.db", windowed_gordo.base_url, windowed_gordo.project, span),
                  clock=clock)
    try:
        parts.sensors.write(sensor_frame(windowed_gordo.tags, steps))
        run_until_settled(parts)
        assert_windows_and_values(parts, windowed_gordo, reference, steps)
        with parts.engine.connect() as connection:
            assert connection.execute(select(dead_letters)).all() == []
    finally:
        parts.close()
