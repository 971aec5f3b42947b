"""The SQL backends against real databases: every test runs on SQLite and on PostgreSQL.

Covers the migrations, the task queue (leases, redelivery, concurrency), the ledger, the
SQL sensor store and the SQL prediction store, and how a stopped PostgreSQL looks to the
providers. Time is controlled with a fixed clock, never by sleeping.
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import datetime, timedelta, timezone
from time import monotonic
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, event, func, inspect, select, text

from latigo import db, readmodel
from latigo.errors import PermanentError, TransientError
from latigo.ledger import Ledger, Outcome, PlannedWindow, State
from latigo.providers.predictions.partitions import Partitions
from latigo.providers.predictions.sql import SqlPredictions, output_codes
from latigo.providers.predictions.sql import read as read_predictions
from latigo.providers.sensors.sql import SqlSensors
from latigo.queues import Message
from latigo.queues.sql import SqlQueue
from latigo.schema import dead_letters, ledger, metadata, prediction_tags, predictions, sensor_data, task_queue
from latigo.task import Task
from latigo.window import Window
from tests.postgres_fixture import PostgresServer

# every test's predictions lie in this span: a store replaces what it holds
T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
SPAN = Window(T0 - timedelta(days=1), T0 + timedelta(days=1))
INTERVAL = timedelta(minutes=30)
LEASE = timedelta(minutes=5)
# receive(wait=NOW): look once, do not wait
NOW = timedelta(0)
# how long a thread in these tests may take before it counts as hung
JOIN_TIMEOUT = 30.0
LATIGO_TABLES = set(metadata.tables)  # compare_metadata below checks their columns


class FixedClock:
    """A clock that stands still until told to move."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated Latigo database."""
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def count_rows(engine: Engine, table: sqlalchemy.Table) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def run_threads(count: int, target: Callable[[int], object]) -> list[object]:
    """Run ``target(i)`` in ``count`` threads; return their results, re-raise their errors."""
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            results[index] = target(index)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread below
            errors.append(error)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


# --- migrations ------------------------------------------------------------------------


