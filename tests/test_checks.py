"""What Latigo checks before it trusts anything: tasks (``TaskRules``), Gordo's answers
(``wire.check_answer``), Gordo's metadata (``parse_metadata``) and the names in Gordo's
URLs (``gordo._route``), against the real Gordo server, the SQL queue and the database.

A malformed task is dead-lettered ``malformed`` before any work: no Gordo call, no ledger
row touched, nothing stored. An answer that does not fit the model, or metadata Latigo
cannot predict with, is ``permanent`` at once (no retries) and stores nothing; bad
metadata is never cached. Gordo's answers are bent by the fault proxy's ``rewrite``
(tests/fault_proxy.py), re-written the way Gordo writes them. A controllable clock moves
between setting a ledger up and working, so any write to a row would show in its
``updated_at``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from latigo import dlq
from latigo.components import Components, build
from latigo.config import Config, GordoConfig
from latigo.demo import gordo
from latigo.demo.feeder import feed
from latigo.demo.models import tags_of
from latigo.demo.signals import signal
from latigo.errors import PermanentError, RevisionGone, TransientError
from latigo.executor import Executor
from latigo.ledger import Outcome, PlannedWindow, State
from latigo.providers.models import ModelMetadata, wire
from latigo.providers.models.gordo import BadMetadata, GordoModels, _route, parse_metadata
from latigo.providers.predictions.sql import read as read_predictions
from latigo.schema import dead_letters, ledger
from latigo.task import OVERSIZED_KEPT, Task
from latigo.window import Window
from tests.clock import Clock
from tests.fault_proxy import FaultProxy, Rewrite

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 2, 12, 7, tzinfo=UTC)
# the grid point before NOW: tasks lie on the 30-minute grid
HOUR = NOW.replace(minute=0)
INTERVAL = timedelta(minutes=30)
STEP = timedelta(minutes=10)
GRID = "(0:30:00 from 1970-01-01T00:00:00+00:00)"
# how far the clock moves between setting up the ledger and working
LATER = timedelta(minutes=1)
PUMP_TAGS = tags_of("pump-1")
# every value a stored time of pump-1 has: 5 per-tag groups x 3 tags + 3 totals
PUMP_VALUES_PER_TIME = 5 * len(PUMP_TAGS) + 3


def forward(method: str, path: str) -> str:
    """The proxy's plan: no faults, every request forwarded (answers may still be bent)."""
    return "pass"


def make_config(database_url: str, gordo_url: str, **executor: object) -> Config:
    return Config(
        database={"url": database_url},
        models={"base_url": gordo_url, "projects": ["demo"], "read_timeout": 20},
        schedule={"interval": "30m", "max_task_span": "1h"},
        queue={"type": "sql", "lease": "2h", "poll_interval": "0.02s"},
        executor={"retry_base": "1s", "max_attempts": 3, **executor},
    )


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@contextmanager
def pipeline(
    database_url: str, gordo_url: str, clock: Clock, rewrite: Rewrite | None = None, **executor: object
) -> Iterator[tuple[FaultProxy, Components]]:
    """Components talking to the real Gordo through a proxy that records every request (and
    bends answers with ``rewrite``), with three hours of demo sensor data fed."""
    with FaultProxy(gordo_url, forward, rewrite=rewrite) as proxy:
        parts = build(make_config(database_url, proxy.url, **executor), clock=clock)
        try:
            feed(parts.sensors, HOUR - timedelta(hours=3), NOW)
            yield proxy, parts
        finally:
            parts.close()


# -- the ledger, the dead letters, the predictions ---------------------------------------


def plan(
    parts: Components, model: str, start: datetime, count: int, project: str = "demo", revision: str = "1"
) -> None:
    parts.ledger.plan(
        [PlannedWindow(project, model, revision, Window(start + k * INTERVAL, start + (k + 1) * INTERVAL))
         for k in range(count)]
    )


def queue_task(
    parts: Components, model: str, start: datetime, end: datetime, revision: str, project: str = "demo"
) -> Task:
    """A task as the scheduler hands it out: its windows queued, its message published."""
    task = Task(project=project, model=model, revision=revision, start=start, end=end)
    parts.ledger.mark_queued([task])
    parts.queue.publish([task.to_json()], [task.key])
    return task


def kill(parts: Components, model: str, start: datetime, end: datetime, error: str) -> None:
    """Windows that died earlier, with their error and dead letter."""
    task = Task(project="demo", model=model, revision="1", start=start, end=end)
    parts.ledger.mark_queued([task])
    for _ in range(3):
        parts.ledger.fail(task, error)
    parts.ledger.dead_letter(task.to_json(), "exhausted", error, 3, task)


def finish(parts: Components, model: str, start: datetime, end: datetime) -> None:
    """Windows done earlier, with their rows counted."""
    task = Task(project="demo", model=model, revision="1", start=start, end=end)
    parts.ledger.mark_queued([task])
    starts = pd.date_range(start, end, freq="30min", inclusive="left").to_pydatetime()
    parts.ledger.record(task, [Outcome(Window(s, s + INTERVAL), State.DONE, None, 3, 3) for s in starts])


def ledger_rows(parts: Components) -> dict[tuple[str, str, datetime], dict[str, Any]]:
    """Every ledger row, whole, by its key."""
    with parts.engine.connect() as connection:
        rows = connection.execute(select(ledger)).mappings().all()
    return {(row["project"], row["model"], row["window_start"]): dict(row) for row in rows}


