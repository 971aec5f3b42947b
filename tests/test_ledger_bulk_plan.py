"""The ledger's bulk planning (``db.NewRows`` under ``Ledger.plan``) against real SQLite and
PostgreSQL: it stores exactly what SQLAlchemy's insert stored, counts only new windows,
never plans a window twice (planned before, compacted into history, or planned by another
writer at the same moment), and a first start plans in bounded batches of whole models.
"""

from __future__ import annotations

import threading
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import event, func, select, text

from latigo import db, scheduler
from latigo.components import build
from latigo.config import Config
from latigo.demo.fleet import Fleet
from latigo.ledger import Ledger, PlannedWindow, State
from latigo.schema import ledger
from latigo.task import Task
from latigo.window import Grid, Window
from tests.plans import query_plan

HALF_HOUR = timedelta(minutes=30)
GRID = Grid(HALF_HOUR)
NOW = datetime(2026, 3, 2, 12, 7, tzinfo=UTC)
# the first window's start in most tests, on the grid
T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)
# a time off the grid, with microseconds, in another zone: what binding has to convert
ODD = datetime(2026, 3, 2, 13, 20, 0, 5, tzinfo=timezone(timedelta(hours=2)))
# names with every character COPY's text format escapes, a quote and a non-ASCII letter
AWKWARD = "back\\slash\ttab\nnew\rreturn 'quoted' ø"
COLUMNS = [column.name for column in ledger.columns]


def engine_for(url: str):
    engine = db.create_engine(url)
    db.upgrade(engine)
    return engine


