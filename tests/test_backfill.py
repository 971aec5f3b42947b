"""Backfill against the real local Gordo server, on SQLite and PostgreSQL.

A backfill only plans, in the ledger; the scheduler publishes. So the tests check the
ledger exactly (which windows became planned, which were left alone), then let the real
scheduler and executors work the plan off and check that every window was predicted once,
in tasks no longer than ``schedule.max_task_span``. A fixed clock stands in for time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from latigo import db
from latigo.backfill import (
    COUNTS,
    PLANS_MISSING,
    RESET_STATES,
    Backfill,
    Mode,
    UnknownModels,
    backfill_range,
    chunk_states,
    chunks,
    parse_moment,
    select_windows,
    spans,
    task_count,
)
from latigo.cli_backfill import format_summary
from latigo.components import Components, build
from latigo.config import Config
from latigo.demo.feeder import feed
from latigo.discovery import Model
from latigo.executor import Executor
from latigo.history import Run
from latigo.ledger import HotRows, PlannedWindow, State
from latigo.providers.predictions.sql import code_of
from latigo.scheduler import Scheduler
from latigo.schema import ledger, predictions, task_queue
from latigo.status import prediction_duplicates
from latigo.task import Task
from latigo.window import Grid, Window
from tests.clock import Clock

UTC = timezone.utc
# the tests' fixed "now"; the demo data is defined for any time
NOW = datetime(2026, 3, 2, 12, 7, tzinfo=UTC)
# the backfilled range starts here: twelve hours before NOW, far from the continuous windows
FROM = datetime(2026, 3, 2, tzinfo=UTC)
# window length (the default schedule.interval)
HALF_HOUR = timedelta(minutes=30)
# max_task_span of the tests: two windows per task
TASK_SPAN = timedelta(hours=1)
# an old revision, for rows planned before the latest build
OLD_REVISION = "1"
# how many times a test lets the scheduler and executors work before it calls it a hang
MAX_ROUNDS = 10


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def make_config(database_url: str, gordo_url: str) -> Config:
    return Config(
        database={"url": database_url},
        models={"base_url": gordo_url, "projects": ["demo"], "read_timeout": 20},
        schedule={"max_task_span": "1h"},
        executor={"retry_base": "1s"},
    )


@pytest.fixture
def parts(database_url, gordo_server, clock):
    components = build(make_config(database_url, gordo_server.base_url), clock=clock)
    yield components
    components.close()


def window(index: int) -> Window:
    """The index-th window of the backfilled range."""
    return Window(FROM + index * HALF_HOUR, FROM + (index + 1) * HALF_HOUR)


def task(model: str, first: int, last: int, revision: str = OLD_REVISION) -> Task:
    """A task over windows first..last (inclusive) of the range."""
    return Task(
        project="demo", model=model, revision=revision, start=window(first).start, end=window(last).end
    )


def record(
    parts: Components, model: str, first: int, last: int, state: State, revision: str = OLD_REVISION
) -> None:
    """Plan windows first..last of a model and bring them to ``state`` the way the
    scheduler and executors do."""
    parts.ledger.plan([PlannedWindow("demo", model, revision, window(i)) for i in range(first, last + 1)])
    covering = task(model, first, last, revision)
    if state == State.QUEUED:
        parts.ledger.mark_queued([covering])
    elif state == State.FAILED:
        parts.ledger.fail(covering, "Gordo answered 503")
    elif state == State.DEAD:
        parts.ledger.dead_letter(covering.to_json(), "exhausted", "503 five times", 5, covering)
    elif state != State.PLANNED:
        parts.ledger.finish(covering, state, "no sensor data" if state == State.NO_DATA else None)


def populate_every_state(parts: Components) -> None:
    """pump-1's first windows in every state: 0 done, 1 failed, 2 dead, 3 queued, 4 no data;
    windows 5..11 of the range and the other models have no rows."""
    for index, state in enumerate([State.DONE, State.FAILED, State.DEAD, State.QUEUED, State.NO_DATA]):
        record(parts, "pump-1", index, index, state)


def snapshot(parts: Components) -> dict[tuple[str, int], dict]:
    """Every ledger row, keyed by (model, window index in the range)."""
    query = select(ledger).order_by(ledger.c.model, ledger.c.window_start)
    with parts.engine.connect() as connection:
        return {
            (row.model, (row.window_start - FROM) // HALF_HOUR): dict(row._mapping)
            for row in connection.execute(query)
        }


def backfill_of(parts: Components) -> Backfill:
    return Backfill.from_components(parts)


def run(parts: Components, mode: Mode, windows: int = 12, names: tuple[str, ...] = (), dry_run: bool = False):
    planner = backfill_of(parts)
    models = planner.models(["demo"], names)
    return planner.plan(models, FROM, FROM + windows * HALF_HOUR, mode, dry_run=dry_run)


def counts(windows: int, planned: int, reset: int, skipped: int, queued: int, tasks: int) -> dict[str, int]:
    return dict(windows=windows, planned=planned, reset=reset, skipped=skipped, queued=queued, tasks=tasks)


def per_model(summary) -> dict[str, dict[str, int]]:
    return {model.model: {name: getattr(model, name) for name in COUNTS} for model in summary.models}


# -- modes -------------------------------------------------------------------------------


def test_missing_mode_plans_exactly_the_gaps(parts, gordo_server):
    record(parts, "pump-1", 0, 3, State.DONE)
    record(parts, "pump-1", 6, 7, State.DONE)
    before = snapshot(parts)

    summary = run(parts, Mode.MISSING)

    gaps = {4, 5, 8, 9, 10, 11}
    # tasks [4, 5], [8, 9], [10, 11]: runs of at most one hour
    assert per_model(summary)["pump-1"] == counts(12, planned=6, reset=0, skipped=6, queued=0, tasks=3)
    for other in ("compressor-1", "turbine-1"):
        assert per_model(summary)[other] == counts(12, planned=12, reset=0, skipped=0, queued=0, tasks=6)
    assert summary.total()["planned"] == 30
    after = snapshot(parts)
    assert {key: after[key] for key in before} == before  # done rows untouched, to the timestamp
    planned = {key for key, row in after.items() if row["state"] == State.PLANNED}
    assert {index for model, index in planned if model == "pump-1"} == gaps
    assert {row["revision"] for key, row in after.items() if key not in before} == {gordo_server.revision}
    assert len(after) == 3 * 12

    again = run(parts, Mode.MISSING)
    assert again.total() == counts(36, planned=0, reset=0, skipped=36, queued=0, tasks=0)
    assert snapshot(parts) == after


def test_failed_mode_resets_only_failed_and_dead_windows(parts, gordo_server):
    populate_every_state(parts)
    before = snapshot(parts)

    summary = run(parts, Mode.FAILED)

    assert per_model(summary)["pump-1"] == counts(12, planned=0, reset=2, skipped=9, queued=1, tasks=1)
    assert summary.total()["planned"] == 0 and summary.total()["skipped"] == 9 + 24
    after = snapshot(parts)
    assert after.keys() == before.keys()  # no missing window added
    for index in (1, 2):
        row = after[("pump-1", index)]
        assert (row["state"], row["attempts"], row["last_error"], row["task_id"], row["revision"]) == (
            State.PLANNED, 0, None, None, gordo_server.revision,
        )
    assert before[("pump-1", 1)]["attempts"] == 1  # it was a counted failure
    for index in (0, 3, 4):
        assert after[("pump-1", index)] == before[("pump-1", index)]


def test_all_mode_resets_everything_but_windows_in_flight(parts, gordo_server):
    populate_every_state(parts)
    before = snapshot(parts)

    summary = run(parts, Mode.ALL)

    # tasks: [0, 1, 2] -> [0, 1], [2]; [4 .. 11] -> four runs of two
    assert per_model(summary)["pump-1"] == counts(12, planned=7, reset=4, skipped=0, queued=1, tasks=2 + 4)
    after = snapshot(parts)
    assert after[("pump-1", 3)] == before[("pump-1", 3)]  # queued, with its task id: left alone
    assert before[("pump-1", 3)]["task_id"] is not None
    for index in (0, 1, 2, 4):
        assert after[("pump-1", index)]["state"] == State.PLANNED
        assert after[("pump-1", index)]["last_error"] is None
    assert sum(row["state"] == State.PLANNED for row in after.values()) == 11 + 24

    # planned windows are already planned: a second run resets nothing
    assert run(parts, Mode.ALL).total() == counts(36, planned=0, reset=0, skipped=35, queued=1, tasks=0)


# -- which models ----------------------------------------------------------------------------


def test_model_names_restrict_the_backfill(parts, gordo_server):
    summary = run(parts, Mode.MISSING, names=("pump-1", "turbine-1"))
    assert [model.model for model in summary.models] == ["pump-1", "turbine-1"]
    assert {model for model, _ in snapshot(parts)} == {"pump-1", "turbine-1"}
    everything = backfill_of(parts).models(["demo"])
    assert sorted(model.name for model in everything) == sorted(gordo_server.models)
    assert {model.revision for model in everything} == {gordo_server.revision}


def test_an_unknown_model_is_an_error_naming_it(parts):
    with pytest.raises(UnknownModels, match="unknown models no-such-pump, nope: not served by project demo"):
        backfill_of(parts).models(["demo"], ("pump-1", "nope", "no-such-pump"))
    assert snapshot(parts) == {}


# -- dry run -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Mode))
def test_a_dry_run_writes_nothing_and_counts_what_the_real_run_then_does(parts, mode):
    populate_every_state(parts)
    record(parts, "turbine-1", 6, 9, State.DONE)
    before = snapshot(parts)

    dry = run(parts, mode, dry_run=True)
    assert snapshot(parts) == before
    real = run(parts, mode)

    assert dry.total()["planned"] + dry.total()["reset"] > 0
    assert {**dry.to_dict(), "dry_run": False} == real.to_dict()
    after = snapshot(parts)
    assert len(after) - len(before) == real.total()["planned"]
    assert "would plan (dry run" not in format_summary(real)
    assert "dry run, nothing written" in format_summary(dry)


# -- the whole way: scheduler, executors, predictions --------------------------------------------


def queued_tasks(parts: Components) -> list[Task]:
    with parts.engine.connect() as connection:
        return [Task.from_json(body) for body in connection.execute(select(task_queue.c.body)).scalars()]


def drain(parts: Components) -> int:
    return Executor.from_components(parts).run(threading.Event(), until_idle=True)


def test_backfilled_windows_are_published_coalesced_and_each_predicted_once(parts, gordo_server):
    end = 6  # windows [0, 6) of the range: three hours
    feed(parts.sensors, FROM - timedelta(hours=1), window(end).start)
    models = gordo_server.models
    for model in models:
        # the scheduler is current: the newest due window ([11:30, 12:00)) is done, so its
        # ticks plan nothing new and publish only the backfill
        record(parts, model, 23, 23, State.DONE, gordo_server.revision)
        # and window 2 of the range was predicted before
        record(parts, model, 2, 2, State.DONE, gordo_server.revision)
    planner = backfill_of(parts)
    summary = planner.plan(planner.models(["demo"]), FROM, window(end).start, Mode.MISSING)
    assert summary.total()["planned"] == 5 * len(models)
    assert summary.total()["tasks"] == 3 * len(models)  # [0, 1], [3, 4], [5]

    scheduler = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, parts.clock)
    published: dict[str, Task] = {}
    rounds = []

    def work(_seconds: float) -> None:
        """Instead of sleeping while waiting: one scheduler tick, then the executors drain the queue."""
        rounds.append(_seconds)
        assert len(rounds) <= MAX_ROUNDS, "the backfill does not finish"
        scheduler.tick()
        published.update({str(item.id): item for item in queued_tasks(parts)})
        drain(parts)

    finished = []
    report = planner.wait(summary, progress=finished.append, sleep=work)

    assert report.finished and report.states == {State.DONE: 6 * len(models)}
    assert sum(finished) == 5 * len(models)
    backfill_tasks = [item for item in published.values() if item.start < window(end).start]
    assert len(backfill_tasks) == summary.total()["tasks"]
    for item in backfill_tasks:
        assert item.end - item.start <= TASK_SPAN
        assert FROM <= item.start and item.end <= window(end).start
        assert not (item.start < window(2).end and window(2).start < item.end), "done window published"
    for model in models:
        mine = [item for item in backfill_tasks if item.model == model]
        covered = sorted(w for item in mine for w in Grid(HALF_HOUR).windows(item.start, item.end))
        assert covered == [window(i) for i in (0, 1, 3, 4, 5)]

    steps = [
        step for i in (0, 1, 3, 4, 5)
        for step in pd.date_range(window(i).start, window(i).end, freq="10min", inclusive="left")
    ]
    query = select(predictions.c.model, predictions.c.time).where(
        predictions.c.output == code_of("total-anomaly-scaled")
    )
    with parts.engine.connect() as connection:
        stored = pd.DataFrame(connection.execute(query).all(), columns=["model", "time"])
    for model in models:
        times = pd.to_datetime(stored[stored.model == model].time, utc=True)
        assert sorted(times) == steps  # every 10-minute step of every backfilled window, once
    assert prediction_duplicates(parts.engine) == 0


def test_waiting_gives_up_at_the_timeout(parts, gordo_server, clock):
    planner = backfill_of(parts)
    pump = Model("demo", "pump-1", gordo_server.revision)
    summary = planner.plan([pump], FROM, window(2).start, Mode.MISSING)
    pauses = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock.advance(timedelta(seconds=seconds))

    report = planner.wait(summary, timeout=timedelta(seconds=12), poll=timedelta(seconds=5), sleep=sleep)
    assert not report.finished
    assert report.outstanding == 2 and report.states == {State.PLANNED: 2}
    assert pauses == [5, 5, 2]


# -- the command line -------------------------------------------------------------------------


def latigo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "latigo", *args], capture_output=True, text=True, timeout=120,
        env={key: value for key, value in os.environ.items() if not key.startswith("LATIGO_")},
    )


def test_the_backfill_command(tmp_path, gordo_server):
    database = tmp_path / "latigo.db"
    config = tmp_path / "latigo.yaml"
    config.write_text(
        f"database: {{url: 'sqlite:///{database}'}}\n"
        f"models: {{base_url: '{gordo_server.base_url}', projects: [demo]}}\n"
        "schedule: {max_task_span: 1h}\n"
    )
    day = (datetime.now(UTC) - timedelta(days=3)).date()
    span = ["--config", str(config), "backfill", "--from", day.isoformat(), "--to", f"{day}T02:00:00Z"]
    engine = db.create_engine(f"sqlite:///{database}")

    def rows() -> int:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(ledger)).scalar_one()

    dry = latigo(*span, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for model in gordo_server.models:
        # 4 windows in two hours, all new, as two one-hour tasks
        row = rf"^demo\s+{model}\s+{gordo_server.revision}\s+4\s+4\s+0\s+0\s+0\s+2$"
        assert re.search(row, dry.stdout, re.M), dry.stdout
    assert re.search(r"^total\s+12\s+12\s+0\s+0\s+0\s+6$", dry.stdout, re.M)
    assert "dry run, nothing written" in dry.stdout
    assert rows() == 0

    real = latigo(*span, "--json")
    assert real.returncode == 0, real.stderr
    summary = json.loads(real.stdout)
    assert summary["total"] == counts(windows=12, planned=12, reset=0, skipped=0, queued=0, tasks=6)
    assert (summary["mode"], summary["dry_run"]) == ("missing", False)
    assert summary["from"] == f"{day}T00:00:00+00:00"
    assert rows() == 12

    again = latigo(*span, "--project", "demo", "--model", "pump-1", "--mode", "all")
    assert again.returncode == 0, again.stderr
    assert re.search(r"^total\s+4\s+0\s+0\s+4\s+0\s+0$", again.stdout, re.M), again.stdout  # planned already
    assert "compressor-1" not in again.stdout

    waited = latigo(*span, "--model", "pump-1", "--wait", "--timeout", "1s")
    assert waited.returncode == 1  # nobody works the plan off here
    assert "timed out after 0:00:01: 4 windows still to do (4 planned)" in waited.stdout

    for bad, message in [
        (["--model", "nope"], "unknown model nope"),
        (["--mode", "some"], "'some' is not one of 'missing', 'failed', 'all'"),
        (["--from", f"{day}T03:00:00Z"], "must be before --to"),
        (["--from", "yesterday"], "is neither a date"),
        (["--from", f"{day}T01:00:00"], "has no time zone"),
    ]:
        arguments = [*span, *bad]
        if bad[0] == "--from":  # replace the range's --from
            arguments = [*span[:4], bad[1], *span[5:]]
        result = latigo(*arguments)
        assert result.returncode == 2, (bad, result.stdout, result.stderr)
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert rows() == 12


# -- pure window selection ------------------------------------------------------------------------

intervals = st.integers(min_value=1, max_value=7 * 24 * 60).map(lambda minutes: timedelta(minutes=minutes))
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
anchors = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))


@given(
    intervals, anchors, moments,
    st.integers(min_value=1, max_value=200 * 60),  # range length, in units of interval/60
    st.integers(min_value=-50, max_value=250),  # newest due window, in intervals after the start
    st.integers(min_value=1, max_value=40),  # chunk size
)
def test_selected_windows_are_aligned_inside_the_range_and_contiguous(
    interval, anchor, start, length, due, size
):
    grid = Grid(interval, anchor)
    end = start + length * interval / 60
    newest_end = grid.floor(start) + due * interval
    first, last = backfill_range(grid, start, end, newest_end)
    ranges = list(chunks(grid, first, last, size))
    windows = [w for chunk_start, chunk_end in ranges for w in grid.windows(chunk_start, chunk_end)]

    assert all(grid.count(*chunk) <= size for chunk in ranges)
    assert all(grid.is_aligned(w.start) and w.end - w.start == interval for w in windows)
    assert all(start <= w.start and w.end <= end and w.end <= newest_end for w in windows)
    assert all(a.end == b.start for a, b in zip(windows, windows[1:]))
    # none is left out: every window wholly inside the range and due
    assert len(windows) == grid.count(start, min(end, newest_end))


def window_by_window(mode: Mode, starts: list[datetime], states: dict[datetime, State]) -> tuple[list, list, int, int]:
    """The backfill's selection as it was written before runs: each window looked up in a
    dict of every recorded window's state. The reference the array version must equal."""
    new, reset, skipped, queued = [], [], 0, 0
    for start in starts:
        state = states.get(start)
        if state is None:
            if mode in PLANS_MISSING:
                new.append(start)
            else:
                skipped += 1
        elif state == State.QUEUED:
            queued += 1
        elif state in RESET_STATES[mode]:
            reset.append(start)
        else:
            skipped += 1
    return new, reset, skipped, queued