def letters(parts: Components) -> list[dict[str, Any]]:
    with parts.engine.connect() as connection:
        rows = connection.execute(select(dead_letters).order_by(dead_letters.c.id)).mappings().all()
    return [{**row, "body": bytes(row["body"])} for row in rows]


def stored_count(parts: Components, **where: str) -> int:
    """Values stored, of the rows matching ``where`` (column=value)."""
    frame = read_predictions(parts.engine)
    for name, value in where.items():
        frame = frame[frame[name] == value]
    return len(frame)


def stored(parts: Components, model: str) -> pd.DataFrame:
    frame = read_predictions(parts.engine, model=model)[["time", "output", "tag", "value"]]
    frame["time"] = pd.to_datetime(frame.time, utc=True)
    return frame


def handle_all(parts: Components, executor: Executor) -> list[State]:
    """Hand every message that is available now to ``executor.handle``, oldest first; no
    waiting (a message released for a retry is not available on the still clock)."""
    states = []
    while messages := parts.queue.receive(10, timedelta(0)):
        states += [executor.handle(message) for message in messages]
    return states


def gordo_calls(proxy: FaultProxy, route: str) -> list[tuple[str, bytes]]:
    return [(path, body) for path, body in proxy.requests if route in path.split("?")[0]]


def assert_unchanged(before: dict, after: dict, except_keys: set = frozenset()) -> None:
    assert set(before) == set(after)
    changed = [key for key in before if key not in except_keys and before[key] != after[key]]
    assert not changed, [(before[key], after[key]) for key in changed]


def run_malformed(parts: Components, proxy: FaultProxy, bodies: list[bytes]) -> list[dict[str, Any]]:
    """Publish ``bodies``, move the clock, work; check that each was dead-lettered
    ``malformed`` exactly once with no task, acknowledged, without a Gordo call, a ledger
    change or a prediction; return the new dead letters in order."""
    earlier = len(letters(parts))
    parts.queue.publish(bodies)
    parts.clock.advance(LATER)
    before = ledger_rows(parts)
    assert handle_all(parts, Executor.from_components(parts)) == [State.DEAD] * len(bodies)
    assert parts.queue.depth() == 0
    assert proxy.requests == []
    assert_unchanged(before, ledger_rows(parts))
    assert stored_count(parts) == 0
    new = letters(parts)[earlier:]
    assert [letter["reason"] for letter in new] == ["malformed"] * len(bodies)
    assert {(letter["task_id"], letter["project"], letter["model"]) for letter in new} == {(None, None, None)}
    assert [letter["attempts"] for letter in new] == [1] * len(bodies)
    return new


def task_json(**fields: object) -> bytes:
    """A task's wire form with some fields replaced (bypassing Task's own checks)."""
    base = Task(project="demo", model="pump-1", revision="1", start=HOUR - 2 * INTERVAL, end=HOUR - INTERVAL)
    document = {**base.model_dump(mode="json"), **fields}
    document = {key: value.isoformat() if isinstance(value, datetime) else value
                for key, value in document.items()}
    return json.dumps(document).encode()


# -- malformed tasks -----------------------------------------------------------------------


def test_an_off_grid_window_over_a_dead_one_is_malformed_and_the_dead_window_keeps_its_error(
    sqlite_url, gordo_server, clock
):
    with pipeline(sqlite_url, gordo_server.base_url, clock) as (proxy, parts):
        plan(parts, "pump-1", HOUR - 4 * INTERVAL, 4)
        dead_error = "TransientError: demo/pump-1@1: metadata: Gordo answered 503: Service Unavailable"
        kill(parts, "pump-1", HOUR - 2 * INTERVAL, HOUR - INTERVAL, dead_error)
        # [10:50, 11:20): straddles two planned windows, covers the dead one's start
        start, end = HOUR - 2 * INTERVAL - STEP, HOUR - INTERVAL - STEP
        task = Task(project="demo", model="pump-1", revision=gordo_server.revision, start=start, end=end)
        [letter] = run_malformed(parts, proxy, [task.to_json()])
        rows = ledger_rows(parts)
    assert letter["body"] == task.to_json()
    assert letter["error"].startswith(f"malformed task {task.id} for demo/pump-1: ")
    assert f"start {start.isoformat()} is not on the window grid {GRID}" in letter["error"]
    assert f"end {end.isoformat()} is not on the window grid {GRID}" in letter["error"]
    dead = rows[("demo", "pump-1", HOUR - 2 * INTERVAL)]
    assert (dead["state"], dead["last_error"], dead["attempts"]) == (State.DEAD, dead_error, 3)
    states = [row["state"] for _, row in sorted(rows.items())]
    assert states == [State.PLANNED, State.PLANNED, State.DEAD, State.PLANNED]


def test_a_century_long_span_is_malformed_and_the_windows_inside_stay_planned(
    sqlite_url, gordo_server, clock
):
    with pipeline(sqlite_url, gordo_server.base_url, clock) as (proxy, parts):
        plan(parts, "pump-1", HOUR - 6 * INTERVAL, 6)
        plan(parts, "pump-1", datetime(1950, 1, 1, tzinfo=UTC), 3)
        start = HOUR.replace(year=HOUR.year - 100)
        task = Task(project="demo", model="pump-1", revision=gordo_server.revision, start=start, end=HOUR)
        [letter] = run_malformed(parts, proxy, [task.to_json()])
        rows = ledger_rows(parts)
    assert f"spans {HOUR - start}, longer than schedule.max_task_span (1:00:00)" in letter["error"]
    assert "not on the window grid" not in letter["error"]
    assert len(rows) == 9 and {row["state"] for row in rows.values()} == {State.PLANNED}


