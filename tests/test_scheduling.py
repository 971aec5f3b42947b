"""Scheduling that never skips or repeats a window: restarts after downtime, concurrent
schedulers, leadership, catch-up limits, revisions and models coming and going.

A controllable clock stands in for time (no real waiting); Gordo, the databases and the
queue are real.
"""

from __future__ import annotations

import shutil
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from latigo.components import build
from latigo.config import Config
from latigo.demo import gordo
from latigo.demo.feeder import feed
from latigo.executor import Executor
from latigo.leader import leadership_for
from latigo.ledger import State
from latigo.providers.predictions.sql import code_of
from latigo.scheduler import Scheduler, TickReport
from latigo.schema import ledger, predictions
from latigo.task import Task
from latigo.window import Grid
from tests.clock import Clock
from tests.test_pipeline import NOW

pytestmark = pytest.mark.integration  # discovery and runs against the real Gordo server

HALF_HOUR = timedelta(minutes=30)
GRID = Grid(HALF_HOUR)


def config_for(database_url: str, gordo_url: str, **schedule: object) -> Config:
    return Config(
        database={"url": database_url},
        models={"base_url": gordo_url, "projects": ["demo"], "read_timeout": 20},
        schedule={"initial_backfill": "0s", "discovery_ttl": "1m", **schedule},
        executor={"retry_base": "1s"},
    )


def planned_starts(parts, model: str) -> list[datetime]:
    query = select(ledger.c.window_start).where(ledger.c.model == model).order_by(ledger.c.window_start)
    with parts.engine.connect() as connection:
        return list(connection.execute(query).scalars())


def queued_tasks(parts) -> list[Task]:
    """Take every task off the queue, in delivery order."""
    tasks = []
    while messages := parts.queue.receive(1000, timedelta(0)):
        for message in messages:
            tasks.append(Task.from_json(message.body))
            parts.queue.ack(message)
    return tasks


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def test_a_restart_after_six_hours_plans_exactly_the_missed_windows(database_url, gordo_server, clock):
    parts = build(config_for(database_url, gordo_server.base_url), clock=clock)
    try:
        first = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, clock).tick()
        assert first.planned == len(gordo_server.models)  # no backfill: just the newest due window
        before = queued_tasks(parts)

        clock.advance(timedelta(hours=6))  # the scheduler was down; a new process starts
        restarted = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, clock)
        report = restarted.tick()
        assert report.planned == 12 * len(gordo_server.models)
        assert report.gaps == []
        # 11:30 was the last window before; 17:30 is the newest due now; nothing skipped, nothing twice
        expected = [datetime(2026, 3, 2, 11, 30, tzinfo=timezone.utc) + HALF_HOUR * k for k in range(13)]
        for model in gordo_server.models:
            assert planned_starts(parts, model) == expected
        tasks = queued_tasks(parts)
        # the newest windows go first: every model's continuous window before any catch-up
        assert [task.start for task in tasks[: len(gordo_server.models)]] == [expected[-1]] * len(gordo_server.models)
        covered = sorted((t.model, w.start) for t in tasks + before for w in GRID.windows(t.start, t.end))
        assert covered == sorted((m, s) for m in gordo_server.models for s in expected)
        assert restarted.tick().planned == 0
    finally:
        parts.close()


def test_gaps_older_than_the_catch_up_limit_are_reported_not_planned(database_url, gordo_server, clock):
    parts = build(config_for(database_url, gordo_server.base_url, catch_up="1d"), clock=clock)
    try:
        scheduler = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, clock)
        scheduler.tick()
        clock.advance(timedelta(days=3))
        report = scheduler.tick()
        assert report.planned == 48 * len(gordo_server.models)  # one day back, no further
        assert sorted(gap.model for gap in report.gaps) == sorted(gordo_server.models)
        gap = report.gaps[0].window
        assert gap.start == NOW.replace(minute=0) and gap.end == gap.start + timedelta(days=2)
    finally:
        parts.close()


