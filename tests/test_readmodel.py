"""The read model, with plain values: when a window is due (in Python and in SQL, which must
agree to the microsecond), and what the grouped counts, newest done window, lag, missing
windows and dead letters say of a ledger written with the ledger's own calls, on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from latigo import readmodel
from latigo.components import build
from latigo.config import Config
from latigo.ledger import Outcome, PlannedWindow, State
from latigo.schema import ledger
from latigo.task import Task
from latigo.window import Grid, Window
from tests.clock import Clock
from tests.plans import query_plan

UTC = timezone.utc
HALF_HOUR = timedelta(minutes=30)
# the moment the questions are asked at, and how long after its end a window is due
NOW = datetime(2026, 3, 2, 12, 37, tzinfo=UTC)
DELAY = timedelta(minutes=5)


def task(model: str, window: Window) -> Task:
    return Task(project="p", model=model, revision="1", start=window.start, end=window.end)


def test_a_window_is_due_from_its_end_plus_the_delay():
    end = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert not readmodel.is_due(end, datetime(2026, 3, 2, 12, 4, 59, 999999, tzinfo=UTC), DELAY)
    assert readmodel.is_due(end, datetime(2026, 3, 2, 12, 5, tzinfo=UTC), DELAY)
    assert readmodel.is_due(end, datetime(2026, 3, 3, tzinfo=UTC), DELAY)
    assert readmodel.is_due(end, end, timedelta(0)) and not readmodel.is_due(end, end, timedelta(seconds=1))


def test_lags_read_at_a_glance():
    assert readmodel.lag(None, NOW) is None and readmodel.format_lag(None) == "-"
    assert readmodel.lag(NOW - HALF_HOUR, NOW) == HALF_HOUR
    assert readmodel.format_lag(timedelta(minutes=37, seconds=59)) == "37m"
    assert readmodel.format_lag(timedelta(hours=2)) == "2h"
    assert readmodel.format_lag(timedelta(hours=5, minutes=2)) == "5h 02m"
    assert readmodel.format_lag(timedelta(days=3, hours=4, minutes=9)) == "3d 4h"


def test_the_sql_due_agrees_with_is_due(database_url):
    """Windows ending around the cutoff ``NOW - DELAY`` (12:32): the SQL clause picks exactly
    those ``is_due`` calls due, and late counts only the due ones still waiting."""
    cutoff = NOW - DELAY
    tiny = timedelta(microseconds=1)
    ends = [cutoff - timedelta(minutes=1), cutoff - tiny, cutoff, cutoff + tiny, cutoff + timedelta(minutes=1)]
    parts = build(Config(database={"url": database_url}), clock=Clock(NOW), migrate=True)
    try:
        windows = [Window(end - HALF_HOUR, end) for end in ends]
        parts.ledger.plan([PlannedWindow("p", f"m{index}", "1", window) for index, window in enumerate(windows)])
        parts.ledger.mark_queued([task("m1", windows[1])])
        with parts.engine.connect() as connection:
            due = set(connection.execute(select(ledger.c.model).where(readmodel.due(NOW, DELAY))).scalars())
        [tally] = readmodel.tallies(parts.engine, project="p", models=[("p", "m2")], now=NOW, delay=DELAY)
        totals = readmodel.tallies(parts.engine, now=NOW, delay=DELAY)
    finally:
        parts.close()
    assert due == {f"m{index}" for index, end in enumerate(ends) if readmodel.is_due(end, NOW, DELAY)}
    assert due == {"m0", "m1", "m2"}
    assert (tally.late, tally.pending) == (1, 0)  # ends exactly at the cutoff: due
    assert sum(each.late for each in totals) == 3 and sum(each.pending for each in totals) == 2


def test_counts_newest_done_missing_and_dead_letters(database_url):
    parts = build(Config(database={"url": database_url}), clock=Clock(NOW), migrate=True)
    grid = Grid(HALF_HOUR)
    windows = list(grid.windows(datetime(2026, 3, 2, 8, 30, tzinfo=UTC), NOW))  # 08:30 .. 12:30: 8
    try:
        parts.ledger.plan([PlannedWindow("p", "a", "1", window) for index, window in enumerate(windows) if index != 2])
        parts.ledger.plan([PlannedWindow("q", "b", "1", window) for window in windows[-2:]])
        done = [Outcome(window, State.DONE, None, 3, 3) for window in (windows[0], windows[1], windows[3])]
        done[1] = Outcome(windows[1], State.DONE, "2 of 3 rows", 2, 3)
        parts.ledger.record(task("a", Window(windows[0].start, windows[3].end)), done)
        parts.ledger.fail(task("a", windows[4]), "boom")
        dead = task("a", windows[5])
        parts.clock.now = NOW + timedelta(seconds=1)  # the newest error
        parts.ledger.dead_letter(dead.to_json(), "permanent", "gone", 1, dead)
        counted = readmodel.state_counts(parts.engine)
        recent = readmodel.state_counts(parts.engine, start=windows[4].start, project="p")
        tallies = {tally.model: tally for tally in readmodel.tallies(parts.engine)}
        lags = readmodel.lags(parts.engine, NOW, since=NOW - timedelta(hours=1))
        longer = readmodel.lags(parts.engine, NOW, since=NOW - timedelta(days=1))
        letters = readmodel.dead_letter_count(parts.engine)
        followed = readmodel.window_states(parts.engine, {"p": {"a"}, "q": {"nobody"}}, windows[0].start, NOW)
        errors = readmodel.last_errors(parts.engine)
    finally:
        parts.close()
    assert counted == {
        ("p", "a"): {State.DONE: 3, State.FAILED: 1, State.DEAD: 1, State.PLANNED: 2},
        ("q", "b"): {State.PLANNED: 2},
    }
    assert recent == {("p", "a"): {State.FAILED: 1, State.DEAD: 1, State.PLANNED: 2}}
    a = tallies["a"]
    assert a.newest_done == windows[3].end and tallies["b"].newest_done is None
    assert a.partial == 1 and a.windows == 7 and a.missing(HALF_HOUR) == 1  # window 2 was never planned
    assert tallies["b"].missing(HALF_HOUR) == 0
    assert a.lag(NOW) == NOW - windows[3].end == timedelta(hours=2, minutes=7)
    assert lags == [] and longer == [("p", "a", (NOW - windows[3].end).total_seconds())]
    assert letters == 1
    assert followed == {State.DONE: 3, State.FAILED: 1, State.DEAD: 1, State.PLANNED: 2}
    assert errors == {("p", "a"): "gone"}


def test_the_last_errors_are_read_from_their_index_not_the_whole_ledger(database_url):
    """A year's hot ledger is 400,000 rows, of which the failed and dead hold an error:
    ``last_errors`` must be answerable from ix_ledger_last_error alone (PostgreSQL is told
    to avoid sequential scans, so a plan without the index shows one)."""
    parts = build(Config(database={"url": database_url}), clock=Clock(NOW), migrate=True)
    grid = Grid(HALF_HOUR)
    windows = list(grid.windows(NOW - timedelta(hours=5), NOW))
    query = str(readmodel.last_errors_query().compile(parts.engine, compile_kwargs={"literal_binds": True}))
    try:
        parts.ledger.plan([PlannedWindow("p", "a", "1", window) for window in windows])
        parts.ledger.fail(task("a", windows[0]), "first")
        parts.clock.now = NOW + timedelta(seconds=1)
        parts.ledger.fail(task("a", windows[1]), "second")
        errors = readmodel.last_errors(parts.engine)
        with parts.engine.connect() as connection:
            plan = query_plan(connection, query)
    finally:
        parts.close()
    assert errors == {("p", "a"): "second"}
    assert "ix_ledger_last_error" in plan and "Seq Scan" not in plan, plan