@pytest.mark.parametrize(
    "end", [HOUR - 2 * INTERVAL, HOUR - 3 * INTERVAL], ids=["end-equals-start", "end-before-start"]
)
def test_a_task_that_does_not_end_after_it_starts_is_malformed(sqlite_url, gordo_server, clock, end):
    with pipeline(sqlite_url, gordo_server.base_url, clock) as (proxy, parts):
        plan(parts, "pump-1", HOUR - 4 * INTERVAL, 4)
        body = task_json(start=HOUR - 2 * INTERVAL, end=end, revision=gordo_server.revision)
        [letter] = run_malformed(parts, proxy, [body])
    assert letter["body"] == body
    assert letter["error"].startswith("malformed task (message: Value error, end must be after start)")


def test_a_project_not_in_the_configuration_is_malformed_and_nothing_is_stored_under_it(
    sqlite_url, gordo_server, clock
):
    with pipeline(sqlite_url, gordo_server.base_url, clock) as (proxy, parts):
        # windows of the same model under another project, planned by someone else: Gordo
        # serves any project name, so only the configuration keeps these out
        plan(parts, "pump-1", HOUR - 4 * INTERVAL, 4, project="elsewhere")
        plan(parts, "pump-1", HOUR - 4 * INTERVAL, 4)
        task = Task(project="elsewhere", model="pump-1", revision=gordo_server.revision,
                    start=HOUR - 2 * INTERVAL, end=HOUR - INTERVAL)
        [letter] = run_malformed(parts, proxy, [task.to_json()])
        rows = ledger_rows(parts)
        assert stored_count(parts, project="elsewhere") == 0
    assert letter["error"] == (
        f"malformed task {task.id} for elsewhere/pump-1: project 'elsewhere' is not in models.projects"
    )
    assert {row["state"] for key, row in rows.items() if key[0] == "elsewhere"} == {State.PLANNED}


@pytest.mark.parametrize(
    "limit, setting",
    [(4 * 1024, {"max_message_size": "4KiB"}), (1 << 20, {})],
    ids=["configured-4KiB", "default-1MiB"],
)
def test_an_oversized_message_is_dead_lettered_unread_with_its_length_and_hash(
    sqlite_url, gordo_server, clock, limit, setting
):
    """Both messages are valid tasks padded with JSON whitespace: one of exactly the limit
    (worked on), one a byte over it (never read: its windows stay planned)."""
    with pipeline(sqlite_url, gordo_server.base_url, clock, **setting) as (proxy, parts):
        assert int(parts.config.executor.max_message_size) == limit
        plan(parts, "pump-1", HOUR - 4 * INTERVAL, 4)
        revision = gordo_server.revision
        fits = Task(project="demo", model="pump-1", revision=revision, start=HOUR - INTERVAL,
                    end=HOUR).to_json()
        over = Task(project="demo", model="pump-1", revision=revision, start=HOUR - 3 * INTERVAL,
                    end=HOUR - 2 * INTERVAL).to_json()
        fits, over = fits + b" " * (limit - len(fits)), over + b" " * (limit + 1 - len(over))
        assert (len(fits), len(over)) == (limit, limit + 1)
        parts.queue.publish([over, fits])
        clock.advance(LATER)
        before = ledger_rows(parts)
        assert handle_all(parts, Executor.from_components(parts)) == [State.DEAD, State.DONE]
        after = ledger_rows(parts)
        [letter] = letters(parts)
        assert len(stored(parts, "pump-1").time.unique()) == 3  # the fitting task's window, only
        assert parts.queue.depth() == 0
    assert letter["reason"] == "malformed" and letter["task_id"] is None
    assert letter["body"] == over[:OVERSIZED_KEPT] and len(letter["body"]) == 4096
    assert (
        f"message of {limit + 1} bytes (sha256 {hashlib.sha256(over).hexdigest()}) is over "
        f"executor.max_message_size ({limit} bytes); its first 4096 bytes are kept"
    ) == letter["error"]
    done = ("demo", "pump-1", HOUR - INTERVAL)
    assert after[done]["state"] == State.DONE
    assert_unchanged(before, after, except_keys={done})


# a few ledger windows of each state, for the stream of bad messages to aim at
def _set_up_ledger(parts: Components) -> None:
    for model in ("pump-1", "compressor-1"):
        plan(parts, model, HOUR - 24 * INTERVAL, 36)
    plan(parts, "pump-1", HOUR - 4 * INTERVAL, 4, project="elsewhere")
    kill(parts, "pump-1", HOUR - 6 * INTERVAL, HOUR - 4 * INTERVAL, "PermanentError: earlier")
    finish(parts, "pump-1", HOUR - 10 * INTERVAL, HOUR - 8 * INTERVAL)
    finish(parts, "compressor-1", HOUR - 3 * INTERVAL, HOUR - INTERVAL)
    queue_task(parts, "compressor-1", HOUR + 2 * INTERVAL, HOUR + 4 * INTERVAL, "1")
    # the queued task's message is not part of the stream
    [message] = parts.queue.receive(1, timedelta(0))
    parts.queue.ack(message)