def test_two_schedulers_started_together_plan_and_publish_each_window_once(database_url, gordo_server, clock):
    config = config_for(database_url, gordo_server.base_url, initial_backfill="6h")
    first, second = build(config, clock=clock), build(config, clock=clock)
    try:
        schedulers = [
            Scheduler(config, p.model_info, p.ledger, p.queue, clock, leadership_for(p.engine, timedelta(minutes=2), clock))
            for p in (first, second)
        ]
        start = threading.Barrier(2)
        reports = [None, None]

        def run(index: int) -> None:
            start.wait()
            reports[index] = schedulers[index].tick()

        threads = [threading.Thread(target=run, args=(index,)) for index in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(report.leader for report in reports) == [False, True]
        windows = 13 * len(gordo_server.models)
        assert sum(report.planned for report in reports) == windows
        with first.engine.connect() as connection:
            rows = connection.execute(select(func.count()).select_from(ledger)).scalar_one()
        assert rows == windows
        tasks = queued_tasks(first)
        covered = [(t.model, w.start) for t in tasks for w in GRID.windows(t.start, t.end)]
        assert len(covered) == len(set(covered)) == windows
    finally:
        first.close()
        second.close()


def test_even_without_leadership_the_ledger_plans_each_window_once(database_url, gordo_server, clock):
    config = config_for(database_url, gordo_server.base_url, initial_backfill="1d")
    parts = [build(config, clock=clock) for _ in range(3)]
    try:
        start = threading.Barrier(3)
        planned = []

        def plan(p) -> None:
            scheduler = Scheduler(config, p.model_info, p.ledger, p.queue, clock)  # no leadership: all plan
            start.wait()
            planned.append(scheduler.plan(TickReport(now=clock())))

        threads = [threading.Thread(target=plan, args=(p,)) for p in parts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sum(planned) == 49 * len(gordo_server.models)
    finally:
        for p in parts:
            p.close()


def test_a_dead_leader_is_replaced(database_url, gordo_server, clock):
    config = config_for(database_url, gordo_server.base_url)
    first, second = build(config, clock=clock), build(config, clock=clock)
    try:
        leader = leadership_for(first.engine, timedelta(minutes=2), clock)
        standby = leadership_for(second.engine, timedelta(minutes=2), clock)
        assert leader.hold() and not standby.hold()
        assert leader.hold()  # renewing
        # the leader dies without stepping down: its connection goes away, its lease stops being renewed
        if second.engine.dialect.name == "postgresql":
            with second.engine.begin() as connection:
                killed = connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid <> pg_backend_pid()"
                ).scalars().all()
            assert killed == [True]
        first.engine.dispose()
        clock.advance(timedelta(minutes=3))
        assert standby.hold()
        assert not leadership_for(first.engine, timedelta(minutes=2), clock).hold()
        standby.release()
        assert leadership_for(first.engine, timedelta(minutes=2), clock).hold()
    finally:
        first.close()
        second.close()


def test_backlog_limit_holds_history_back_but_never_continuous_windows(database_url, gordo_server, clock):
    config = config_for(database_url, gordo_server.base_url, initial_backfill="2d", max_task_span="1h", backlog_limit=10)
    parts = build(config, clock=clock)
    try:
        scheduler = Scheduler(config, parts.model_info, parts.ledger, parts.queue, clock)
        report = scheduler.tick()
        models = len(gordo_server.models)
        assert report.planned == 97 * models
        # continuous: one task per model; history: only up to the backlog limit
        assert report.published_tasks == models + (10 - models)
        assert parts.queue.depth() == 10
        clock.advance(HALF_HOUR)
        report = scheduler.tick()
        assert report.planned == models and report.published_tasks == models  # history waits for room
        tasks = queued_tasks(parts)
        newest = max(task.start for task in tasks)
        assert sum(task.start == newest for task in tasks) == models
    finally:
        parts.close()


def test_a_tick_in_batches_plans_and_publishes_every_model_once(database_url, gordo_server, clock, monkeypatch):
    import latigo.scheduler

    monkeypatch.setattr(latigo.scheduler, "TICK_BATCH", 2)  # 3 models: two batches each way
    parts = build(config_for(database_url, gordo_server.base_url, initial_backfill="1h"), clock=clock)
    try:
        scheduler = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, clock)
        report = scheduler.tick()
        models = len(gordo_server.models)
        assert report.planned == 3 * models and report.published_windows == 3 * models
        published = [(task.model, task.start) for task in queued_tasks(parts)]
        assert len(published) == len(set(published))
        assert {model for model, _ in published} == set(gordo_server.models)
        assert sum(start == NOW.replace(minute=0) - HALF_HOUR for _, start in published) == models  # continuous
        with parts.engine.connect() as connection:
            assert set(connection.execute(select(ledger.c.state).distinct()).scalars()) == {State.QUEUED}
    finally:
        parts.close()


def test_history_read_in_slices_is_published_whole_and_once(database_url, gordo_server, clock, monkeypatch):
    import latigo.scheduler

    monkeypatch.setattr(latigo.scheduler, "HISTORY_READ_LIMIT", 7)
    config = config_for(database_url, gordo_server.base_url, initial_backfill="10h", max_task_span="7d")
    parts = build(config, clock=clock)
    try:
        scheduler = Scheduler(config, parts.model_info, parts.ledger, parts.queue, clock)
        models = len(gordo_server.models)
        report = scheduler.tick()
        assert report.planned == 21 * models
        assert report.published_windows == models + 7  # continuous ones, then one slice of history
        covered: list[tuple[str, datetime]] = []
        for _ in range(10):
            covered += [(task.model, start) for task in queued_tasks(parts) for start in (w.start for w in GRID.windows(task.start, task.end))]
            scheduler.publish_planned()
        assert sorted(covered) == sorted((model, start) for model in gordo_server.models for start in planned_starts(parts, model))
        assert len(covered) == len(set(covered)) == 21 * models  # every window once
    finally:
        parts.close()