def stored(engine) -> list[tuple]:
    """Every ledger row as the database holds it, ordered: SQLite's values with their storage
    classes, PostgreSQL's row as text and as the driver reads it back."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            fields = ", ".join(f"quote({name}), typeof({name})" for name in COLUMNS)
            return list(connection.exec_driver_sql(f"SELECT {fields} FROM ledger ORDER BY model, window_start"))
        names = ", ".join(COLUMNS)
        return list(
            connection.exec_driver_sql(f"SELECT ledger::text, {names} FROM ledger ORDER BY model, window_start")
        )


def windows_of(model: str, first: datetime, count: int, project: str = "p", revision: str = "1") -> list:
    return [
        PlannedWindow(project, model, revision, window) for window in GRID.windows(first, first + count * HALF_HOUR)
    ]


def test_a_window_planned_in_bulk_is_stored_exactly_as_sqlalchemys_insert_stored_it(database_url):
    engine = engine_for(database_url)
    now = datetime(2026, 3, 2, 13, 7, 1, 123456, tzinfo=timezone(timedelta(hours=1)))
    items = [
        PlannedWindow(AWKWARD, AWKWARD, AWKWARD, Window(ODD, ODD + HALF_HOUR)),
        PlannedWindow("p", "m", None, Window(NOW, NOW + HALF_HOUR)),  # a NULL revision
    ]
    try:
        with engine.begin() as connection:  # the insert Ledger.plan made before the bulk path
            rows = [
                {
                    "project": item.project,
                    "model": item.model,
                    "window_start": item.window.start,
                    "window_end": item.window.end,
                    "state": State.PLANNED,
                    "revision": item.revision,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for item in items
            ]
            assert len(db.insert_new(connection, ledger, rows)) == 2
        before = stored(engine)
        with engine.begin() as connection:
            connection.execute(ledger.delete())
        assert Ledger(engine, lambda: now).plan(items) == 2
        assert stored(engine) == before
        with engine.connect() as connection:  # and read back through the schema, as ever
            back = connection.execute(select(ledger.c.model, ledger.c.window_start, ledger.c.created_at)).all()
        assert sorted(back) == sorted([(AWKWARD, ODD, now), ("m", NOW, now)])
    finally:
        engine.dispose()


def test_plan_counts_only_new_windows_and_leaves_the_planned_ones_as_they_are(database_url):
    engine = engine_for(database_url)
    led = Ledger(engine, lambda: NOW)
    try:
        assert led.plan(windows_of("m", T0, 10)) == 10
        task = Task(project="p", model="m", revision="1", start=T0, end=T0 + 2 * HALF_HOUR)
        led.mark_queued([task])
        again = windows_of("m", T0, 15, revision="2")  # 10 known (2 of them queued), 5 new
        assert led.plan(again) == 5
        assert led.plan(again) == 0
        with engine.connect() as connection:
            rows = connection.execute(select(ledger.c.window_start, ledger.c.state, ledger.c.revision)).all()
        found = {start: (State(state), revision) for start, state, revision in rows}
        assert len(rows) == len(found) == 15
        assert [found[w.window.start] for w in again[:3]] == [(State.QUEUED, "1")] * 2 + [(State.PLANNED, "1")]
        assert {found[w.window.start] for w in again[10:]} == {(State.PLANNED, "2")}
    finally:
        engine.dispose()


def test_a_plan_of_several_chunks_counts_and_keeps_every_window_once(database_url):
    """More rows than one executemany or one COPY write holds, with duplicates across
    chunks and windows known from an earlier plan among them."""
    engine = engine_for(database_url)
    led = Ledger(engine, lambda: NOW)
    per_model = 48
    models = db.NEW_ROWS_CHUNK * 2 // per_model + 3
    try:
        assert led.plan(windows_of("m00000", T0, per_model)) == per_model
        items = [w for index in range(models) for w in windows_of(f"m{index:05d}", T0, per_model)]
        assert len(items) > 2 * db.NEW_ROWS_CHUNK
        assert led.plan(items + items[:100]) == len(items) - per_model
        with engine.connect() as connection:
            count = connection.execute(select(func.count()).select_from(ledger)).scalar_one()
        assert count == len(items)
    finally:
        engine.dispose()


def test_windows_compacted_into_history_are_not_planned_again_beside_new_ones(database_url):
    engine = engine_for(database_url)
    led = Ledger(engine, lambda: NOW)
    try:
        day = windows_of("m", T0 - timedelta(days=3), 48)
        assert led.plan(day) == 48
        led.finish(
            Task(project="p", model="m", revision="1", start=day[0].window.start, end=day[-1].window.end), State.DONE
        )
        assert led.compact(NOW) == 48
        more = windows_of("m", T0 - timedelta(days=3), 60)  # the compacted day and 12 windows after it
        assert led.plan(more) == 12
        with engine.connect() as connection:
            starts = sorted(connection.execute(select(ledger.c.window_start)).scalars())
        assert starts == [w.window.start for w in more[48:]]
    finally:
        engine.dispose()


def test_two_writers_of_overlapping_windows_wait_for_each_other_and_plan_each_window_once(database_url):
    """One writer holds its insert of window 1 uncommitted; a planner of windows 2 and 1
    (in that order) waits for it; the writer then inserts window 2 as well and commits.
    The planner inserts in key order, so it waited at window 1 before taking window 2: no
    deadlock, and it finds both planned."""
    holder, engine = engine_for(database_url), db.create_engine(database_url)
    first, second = windows_of("m", T0, 2)
    columns = ["project", "model", "window_start", "window_end", "state", "attempts", "created_at", "updated_at"]
    insert = db.NewRows(holder.dialect, ledger, columns)

    def row(item: PlannedWindow) -> tuple:
        values = (item.project, item.model, item.window.start, item.window.end, "planned", 0, NOW, NOW)
        return tuple(insert.bind(name, value) for name, value in zip(columns, values))

    results: list[object] = []

    def plan() -> None:
        try:
            results.append(Ledger(engine, lambda: NOW).plan([second, first]))
        except Exception as error:  # the assertion below shows it
            results.append(error)

    try:
        with holder.connect() as connection:
            transaction = connection.begin()
            assert insert.execute(connection, [row(first)]) == 1
            planner = threading.Thread(target=plan)
            planner.start()
            if holder.dialect.name == "postgresql":  # wait until the planner waits on our row
                waiting = text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                with holder.connect() as observer:
                    while not observer.execute(waiting).scalar_one() and planner.is_alive():
                        observer.rollback()
            assert insert.execute(connection, [row(second)]) == 1
            transaction.commit()
        planner.join(60)
        assert results == [0]
        with holder.connect() as connection:
            assert connection.execute(select(func.count()).select_from(ledger)).scalar_one() == 2
    finally:
        holder.dispose()
        engine.dispose()


def test_a_first_start_plans_whole_models_in_batches_and_holds_only_a_batch(sqlite_url):
    """A day of backfill for enough models to need three batches: every window planned,
    each batch its own transaction of whole models, and the memory planning takes bounded
    by a batch, not by the fleet (all at once it was about 900 bytes a window)."""
    models = 2 * scheduler.PLAN_BATCH // 49 + 100
    config = Config(database={"url": sqlite_url}, models={"projects": ["fleet"]})
    parts = build(config, clock=lambda: NOW)
    fleet = scheduler.Scheduler(config, Fleet(models), parts.ledger, parts.queue, lambda: NOW)
    commits: list[int] = []
    event.listen(parts.engine, "commit", lambda connection: commits.append(1))
    try:
        tracemalloc.start()
        try:
            planned = fleet.plan(scheduler.TickReport(now=NOW))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert planned == 49 * models
        assert len(commits) == 3
        with parts.engine.connect() as connection:
            per_model = connection.execute(
                select(ledger.c.model, func.count()).group_by(ledger.c.model).having(func.count() != 49)
            ).all()
            assert connection.execute(select(func.count(func.distinct(ledger.c.model)))).scalar_one() == models
        assert per_model == []
        assert peak < 250 * planned, f"{peak / 2**20:.0f} MiB traced for {planned} windows"
    finally:
        parts.close()


def test_a_models_windows_in_a_range_are_updated_through_the_primary_key(database_url):
    """mark_queued and backfill's replan update one model's windows in a range. Through an
    index led by the state they would read every model's windows there: on a ledger
    without statistics both databases chose (state, window_start) that way, and a first
    start's publishing at 9,000 models took 56 s instead of 0.8 s. SQLite never has
    statistics; PostgreSQL gets them as autovacuum would, and is told to avoid sequential
    scans, so a plan without an index shows one."""
    engine = engine_for(database_url)
    try:
        ledger_ = Ledger(engine, lambda: NOW)
        windows = list(GRID.windows(T0, T0 + 4 * HALF_HOUR))
        ledger_.plan([PlannedWindow("p", f"m{n}", "1", w) for n in range(200) for w in windows])
        updates = []

        def capture(connection, cursor, statement, parameters, context, executemany):
            if statement.startswith("UPDATE ledger"):
                updates.append((statement, parameters[0] if executemany else parameters))

        event.listen(engine, "before_cursor_execute", capture)
        task = Task(project="p", model="m1", revision="1", start=windows[0].start, end=windows[-1].end)
        assert ledger_.mark_queued([task])
        ledger_.replan("p", "m2", windows[0].start, windows[-1].end, [State.FAILED, State.DEAD], "2")
        event.remove(engine, "before_cursor_execute", capture)
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql("ANALYZE ledger")
            plans = [query_plan(connection, statement, parameters) for statement, parameters in updates]
    finally:
        engine.dispose()
    assert len(plans) == 2, updates
    for plan in plans:
        assert "ix_ledger_state" not in plan and "Seq Scan" not in plan, plan
        assert "ledger_pkey" in plan or "sqlite_autoindex_ledger_1" in plan, plan