def schema_snapshot(engine: Engine) -> dict[str, object]:
    inspector = inspect(engine)
    return {
        table: (
            [(column["name"], str(column["type"]), column["nullable"]) for column in inspector.get_columns(table)],
            sorted((index["name"], tuple(index["column_names"])) for index in inspector.get_indexes(table)),
            inspector.get_pk_constraint(table)["constrained_columns"],
        )
        for table in sorted(inspector.get_table_names())
    }


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_upgrade_creates_the_schema_on_an_empty_database(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        assert inspect(engine).get_table_names() == []
        db.upgrade(engine)
        assert set(inspect(engine).get_table_names()) == LATIGO_TABLES | {"alembic_version"}
        head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()
        assert current_revision(engine) == head
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    before = schema_snapshot(engine)
    revision = current_revision(engine)
    Ledger(engine, clock=FixedClock()).plan([PlannedWindow("p", "m", "1", Window(T0, T0 + INTERVAL))])

    db.upgrade(engine)

    assert schema_snapshot(engine) == before
    assert current_revision(engine) == revision
    assert count_rows(engine, ledger) == 1, "a second upgrade must keep the data"


def test_migrated_schema_matches_the_metadata(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, metadata)
    assert differences == []


# --- SqlQueue --------------------------------------------------------------------------


def make_queue(engine: Engine, clock: FixedClock, poll: timedelta = timedelta(milliseconds=20)) -> SqlQueue:
    return SqlQueue(engine, lease=LEASE, poll_interval=poll, clock=clock)


@pytest.fixture
def queue(engine: Engine, clock: FixedClock) -> Iterator[SqlQueue]:
    queue = make_queue(engine, clock)
    yield queue
    queue.close()


def bodies(messages: list[Message]) -> list[bytes]:
    return [message.body for message in messages]


def numbered(count: int, start: int = 0) -> list[bytes]:
    return [f"task-{i:05d}".encode() for i in range(start, start + count)]


def test_publish_many_in_one_batched_call(engine: Engine, queue: SqlQueue) -> None:
    inserts: list[int] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(_conn, _cursor, statement: str, _params, _context, _executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TASK_QUEUE"):
            inserts.append(1)

    started = monotonic()
    queue.publish(numbered(5000))
    elapsed = monotonic() - started
    event.remove(engine, "before_cursor_execute", _count)

    assert queue.depth() == 5000
    assert 1 <= len(inserts) <= 10, f"{len(inserts)} INSERT round trips for 5000 messages: not batched"
    assert elapsed < 30, f"publishing 5000 messages took {elapsed:.1f} s"
    first = queue.receive(max_messages=100, wait=NOW)
    assert bodies(first) == numbered(100)


def test_receive_returns_at_most_max_messages_in_publish_order(queue: SqlQueue) -> None:
    queue.publish(numbered(10))

    first = queue.receive(max_messages=3, wait=NOW)
    second = queue.receive(max_messages=3, wait=NOW)
    rest = queue.receive(max_messages=100, wait=NOW)

    assert bodies(first) == numbered(3)
    assert bodies(second) == numbered(3, start=3)
    assert bodies(rest) == numbered(4, start=6)
    assert all(message.deliveries == 1 for message in first + second + rest)
    assert queue.receive(max_messages=100, wait=NOW) == []


def test_ack_removes_the_message_for_good(queue: SqlQueue, clock: FixedClock) -> None:
    queue.publish(numbered(2))
    done, kept = queue.receive(max_messages=2, wait=NOW)

    queue.ack(done)

    assert queue.depth() == 1
    clock.advance(LEASE * 3)
    again = queue.receive(max_messages=10, wait=NOW)
    assert bodies(again) == [kept.body], "only the unacknowledged message comes back"


def test_release_with_delay_hides_the_message_until_the_delay_passed(queue: SqlQueue, clock: FixedClock) -> None:
    queue.publish([b"retry-me"])
    [message] = queue.receive(max_messages=1, wait=NOW)

    queue.release(message, delay=timedelta(minutes=10))

    assert queue.depth() == 1
    assert queue.receive(max_messages=1, wait=NOW) == []
    clock.advance(timedelta(minutes=10) - timedelta(seconds=1))
    assert queue.receive(max_messages=1, wait=NOW) == []
    clock.advance(timedelta(seconds=1))
    [again] = queue.receive(max_messages=1, wait=NOW)
    assert again.body == b"retry-me"
    assert again.deliveries == 2


def test_release_without_delay_makes_the_message_available_at_once(queue: SqlQueue) -> None:
    queue.publish([b"give-back"])
    [message] = queue.receive(max_messages=1, wait=NOW)

    queue.release(message)

    [again] = queue.receive(max_messages=1, wait=NOW)
    assert (again.body, again.deliveries) == (b"give-back", 2)


def test_unacknowledged_message_is_delivered_again_after_its_lease(queue: SqlQueue, clock: FixedClock) -> None:
    queue.publish([b"lost-receiver"])
    [first] = queue.receive(max_messages=1, wait=NOW)
    assert first.deliveries == 1

    clock.advance(LEASE - timedelta(seconds=1))
    assert queue.receive(max_messages=1, wait=NOW) == [], "still leased"
    clock.advance(timedelta(seconds=1))
    [second] = queue.receive(max_messages=1, wait=NOW)

    assert second.body == b"lost-receiver"
    assert second.deliveries == 2
    clock.advance(LEASE)
    [third] = queue.receive(max_messages=1, wait=NOW)
    assert third.deliveries == 3


def test_stale_receipt_does_not_touch_the_new_receivers_claim(
    engine: Engine, queue: SqlQueue, clock: FixedClock
) -> None:
    other = make_queue(engine, clock)
    queue.publish([b"contended"])
    [stale] = queue.receive(max_messages=1, wait=NOW)
    clock.advance(LEASE)
    [current] = other.receive(max_messages=1, wait=NOW)
    assert current.deliveries == 2

    queue.ack(stale)
    queue.release(stale)

    assert queue.depth() == 1, "a stale ack must not delete the new receiver's message"
    assert queue.receive(max_messages=1, wait=NOW) == [], "a stale release must not free the new claim"
    other.ack(current)
    assert queue.depth() == 0


def test_depth_counts_waiting_and_in_flight_messages(queue: SqlQueue) -> None:
    assert queue.depth() == 0
    queue.publish(numbered(7))
    in_flight = queue.receive(max_messages=3, wait=NOW)
    assert queue.depth() == 7
    for message in in_flight:
        queue.ack(message)
    assert queue.depth() == 4


def test_receive_with_nothing_available_returns_empty_after_the_wait(queue: SqlQueue) -> None:
    wait = timedelta(milliseconds=300)
    started = monotonic()
    messages = queue.receive(max_messages=5, wait=wait)
    elapsed = monotonic() - started

    assert messages == []
    assert wait.total_seconds() <= elapsed < wait.total_seconds() + 5


def test_close_wakes_a_waiting_receive_promptly(engine: Engine, clock: FixedClock) -> None:
    # a poll interval as long as the wait: only close() can end the wait early
    wait = timedelta(seconds=10)
    queue = make_queue(engine, clock, poll=wait)
    claimed = threading.Event()

    @event.listens_for(engine, "after_cursor_execute")
    def _claimed(_conn, _cursor, statement: str, *_args) -> None:
        if statement.lstrip().upper().startswith("UPDATE TASK_QUEUE"):
            claimed.set()

    outcome: dict[str, object] = {}

    def receive() -> None:
        started = monotonic()
        outcome["messages"] = queue.receive(max_messages=1, wait=wait)
        outcome["elapsed"] = monotonic() - started

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    assert claimed.wait(JOIN_TIMEOUT), "receive never polled the table"
    queue.close()
    receiver.join(wait.total_seconds())
    event.remove(engine, "after_cursor_execute", _claimed)

    assert not receiver.is_alive(), "close() did not wake the waiting receive"
    assert outcome["messages"] == []
    assert outcome["elapsed"] < wait.total_seconds() / 2


def test_concurrent_receivers_get_every_message_exactly_once(engine: Engine, clock: FixedClock) -> None:
    total, receivers, batch = 500, 4, 7
    make_queue(engine, clock).publish(numbered(total))
    start_together = threading.Barrier(receivers)

    def drain(_index: int) -> list[bytes]:
        queue = make_queue(engine, clock)
        received: list[bytes] = []
        start_together.wait(JOIN_TIMEOUT)
        while messages := queue.receive(max_messages=batch, wait=NOW):
            assert len(messages) <= batch
            received.extend(bodies(messages))
            for message in messages:
                queue.ack(message)
        return received

    per_receiver = run_threads(receivers, drain)

    everything = [body for received in per_receiver for body in received]
    assert sorted(everything) == numbered(total), "some message was lost or received twice"
    assert count_rows(engine, task_queue) == 0


def test_postgres_claims_skip_rows_locked_by_another_receiver(postgres_url: str, clock: FixedClock) -> None:
    # PostgreSQL only: SQLite serialises writers, so there is nothing to skip
    engine = db.create_engine(postgres_url)
    try:
        db.upgrade(engine)
        queue = make_queue(engine, clock)
        queue.publish(numbered(8))
        with engine.connect() as locker:
            # another receiver's open claim on the three oldest rows
            locked = locker.execute(
                select(task_queue.c.id).order_by(task_queue.c.id).limit(3).with_for_update()
            ).scalars().all()
            assert len(locked) == 3
            [claimed] = run_threads(1, lambda _i: queue.receive(max_messages=5, wait=NOW))
            locker.rollback()
        assert bodies(claimed) == numbered(5, start=3), "locked rows must be skipped, not waited for"
    finally:
        engine.dispose()


# --- Ledger ----------------------------------------------------------------------------


def grid(count: int, start: int = 0) -> list[Window]:
    return [Window(T0 + INTERVAL * i, T0 + INTERVAL * (i + 1)) for i in range(start, start + count)]


def planned(model: str, windows: list[Window], project: str = "p", revision: str = "42") -> list[PlannedWindow]:
    return [PlannedWindow(project, model, revision, window) for window in windows]


def task_over(model: str, windows: list[Window], project: str = "p", revision: str = "42") -> Task:
    return Task(project=project, model=model, revision=revision, start=windows[0].start, end=windows[-1].end)


def ledger_rows(engine: Engine) -> dict[tuple[str, datetime], sqlalchemy.Row]:
    with engine.connect() as connection:
        return {(row.model, row.window_start): row for row in connection.execute(select(ledger))}


@pytest.fixture
def book(engine: Engine, clock: FixedClock) -> Ledger:
    return Ledger(engine, clock=clock)


def test_plan_is_idempotent(book: Ledger, engine: Engine) -> None:
    assert book.plan(planned("a", grid(4))) == 4
    assert book.plan(planned("a", grid(4))) == 0
    assert book.plan(planned("a", grid(5, start=2))) == 3, "only windows 4..6 are new"
    assert book.plan([]) == 0
    assert count_rows(engine, ledger) == 7
    assert readmodel.state_counts(engine) == {("p", "a"): {State.PLANNED: 7}}


def test_concurrent_planners_plan_each_window_once(database_url: str, engine: Engine) -> None:
    planners, windows = 4, planned("a", grid(300)) + planned("b", grid(300))
    start_together = threading.Barrier(planners)

    def plan(_index: int) -> int:
        # a separate engine: another scheduler process with its own connections
        own_engine = db.create_engine(database_url)
        try:
            start_together.wait(JOIN_TIMEOUT)
            return Ledger(own_engine, clock=FixedClock()).plan(windows)
        finally:
            own_engine.dispose()

    new_per_planner = run_threads(planners, plan)

    assert sum(new_per_planner) == len(windows), f"planned per planner: {new_per_planner}"
    assert count_rows(engine, ledger) == len(windows)


def test_watermarks_are_the_newest_planned_window_per_model(book: Ledger) -> None:
    assert book.watermarks() == {}
    book.plan(planned("a", grid(4)) + planned("b", grid(2)) + planned("a", grid(1), project="q"))

    assert book.watermarks() == {
        ("p", "a"): T0 + INTERVAL * 3,
        ("p", "b"): T0 + INTERVAL,
        ("q", "a"): T0,
    }
    assert all(moment.tzinfo is not None for moment in book.watermarks().values())


def test_planned_lists_newest_first_and_mark_queued_takes_windows_out(book: Ledger, engine: Engine) -> None:
    book.plan(planned("b", grid(3)) + planned("a", grid(3)))

    order = [(item.window.start, item.model) for item in book.planned()]
    assert order == [(window.start, model) for window in reversed(grid(3)) for model in ("a", "b")]
    assert book.planned()[0] == PlannedWindow("p", "a", "42", grid(3)[-1])

    task = task_over("a", grid(2, start=1), revision="43")
    book.mark_queued([task])

    rows = ledger_rows(engine)
    for window in grid(2, start=1):
        row = rows[("a", window.start)]
        assert (row.state, row.task_id, row.revision) == (State.QUEUED, str(task.id), "43")
    assert rows[("a", T0)].state == State.PLANNED
    assert all(rows[("b", window.start)].state == State.PLANNED for window in grid(3))
    assert [(item.model, item.window) for item in book.planned()] == [
        ("b", grid(3)[2]),
        ("b", grid(3)[1]),
        ("a", grid(3)[0]),
        ("b", grid(3)[0]),
    ]


def test_mark_queued_leaves_windows_that_are_past_planning(book: Ledger, engine: Engine) -> None:
    book.plan(planned("a", grid(2)))
    book.finish(task_over("a", grid(1)), State.DONE)

    book.mark_queued([task_over("a", grid(2))])

    rows = ledger_rows(engine)
    assert rows[("a", T0)].state == State.DONE
    assert rows[("a", T0 + INTERVAL)].state == State.QUEUED


def test_each_window_of_a_task_records_its_own_outcome_and_no_other_window_changes(
    book: Ledger, engine: Engine, clock: FixedClock
) -> None:
    book.plan(planned("a", grid(6)) + planned("b", grid(6)))
    clock.advance(timedelta(hours=1))
    windows = grid(6)
    book.fail(task_over("a", grid(3, start=2)), "timeout")  # a failed attempt's error is cleared by the outcome

    book.record(
        task_over("a", grid(3, start=2), revision="50"),
        [
            Outcome(windows[2], State.DONE, None, 3, 3),
            Outcome(windows[3], State.DONE, "2 of 3 rows: no complete sensor data at 10:20", 2, 3),
            Outcome(windows[4], State.NO_DATA, "no sensor data", 0, 3),
            Outcome(windows[5], State.DONE, "outside the task", 3, 3),  # never written
        ],
    )

    rows = ledger_rows(engine)
    got = {index: rows[("a", window.start)] for index, window in enumerate(windows)}
    assert (got[2].state, got[2].note, got[2].stored_rows, got[2].expected_rows) == (State.DONE, None, 3, 3)
    assert (got[3].state, got[3].stored_rows, got[3].expected_rows) == (State.DONE, 2, 3)
    assert got[3].note == "2 of 3 rows: no complete sensor data at 10:20"
    assert (got[4].state, got[4].note, got[4].stored_rows) == (State.NO_DATA, "no sensor data", 0)
    for index in (2, 3, 4):
        assert (got[index].revision, got[index].last_error, got[index].updated_at) == ("50", None, clock.now)
    for index in (0, 1, 5):
        assert (got[index].state, got[index].revision, got[index].updated_at, got[index].note) == (
            State.PLANNED, "42", T0, None,
        )  # fmt: skip
    assert all(rows[("b", window.start)].state == State.PLANNED for window in windows)


def test_fail_counts_attempts_on_the_tasks_windows(book: Ledger, engine: Engine) -> None:
    book.plan(planned("a", grid(4)))
    task = task_over("a", grid(2, start=1))

    assert book.fail(task, "timeout") == 1
    assert book.fail(task, "x" * 5000) == 2

    rows = ledger_rows(engine)
    for window in grid(2, start=1):
        row = rows[("a", window.start)]
        assert (row.state, row.attempts) == (State.FAILED, 2)
        assert row.last_error == "x" * 2000, "errors are cut to ERROR_LIMIT"
    for window in (grid(4)[0], grid(4)[3]):
        assert (rows[("a", window.start)].state, rows[("a", window.start)].attempts) == (State.PLANNED, 0)


def test_dead_letter_records_the_message_and_kills_exactly_the_tasks_windows(
    book: Ledger, engine: Engine, clock: FixedClock
) -> None:
    book.plan(planned("a", grid(5)) + planned("b", grid(5)))
    task = task_over("a", grid(3, start=1))

    book.dead_letter(task.to_json(), reason="exhausted", error="gordo 503", attempts=5, task=task)

    with engine.connect() as connection:
        [letter] = connection.execute(select(dead_letters)).all()
    assert (letter.task_id, letter.project, letter.model) == (str(task.id), "p", "a")
    assert Task.from_json(letter.body) == task
    assert (letter.reason, letter.error, letter.attempts, letter.created_at) == ("exhausted", "gordo 503", 5, T0)
    rows = ledger_rows(engine)
    dead = {start for (model, start), row in rows.items() if row.state == State.DEAD}
    assert dead == {window.start for window in grid(3, start=1)}
    assert all(rows[("a", start)].last_error == "gordo 503" for start in dead)


def test_dead_letter_of_a_malformed_message_touches_no_window(book: Ledger, engine: Engine) -> None:
    book.plan(planned("a", grid(2)))

    book.dead_letter(b"{not json", reason="malformed", error="malformed task", attempts=1)

    with engine.connect() as connection:
        [letter] = connection.execute(select(dead_letters)).all()
    assert (letter.task_id, letter.project, letter.model, letter.body) == (None, None, None, b"{not json")
    assert {row.state for row in ledger_rows(engine).values()} == {State.PLANNED}


# --- SqlSensors ------------------------------------------------------------------------


STEP = timedelta(minutes=10)


def sensor_frame() -> pd.DataFrame:
    """Six rows of exact values for T1 and T2; T2 has a gap at the fourth row."""
    index = pd.DatetimeIndex([T0 + STEP * i for i in range(6)], name="time")
    return pd.DataFrame(
        {
            "T1": [1.5, -2.25, 0.1, 1e-300, 123456.789, 7.0],
            "T2": [10.0, 20.0, 30.0, np.nan, 50.0, 60.0],
        },
        index=index,
    )


def assert_sensor_data(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert isinstance(got.index, pd.DatetimeIndex)
    assert str(got.index.tz) == "UTC"
    assert got.index.name == "time"
    assert list(got.index) == list(expected.index)
    assert list(got.columns) == list(expected.columns)
    assert (got.dtypes == "float64").all()
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())  # exact, NaN equal to NaN


def test_sensor_write_then_data_roundtrips_exact_values_over_a_half_open_range(engine: Engine) -> None:
    sensors, frame = SqlSensors(engine), sensor_frame()

    assert sensors.write(frame) == 11, "11 values: the NaN is not a value"

    everything = sensors.data(["T1", "T2"], T0, T0 + STEP * 6)
    assert_sensor_data(everything, frame)
    middle = sensors.data(["T2", "T1", "T3"], T0 + STEP, T0 + STEP * 4)
    assert_sensor_data(middle, frame.iloc[1:4])  # the end is excluded, the start included; T3 has no data
    only_t1 = sensors.data(["T1"], T0 + STEP * 5, T0 + STEP * 6)
    assert_sensor_data(only_t1, frame.iloc[5:6][["T1"]])
    nothing = sensors.data(["T3"], T0, T0 + STEP * 6)
    assert nothing.empty and list(nothing.columns) == []
    assert isinstance(nothing.index, pd.DatetimeIndex) and str(nothing.index.tz) == "UTC"


def test_sensor_reads_in_batches_give_the_same_frame(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from latigo.providers.sensors import sql as sql_sensors

    sensors, frame = SqlSensors(engine), sensor_frame()
    sensors.write(frame)
    whole = sensors.data(["T1", "T2"], T0, T0 + STEP * 6)
    monkeypatch.setattr(sql_sensors, "READ_BATCH", 2)  # 11 rows: six batches
    assert_sensor_data(sensors.data(["T1", "T2"], T0, T0 + STEP * 6), frame)
    assert_sensor_data(whole, frame)


def test_sensor_writes_are_idempotent_and_rewrites_update(engine: Engine) -> None:
    sensors, frame = SqlSensors(engine), sensor_frame()
    sensors.write(frame)

    sensors.write(frame)
    assert count_rows(engine, sensor_data) == 11
    assert_sensor_data(sensors.data(["T1", "T2"], T0, T0 + STEP * 6), frame)

    changed = frame.copy()
    changed.loc[T0 + STEP, "T1"] = 99.0
    changed.loc[T0 + STEP * 3, "T2"] = -1.0  # fills the gap
    sensors.write(changed)
    assert count_rows(engine, sensor_data) == 12
    assert_sensor_data(sensors.data(["T1", "T2"], T0, T0 + STEP * 6), changed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.floats(allow_nan=False), min_size=1, max_size=30))
def test_any_float_roundtrips_exactly(engine: Engine, values: list[float]) -> None:
    with engine.begin() as connection:  # one database serves every example
        connection.execute(delete(sensor_data))
    index = pd.DatetimeIndex([T0 + STEP * i for i in range(len(values))], name="time")
    frame = pd.DataFrame({"T1": values}, index=index)

    SqlSensors(engine).write(frame)

    assert_sensor_data(SqlSensors(engine).data(["T1"], T0, T0 + STEP * len(values)), frame)


def test_sensors_and_exists(engine: Engine) -> None:
    sensors = SqlSensors(engine)
    assert sensors.sensors() == []
    assert not sensors.exists("T1")

    sensors.write(sensor_frame()[["T2", "T1"]])

    assert sensors.sensors() == ["T1", "T2"]
    assert sensors.exists("T1") and sensors.exists("T2")
    assert not sensors.exists("T3")


def test_range_query_is_sql_naming_the_table_tags_and_range(engine: Engine) -> None:
    text = SqlSensors(engine).range_query(["T1", "T2"], T0, T0 + INTERVAL)

    assert "FROM sensor_data" in text
    assert "'T1'" in text and "'T2'" in text
    assert "2024-03-01 00:00:00" in text and "2024-03-01 00:30:00" in text
    with engine.connect() as connection:  # and the text is SQL this database runs
        connection.exec_driver_sql(text).all()


# --- SqlPredictions --------------------------------------------------------------------


TAGS = ["T1", "T2"]
OUTPUT_COLUMNS = [
    *[("model-input", tag) for tag in TAGS],
    *[("model-output", tag) for tag in TAGS],
    *[("tag-anomaly-scaled", tag) for tag in TAGS],
    ("total-anomaly-scaled", ""),
]


def gordo_frame(times: int = 6, offset: float = 0.0) -> pd.DataFrame:
    """What Gordo's anomaly endpoint answers: two-level columns, start/end bookkeeping."""
    index = pd.DatetimeIndex([T0 + STEP * i for i in range(times)], name="time")
    columns = pd.MultiIndex.from_tuples([("start", ""), ("end", ""), *OUTPUT_COLUMNS])
    values = np.arange(times * len(OUTPUT_COLUMNS), dtype="float64").reshape(times, -1) / 8 + offset
    frame = pd.DataFrame(index=index, columns=columns)
    frame[("start", "")] = index
    frame[("end", "")] = index + STEP
    for position, column in enumerate(OUTPUT_COLUMNS):
        frame[column] = values[:, position]
    return frame


def stored_predictions(engine: Engine, model: str = "m") -> dict[tuple[datetime, str, str], tuple[float | None, str]]:
    frame = read_predictions(engine, projects=["p"], model=model)
    return {
        (row.time, row.output, row.tag): (None if np.isnan(row.value) else row.value, row.revision)
        for row in frame.itertuples()
    }


def expected_predictions(frame: pd.DataFrame, revision: str) -> dict[tuple[datetime, str, str], tuple[float, str]]:
    return {
        (time.to_pydatetime(), group, tag or group): (float(frame.loc[time, (group, tag)]), revision)
        for time in frame.index
        for group, tag in OUTPUT_COLUMNS
    }


def test_store_writes_one_row_per_time_and_output_group(engine: Engine) -> None:
    frame = gordo_frame()

    written = SqlPredictions(engine).store("p", "m", "7", SPAN, frame)

    assert written == len(frame) * len(OUTPUT_COLUMNS) == 42
    assert count_rows(engine, predictions) == len(frame) * 4, "six times of four output groups"
    with engine.connect() as connection:
        catalogue = {row.output: json.loads(row.tags) for row in connection.execute(select(prediction_tags))}
    assert catalogue == {
        "model-input": TAGS,
        "model-output": TAGS,
        "tag-anomaly-scaled": TAGS,
        "total-anomaly-scaled": ["total-anomaly-scaled"],
    }
    rows = stored_predictions(engine)
    assert rows == expected_predictions(frame, "7")
    assert not {output for _time, output, _tag in rows} & {"start", "end"}
    totals = {tag for _time, output, tag in rows if output == "total-anomaly-scaled"}
    assert totals == {"total-anomaly-scaled"}, "a total's tag is its group name"


def test_store_is_idempotent_and_the_latest_values_win(engine: Engine) -> None:
    store = SqlPredictions(engine)
    store.store("p", "m", "7", SPAN, gordo_frame())

    store.store("p", "m", "7", SPAN, gordo_frame())
    assert count_rows(engine, predictions) == 24

    updated = gordo_frame(offset=1000.0)
    store.store("p", "m", "8", SPAN, updated)
    assert count_rows(engine, predictions) == 24
    assert stored_predictions(engine) == expected_predictions(updated, "8")


def test_a_store_replaces_the_span_and_leaves_other_models_and_times(engine: Engine) -> None:
    store = SqlPredictions(engine)
    first = gordo_frame(times=6)
    store.store("p", "m", "7", SPAN, first)
    store.store("p", "other", "7", SPAN, first)
    # a new run of [T0 + 2 steps, T0 + 6 steps) produced rows for only two of its four times
    span = Window(T0 + STEP * 2, T0 + STEP * 6)
    again = gordo_frame(times=6, offset=500.0).iloc[[3, 4]]
    store.store("p", "m", "8", span, again)

    kept = expected_predictions(first.iloc[[0, 1]], "7")
    assert stored_predictions(engine, "m") == {**kept, **expected_predictions(again, "8")}
    assert stored_predictions(engine, "other") == expected_predictions(first, "7")
    # nothing to store clears the span
    store.store("p", "m", "9", span, first.iloc[0:0])
    assert stored_predictions(engine, "m") == kept


def test_a_store_refuses_rows_outside_its_span(engine: Engine) -> None:
    with pytest.raises(ValueError, match="do not lie in"):
        SqlPredictions(engine).store("p", "m", "7", Window(T0, T0 + STEP), gordo_frame(times=2))
    assert count_rows(engine, predictions) == 0


def test_sensor_times_are_unambiguous_whatever_a_feeder_writes(engine: Engine) -> None:
    """A feeder writing rows itself: on PostgreSQL an offset means what it says (timestamptz);
    on SQLite, where times compare as text, anything but the canonical UTC form is refused."""
    written = "2026-03-02 00:40:00+05:00"
    with engine.begin() as connection:
        if is_postgres(engine):
            connection.execute(text("INSERT INTO sensor_data (tag, time, value) VALUES ('F', :t, 1.5)"), {"t": written})
        else:
            for bad in (written, "2026-03-01T19:40:00", "2026-03-01 19:40:00", "2026-03-01 19:40:00.000000Z"):
                with pytest.raises(sqlalchemy.exc.IntegrityError, match="ck_sensor_data_utc_text"):
                    with connection.begin_nested():
                        connection.execute(text("INSERT INTO sensor_data (tag, time, value) VALUES ('F', :t, 1.5)"), {"t": bad})
            connection.execute(
                text("INSERT INTO sensor_data (tag, time, value) VALUES ('F', '2026-03-01 19:40:00.000000', 1.5)")
            )
    sensors = SqlSensors(engine)
    at = datetime(2026, 3, 1, 19, 40, tzinfo=timezone.utc)
    got = sensors.data(["F"], at, at + timedelta(minutes=1))
    assert list(got.index) == [pd.Timestamp(at)] and got["F"].tolist() == [1.5]
    assert sensors.data(["F"], at + timedelta(minutes=1), at + timedelta(hours=6)).empty
    assert sensors.data(["F"], at - timedelta(hours=6), at).empty


def test_store_replaces_rows_written_through_sqlalchemy_types(engine: Engine) -> None:
    """The store binds its parameters itself (PreparedUpsert): its times must be the very
    values SQLAlchemy's column types write, or predictions stored by another writer (or an
    earlier Latigo) would be duplicated instead of replaced."""
    frame = gordo_frame()
    blob = np.array([-1.0, -1.0]).astype("<f8").tobytes()
    if is_postgres(engine):  # any writer needs the day's partition
        Partitions(engine).ensure(SPAN)
    with engine.begin() as connection:
        codes = output_codes(connection, ["model-input", "model-output"])
        rows = [
            {"project": "p", "model": "m", "time": time, "output": code, "revision": "6", "tag_values": blob}
            for time in frame.index.to_pydatetime()
            for code in codes.values()
        ]
        db.upsert(connection, predictions, rows)

    SqlPredictions(engine).store("p", "m", "7", SPAN, frame)

    assert count_rows(engine, predictions) == 24
    assert stored_predictions(engine) == expected_predictions(frame, "7")


def test_a_revision_whose_tags_change_is_refused_and_keeps_what_was_stored(engine: Engine) -> None:
    """The values of a row are named by the revision's tags: a later answer of the same
    revision with other tags could not be read back, so it is refused before anything changes."""
    store = SqlPredictions(engine)
    store.store("p", "m", "7", SPAN, gordo_frame())
    renamed = gordo_frame().rename(columns={"T2": "T9"}, level=1)

    with pytest.raises(PermanentError, match="tags of model-input changed"):
        SqlPredictions(engine).store("p", "m", "7", SPAN, renamed)

    assert stored_predictions(engine) == expected_predictions(gordo_frame(), "7")
    store.store("p", "m", "8", SPAN, renamed)  # a new revision may name other tags
    assert {tag for _time, _output, tag in stored_predictions(engine)} == {"T1", "T9", "total-anomaly-scaled"}


def test_outputs_stores_only_the_chosen_groups(engine: Engine) -> None:
    store = SqlPredictions(engine, outputs=["total-anomaly-scaled", "tag-anomaly-scaled"])

    written = store.store("p", "m", "7", SPAN, gordo_frame())

    assert written == 6 * 3
    assert {output for _time, output, _tag in stored_predictions(engine)} == {"total-anomaly-scaled", "tag-anomaly-scaled"}


def test_store_keeps_nan_as_null(engine: Engine) -> None:
    frame = gordo_frame()
    frame.loc[T0 + STEP * 2, ("tag-anomaly-scaled", "T2")] = np.nan

    SqlPredictions(engine).store("p", "m", "7", SPAN, frame)

    rows = stored_predictions(engine)
    assert len(rows) == 42, "a NaN value is still one of the values"
    assert rows[(T0 + STEP * 2, "tag-anomaly-scaled", "T2")] == (None, "7")
    assert [key for key, (value, _revision) in rows.items() if value is None] == [
        (T0 + STEP * 2, "tag-anomaly-scaled", "T2")
    ]


# --- a stopped or unresponsive PostgreSQL ----------------------------------------------

# how long a provider call may take against a server that accepts connections but never
# answers (the fix proposed for db.create_engine is a connect timeout of at most 10 s)
UNRESPONSIVE_LIMIT = 15.0


def test_stopped_postgres_is_a_transient_error_and_recovers(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    engine = db.create_engine(postgres_url)
    try:
        db.upgrade(engine)
        sensors, store = SqlSensors(engine), SqlPredictions(engine)
        sensors.write(sensor_frame())
        store.store("p", "m", "7", SPAN, gordo_frame())  # the pool now holds live connections

        with postgres_server.stopped():
            started = monotonic()
            with pytest.raises(TransientError, match="sensor store unavailable"):
                sensors.data(["T1", "T2"], T0, T0 + INTERVAL)
            with pytest.raises(TransientError, match="sensor store unavailable"):
                sensors.write(sensor_frame())
            with pytest.raises(TransientError, match="sensor store unavailable"):
                sensors.sensors()
            with pytest.raises(TransientError, match="prediction store unavailable"):
                store.store("p", "m", "7", SPAN, gordo_frame())
            assert monotonic() - started < 10, "an unreachable database must fail fast"

        assert_sensor_data(sensors.data(["T1", "T2"], T0, T0 + STEP * 6), sensor_frame())
        assert store.store("p", "m", "8", SPAN, gordo_frame(offset=1.0)) == 42
        assert stored_predictions(engine) == expected_predictions(gordo_frame(offset=1.0), "8")
    finally:
        engine.dispose()
    assert postgres_server.is_running()


def test_unresponsive_postgres_is_a_transient_error_not_a_hang() -> None:
    """A server (or a firewall, a half-dead VM) that accepts the TCP connection and then says
    nothing must not block a provider forever (DESIGN.md: timeouts everywhere, no call may
    block forever). libpq waits for the server's first answer without limit unless told a
    connect_timeout."""
    outcome: dict[str, BaseException] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever answers
        engine = db.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/latigo")

        def call() -> None:
            try:
                SqlSensors(engine).sensors()
            except BaseException as error:  # noqa: BLE001 - inspected by the test thread
                outcome["error"] = error

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(UNRESPONSIVE_LIMIT)
        hung = caller.is_alive()
    # closing the listening socket resets the pending connection, which ends a hung call
    caller.join(JOIN_TIMEOUT)
    engine.dispose()
    assert not hung, f"SqlSensors.sensors() still waiting after {UNRESPONSIVE_LIMIT} s: no connect timeout"
    assert isinstance(outcome.get("error"), TransientError), outcome


def test_a_task_is_dead_lettered_at_most_once(book: Ledger, engine: Engine) -> None:
    """Two executors holding one task (a delivery again after its lease while the first still
    ran) both give up on it: one letter, so a replay publishes it once."""
    book.plan(planned("a", grid(2)))
    task = task_over("a", grid(2))
    book.dead_letter(task.to_json(), "exhausted", "first", 5, task)
    book.dead_letter(task.to_json(), "exhausted", "second", 5, task)
    book.dead_letter(b"junk", "malformed", "not a task", 1)
    book.dead_letter(b"junk", "malformed", "not a task", 1)  # no task id: each is kept
    with engine.connect() as connection:
        letters = connection.execute(select(dead_letters.c.task_id, dead_letters.c.error)).all()
    assert sorted(letters, key=str) == sorted([(str(task.id), "first"), (None, "not a task"), (None, "not a task")], key=str)
