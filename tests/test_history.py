"""The ledger's history: old finished windows compacted into runs, and everyone still seeing
them. Pure run arithmetic with hypothesis; compaction, planning, backfill, the read model and
the scheduler's upkeep on real SQLite and PostgreSQL (backfill against the session's Gordo).

The invariant that matters: compacting changes no answer. Every count, newest done window,
extent and "missing" of ``latigo status`` is the same before and after, for the whole ledger
and for ranges; and no compacted window is ever planned again.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event, func, inspect, select

from alembic import command
from latigo import db, dlq, history, readmodel
from latigo.backfill import RESET_STATES, Backfill, Mode
from latigo.components import build
from latigo.config import Config, ConfigError
from latigo.demo.fleet import Fleet
from latigo.ledger import Outcome, PlannedWindow, State
from latigo.scheduler import COMPACT_SLACK, Scheduler
from latigo.schema import dead_letters, ledger, ledger_history, ledger_history_totals
from latigo.task import Task
from latigo.window import Grid, Window
from tests.clock import Clock
from tests.plans import query_plan

HALF_HOUR = timedelta(minutes=30)
NOW = datetime(2026, 3, 30, 12, 7, tzinfo=UTC)
# the first window of the synthetic history: three weeks before NOW
FIRST = datetime(2026, 3, 9, tzinfo=UTC)
GRID = Grid(HALF_HOUR)
# what ``backfill --mode failed`` resets
RESET_FAILED = RESET_STATES[Mode.FAILED]

# -- runs, pure -------------------------------------------------------------------------

OUTCOMES = st.sampled_from([("done", False), ("done", True), ("no_data", False), (None, False)])


@st.composite
def windows(draw):
    """Ledger rows of two models on a half-hour grid, sorted: some windows absent (None)."""
    rows = []
    for model in ("a", "b"):
        for k, (state, is_partial) in enumerate(draw(st.lists(OUTCOMES, max_size=40))):
            if state is not None:
                start = FIRST + k * HALF_HOUR
                revision = draw(st.sampled_from(["1", "2"])) if k % 7 == 0 else "1"
                rows.append(("p", model, start, start + HALF_HOUR, state, revision, is_partial))
    return rows


@given(windows())
def test_runs_hold_exactly_the_windows_they_were_made_of_and_are_maximal(rows):
    found = history.runs_of(rows)
    expanded = [
        (run.project, run.model, start, start + run.step, run.state.value, run.revision, run.partial)
        for run in found
        for start in run.starts()
    ]
    assert expanded == rows
    assert not any(later.follows(earlier) for earlier, later in zip(found, found[1:]))


@given(st.integers(1, 50), st.integers(-60, 60), st.integers(-60, 60))
def test_a_runs_count_in_a_range_is_its_starts_in_it(windows_in_run, first, last):
    run = history.Run("p", "m", "1", State.DONE, False, FIRST, windows_in_run, HALF_HOUR)
    start, end = FIRST + first * timedelta(minutes=17), FIRST + last * timedelta(minutes=23)
    inside = [s for s in (FIRST + k * HALF_HOUR for k in range(windows_in_run)) if start <= s < end]
    assert list(run.starts(start, end)) == inside and run.count(start, end) == len(inside)
    assert run.count() == windows_in_run and run.end == FIRST + windows_in_run * HALF_HOUR


# -- a ledger with three weeks of history ---------------------------------------------------


def config(url: str, **retention) -> Config:
    return Config(database={"url": url}, models={"projects": ["fleet"]}, retention=retention or {})


def task(model: str, window: Window) -> Task:
    return Task(project="p", model=model, revision="1", start=window.start, end=window.end)


def fill(parts) -> list[Window]:
    """Three weeks of windows for models a, b and c, every kind of outcome among them: a is
    healthy with one partial window and a revision change, b alternates no data and done
    and has a failed and a dead window, c has a gap and windows still planned and queued."""
    every = list(GRID.windows(FIRST, NOW - timedelta(hours=1)))
    ledger_ = parts.ledger
    for model in "abc":
        kept = [w for k, w in enumerate(every) if not (model == "c" and 100 <= k < 110)]
        ledger_.plan([PlannedWindow("p", model, "1", w) for w in kept])
    for k, window in enumerate(every):
        revision = "1" if k < 500 else "2"
        a = Task(project="p", model="a", revision=revision, start=window.start, end=window.end)
        rows = (2, 3) if k == 42 else (3, 3)
        ledger_.record(a, [Outcome(window, State.DONE, "2 of 3" if k == 42 else None, *rows)])
        state = State.NO_DATA if (k // 5) % 2 else State.DONE
        ledger_.record(task("b", window), [Outcome(window, state, None, 3, 3)])
        if not 100 <= k < 110 and k < len(every) - 30:
            ledger_.record(task("c", window), [Outcome(window, State.DONE, None, 3, 3)])
    ledger_.fail(task("b", every[200]), "Gordo answered 500")
    ledger_.dead_letter(b"{}", "exhausted", "Gordo answered 500", 5, task("b", every[300]))
    ledger_.mark_queued([task("c", every[-3])])
    return every


def answers(engine, every: list[Window]) -> list:
    """What the views ask: whole-ledger tallies and tallies of a few ranges, by model."""
    ranges = [(None, None), (every[0].start, every[50].start), (every[97].start, every[403].end), (every[-20].start, None)]
    found = []
    for start, end in ranges:
        tallies = readmodel.tallies(engine, start=start, end=end, now=NOW, delay=timedelta(minutes=5))
        found.append(sorted((t.project, t.model, t.states, t.newest_done, t.partial, t.late, t.pending,
                             t.first_start, t.last_start, t.windows, t.missing(HALF_HOUR)) for t in tallies))  # fmt: skip
    return found


def rows_in(engine, table) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def test_compaction_changes_no_answer_and_plans_nothing_again(database_url):
    with build(config(database_url), clock=Clock(NOW)) as parts:
        every = fill(parts)
        before = answers(parts.engine, every)
        states_before = {m: parts.ledger.states("p", m, FIRST, NOW) for m in "abc"}
        hot_before = rows_in(parts.engine, ledger)

        horizon = NOW - timedelta(days=8)
        moved = 0
        while step := parts.ledger.compact(horizon, limit=333):  # many small steps: runs extended
            moved += step

        assert answers(parts.engine, every) == before
        assert {m: parts.ledger.states("p", m, FIRST, NOW) for m in "abc"} == states_before
        assert rows_in(parts.engine, ledger) == hot_before - moved and moved > 1500
        with parts.engine.connect() as connection:
            left = connection.execute(select(ledger.c.state, ledger.c.window_end)).all()
            runs = history.runs(connection, models=[("p", "a")])
        # nothing finished (done, no data, dead) older than the horizon is left; what is
        # left there waits or will be tried again
        assert all(end > horizon or state in ("failed", "planned", "queued") for state, end in left)
        assert ("dead", every[300].end) not in left  # b's dead window is a run of its own
        assert parts.ledger.states("p", "b", every[300].start, every[301].start) == {every[300].start: State.DEAD}
        # a: a run per revision, and the partial window cut out: 4 runs for 2 weeks
        assert [(run.revision, run.partial, run.windows) for run in runs] == [
            ("1", False, 42), ("1", True, 1), ("1", False, 457), ("2", False, 148)
        ]  # fmt: skip

        # planned at most once, ever: the whole range planned again adds nothing old
        again = [PlannedWindow("p", m, "1", w) for m in "abc" for w in every if w.end <= horizon]
        assert parts.ledger.plan(again) == 10  # c's gap: never planned, now planned
        assert readmodel.model_known(parts.engine, "p", "a")


def counted_one_by_one(engine, start, end) -> dict:
    """What ``history.totals`` must say, from every run read and counted window by window."""
    found: dict = {}
    with engine.connect() as connection:
        for run in history.runs(connection, start=start, end=end):
            starts = list(run.starts(start, end))
            totals = found.setdefault((run.project, run.model), {"states": {}, "partial": 0, "done": None, "starts": []})
            totals["states"][run.state] = totals["states"].get(run.state, 0) + len(starts)
            totals["partial"] += len(starts) if run.partial else 0
            totals["starts"] += starts
            if run.state == State.DONE:
                totals["done"] = max(filter(None, [totals["done"], starts[-1] + run.step]))
    return {key: (t["states"], t["partial"], t["done"], min(t["starts"]), max(t["starts"]), len(t["starts"]))
            for key, t in found.items()}  # fmt: skip


def summed(engine, start=None, end=None) -> dict:
    """``history.totals`` as ``counted_one_by_one`` words it."""
    return {key: (t.states, t.partial, t.newest_done, t.first_start, t.last_start, t.windows)
            for key, t in history.totals(engine, start=start, end=end).items()}  # fmt: skip


def test_history_totals_summed_by_the_database_are_the_runs_counted_one_by_one(database_url):
    """The database sums the runs inside a range; the runs across its ends are cut here.
    Ranges on and off the grid, open at either end, across every kind of run."""
    with build(config(database_url), clock=Clock(NOW)) as parts:
        every = fill(parts)
        while parts.ledger.compact(NOW - timedelta(days=8), limit=500):
            pass
        span = int((every[-1].end - FIRST) / timedelta(minutes=1))
        draw = random.Random(14)
        ranges = [(None, None)] + [
            tuple(None if draw.random() < 0.15 else FIRST + timedelta(minutes=draw.randrange(-60, span)) for _ in "se")
            for _ in range(150)
        ]
        for start, end in ranges:
            assert summed(parts.engine, start, end) == counted_one_by_one(parts.engine, start, end), (start, end)
        some = history.totals(parts.engine, models=[("p", "b")], start=every[40].start)
        assert list(some) == [("p", "b")] and some[("p", "b")].states[State.DEAD] == 1


def test_migration_0017_sums_the_history_there_is_and_downgrades(database_url):
    """A database compacted before 0017 has runs and no totals: the upgrade sums them as
    compaction would have, and the whole history reads the same as the runs counted."""
    settings_ = config(database_url)
    with build(settings_, clock=Clock(NOW)) as parts:
        fill(parts)
        while parts.ledger.compact(NOW - timedelta(days=8), limit=400):
            pass
        expected = counted_one_by_one(parts.engine, None, None)
        alembic = db.alembic_config(parts.engine)
        command.downgrade(alembic, "0016")
        assert "ledger_history_totals" not in inspect(parts.engine).get_table_names()
        command.upgrade(alembic, "head")
        assert summed(parts.engine) == expected and len(expected) == 3
        with parts.engine.connect() as connection:
            kept = connection.execute(select(ledger_history_totals).order_by(*ledger_history_totals.primary_key)).all()
            runs = history.runs(connection)
        rows = sorted(history.totals_rows(history.sums(runs)), key=lambda row: tuple(row.values())[:4])
        assert [tuple(row) for row in kept] == [tuple(row.values()) for row in rows]


def test_a_model_whose_every_window_is_compacted_keeps_its_watermark(sqlite_url):
    with build(config(sqlite_url), clock=Clock(NOW)) as parts:
        windows_ = list(GRID.windows(FIRST, FIRST + timedelta(days=2)))
        parts.ledger.plan([PlannedWindow("p", "gone", "1", w) for w in windows_])
        for w in windows_:
            parts.ledger.record(task("gone", w), [Outcome(w, State.DONE, None, 3, 3)])
        assert parts.ledger.compact(NOW) == len(windows_) and rows_in(parts.engine, ledger) == 0
        assert parts.ledger.watermarks_of([("p", "gone"), ("p", "new")]) == {("p", "gone"): windows_[-1].start}


def test_a_compaction_batch_is_a_few_statements_however_many_models_it_moves(database_url):
    """A scheduler in step compacts one window of every model each tick: the statements of
    a batch must not grow with the models in it (one per run made a year-old fleet's tick
    slower than a new one's)."""
    with build(config(database_url), clock=Clock(NOW)) as parts:
        day = list(GRID.windows(FIRST, FIRST + timedelta(days=1)))
        models = [f"m{n}" for n in range(60)]
        parts.ledger.plan([PlannedWindow("p", m, "1", w) for m in models for w in day])
        for m in models:
            parts.ledger.record(task(m, Window(day[0].start, day[-1].end)),
                                [Outcome(w, State.DONE, None, 3, 3) for w in day])  # fmt: skip
        statements = []
        event.listen(parts.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        assert parts.ledger.compact(day[24].start) == 60 * 24  # the first half day: new runs
        first = len(statements)
        assert parts.ledger.compact(day[-1].end) == 60 * 24  # the rest: every run extended
        second = len(statements) - first
        with parts.engine.connect() as connection:
            runs = history.runs(connection, project="p")
        assert sorted((run.model, run.windows) for run in runs) == sorted((m, 48) for m in models)
        assert first <= 6 and second <= 6, statements


def test_backfill_modes_see_compacted_windows(database_url, gordo_server):
    settings_ = Config(database={"url": database_url},
                       models={"base_url": gordo_server.base_url, "projects": ["demo"], "read_timeout": 20})  # fmt: skip
    with build(settings_, clock=Clock(NOW)) as parts:
        model, revision = "pump-1", gordo_server.revision
        day = list(GRID.windows(FIRST, FIRST + timedelta(days=1)))
        parts.ledger.plan([PlannedWindow("demo", model, revision, w) for k, w in enumerate(day) if k != 5])
        t = Task(project="demo", model=model, revision=revision, start=day[0].start, end=day[-1].end)
        parts.ledger.record(t, [Outcome(w, State.DONE, None, 3, 3) for w in day])
        parts.ledger.compact(NOW - timedelta(days=8))
        assert rows_in(parts.engine, ledger) == 0
        planner = Backfill.from_components(parts)
        models = planner.models(["demo"], (model,))
        start, end = day[0].start, day[-1].end

        missing = planner.plan(models, start, end, Mode.MISSING)
        assert (missing.total()["planned"], missing.total()["reset"]) == (1, 0)  # only the gap
        assert planner.plan(models, start, end, Mode.FAILED).total()["reset"] == 0

        everything = planner.plan(models, day[10].start, day[20].start, Mode.ALL)
        assert everything.total()["reset"] == 10
        states = parts.ledger.states("demo", model, start, end)
        assert len(states) == len(day) and states[day[5].start] == State.PLANNED
        assert [states[w.start] for w in day[10:20]] == [State.PLANNED] * 10
        assert [states[w.start] for w in day[:5] + day[6:10] + day[20:]] == [State.DONE] * (len(day) - 11)
        with parts.engine.connect() as connection:  # the run is cut around the range
            runs = history.runs(connection, models=[("demo", model)])
        assert [(run.start, run.windows) for run in runs] == [(day[0].start, 5), (day[6].start, 4), (day[20].start, 28)]


def test_a_compacted_dead_window_is_counted_and_comes_back_for_its_operator(database_url):
    """A dead window waits for an operator, but not in the hot ledger: after compact_after
    it is a run, counted by status, and ``backfill --mode failed`` and ``dlq replay`` bring
    back that window alone (the dead letter keeps its error)."""
    with build(config(database_url), clock=Clock(NOW)) as parts:
        day = list(GRID.windows(FIRST, FIRST + timedelta(days=1)))
        for model in ("replayed", "backfilled"):
            parts.ledger.plan([PlannedWindow("p", model, "1", w) for w in day])
            parts.ledger.record(task(model, Window(day[0].start, day[-1].end)),
                                [Outcome(w, State.DONE, None, 3, 3) for w in day])  # fmt: skip
            parts.ledger.dead_letter(b"{}", "exhausted", "Gordo answered 500", 5, task(model, day[7]))
        with parts.engine.begin() as connection:  # the letter's body is its task, as an executor keeps it
            connection.execute(dead_letters.update().where(dead_letters.c.model == "replayed")
                               .values(body=task("replayed", day[7]).to_json()))  # fmt: skip
        def counted():  # the whole ledger's tallies, and a range's around the dead window
            ranges = [{}, {"start": day[5].start, "end": day[9].start}]
            return [sorted((t.model, t.states, t.partial, t.first_start, t.last_start, t.windows)
                           for t in readmodel.tallies(parts.engine, **range_)) for range_ in ranges]  # fmt: skip

        before = counted()
        assert parts.ledger.compact(NOW - timedelta(days=8)) == 2 * len(day)
        assert rows_in(parts.engine, ledger) == 0 and counted() == before
        tally = {t.model: t.states for t in readmodel.tallies(parts.engine)}
        assert tally["replayed"] == {State.DONE: len(day) - 1, State.DEAD: 1}

        assert parts.ledger.replan("p", "backfilled", day[0].start, day[-1].end, RESET_FAILED, "2") == 1
        with parts.engine.connect() as connection:
            hot = connection.execute(select(ledger.c.model, ledger.c.window_start, ledger.c.state)).all()
        assert hot == [("backfilled", day[7].start, State.PLANNED)]  # the done windows stay runs

        report = dlq.replay(parts.engine, parts.queue, parts.ledger, models=["replayed"])
        assert len(report.replayed) == 1
        states = parts.ledger.states("p", "replayed", day[0].start, day[-1].end)
        assert states[day[7].start] == State.QUEUED
        assert [s for start, s in states.items() if start != day[7].start] == [State.DONE] * (len(day) - 1)
        assert rows_in(parts.engine, ledger) == 2
        # the whole history's totals, kept apart from its runs, were counted again
        assert summed(parts.engine) == counted_one_by_one(parts.engine, None, None)
        assert summed(parts.engine)[("p", "replayed")][0] == {State.DONE: len(day) - 1}


def test_the_scheduler_compacts_and_expires_dead_letters_as_it_ticks(database_url):
    settings_ = config(database_url, compact_after="8d", dead_letters="10d")
    with build(settings_, clock=Clock(NOW)) as parts:
        every = fill(parts)
        old = task("b", every[1])
        parts.ledger.dead_letter(b"{}", "exhausted", "old", 5, old)
        with parts.engine.begin() as connection:
            connection.execute(dead_letters.update().where(dead_letters.c.error == "old")
                               .values(created_at=NOW - timedelta(days=11)))  # fmt: skip
        scheduler = Scheduler(settings_, Fleet(0, "fleet"), parts.ledger, parts.queue, Clock(NOW))
        report = scheduler.tick()

        assert report.compacted > 1500 and report.expired == 1
        assert rows_in(parts.engine, ledger_history) > 0 and rows_in(parts.engine, dead_letters) == 1
        assert scheduler.tick().compacted == 0  # nothing older is left


def test_the_compaction_scan_reads_only_rows_old_enough_to_move(database_url):
    """Each tick looks for windows to compact; the scan must be a range of old rows on
    (state, window_end), not the whole hot ledger read and sorted (PostgreSQL is told to
    avoid sequential scans, so a plan without the index shows one)."""
    with build(config(database_url), clock=Clock(NOW)) as parts:
        day = list(GRID.windows(FIRST, FIRST + timedelta(days=1)))
        parts.ledger.plan([PlannedWindow("p", m, "1", w) for m in "ab" for w in day])
        query = history.candidates(day[10].start, limit=100)
        sql = str(query.compile(parts.engine, compile_kwargs={"literal_binds": True}))
        with parts.engine.connect() as connection:
            plan = query_plan(connection, sql)
    assert "ix_ledger_state_window_end" in plan and "Seq Scan" not in plan, plan
    assert "window_end <" in plan or "window_end<" in plan, plan  # a range, not the whole index


def test_compaction_waits_until_the_oldest_finished_window_is_a_quarter_day_past_due(database_url):
    """Compacting every tick extends each model's run by one window a tick; the leader
    waits for COMPACT_SLACK of windows to move them at once."""
    settings_ = config(database_url, compact_after="8d")
    days = list(GRID.windows(FIRST, FIRST + timedelta(days=2)))
    due_at = days[0].end + timedelta(days=8)  # the first window is due for compaction then
    with build(settings_, clock=Clock(due_at)) as parts:
        parts.ledger.plan([PlannedWindow("p", "a", "1", w) for w in days])
        parts.ledger.record(task("a", Window(days[0].start, days[-1].end)),
                            [Outcome(w, State.DONE, None, 3, 3) for w in days])  # fmt: skip
        clock = Clock(due_at + COMPACT_SLACK - timedelta(minutes=1))
        scheduler = Scheduler(settings_, Fleet(0, "fleet"), parts.ledger, parts.queue, clock)
        assert scheduler.tick().compacted == 0  # 11 windows due, the oldest 5 h 59 min past
        clock.now = due_at + COMPACT_SLACK
        assert scheduler.tick().compacted == 13  # every window ended by now - compact_after
        assert scheduler.tick().compacted == 0


@pytest.mark.parametrize("value", ["7d", "1h"])
def test_compact_after_must_keep_the_status_pages_longest_view_hot(value):
    with pytest.raises((ConfigError, ValueError), match="compact_after"):
        Config(retention={"compact_after": value})
