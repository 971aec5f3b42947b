"""The scheduler: every tick, plan each model's due windows in the ledger and publish them.

Planning goes through the ledger first (its primary key makes a window plannable once,
ever, whoever plans it), publishing second, marking queued last. A crash between the steps
leaves windows ``planned``, and the next tick publishes them: at worst a task is delivered
twice, which idempotent storage absorbs; never is one lost. Only the leader (see
``latigo.leader``) plans and publishes; other schedulers stand by.

Publishing is fenced: marking a batch queued commits only together with the leader's
check of its lease (holder, epoch, expiry), so a leader deposed while it hung marks
nothing. With the sql queue (a table of the same database) the batch is enqueued in that
very transaction: enqueue, mark and fence commit together or not at all, so a deposed
leader waking up mid-tick cannot publish a batch at all. With a queue outside the database
(Kafka, Event Hubs) the fence is checked just before publishing and again when marking;
only a leader that pauses for a whole lease between that check and its publish call can
publish one batch that its successor publishes too.

Continuous windows (the newest due one of each model) are always published at once.
History (catch-up after downtime, the initial backfill, ``latigo backfill``) is published
newest first (``schedule.history_order``), and only while the queue holds fewer than
``schedule.backlog_limit`` tasks,
so a month of backfill never stands between a model and its next window.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from time import monotonic

from sqlalchemy.exc import SQLAlchemyError

from latigo.clock import Clock, system_clock
from latigo.config import Config
from latigo.discovery import Discovery, Model
from latigo.errors import LatigoError
from latigo.history import COMPACT_BATCH
from latigo.leader import Leadership
from latigo.ledger import Ledger, PlannedWindow
from latigo.metrics import (
    DEAD_LETTERS_EXPIRED,
    HEALTH,
    PREDICTIONS_EXPIRED,
    TASKS_PUBLISHED,
    WINDOWS_COMPACTED,
    WINDOWS_PLANNED,
)
from latigo.providers.models import ModelInformationProvider
from latigo.providers.predictions import PredictionStorageProvider
from latigo.queues import TaskQueue
from latigo.queues.sql import SqlQueue
from latigo.task import Task
from latigo.window import Grid, Window

log = logging.getLogger(__name__)

# continuous windows published per batch of a tick: a tick's memory stays that of one
# batch, however large the fleet
TICK_BATCH = 10_000
# windows planned per ledger transaction of a tick (whole models, so up to one model's more):
# a first start plans a day of backfill for every model, 441,000 windows at 9,000 models,
# which held at once took the scheduler to 556 MiB (bench/README.md, "9,000 models")
PLAN_BATCH = 100_000
# distinct ranges of windows kept built (``_windows``): a tick's models nearly all share one
WINDOW_RANGES = 16
# how many windows back the scheduler's scan for models' newest planned windows reaches
RECENT_WINDOWS = 4
# most planned history windows read per tick: with week-long tasks, a backlog's worth of
# room would otherwise be hundreds of thousands of rows in memory at once
HISTORY_READ_LIMIT = 100_000
# seconds of a tick spent keeping the database bounded (compaction, expiry) at most: the
# first tick after an upgrade finds a year of ledger to compact, and spreads it over ticks
UPKEEP_BUDGET_S = 5.0
# how far past retention.compact_after the oldest finished window may be before compaction
# runs: a quarter day of windows moved at once, each model's run extended once for them,
# costs 0.19-0.25 of moving them a tick at a time (bench.compaction), for a hot ledger 3 %
# longer
COMPACT_SLACK = timedelta(hours=6)


@functools.lru_cache(maxsize=WINDOW_RANGES)
def _windows(grid: Grid, start: datetime, end: datetime) -> tuple[Window, ...]:
    """``grid.windows(start, end)``, built once and shared: every new model's initial
    backfill is one range, every model in step has one next window, and a Window is
    immutable, so a first start of 9,000 models needs 49 Windows, not 441,000."""
    return tuple(grid.windows(start, end))


@dataclass(frozen=True)
class Gap:
    """Windows older than the catch-up limit that were not planned: for ``latigo backfill``."""

    project: str
    model: str
    window: Window


@dataclass
class TickReport:
    now: datetime
    leader: bool = True
    models: int = 0
    planned: int = 0
    published_tasks: int = 0
    published_windows: int = 0
    failed_projects: dict[str, str] = field(default_factory=dict)
    unbuilt: dict[str, list[str]] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    # windows moved into the ledger's history, and dead letters deleted for their age
    compacted: int = 0
    expired: int = 0
    # prediction values deleted for being older than predictions.retention
    predictions_expired: int = 0


class Deposed(Exception):
    """The fence refused a batch: this scheduler no longer leads. Carries what was published
    (and marked) before it, in this tick."""

    def __init__(self, tasks: int, windows: int) -> None:
        super().__init__(f"deposed after publishing {tasks} tasks")
        self.tasks = tasks
        self.windows = windows


class Scheduler:
    def __init__(
        self,
        config: Config,
        model_info: ModelInformationProvider,
        ledger: Ledger,
        queue: TaskQueue,
        clock: Clock = system_clock,
        leadership: Leadership | None = None,
        predictions: PredictionStorageProvider | None = None,
    ) -> None:
        """``predictions``: the store whose ``predictions.retention`` the leader applies."""
        self._schedule = config.schedule
        self._retention = config.retention
        self._predictions = predictions
        self._prediction_retention = config.predictions.retention
        # the models of the last discovery, and where the prediction expiry goes on from
        self._models: list[Model] = []
        self._expiry_cursor = 0
        self._projects = config.models.projects
        self._grid = Grid(config.schedule.interval, config.schedule.anchor)
        self._model_info = model_info
        self._ledger = ledger
        self._queue = queue
        self._clock = clock
        self._leadership = leadership
        # the sql queue is a table of the ledger's own database: a batch is enqueued in the
        # transaction that marks it queued (and fences it)
        self._in_ledger = isinstance(queue, SqlQueue) and queue.shares(ledger.engine)
        self._discovery = Discovery(model_info, config.schedule.discovery_ttl, clock, log_problems=True)

    # -- discovery -----------------------------------------------------------------------

    def discover(self, report: TickReport) -> list[Model]:
        """Every built model of every configured project, at its project's latest revision
        (cached for ``schedule.discovery_ttl``). A failing project is reported and skipped;
        the others go on. Models that disappear are simply no longer planned."""
        survey = self._discovery.survey(self._projects)
        report.failed_projects.update((project, str(error)) for project, error in survey.failed.items())
        report.unbuilt.update((found.project, list(found.unbuilt)) for found in survey.found if found.unbuilt)
        return survey.models()

    # -- planning ------------------------------------------------------------------------

    def watermarks(self, models: Sequence[Model], last_end: datetime) -> dict[tuple[str, str], datetime]:
        """Each model's newest planned window start, for the models that have one. A model in
        step has planned one of the last few windows: one scan of recent rows finds those; the
        others (new, or behind after downtime) are looked up one by one."""
        found = self._ledger.watermarks(since=last_end - RECENT_WINDOWS * self._schedule.interval)
        unseen = [(m.project, m.name) for m in models if (m.project, m.name) not in found]
        if unseen:
            found.update(self._ledger.watermarks_of(unseen))
        return found

    def due_windows(
        self, models: Sequence[Model], now: datetime, report: TickReport, watermarks: dict[tuple[str, str], datetime]
    ) -> list[PlannedWindow]:
        """The windows each model still needs: from its watermark (or, for a model seen for
        the first time, the initial backfill depth) up to the newest due window, never
        further back than the catch-up limit; older gaps go into the report."""
        last_end = self._grid.last_due_end(now, self._schedule.delay)
        oldest = last_end - max(self._schedule.catch_up, self._schedule.interval)
        first_time = last_end - self._schedule.interval - self._schedule.initial_backfill
        planned: list[PlannedWindow] = []
        for model in models:
            watermark = watermarks.get((model.project, model.name))
            start = watermark + self._schedule.interval if watermark is not None else first_time
            if start < oldest:
                report.gaps.append(Gap(model.project, model.name, Window(start, oldest)))
                log.warning(
                    "%s/%s: windows from %s to %s are older than the catch-up limit (%s) and were not "
                    "planned; use latigo backfill for them",
                    model.project,
                    model.name,
                    start.isoformat(),
                    oldest.isoformat(),
                    self._schedule.catch_up,
                )
                start = oldest
            planned.extend(
                PlannedWindow(model.project, model.name, model.revision, window)
                for window in _windows(self._grid, start, last_end)
            )
        return planned

    def plan(self, report: TickReport) -> int:
        """Discover models and record their due windows in the ledger, about ``PLAN_BATCH``
        windows (whole models) per transaction; return how many windows were new.

        A batch commits whole models, so a crash between batches leaves each model with all
        its due windows planned or none, and the next tick plans the rest: nothing is skipped."""
        models = self.discover(report)
        self._models = models
        report.models = len(models)
        watermarks = self.watermarks(models, self._grid.last_due_end(report.now, self._schedule.delay))
        batch: list[PlannedWindow] = []
        for model in models:
            batch += self.due_windows([model], report.now, report, watermarks)
            if len(batch) >= PLAN_BATCH:
                report.planned += self._ledger.plan(batch)
                batch = []
        if batch:
            report.planned += self._ledger.plan(batch)
        return report.planned

    # -- publishing ----------------------------------------------------------------------

    def _tasks(self, planned: Sequence[PlannedWindow], newest_first: bool = True) -> list[Task]:
        """Consecutive windows of a model coalesced into tasks of at most ``max_task_span``,
        newest (or oldest) first."""
        runs: dict[tuple[str, str, str], list[datetime]] = defaultdict(list)
        for item in planned:
            runs[(item.project, item.model, item.revision)].append(item.window.start)
        tasks = [
            Task(project=project, model=model, revision=revision, start=window.start, end=window.end)
            for (project, model, revision), starts in runs.items()
            for window in self._grid.coalesce(sorted(starts), self._schedule.max_task_span)
        ]
        tasks.sort(key=lambda task: task.end, reverse=newest_first)
        return tasks

    def _publish(self, tasks: list[Task]) -> bool:
        """Publish a batch and mark it queued, fenced by the leadership; False, with nothing
        marked (nor, for the sql queue, enqueued), if this scheduler turns out deposed."""
        if not tasks:
            return True
        bodies = [task.to_json() for task in tasks]
        fence = self._leadership.fence if self._leadership is not None else None
        if self._in_ledger:
            queue = self._queue
            assert isinstance(queue, SqlQueue)
            return self._ledger.mark_queued(
                tasks, fence=fence, publish=lambda connection: queue.publish_in(connection, bodies)
            )
        if self._leadership is not None and not self._leadership.confirm():
            return False
        # a pause of a whole lease right here is the one way a deposed leader publishes
        self._queue.publish(bodies, [task.key for task in tasks])
        if self._ledger.mark_queued(tasks, fence=fence):
            return True
        log.warning(
            "published %d tasks, then found the lead lost (this scheduler paused for a lease?): the new "
            "leader publishes them again, and they may be run twice (storage is idempotent)",
            len(tasks),
        )
        return False

    def publish_planned(self, now: datetime | None = None) -> tuple[int, int]:
        """Publish planned windows: continuous ones all at once, history in ``history_order``
        while the queue's backlog is under the limit. Returns (tasks, windows) published; raises
        ``Deposed`` when the fence refuses a batch (this scheduler no longer leads)."""
        now = now or self._clock()
        newest_end = self._grid.last_due_end(now, self._schedule.delay)
        published_tasks = published_windows = 0
        while True:  # TICK_BATCH at a time; a published batch is queued, so the next read moves on
            continuous = self._ledger.planned(ending_after=newest_end - self._schedule.interval, limit=TICK_BATCH)
            batch = self._tasks(continuous)
            if not self._publish(batch):
                raise Deposed(published_tasks, published_windows)
            published_tasks += len(batch)
            published_windows += len(continuous)
            if len(continuous) < TICK_BATCH:
                break
        room = self._schedule.backlog_limit - self._queue.depth()
        if room > 0:
            per_task = self._grid.per_run(self._schedule.max_task_span)
            newest_first = self._schedule.history_order == "newest_first"
            history = self._ledger.planned(
                ending_by=newest_end - self._schedule.interval,
                limit=min(room * per_task, HISTORY_READ_LIMIT),
                newest_first=newest_first,
            )
            history_tasks = self._tasks(history, newest_first)[:room]
            if not self._publish(history_tasks):
                raise Deposed(published_tasks, published_windows)
            published_tasks += len(history_tasks)
            published_windows += sum(self._grid.count(task.start, task.end) for task in history_tasks)
        return published_tasks, published_windows

    # -- upkeep --------------------------------------------------------------------------

    def upkeep(self, report: TickReport) -> None:
        """Keep the Latigo database bounded: old finished windows into the ledger's history
        (once the oldest is ``COMPACT_SLACK`` past due), old dead letters out, in bounded
        batches within ``UPKEEP_BUDGET_S`` a tick."""
        started = monotonic()
        before = report.now - self._retention.compact_after
        due = self._ledger.compactable(before - COMPACT_SLACK)
        while due and monotonic() - started < UPKEEP_BUDGET_S:
            moved = self._ledger.compact(before)
            report.compacted += moved
            if moved < COMPACT_BATCH:
                break
        report.expired = self._ledger.expire_dead_letters(report.now - self._retention.dead_letters)
        if self._predictions is not None:
            self._predictions.prepare(report.now)
        if self._predictions is not None and self._prediction_retention is not None:
            self._expire_predictions(report, report.now - self._prediction_retention, started)
        WINDOWS_COMPACTED.inc(report.compacted)
        DEAD_LETTERS_EXPIRED.inc(report.expired)
        PREDICTIONS_EXPIRED.inc(report.predictions_expired)

    def _expire_predictions(self, report: TickReport, before: datetime, started: float) -> None:
        """Model after model, from where the last tick stopped, until the budget is spent or
        every model was asked once with nothing left to delete."""
        assert self._predictions is not None
        idle = 0
        while self._models and idle < len(self._models) and monotonic() - started < UPKEEP_BUDGET_S:
            model = self._models[self._expiry_cursor % len(self._models)]
            deleted = self._predictions.expire(model.project, model.name, before)
            report.predictions_expired += deleted
            if not deleted:
                idle += 1
                self._expiry_cursor += 1

    # -- the loop ------------------------------------------------------------------------

    def tick(self) -> TickReport:
        report = TickReport(now=self._clock())
        if self._leadership is not None and not self._leadership.hold():
            report.leader = False
            log.debug("another scheduler leads; standing by")
            return report
        self.plan(report)
        try:
            report.published_tasks, report.published_windows = self.publish_planned(report.now)
        except Deposed as deposed:
            # the fence refused a batch: publish nothing more this tick, and stand by
            assert self._leadership is not None
            self._leadership.step_down()
            report.leader = False
            report.published_tasks, report.published_windows = deposed.tasks, deposed.windows
        if report.leader:
            self.upkeep(report)
        WINDOWS_PLANNED.inc(report.planned)
        TASKS_PUBLISHED.inc(report.published_tasks)
        log.info(
            "tick: %d models, %d windows planned, %d tasks published covering %d windows%s%s%s",
            report.models,
            report.planned,
            report.published_tasks,
            report.published_windows,
            f", failed projects: {', '.join(report.failed_projects)}" if report.failed_projects else "",
            f", {len(report.gaps)} models with gaps beyond catch-up" if report.gaps else "",
            f", {report.compacted} windows compacted" if report.compacted else "",
        )
        return report

    def run(self, stop: threading.Event, after_tick: Callable[[TickReport], None] | None = None) -> None:
        """Tick on every multiple of ``tick`` until ``stop`` is set; step down at the end.
        ``after_tick`` sees each successful tick's report (metrics, health)."""
        tick = self._schedule.tick
        try:
            while not stop.is_set():
                HEALTH.beat()
                try:
                    report = self.tick()
                    HEALTH.ready = True
                    if after_tick is not None:
                        after_tick(report)
                except (LatigoError, SQLAlchemyError) as error:  # an outage must not end the scheduler
                    HEALTH.ready = False
                    log.warning(
                        "tick failed, trying again next tick: %s: %s",
                        error.__class__.__name__,
                        (str(error).splitlines() or [""])[0][:300],
                    )
                except Exception:  # a bug: its traceback, and the scheduler goes on
                    HEALTH.ready = False
                    log.exception("tick failed; trying again next tick")
                now = self._clock()
                next_tick = Grid(tick).floor(now) + tick
                stop.wait(max(timedelta(0), next_tick - now).total_seconds())
        finally:
            if self._leadership is not None:
                self._leadership.release()