PROJECTS = st.one_of(st.sampled_from(["elsewhere", "Demo", "demo ", " demo", "demo/x"]),
                     st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=40))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
# streams of bad messages tried (each up to 8 messages): about 5 s
STREAM_EXAMPLES = 50
TASK_FIELDS = ("version", "id", "project", "model", "revision", "start", "end", "attempt", "created")


@st.composite
def task_like(draw) -> tuple[bytes, list[str]]:
    """A well-formed task that breaks a rule: off the grid, too long, a foreign project."""
    start = HOUR + timedelta(minutes=draw(st.integers(-2 * 24 * 60, 2 * 24 * 60)),
                             seconds=draw(st.sampled_from([0, 0, 0, 1, 59])))
    span = draw(st.one_of(st.integers(1, 120).map(lambda m: timedelta(minutes=m)),
                          st.integers(1, 36600).map(lambda d: timedelta(days=d))))
    project = draw(st.one_of(st.just("demo"), PROJECTS))
    model = draw(st.sampled_from(["pump-1", "compressor-1", "turbine-1"]))
    expected = []
    for name, moment in (("start", start), ("end", start + span)):
        if (moment - HOUR) % INTERVAL:
            expected.append(f"{name} {moment.isoformat()} is not on the window grid {GRID}")
    if span > timedelta(hours=1):
        expected.append(f"spans {span}, longer than schedule.max_task_span (1:00:00)")
    if project != "demo":
        expected.append(f"project {project!r} is not in models.projects")
    if not expected:  # all rules kept: make it a foreign project's
        project = "elsewhere"
        expected.append("project 'elsewhere' is not in models.projects")
    task = Task(project=project, model=model, revision="1769904000", start=start, end=start + span)
    return task.to_json(), [f"malformed task {task.id} for {task.key}: "] + expected


BAD_MESSAGES = st.one_of(
    st.binary(max_size=300).map(lambda body: (body, ["malformed task ("])),
    JSON_VALUES.map(lambda value: (json.dumps(value).encode(), ["malformed task ("])),
    # the task's own fields, with values of any type, some missing
    st.dictionaries(st.sampled_from(TASK_FIELDS), JSON_VALUES, max_size=9).map(
        lambda fields: (json.dumps(fields).encode(), ["malformed task ("])
    ),
    task_like(),
)


def test_a_stream_of_bad_messages_is_dead_lettered_one_by_one_and_the_loop_goes_on(
    sqlite_url, gordo_server, clock
):
    with pipeline(sqlite_url, gordo_server.base_url, clock) as (proxy, parts):
        _set_up_ledger(parts)
        clock.advance(LATER)
        initial = ledger_rows(parts)
        executor = Executor.from_components(parts)
        seen = Counter()

        @settings(max_examples=STREAM_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(BAD_MESSAGES, min_size=1, max_size=8))
        def through_the_loop(stream: list[tuple[bytes, list[str]]]) -> None:
            earlier = len(letters(parts))
            parts.queue.publish([body for body, _ in stream])
            handled = executor.handled
            executor.run(threading.Event(), max_tasks=handled + len(stream))
            assert executor.handled == handled + len(stream)
            assert parts.queue.depth() == 0  # every one acknowledged
            new = letters(parts)[earlier:]
            assert Counter(letter["body"] for letter in new) == Counter(body for body, _ in stream)
            assert {letter["reason"] for letter in new} == {"malformed"}
            assert {(letter["task_id"], letter["project"], letter["model"]) for letter in new} == {
                (None, None, None)
            }
            expected = {body: texts for body, texts in stream}
            for letter in new:
                for text in expected[letter["body"]]:
                    assert text in letter["error"], (letter["body"], letter["error"])
            assert_unchanged(initial, ledger_rows(parts))
            assert stored_count(parts) == 0
            assert proxy.requests == []
            seen.update(texts[-1].split(" ")[0] if len(texts) > 1 else "unreadable" for _, texts in stream)
            seen["examples"] += 1

        through_the_loop()
        # the same executor's loop, after all of that: bad messages and then a good task
        parts.queue.publish([b"\xff", b"[]", task_json(end=HOUR - 2 * INTERVAL)])
        good = queue_task(parts, "pump-1", HOUR - 2 * INTERVAL, HOUR, gordo_server.revision)
        handled = executor.handled
        executor.run(threading.Event(), max_tasks=handled + 4)
        assert executor.handled == handled + 4 and parts.queue.depth() == 0
        rows = ledger_rows(parts)
        times = stored(parts, "pump-1").groupby("time").size()
    # the stream held every kind of bad message
    assert seen["examples"] == STREAM_EXAMPLES, seen
    assert seen["unreadable"] and seen["start"] + seen["end"] and seen["spans"] and seen["project"], seen
    for start in (HOUR - 2 * INTERVAL, HOUR - INTERVAL):
        assert rows[("demo", "pump-1", start)]["state"] == State.DONE
        assert rows[("demo", "pump-1", start)]["task_id"] == str(good.id)
    assert list(times.index) == list(pd.date_range(HOUR - 2 * INTERVAL, HOUR, freq="10min", inclusive="left"))
    assert set(times) == {PUMP_VALUES_PER_TIME}


