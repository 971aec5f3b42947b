"""The scheduler: every tick, plan each model's due windows in the ledger and publish them.

Planning goes through the ledger first (its primary key makes a window plannable once,
ever, whoever plans it), publishing second, marking queued last. A crash between the steps
leaves windows ``planned``, and the next tick publishes them: at worst a task is delivered
twice, which idempotent storage absorbs; never is one lost. Only the leader (see
``latigo.leader``) plans and publishes; other schedulers stand by.

Continuous windows (the newest due one of each model) are always published at once.
History (catch-up after downtime, the initial backfill, ``latigo backfill``) is published
newest first (``schedule.history_order``), and only while the queue holds fewer than
``schedule.backlog_limit`` tasks,
so a month of backfill never stands between a model and its next window.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from latigo.cache import TtlCache
from latigo.clock import Clock, system_clock
from latigo.config import Config
from latigo.errors import LatigoError
from latigo.leader import Leadership
from latigo.metrics import HEALTH, TASKS_PUBLISHED, WINDOWS_PLANNED
from latigo.ledger import Ledger, PlannedWindow
from latigo.providers.models import ModelInformationProvider
from latigo.queues import TaskQueue
from latigo.task import Task
from latigo.window import Grid, Window

log = logging.getLogger(__name__)

# models planned, and continuous windows published, per batch of a tick: a tick's memory
# stays that of one batch, however large the fleet
TICK_BATCH = 10_000
# how many windows back the scheduler's scan for models' newest planned windows reaches
RECENT_WINDOWS = 4
# most planned history windows read per tick: with week-long tasks, a backlog's worth of
# room would otherwise be hundreds of thousands of rows in memory at once
HISTORY_READ_LIMIT = 100_000


@dataclass(frozen=True)
class Model:
    project: str
    name: str
    revision: str


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


@dataclass(frozen=True)
class Discovery:
    revision: str
    models: tuple[str, ...]
    unbuilt: tuple[str, ...]


class Scheduler:
    def __init__(
        self,
        config: Config,
        model_info: ModelInformationProvider,
        ledger: Ledger,
        queue: TaskQueue,
        clock: Clock = system_clock,
        leadership: Leadership | None = None,
    ) -> None:
        self._schedule = config.schedule
        self._projects = config.models.projects
        self._grid = Grid(config.schedule.interval, config.schedule.anchor)
        self._model_info = model_info
        self._ledger = ledger
        self._queue = queue
        self._clock = clock
        self._leadership = leadership
        self._discovered: TtlCache[str, Discovery] = TtlCache(config.schedule.discovery_ttl, clock)

    # -- discovery -----------------------------------------------------------------------

    def _discover_project(self, project: str) -> Discovery:
        cached = self._discovered.get(project)
        if cached is not None:
            return cached
        revision = self._model_info.latest_revision(project)
        built = self._model_info.models(project, revision)
        unbuilt = sorted(set(self._model_info.expected_models(project)) - set(built))
        if unbuilt:
            log.warning("%s@%s: expected but not built (failed builds?): %s", project, revision, ", ".join(unbuilt))
        discovery = Discovery(revision, tuple(built), tuple(unbuilt))
        self._discovered.put(project, discovery)
        return discovery

    def discover(self, report: TickReport) -> list[Model]:
        """Every built model of every configured project, at its project's latest revision
        (cached for ``schedule.discovery_ttl``). A failing project is reported and skipped;
        the others go on. Models that disappear are simply no longer planned."""
        models: list[Model] = []
        for project in self._projects:
            try:
                found = self._discover_project(project)
            except LatigoError as error:
                log.error("discovery failed for project %s: %s", project, error)
                report.failed_projects[project] = str(error)
                continue
            if found.unbuilt:
                report.unbuilt[project] = list(found.unbuilt)
            models.extend(Model(project, name, found.revision) for name in found.models)
        return models

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
                    model.project, model.name, start.isoformat(), oldest.isoformat(), self._schedule.catch_up,
                )
                start = oldest
            planned.extend(
                PlannedWindow(model.project, model.name, model.revision, window)
                for window in self._grid.windows(start, last_end)
            )
        return planned

    def plan(self, report: TickReport) -> int:
        """Discover models and record their due windows in the ledger, ``TICK_BATCH`` models at
        a time; return how many windows were new."""
        models = self.discover(report)
        report.models = len(models)
        watermarks = self.watermarks(models, self._grid.last_due_end(report.now, self._schedule.delay))
        for offset in range(0, len(models), TICK_BATCH):
            batch = models[offset : offset + TICK_BATCH]
            report.planned += self._ledger.plan(self.due_windows(batch, report.now, report, watermarks))
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
            for window in self._grid.coalesce(starts, self._schedule.max_task_span)
        ]
        tasks.sort(key=lambda task: task.end, reverse=newest_first)
        return tasks

    def _publish(self, tasks: list[Task]) -> None:
        if tasks:
            self._queue.publish([task.to_json() for task in tasks], [task.key for task in tasks])
            self._ledger.mark_queued(tasks)

    def publish_planned(self, now: datetime | None = None) -> tuple[int, int]:
        """Publish planned windows: continuous ones all at once, history in ``history_order``
        while the queue's backlog is under the limit. Returns (tasks, windows) published."""
        now = now or self._clock()
        newest_end = self._grid.last_due_end(now, self._schedule.delay)
        published_tasks = published_windows = 0
        while True:  # TICK_BATCH at a time; a published batch is queued, so the next read moves on
            continuous = self._ledger.planned(ending_after=newest_end - self._schedule.interval, limit=TICK_BATCH)
            batch = self._tasks(continuous)
            self._publish(batch)
            published_tasks += len(batch)
            published_windows += len(continuous)
            if len(continuous) < TICK_BATCH:
                break
        room = self._schedule.backlog_limit - self._queue.depth()
        if room > 0:
            per_task = max(1, self._schedule.max_task_span // self._schedule.interval)
            newest_first = self._schedule.history_order == "newest_first"
            history = self._ledger.planned(
                ending_by=newest_end - self._schedule.interval,
                limit=min(room * per_task, HISTORY_READ_LIMIT),
                newest_first=newest_first,
            )
            history_tasks = self._tasks(history, newest_first)[:room]
            self._publish(history_tasks)
            published_tasks += len(history_tasks)
            published_windows += sum(self._grid.count(task.start, task.end) for task in history_tasks)
        return published_tasks, published_windows

    # -- the loop ------------------------------------------------------------------------

    def tick(self) -> TickReport:
        report = TickReport(now=self._clock())
        if self._leadership is not None and not self._leadership.hold():
            report.leader = False
            log.debug("another scheduler leads; standing by")
            return report
        self.plan(report)
        report.published_tasks, report.published_windows = self.publish_planned(report.now)
        WINDOWS_PLANNED.inc(report.planned)
        TASKS_PUBLISHED.inc(report.published_tasks)
        log.info(
            "tick: %d models, %d windows planned, %d tasks published covering %d windows%s%s",
            report.models, report.planned, report.published_tasks, report.published_windows,
            f", failed projects: {', '.join(report.failed_projects)}" if report.failed_projects else "",
            f", {len(report.gaps)} models with gaps beyond catch-up" if report.gaps else "",
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
                    log.warning("tick failed, trying again next tick: %s: %s", error.__class__.__name__,
                                (str(error).splitlines() or [""])[0][:300])
                except Exception:  # a bug: its traceback, and the scheduler goes on
                    HEALTH.ready = False
                    log.exception("tick failed; trying again next tick")
                now = self._clock()
                next_tick = Grid(tick).floor(now) + tick
                stop.wait(max(timedelta(0), next_tick - now).total_seconds())
        finally:
            if self._leadership is not None:
                self._leadership.release()