def test_revision_change_and_model_removal_while_the_scheduler_runs(database_url, gordo_server, clock, tmp_path):
    """A Gordo of our own (the session's is shared): revision A with every demo model, then
    revision B without turbine-1 (as if its build failed), then A deleted."""
    root = tmp_path / "models"
    revision_a, revision_b = "1700000000", "1800000000"
    shutil.copytree(gordo_server.revision_dir, root / revision_a)
    port = gordo.free_port()
    server = gordo.serve(gordo_server.venv_dir, root / revision_a, port, gordo_server.models, tmp_path / "a.log")
    parts = build(config_for(database_url, f"http://127.0.0.1:{port}"), clock=clock)
    try:
        feed(parts.sensors, NOW - timedelta(hours=2), NOW + timedelta(hours=2))
        scheduler = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, clock)
        executor = Executor.from_components(parts)
        assert scheduler.tick().planned == 3
        executor.run(threading.Event(), until_idle=True)

        (root / revision_b).mkdir()
        for model in ("pump-1", "compressor-1"):
            shutil.copytree(root / revision_a / model, root / revision_b / model)
        gordo.stop(server)
        server = gordo.serve(gordo_server.venv_dir, root / revision_b, port, gordo_server.models, tmp_path / "b.log")

        clock.advance(HALF_HOUR)  # past the discovery TTL: the new revision is seen
        report = scheduler.tick()
        assert report.planned == 2  # turbine-1 is no longer planned
        assert report.unbuilt == {"demo": ["turbine-1"]}
        tasks_at_b = queued_tasks(parts)
        assert {(t.model, t.revision) for t in tasks_at_b} == {("pump-1", revision_b), ("compressor-1", revision_b)}
        parts.queue.publish([t.to_json() for t in tasks_at_b])

        # a task still at revision A after A is gone: Gordo answers 410, it is re-planned at B
        shutil.rmtree(root / revision_a)
        hour = NOW.replace(minute=0)
        stale = Task(project="demo", model="pump-1", revision=revision_a, start=hour - HALF_HOUR * 4,
                     end=hour - HALF_HOUR * 3)
        parts.queue.publish([stale.to_json()])
        executor.run(threading.Event(), until_idle=True)

        with parts.engine.connect() as connection:
            revisions = dict(
                connection.execute(
                    select(predictions.c.time, predictions.c.revision)
                    .where(predictions.c.model == "pump-1", predictions.c.output == code_of("total-anomaly-scaled"))
                ).all()
            )
            states = set(connection.execute(select(ledger.c.state).distinct()).scalars())
        assert revisions[hour - HALF_HOUR] == revision_a  # predicted before the change
        assert revisions[hour] == revision_b  # the new window, at the new revision
        assert revisions[stale.start] == revision_b  # the re-planned one
        assert states == {State.DONE}
    finally:
        parts.close()
        gordo.stop(server)


def test_history_can_go_oldest_first(database_url, gordo_server, clock):
    config = config_for(
        database_url, gordo_server.base_url, initial_backfill="1d", max_task_span="1h", backlog_limit=6,
        history_order="oldest_first",
    )
    parts = build(config, clock=clock)
    try:
        Scheduler(config, parts.model_info, parts.ledger, parts.queue, clock).tick()
        tasks = queued_tasks(parts)
        models = len(gordo_server.models)
        newest = NOW.replace(minute=0) - HALF_HOUR
        assert [task.start for task in tasks[:models]] == [newest] * models  # continuous first, always
        oldest = newest - timedelta(days=1)
        assert {task.start for task in tasks[models:]} == {oldest}  # then the oldest history
    finally:
        parts.close()


def test_status_counts_windows_the_catch_up_limit_left_unplanned(database_url, gordo_server, clock):
    from latigo.status import model_statuses

    parts = build(config_for(database_url, gordo_server.base_url, catch_up="1d"), clock=clock)
    try:
        scheduler = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, clock)
        scheduler.tick()
        clock.advance(timedelta(days=3))
        scheduler.tick()
        statuses = model_statuses(parts.engine, HALF_HOUR)
        assert {status.model: status.missing for status in statuses} == {m: 2 * 48 for m in gordo_server.models}
    finally:
        parts.close()


class OneProjectDown:
    """Real Gordo for every project but one, whose Gordo is unreachable (a router in front
    of several Gordo servers would answer like this when one of them is down)."""

    def __init__(self, real, down: str) -> None:
        self._real, self._down = real, down

    def __getattr__(self, name):
        method = getattr(self._real, name)

        def call(project, *args):
            if project == self._down:
                from latigo.errors import TransientError

                raise TransientError(f"{project}: cannot reach Gordo")
            return method(project, *args)

        return call


def test_one_failing_project_never_stops_the_others(database_url, gordo_server, clock):
    config = config_for(database_url, gordo_server.base_url).model_copy(
        update={"models": Config(models={"base_url": gordo_server.base_url, "projects": ["broken", "demo"]}).models}
    )
    parts = build(config, clock=clock)
    try:
        scheduler = Scheduler(config, OneProjectDown(parts.model_info, "broken"), parts.ledger, parts.queue, clock)
        report = scheduler.tick()
        assert list(report.failed_projects) == ["broken"]
        assert report.planned == len(gordo_server.models)
        assert {t.project for t in queued_tasks(parts)} == {"demo"}
    finally:
        parts.close()