def test_a_malformed_message_with_nul_characters_is_dead_lettered(database_url, gordo_server, clock):
    """A JSON string may hold U+0000; PostgreSQL text cannot. The error naming it must still be
    storable, or the message is never acknowledged and comes back for ever."""
    with pipeline(database_url, gordo_server.base_url, clock) as (proxy, parts):
        foreign = task_json(project="de\x00mo")
        unknown_key = task_json(**{"x\x00y": 1})
        new = run_malformed(parts, proxy, [foreign, unknown_key])
    assert [letter["body"] for letter in new] == [foreign, unknown_key]
    assert "project: Value error, must not contain control characters" in new[0]["error"]
    assert "x\\x00y: Extra inputs are not permitted" in new[1]["error"]


def test_a_task_for_a_model_whose_name_holds_a_control_character_is_malformed(database_url, gordo_server, clock):
    """No model is named with a NUL or a line break (PostgreSQL text cannot even hold a NUL,
    so no ledger row or prediction could name it): malformed, never sent to Gordo."""
    with pipeline(database_url, gordo_server.base_url, clock) as (proxy, parts):
        plan(parts, "pump-1", HOUR - 2 * INTERVAL, 2)
        bodies = [task_json(model="pump\x00-1"), task_json(model="pump-1\n"), task_json(model="pump\x7f")]
        new = run_malformed(parts, proxy, bodies)
    assert all("model: Value error, must not contain control characters" in letter["error"] for letter in new)
    assert [letter["model"] for letter in new] == [None] * 3


def test_a_malformed_letter_is_never_replayed(sqlite_url, gordo_server, clock):
    """dlq.py: "Malformed messages cannot be replayed (there is no task to run)"."""
    with pipeline(sqlite_url, gordo_server.base_url, clock) as (proxy, parts):
        plan(parts, "pump-1", HOUR - 4 * INTERVAL, 4)
        kill(parts, "pump-1", HOUR - 2 * INTERVAL, HOUR - INTERVAL, "PermanentError: earlier")
        off_grid = Task(project="demo", model="pump-1", revision=gordo_server.revision,
                        start=HOUR - 2 * INTERVAL - STEP, end=HOUR - INTERVAL - STEP)
        [letter] = run_malformed(parts, proxy, [off_grid.to_json()])
        clock.advance(LATER)
        before = ledger_rows(parts)
        report = dlq.replay(parts.engine, parts.queue, parts.ledger, ids=[letter["id"]])
        after = ledger_rows(parts)
        depth = parts.queue.depth()
    assert_unchanged(before, after)
    assert (report.replayed, report.malformed) == ([], [letter["id"]])
    assert depth == 0


# -- answers that do not fit the model -----------------------------------------------------