# a compacted run: where it starts (in half hours from FROM, a quarter-hour off the grid if
# odd steps), how many windows, their length (the grid's, or another interval's), its state
RUNS = st.lists(st.tuples(
    st.integers(-30, 60), st.integers(1, 40), st.sampled_from([HALF_HOUR, HALF_HOUR, timedelta(minutes=15), timedelta(hours=1)]),
    st.sampled_from([State.DONE, State.NO_DATA]), st.booleans(),
), max_size=6)  # fmt: skip
# hot rows: window index (some off the chunk; a quarter-hour off the grid if odd steps) and state
ROWS = st.dictionaries(st.integers(-10, 100), st.sampled_from(list(State)), max_size=30)


@given(st.sampled_from(list(Mode)), RUNS, ROWS, st.integers(1, 45), st.integers(1, 6))
def test_the_run_arithmetic_selects_what_a_window_by_window_look_would(mode, runs, rows, count, per_task):
    grid = Grid(HALF_HOUR)
    end = FROM + count * HALF_HOUR
    history_runs = [
        Run("p", "m", "1", state, False, FROM + first * HALF_HOUR + (HALF_HOUR / 2 if odd else timedelta(0)), windows, step)
        for first, windows, step, state, odd in runs
    ]  # fmt: skip
    hot = [(FROM + steps * HALF_HOUR / 2, state) for steps, state in rows.items()]
    # what Ledger.states returns: runs expanded window by window, hot rows winning
    states = {start: run.state for run in history_runs for start in run.starts(FROM, end)}
    states.update((start, state) for start, state in hot if FROM <= start < end)
    starts = [window.start for window in grid.windows(FROM, end)]

    selection = select_windows(mode, chunk_states(grid, FROM, count, history_runs, HotRows.of(hot)))
    new, reset, skipped, queued = window_by_window(mode, starts, states)

    assert [starts[index] for index in selection.new] == new
    assert [starts[index] for index in selection.reset] == reset
    assert (selection.skipped, selection.queued) == (skipped, queued)
    chosen = [starts[index] for index in selection.chosen()]
    assert chosen == sorted(new + reset)
    tasks = list(grid.coalesce(chosen, per_task * HALF_HOUR))
    assert task_count(spans(selection.chosen()), per_task) == len(tasks)


