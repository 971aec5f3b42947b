"""Backfill: plan a range of history on demand, in the ledger only.

A backfill never publishes. It writes ledger rows in state ``planned`` (windows the ledger
has no row for) or sets existing rows back to ``planned`` (to predict them again), and
the scheduler, the one publisher, turns them into tasks at its next tick: consecutive
windows coalesced into runs of up to ``schedule.max_task_span``, continuous windows
first. So a backfill can neither publish a window twice nor hold the live windows back,
and a backfill interrupted half way leaves nothing half done: what it planned is planned.

It works model by model and in chunks of at most ``CHUNK_WINDOWS`` windows (one ledger
read and at most two writes per chunk), so memory and statement sizes stay bounded
however long the range and however many models.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from latigo import readmodel
from latigo.clock import Clock, system_clock
from latigo.discovery import Discovery, Model
from latigo.history import Run
from latigo.ledger import HotRows, Ledger, PlannedWindow, State
from latigo.providers.models import ModelInformationProvider
from latigo.window import Grid, Window, utc

if TYPE_CHECKING:
    from latigo.components import Components

# windows per ledger statement: bounds memory and statement size whatever the range
CHUNK_WINDOWS = 10_000
# how often --wait looks at the ledger
WAIT_POLL = timedelta(seconds=5)


class Mode(StrEnum):
    MISSING = "missing"  # plan windows the ledger has no row for
    FAILED = "failed"  # predict failed and dead windows again
    ALL = "all"  # predict every window (again), except those in flight


# the states each mode sets back to planned; queued windows are in flight, never touched
RESET_STATES: dict[Mode, frozenset[State]] = {
    Mode.MISSING: frozenset(),
    Mode.FAILED: frozenset({State.FAILED, State.DEAD}),
    Mode.ALL: frozenset({State.DONE, State.NO_DATA, State.FAILED, State.DEAD}),
}
# the modes that plan windows the ledger has no row for
PLANS_MISSING = frozenset({Mode.MISSING, Mode.ALL})
# states of a window that is not finished yet: failed ones are retried by the executor
OUTSTANDING = frozenset({State.PLANNED, State.QUEUED, State.FAILED})
# the counts of a summary, in the order they are shown
COUNTS = ("windows", "planned", "reset", "skipped", "queued", "tasks")


class UnknownModels(ValueError):
    """``--model`` names a model none of the projects serves at its latest revision."""


# -- pure planning ---------------------------------------------------------------------


def parse_moment(text: str) -> datetime:
    """A date (midnight UTC) or an RFC 3339 time with its zone, as an aware UTC datetime."""
    text = text.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a date (2026-03-01) nor an RFC 3339 time (2026-03-01T06:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z for UTC (2026-03-01T06:00:00Z)")
    return utc(moment)


def backfill_range(grid: Grid, start: datetime, end: datetime, newest_end: datetime) -> tuple[datetime, datetime]:
    """The range of the grid windows lying wholly inside ``[start, end)`` and ending no
    later than ``newest_end`` (the newest due window's end): ``start`` aligned up, ``end``
    down. Empty (start == end) when no window fits."""
    if utc(end) <= utc(start):
        raise ValueError(f"the range is empty: {start.isoformat()} is not before {end.isoformat()}")
    first = grid.ceil(start)
    last = min(grid.floor(end), grid.floor(newest_end))
    return first, max(first, last)


def chunks(
    grid: Grid, start: datetime, end: datetime, size: int = CHUNK_WINDOWS
) -> Iterator[tuple[datetime, datetime]]:
    """Consecutive aligned sub-ranges of at most ``size`` windows that together hold
    exactly the windows of ``grid.windows(start, end)``."""
    if size < 1:
        raise ValueError("a chunk holds at least one window")
    cursor, last = grid.ceil(start), grid.floor(end)
    while cursor < last:
        stop = min(last, cursor + size * grid.interval)
        yield cursor, stop
        cursor = stop


# a window's code in a chunk's array of states (``chunk_states``): no ledger row
NO_ROW = -1
# each state's code in that array
STATE_CODES: dict[str, int] = {state.value: code for code, state in enumerate(State)}


def chunk_states(
    grid: Grid,
    chunk_start: datetime,
    count: int,
    runs: Iterable[Run],
    rows: HotRows,
) -> np.ndarray:
    """The states of a chunk's ``count`` windows as codes, window ``k`` starting at
    ``chunk_start + k * interval``. A compacted run fills its slice in one step, so a month
    of history costs its runs, not its windows; a hot row sets its window and wins over a
    run. A run of another window length (the interval changed since) counts where its
    windows start on the grid, as does a row."""
    codes = np.full(count, NO_ROW, dtype=np.int8)
    interval = grid.interval

    def put(start: datetime, code: int) -> None:
        index, off_grid = divmod(start - chunk_start, interval)
        if not off_grid and 0 <= index < count:
            codes[index] = code

    for run in runs:
        first, off_grid = divmod(run.start - chunk_start, interval)
        if run.step == interval and not off_grid:
            codes[max(0, first) : max(0, min(count, first + run.windows))] = STATE_CODES[run.state]
        else:
            for start in run.starts(chunk_start, chunk_start + count * interval):
                put(start, STATE_CODES[run.state])
    if len(rows.starts):
        offsets = rows.starts - np.datetime64(chunk_start.astimezone(UTC).replace(tzinfo=None), "us")
        numbers, remainders = np.divmod(offsets, np.timedelta64(interval))
        on = (remainders == np.timedelta64(0)) & (numbers >= 0) & (numbers < count)
        states = np.array([STATE_CODES[state] for state in rows.states], dtype=np.int8)
        codes[numbers[on]] = states[on]
    return codes


@dataclass
class Selection:
    """What a mode does to one chunk of a model's windows, given by their index in the chunk."""

    new: np.ndarray  # no ledger row: planned
    reset: np.ndarray  # a row in a reset state: set back to planned
    skipped: int = 0  # a row (or none) the mode leaves as it is
    queued: int = 0  # in flight: left alone in every mode

    def chosen(self) -> np.ndarray:
        """The windows that end up planned, oldest first."""
        return np.union1d(self.new, self.reset)


def select_windows(mode: Mode, codes: np.ndarray) -> Selection:
    """Sort each window of a chunk (its ``chunk_states`` code) into new, reset, skipped or
    queued."""
    queued = codes == STATE_CODES[State.QUEUED]
    reset = np.isin(codes, [STATE_CODES[state] for state in RESET_STATES[mode]])
    new = codes == NO_ROW if mode in PLANS_MISSING else np.zeros(len(codes), dtype=bool)
    counted = int(new.sum()) + int(reset.sum()) + int(queued.sum())
    return Selection(np.flatnonzero(new), np.flatnonzero(reset), len(codes) - counted, int(queued.sum()))


def spans(numbers: np.ndarray) -> list[tuple[int, int]]:
    """Sorted, distinct window numbers as runs of consecutive ones: ``(first, how many)``."""
    if not len(numbers):
        return []
    breaks = np.flatnonzero(np.diff(numbers) != 1) + 1
    firsts = np.concatenate(([0], breaks))
    lengths = np.diff(np.concatenate((firsts, [len(numbers)])))
    return [(int(numbers[first]), int(length)) for first, length in zip(firsts, lengths)]


def task_count(runs: Iterable[tuple[int, int]], per_task: int) -> int:
    """How many tasks ``Grid.coalesce`` cuts from runs of window numbers ``(first, how
    many)``, oldest first: runs that touch are one, and each takes ``per_task`` windows a task."""
    tasks, first, length = 0, None, 0
    for start, windows in runs:
        if first is not None and start == first + length:
            length += windows
            continue
        tasks += -(-length // per_task)
        first, length = start, windows
    return tasks + -(-length // per_task)


@dataclass
class ModelSummary:
    """What a backfill did (or, dry, would do) to one model's windows."""

    project: str
    model: str
    revision: str
    windows: int = 0  # grid windows in the range
    planned: int = 0  # new ledger rows
    reset: int = 0  # existing rows set back to planned
    skipped: int = 0  # left as they are: the mode does not touch them (or someone else just did)
    queued: int = 0  # left as they are: in flight
    tasks: int = 0  # tasks the planned and reset windows make, coalesced with max_task_span


@dataclass
class BackfillSummary:
    start: datetime
    end: datetime
    mode: Mode
    dry_run: bool
    models: list[ModelSummary] = field(default_factory=list)

    def total(self) -> dict[str, int]:
        return {name: sum(getattr(model, name) for model in self.models) for name in COUNTS}

    def to_dict(self) -> dict:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "mode": self.mode.value,
            "dry_run": self.dry_run,
            "models": [asdict(model) for model in self.models],
            "total": self.total(),
        }


# -- the ledger side -------------------------------------------------------------------


@dataclass
class WaitReport:
    finished: bool  # no window of the backfill is planned, queued or failed any more
    states: dict[State, int]  # the backfilled models' windows in the range, per state

    @property
    def outstanding(self) -> int:
        return sum(self.states.get(state, 0) for state in OUTSTANDING)

    def to_dict(self) -> dict:
        return {
            "finished": self.finished,
            "outstanding": self.outstanding,
            "states": {str(state): count for state, count in sorted(self.states.items())},
        }


class Backfill:
    def __init__(
        self,
        ledger: Ledger,
        model_info: ModelInformationProvider,
        grid: Grid,
        clock: Clock = system_clock,
        *,
        max_task_span: timedelta,
        delay: timedelta = timedelta(0),
    ) -> None:
        self._ledger = ledger
        self._discovery = Discovery(model_info)
        self._grid = grid
        self._clock = clock
        self._max_task_span = max_task_span
        self._delay = delay

    @classmethod
    def from_components(cls, parts: Components) -> Backfill:
        schedule = parts.config.schedule
        return cls(
            parts.ledger,
            parts.model_info,
            Grid(schedule.interval, schedule.anchor),
            parts.clock,
            max_task_span=schedule.max_task_span,
            delay=schedule.delay,
        )

    def models(self, projects: Sequence[str], names: Sequence[str] = ()) -> list[Model]:
        """The models of the projects at each project's latest revision, only those named
        if ``names`` are given; a name no project serves raises UnknownModels. A Gordo that
        cannot be asked raises its LatigoError: nothing is planned half."""
        found = [model for project in projects for model in self._discovery.built(project).models()]
        if not names:
            return found
        unknown = sorted(set(names) - {model.name for model in found})
        if unknown:
            raise UnknownModels(
                f"unknown model{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
                f"not served by project{'s' if len(projects) > 1 else ''} {', '.join(projects)} "
                "at the latest revision"
            )
        return [model for model in found if model.name in set(names)]

    @property
    def grid(self) -> Grid:
        return self._grid

    def newest_due_end(self) -> datetime:
        return self._grid.last_due_end(self._clock(), self._delay)

    def range(self, start: datetime, end: datetime) -> tuple[datetime, datetime]:
        """The aligned range of ``[start, end)``, cut at the newest due window: windows not
        due yet are the scheduler's, planned when their data is there."""
        return backfill_range(self._grid, start, end, self.newest_due_end())

    def count(self, models: Sequence[Model], start: datetime, end: datetime) -> int:
        """How many windows a backfill of the range looks at, for a progress bar."""
        return len(models) * self._grid.count(start, end)

    def plan(
        self,
        models: Iterable[Model],
        start: datetime,
        end: datetime,
        mode: Mode | str,
        *,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> BackfillSummary:
        """Plan the windows of ``[start, end)`` (an aligned range, see ``range``) of each
        model as ``mode`` says; with ``dry_run`` only count. ``progress`` is told how many
        windows each chunk looked at."""
        summary = BackfillSummary(utc(start), utc(end), Mode(mode), dry_run)
        for model in models:
            summary.models.append(self._plan_model(model, summary, progress))
        return summary

    def _plan_model(
        self, model: Model, summary: BackfillSummary, progress: Callable[[int], None] | None
    ) -> ModelSummary:
        result = ModelSummary(model.project, model.name, model.revision)
        # counted as the scheduler will cut them: the runs of the chosen windows, which
        # come one chunk at a time, so no more than a chunk's windows are ever held
        chosen = self._plan_chunks(model, summary, result, progress)
        result.tasks = task_count(chosen, self._grid.per_run(self._max_task_span))
        return result

    def _plan_chunks(
        self,
        model: Model,
        summary: BackfillSummary,
        result: ModelSummary,
        progress: Callable[[int], None] | None,
    ) -> Iterator[tuple[int, int]]:
        """Plan (or count) the model's range chunk by chunk into ``result``, yielding the
        windows that end up planned as runs ``(first, how many)`` of window numbers counted
        from the range's start, oldest first."""
        interval = self._grid.interval
        for chunk_start, chunk_end in chunks(self._grid, summary.start, summary.end):
            count = self._grid.count(chunk_start, chunk_end)
            runs, rows = self._ledger.recorded(model.project, model.name, chunk_start, chunk_end)
            selection = select_windows(summary.mode, chunk_states(self._grid, chunk_start, count, runs, rows))
            planned, reset = len(selection.new), len(selection.reset)
            if not summary.dry_run:
                planned = self._ledger.plan(
                    [
                        PlannedWindow(model.project, model.name, model.revision, Window(start, start + interval))
                        for start in (chunk_start + int(index) * interval for index in selection.new)
                    ]
                )
                if len(selection.reset):
                    resets = RESET_STATES[summary.mode]
                    reset = self._ledger.replan(
                        model.project, model.name, chunk_start, chunk_end, resets, model.revision
                    )
            result.windows += count
            result.planned += planned
            result.reset += reset
            # windows another process changed between the read and the writes were left to it
            left = count - planned - reset
            queued = min(selection.queued, max(0, left))
            result.queued += queued
            result.skipped += max(0, left - queued)
            if progress is not None:
                progress(count)
            offset = (chunk_start - summary.start) // interval
            yield from ((offset + first, windows) for first, windows in spans(selection.chosen()))

    def states(self, summary: BackfillSummary) -> dict[State, int]:
        """The backfilled models' windows in the summary's range, per state."""
        names: dict[str, set[str]] = defaultdict(set)
        for model in summary.models:
            names[model.project].add(model.model)
        return readmodel.window_states(self._ledger.engine, names, summary.start, summary.end)

    def outstanding(self, summary: BackfillSummary) -> int:
        """How many of the backfill's windows are planned, queued or failed."""
        return WaitReport(False, self.states(summary)).outstanding

    def wait(
        self,
        summary: BackfillSummary,
        *,
        timeout: timedelta | None = None,
        poll: timedelta = WAIT_POLL,
        progress: Callable[[int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> WaitReport:
        """Follow the ledger until no window of the backfill is planned, queued or failed
        (the scheduler and executors do the work), or ``timeout`` has passed. ``progress``
        is told how many more windows finished since it was last told."""
        deadline = None if timeout is None else self._clock() + timeout
        report = WaitReport(False, self.states(summary))
        first = report.outstanding
        told = 0
        while True:
            finished = max(0, first - report.outstanding)
            if progress is not None and finished > told:
                progress(finished - told)
                told = finished
            if report.outstanding == 0:
                report.finished = True
                return report
            pause = poll
            if deadline is not None:
                if self._clock() >= deadline:
                    return report
                pause = min(poll, deadline - self._clock())
            sleep(pause.total_seconds())
            report = WaitReport(False, self.states(summary))