def gordo_parquet(frame: pd.DataFrame) -> bytes:
    """Parquet bytes written as Gordo's server writes its answers
    (gordo.server.utils.dataframe_into_parquet_bytes)."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame), sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def bend_answers(change: Callable[[pd.DataFrame], pd.DataFrame], seen: list[pd.DataFrame] | None = None):
    """A proxy rewrite applying ``change`` to Gordo's parquet answers of the anomaly endpoint
    (the original frames go to ``seen``)."""

    def rewrite(method: str, path: str, status: int, headers: list, body: bytes):
        if status != 200 or "/anomaly/prediction" not in path.split("?")[0]:
            return status, headers, body
        frame = pd.read_parquet(io.BytesIO(body))
        assert isinstance(frame.columns, pd.MultiIndex) and frame.columns.nlevels == 2
        if seen is not None:
            seen.append(frame)
        return status, headers, gordo_parquet(change(frame.copy()))

    return rewrite


def only_prediction_groups(frame: pd.DataFrame) -> pd.DataFrame:
    kept = ("start", "end", "model-input", "model-output")
    return frame[[column for column in frame.columns if column[0] in kept]]


def rename_in_model_output(frame: pd.DataFrame) -> pd.DataFrame:
    renamed = [("model-output", "PUMP1-FT-999") if column == ("model-output", "PUMP1-FT-102") else column
               for column in frame.columns]
    frame.columns = pd.MultiIndex.from_tuples(renamed)
    return frame


def a_day_later(frame: pd.DataFrame) -> pd.DataFrame:
    frame.index = frame.index + pd.Timedelta(days=1)
    return frame


def a_second_total(frame: pd.DataFrame) -> pd.DataFrame:
    frame[("total-anomaly-scaled", "extra")] = frame[("total-anomaly-scaled", "")] * 2
    return frame


def asked_times(proxy: FaultProxy) -> list[pd.Timestamp]:
    """The times Latigo sent to the anomaly endpoint (a JSON body for short frames)."""
    [(_, body)] = gordo_calls(proxy, "/anomaly/prediction")
    columns = json.loads(body)["X"]
    return sorted(pd.Timestamp(time) for time in columns[PUMP_TAGS[0]])


@pytest.mark.parametrize(
    "change, expected",
    [
        (only_prediction_groups,
         lambda proxy: "the answer lacks the groups tag-anomaly-scaled, tag-anomaly-unscaled, "
                       "total-anomaly-scaled, total-anomaly-unscaled"),
        (rename_in_model_output,
         lambda proxy: "the answer's model-output tags differ from the model's: "
                       "not the model's ['PUMP1-FT-999'], missing ['PUMP1-FT-102']"),
        (a_day_later,
         lambda proxy: f"the answer has {len(asked_times(proxy))} rows at times not asked for, "
                       f"first {(asked_times(proxy)[0] + pd.Timedelta(days=1)).isoformat()}"),
        (a_second_total,
         lambda proxy: "the answer's total-anomaly-scaled has columns ['', 'extra'], not one total"),
    ],
    ids=["anomaly-groups-missing", "tag-renamed-in-model-output", "times-a-day-later",
         "total-with-two-columns"],
)
def test_a_bent_answer_is_dead_lettered_at_once_and_nothing_is_stored(
    sqlite_url, gordo_server, clock, change, expected
):
    with pipeline(sqlite_url, gordo_server.base_url, clock, rewrite=bend_answers(change)) as (proxy, parts):
        plan(parts, "pump-1", HOUR - 6 * INTERVAL, 6, revision=gordo_server.revision)
        task = queue_task(parts, "pump-1", HOUR - 4 * INTERVAL, HOUR - 2 * INTERVAL, gordo_server.revision)
        clock.advance(LATER)
        before = ledger_rows(parts)
        assert handle_all(parts, Executor.from_components(parts)) == [State.DEAD]
        after = ledger_rows(parts)
        [letter] = letters(parts)
        predictions_calls = len(gordo_calls(proxy, "/anomaly/prediction"))
        wanted = expected(proxy)
        assert stored_count(parts) == 0
        assert parts.queue.depth() == 0
    assert predictions_calls == 1  # never retried
    assert (letter["reason"], letter["attempts"], letter["task_id"]) == ("permanent", 1, str(task.id))
    what = f"demo/pump-1@{gordo_server.revision}: anomaly/prediction: "
    assert letter["error"] == what + wanted
    killed = {("demo", "pump-1", HOUR - 4 * INTERVAL), ("demo", "pump-1", HOUR - 3 * INTERVAL)}
    for key in killed:
        dead = {"state": State.DEAD, "last_error": letter["error"], "updated_at": NOW + LATER}
        assert after[key] == {**before[key], **dead}
    assert_unchanged(before, after, except_keys=killed)


def test_columns_in_another_order_are_stored_by_their_names(sqlite_url, gordo_server, clock):
    """Gordo's columns reordered within and across groups, each name with its own values: the
    check compares sets of names, so this answer fits, and every value must be stored under
    its own (group, tag), never by position."""

    def reverse_columns(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[list(reversed(frame.columns))]

    originals: list[pd.DataFrame] = []
    rewrite = bend_answers(reverse_columns, originals)
    with pipeline(sqlite_url, gordo_server.base_url, clock, rewrite=rewrite) as (proxy, parts):
        plan(parts, "pump-1", HOUR - 4 * INTERVAL, 4, revision=gordo_server.revision)
        queue_task(parts, "pump-1", HOUR - 2 * INTERVAL, HOUR, gordo_server.revision)
        assert handle_all(parts, Executor.from_components(parts)) == [State.DONE]
        rows = stored(parts, "pump-1")
        assert letters(parts) == []
    [original] = originals
    assert list(reverse_columns(original).columns) != list(original.columns)
    inside = original[(original.index >= HOUR - 2 * INTERVAL) & (original.index < HOUR)]
    expected = {
        (time, group, tag or group): value
        for (group, tag), column in inside.items() if group not in ("start", "end")
        for time, value in column.items()
    }
    actual = {(row.time, row.output, row.tag): row.value for row in rows.itertuples()}
    assert len(expected) == 6 * PUMP_VALUES_PER_TIME
    assert actual == expected


# -- bad metadata ----------------------------------------------------------------------------


def bend_metadata(change: Callable[[dict], None]):
    """A proxy rewrite applying ``change`` to the metadata document of pump-1."""

    def rewrite(method: str, path: str, status: int, headers: list, body: bytes):
        if status != 200 or not path.split("?")[0].endswith("/pump-1/metadata"):
            return status, headers, body
        document = json.loads(body)
        change(document)
        return status, headers, json.dumps(document).encode()

    return rewrite


def dataset(**fields: object) -> Callable[[dict], None]:
    return lambda document: document["metadata"]["dataset"].update(fields)


def offset(value: object) -> Callable[[dict], None]:
    def change(document: dict) -> None:
        document["metadata"]["metadata"]["build_metadata"]["model"]["model_offset"] = value

    return change


@pytest.mark.parametrize(
    "change, named",
    [
        (dataset(tag_list=",".join(PUMP_TAGS)), "dataset.tag_list is str, not a list of tags"),
        (dataset(resolution="ten minutes"), "dataset.resolution 'ten minutes' is not a frequency"),
        (dataset(resolution="5ms"), "dataset.resolution '5ms' is finer than 0:00:01"),
        (offset(-1), "model_offset is -1, not a whole number from 0 to 100000"),
        (offset(2.5), "model_offset is 2.5, not a whole number from 0 to 100000"),
        (offset("5"), "model_offset is '5', not a whole number from 0 to 100000"),
        (offset(True), "model_offset is True, not a whole number from 0 to 100000"),
        (offset(1e300), "model_offset is 1e+300, not a whole number from 0 to 100000"),
        (dataset(tag_list=[PUMP_TAGS[0], PUMP_TAGS[0], PUMP_TAGS[2]]), "dataset.tag_list names a tag twice"),
        (dataset(tag_list=[101, *PUMP_TAGS[1:]]), "dataset.tag_list has tags that are not names: [101]"),
    ],
    ids=["tag-list-a-string", "resolution-in-words", "resolution-too-fine", "offset-negative", "offset-fraction", "offset-a-string",
         "offset-a-bool", "offset-huge", "tag-twice", "tag-a-number"],
)
def test_bad_metadata_is_permanent_and_never_cached(sqlite_url, gordo_server, clock, change, named):
    with pipeline(sqlite_url, gordo_server.base_url, clock, rewrite=bend_metadata(change)) as (proxy, parts):
        revision = gordo_server.revision
        plan(parts, "pump-1", HOUR - 4 * INTERVAL, 4, revision=revision)
        task = queue_task(parts, "pump-1", HOUR - 2 * INTERVAL, HOUR, revision)
        executor = Executor.from_components(parts)
        assert handle_all(parts, executor) == [State.DEAD]
        [letter] = letters(parts)
        assert (letter["reason"], letter["attempts"], letter["task_id"]) == ("permanent", 1, str(task.id))
        assert letter["error"] == f"demo/pump-1@{revision}: bad metadata: {named}"
        assert stored_count(parts) == 0 and gordo_calls(proxy, "/anomaly/prediction") == []
        assert len(gordo_calls(proxy, "/pump-1/metadata")) == 1
        states = {key[2]: row["state"] for key, row in ledger_rows(parts).items()}
        assert [states[start] for start in sorted(states)] == [State.PLANNED] * 2 + [State.DEAD] * 2

        # Gordo's metadata is right again: the replayed letter fetches it anew, and works
        proxy.rewrite = None
        report = dlq.replay(parts.engine, parts.queue, parts.ledger, ids=[letter["id"]])
        assert report.replayed == [letter["id"]] and letters(parts) == []
        assert handle_all(parts, executor) == [State.DONE]
        assert len(gordo_calls(proxy, "/pump-1/metadata")) == 2
        assert stored_count(parts, model="pump-1") == 6 * PUMP_VALUES_PER_TIME
        states = {key[2]: row["state"] for key, row in ledger_rows(parts).items()}
        assert [states[start] for start in sorted(states)] == [State.PLANNED] * 2 + [State.DONE] * 2
        # good metadata is cached: the next task of the model asks for none
        queue_task(parts, "pump-1", HOUR - 4 * INTERVAL, HOUR - 2 * INTERVAL, revision)
        assert handle_all(parts, executor) == [State.DONE]
        assert len(gordo_calls(proxy, "/pump-1/metadata")) == 2


# -- names in Gordo's URLs --------------------------------------------------------------------

# models whose names mean something in a URL, beside a plain one; all copies of pump-1
NAMED = ("q?x=1#frag", "pct%2Fenc", "plain")
# the revision they are served at
NAMED_REVISION = "1800000000"


@pytest.fixture(scope="module")
def named_gordo(gordo_server, tmp_path_factory) -> Iterator[str]:
    """A second (light) Gordo server serving copies of the session's built pump-1 under
    names that need percent-encoding; its base URL."""
    home = tmp_path_factory.mktemp("named-gordo")
    revision_dir = home / "models" / NAMED_REVISION
    revision_dir.mkdir(parents=True)
    for name in NAMED:
        shutil.copytree(gordo_server.revision_dir / "pump-1", revision_dir / name)
    port = gordo.free_port()
    proc = gordo.serve(gordo_server.venv_dir, revision_dir, port, list(NAMED), home / "gunicorn.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        gordo.stop(proc)


def test_routes_percent_encode_every_name():
    assert _route("demo", "q?x=1#frag", "metadata") == "demo/q%3Fx%3D1%23frag/metadata"
    assert _route("demo", "pct%2Fenc") == "demo/pct%252Fenc"
    assert _route("demo", "pct/enc", "metadata") == "demo/pct%2Fenc/metadata"
    assert _route("my project", "ünï ✓", "models") == "my%20project/%C3%BCn%C3%AF%20%E2%9C%93/models"
    for name in ("q?x=1#frag", "pct%2Fenc", "a/b", "a b", "100%", "x;y=z", "é&=+", "revision?revision=1"):
        route = _route("p", name, "metadata")
        assert route.count("/") == 2 and not set(route) & set("?#;&= ")
        assert unquote(route.split("/")[1]) == name


def test_models_named_like_url_syntax_are_reached_by_their_names(named_gordo):
    models = GordoModels(GordoConfig(base_url=named_gordo, read_timeout=30))
    try:
        assert models.latest_revision("demo") == NAMED_REVISION
        assert models.models("demo") == sorted(NAMED)
        assert models.models("demo", NAMED_REVISION) == sorted(NAMED)
        assert models.expected_models("demo") == sorted(NAMED)
        X = signal(PUMP_TAGS, "2026-03-02T00:00:00Z", "2026-03-02T02:00:00Z").resample("10min").mean()
        answers = {}
        for name in NAMED:
            metadata = models.metadata("demo", name, NAMED_REVISION)
            assert (metadata.model, metadata.revision) == (name, NAMED_REVISION)
            assert metadata.tags == metadata.target_tags == tuple(PUMP_TAGS)
            answers[name] = models.predict(metadata, X, X)
            assert answers[name].index.equals(X.index)
            assert {tag for group, tag in answers[name].columns if group == "model-output"} == set(PUMP_TAGS)
        for name in NAMED:
            pd.testing.assert_frame_equal(answers[name], answers["plain"])
        # a project name is a path segment too (Gordo serves any)
        assert models.metadata("de mo?#x", "plain", NAMED_REVISION).tags == tuple(PUMP_TAGS)
        # the model "pct/enc" does not exist: it must not become the route .../pct/enc/...
        with pytest.raises(PermanentError, match="Gordo answered 404") as raised:
            models.metadata("demo", "pct/enc", NAMED_REVISION)
        assert not isinstance(raised.value, (RevisionGone, TransientError))
        missing = ModelMetadata("demo", "pct/enc", NAMED_REVISION, tuple(PUMP_TAGS), tuple(PUMP_TAGS), STEP)
        with pytest.raises(PermanentError, match="Gordo answered 404"):
            models.predict(missing, X, X)
    finally:
        models.close()


# -- metadata, parsed -------------------------------------------------------------------------


def lstm_document(*, model_offset: object, lookbacks: list[object]) -> dict:
    """A metadata document shaped like Gordo's for a DiffBasedAnomalyDetector over a Keras
    LSTM (lookback windows nested in the pipeline's steps)."""
    steps: list[object] = [{"sklearn.preprocessing._data.MinMaxScaler": {"feature_range": [0, 1]}}]
    lstm = "gordo.machine.model.models.KerasLSTMAutoEncoder"
    steps += [{lstm: {"kind": "lstm_hourglass", "lookback_window": size}} for size in lookbacks]
    return {
        "metadata": {
            "dataset": {"tag_list": [{"name": tag} for tag in PUMP_TAGS], "resolution": "10T"},
            "model": {
                "gordo.machine.model.anomaly.diff.DiffBasedAnomalyDetector": {
                    "base_estimator": {"sklearn.pipeline.Pipeline": {"steps": steps, "memory": None}},
                    "scaler": "sklearn.preprocessing.MinMaxScaler",
                }
            },
            "metadata": {"build_metadata": {"model": {"model_offset": model_offset}}},
        }
    }


@pytest.mark.parametrize(
    "model_offset, lookbacks, min_rows, lookback",
    [
        (5, [6], 7, 6),  # an autoencoder: offset one less than its lookback
        (6, [6], 7, 6),  # a forecast: offset equal to it
        (0, [12], 13, 12),  # offset 0, a lookback all the same
        (3.0, [4, 9], 10, 9),  # the largest lookback anywhere; a float offset without fraction
        (2, [True, 4.0, "8"], 3, 2),  # only whole numbers count as lookbacks
        (None, [], 1, 0),  # an older build: no offset, no lookback
    ],
)
def test_lookback_windows_nested_in_the_model_definition_are_found(
    model_offset, lookbacks, min_rows, lookback
):
    document = lstm_document(model_offset=model_offset, lookbacks=lookbacks)
    metadata = parse_metadata("demo", "lstm", "1", document)
    assert metadata.offset == int(model_offset or 0)
    assert (metadata.min_rows, metadata.lookback) == (min_rows, lookback)
    assert metadata.tags == metadata.target_tags == tuple(PUMP_TAGS)
    assert metadata.resolution == STEP


def test_an_lstm_written_without_its_lookback_window_has_gordos_default():
    """Gordo's Keras LSTMs default to lookback_window 1 (offset 0 for an autoencoder); Gordo
    still needs two rows in a call, so a lone row between gaps must not be sent."""
    document = lstm_document(model_offset=0, lookbacks=[6])
    step = document["metadata"]["model"]["gordo.machine.model.anomaly.diff.DiffBasedAnomalyDetector"][
        "base_estimator"]["sklearn.pipeline.Pipeline"]["steps"][1]
    del step["gordo.machine.model.models.KerasLSTMAutoEncoder"]["lookback_window"]
    metadata = parse_metadata("demo", "lstm", "1", document)
    assert (metadata.offset, metadata.min_rows, metadata.lookback) == (0, 2, 1)


def test_a_plain_models_output_columns_are_its_own():
    """/prediction of a model that is not an anomaly model: its output need not be the target
    tags (a transformer's components come as "0", "1", ...); its input must be the tags."""
    meta = parse_metadata("demo", "lstm", "1", lstm_document(model_offset=0, lookbacks=[]))
    index = pd.date_range("2026-03-02", periods=2, freq="10min", tz="UTC")
    columns = [("model-input", tag) for tag in PUMP_TAGS] + [("model-output", "0"), ("model-output", "1")]
    answer = pd.DataFrame([[1.0] * len(columns)] * 2, index=index, columns=pd.MultiIndex.from_tuples(columns))
    wire.check_answer(answer, meta, index, anomaly=False)
    renamed = answer.rename(columns={PUMP_TAGS[0]: "OTHER"}, level=1)
    with pytest.raises(PermanentError, match="model-input tags differ"):
        wire.check_answer(renamed, meta, index, anomaly=False)


def test_bad_metadata_is_a_permanent_error_that_says_so():
    with pytest.raises(BadMetadata, match=r"^demo/lstm@1: bad metadata: model_offset is -3") as raised:
        parse_metadata("demo", "lstm", "1", lstm_document(model_offset=-3, lookbacks=[6]))
    assert isinstance(raised.value, PermanentError)


def test_real_metadata_from_the_running_gordo_parses(gordo_server):
    for model in gordo_server.models:
        document = requests.get(f"{gordo_server.project_url}/{model}/metadata", timeout=30).json()
        metadata = parse_metadata("demo", model, gordo_server.revision, document)
        assert (metadata.offset, metadata.min_rows, metadata.lookback) == (0, 1, 0)
        assert metadata.tags == metadata.target_tags == tuple(tags_of(model))
        assert metadata.resolution == STEP