@given(st.lists(st.lists(st.integers(0, 30), unique=True).map(sorted), max_size=4), st.integers(1, 5))
def test_tasks_are_counted_across_chunks_as_coalesce_cuts_them(chunked, per_task):
    """Chunks of window numbers, each chunk after the one before: a run that crosses a
    chunk's edge is one run, as the scheduler coalesces it."""
    numbers, offset, runs = [], 0, []
    for chunk in chunked:
        numbers += [offset + number for number in chunk]
        runs += [(offset + first, length) for first, length in spans(np.array(chunk, dtype=np.int64))]
        offset += 31
    grid = Grid(HALF_HOUR)
    expected = list(grid.coalesce([FROM + number * HALF_HOUR for number in numbers], per_task * HALF_HOUR))
    assert task_count(runs, per_task) == len(expected)


def test_moments_are_dates_or_rfc3339_times_with_a_zone():
    assert parse_moment("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_moment("2026-03-01T06:30:00Z") == datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    assert parse_moment("2026-03-01T08:30:00+02:00") == datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="no time zone"):
        parse_moment("2026-03-01T06:30:00")
    with pytest.raises(ValueError, match="neither a date"):
        parse_moment("last tuesday")
    with pytest.raises(ValueError, match="not before"):
        backfill_range(Grid(HALF_HOUR), FROM, FROM, NOW)
