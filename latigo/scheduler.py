"""The scheduler: every tick, plan each model's due windows in the ledger and publish them.

Planning goes through the ledger first (its primary key makes a window plannable once,
ever), publishing second, marking queued last. A crash between the steps leaves windows
``planned``, and the next tick publishes them: at worst a task is delivered twice, which
idempotent storage absorbs; never is one lost.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from latigo.clock import Clock, system_clock
from latigo.config import Config
from latigo.errors import LatigoError
from latigo.ledger import Ledger, PlannedWindow
from latigo.providers.models import ModelInformationProvider
from latigo.queues import TaskQueue
from latigo.task import Task
from latigo.window import Grid

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    now: datetime
    models: int = 0
    planned: int = 0
    published_tasks: int = 0
    published_windows: int = 0
    failed_projects: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Model:
    project: str
    name: str
    revision: str


class Scheduler:
    def __init__(
        self,
        config: Config,
        model_info: ModelInformationProvider,
        ledger: Ledger,
        queue: TaskQueue,
        clock: Clock = system_clock,
    ) -> None:
        self._schedule = config.schedule
        self._projects = config.models.projects
        self._grid = Grid(config.schedule.interval, config.schedule.anchor)
        self._model_info = model_info
        self._ledger = ledger
        self._queue = queue
        self._clock = clock

    def discover(self, report: TickReport) -> list[Model]:
        """Every built model of every configured project, at its project's latest revision.
        One failing project is reported and skipped; the others go on."""
        models: list[Model] = []
        for project in self._projects:
            try:
                revision = self._model_info.latest_revision(project)
                names = self._model_info.models(project, revision)
            except LatigoError as error:
                log.error("discovery failed for project %s: %s", project, error)
                report.failed_projects[project] = str(error)
                continue
            models.extend(Model(project, name, revision) for name in names)
        return models

    def due_windows(self, models: list[Model], now: datetime) -> list[PlannedWindow]:
        """The windows each model still needs, from its watermark (or, for a model seen for
        the first time, the initial backfill depth) up to the newest due window, never
        further back than the catch-up limit."""
        last_end = self._grid.last_due_end(now, self._schedule.delay)
        oldest = last_end - max(self._schedule.catch_up, self._schedule.interval)
        first_time = last_end - self._schedule.interval - self._schedule.initial_backfill
        watermarks = self._ledger.watermarks()
        planned: list[PlannedWindow] = []
        for model in models:
            watermark = watermarks.get((model.project, model.name))
            start = watermark + self._schedule.interval if watermark is not None else first_time
            if start < oldest:
                log.warning(
                    "%s/%s: windows from %s to %s are older than the catch-up limit (%s) and were not "
                    "planned; backfill them if needed",
                    model.project, model.name, start.isoformat(), oldest.isoformat(), self._schedule.catch_up,
                )
                start = oldest
            planned.extend(
                PlannedWindow(model.project, model.name, model.revision, window)
                for window in self._grid.windows(start, last_end)
            )
        return planned

    def publish_planned(self) -> tuple[int, int]:
        """Turn every planned window into tasks (consecutive windows of a model coalesced up
        to ``max_task_span``), publish them in one batch, mark them queued. Newest first,
        so continuous windows never wait behind history."""
        runs: dict[tuple[str, str, str], list[datetime]] = defaultdict(list)
        planned = self._ledger.planned()
        for item in planned:
            runs[(item.project, item.model, item.revision)].append(item.window.start)
        tasks = [
            Task(project=project, model=model, revision=revision, start=window.start, end=window.end)
            for (project, model, revision), starts in runs.items()
            for window in self._grid.coalesce(starts, self._schedule.max_task_span)
        ]
        tasks.sort(key=lambda task: task.end, reverse=True)
        if tasks:
            self._queue.publish([task.to_json() for task in tasks])
            self._ledger.mark_queued(tasks)
        return len(tasks), len(planned)

    def tick(self) -> TickReport:
        report = TickReport(now=self._clock())
        models = self.discover(report)
        report.models = len(models)
        report.planned = self._ledger.plan(self.due_windows(models, report.now))
        report.published_tasks, report.published_windows = self.publish_planned()
        log.info(
            "tick: %d models, %d windows planned, %d tasks published covering %d windows%s",
            report.models, report.planned, report.published_tasks, report.published_windows,
            f", failed projects: {', '.join(report.failed_projects)}" if report.failed_projects else "",
        )
        return report

    def run(self, stop: threading.Event) -> None:
        """Tick on every multiple of ``tick`` until ``stop`` is set."""
        tick = self._schedule.tick
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a database or queue outage must not end the scheduler
                log.exception("tick failed; trying again next tick")
            now = self._clock()
            next_tick = Grid(tick).floor(now) + tick
            stop.wait(max(0.0, (next_tick - now).total_seconds()))

