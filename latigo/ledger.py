"""The ledger: one row per (project, model, window start) with the window's state.

It is what makes planning exact (the primary key means a window is planned at most once,
ever, whoever plans it), restarts and catch-up cheap (a model's watermark is its newest
planned window) and status truthful. States::

    planned -> queued -> done | no_data | failed -> dead

``failed`` is a window whose last attempt failed and which will be tried again; ``dead``
needs an operator (see the dead-letter table). A task's windows can end differently: each
records its own state, note, and stored and expected rows (a ``done`` window with fewer
rows stored than expected is *partial*: its note says why the others are missing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    and_,
    bindparam,
    column,
    delete,
    func,
    select,
    type_coerce,
    update,
    values,
)

from latigo import db, history
from latigo.clock import Clock, system_clock
from latigo.schema import dead_letters, ledger
from latigo.states import COMPACTED, State
from latigo.task import Task
from latigo.window import Window

# longest error text kept per window (the full text goes to the log)
ERROR_LIMIT = 2_000
# characters a database text column cannot hold, as they are written instead (PostgreSQL
# refuses NUL, which a JSON message may carry into an error)
_UNSTORABLE = str.maketrans({"\x00": "\\x00"})
# models per watermark query (bound parameters stay well under SQLite's limit)
WATERMARK_BATCH = 5_000


def _state_in(states: Iterable[State]) -> ColumnElement[bool]:
    """The state test of a statement that names its model and its range of windows, kept off
    ix_ledger_state_window_end (``state || ''``) so that the primary key finds the rows: on a
    ledger without statistics both databases chose the state's index, which holds every
    model's windows, and a first start's mark_queued at 9,000 models took 56 s, not 0.8 s."""
    stored, wanted = ledger.c.state + "", [state.value for state in states]
    # one state as an equality: an IN list cannot be bound per row of an executemany
    return stored == wanted[0] if len(wanted) == 1 else stored.in_(wanted)


def _text(text: str | None) -> str | None:
    """An error or note as the ledger keeps it: at most ERROR_LIMIT characters, storable."""
    return None if text is None else text.translate(_UNSTORABLE)[:ERROR_LIMIT]


@dataclass(frozen=True)
class Outcome:
    """How one window of a task ended."""

    window: Window
    state: State
    note: str | None = None
    stored_rows: int | None = None
    expected_rows: int | None = None


# how HotRows holds times: naive UTC, to the microsecond, as the ledger stores them
NAIVE_UTC = "datetime64[us]"


def _naive_utc(starts: list) -> np.ndarray:
    """Stored window starts as ``NAIVE_UTC``: numpy parses SQLite's fixed-width text in one
    step; pandas takes PostgreSQL's datetimes faster than numpy does."""
    if starts and isinstance(starts[0], str):
        return np.array(starts, dtype=NAIVE_UTC)
    return pd.DatetimeIndex(starts).as_unit("us").to_numpy(dtype=NAIVE_UTC)


@dataclass(frozen=True)
class HotRows:
    """One model's hot ledger rows in a range as two columns: window starts (``NAIVE_UTC``)
    and states (the stored strings), which a backfill turns into its codes at once."""

    starts: np.ndarray
    states: list[str]

    @classmethod
    def of(cls, rows: Iterable[tuple[datetime, State]]) -> HotRows:
        """From aware window starts and states."""
        pairs = list(rows)
        starts = [start.astimezone(UTC).replace(tzinfo=None) for start, _ in pairs]
        return cls(np.array(starts, dtype=NAIVE_UTC), [state.value for _, state in pairs])

    def items(self) -> Iterator[tuple[datetime, State]]:
        """Each row's aware start and state."""
        for start, state in zip(self.starts.tolist(), self.states, strict=True):
            yield start.replace(tzinfo=UTC), State(state)


@dataclass(frozen=True)
class PlannedWindow:
    project: str
    model: str
    revision: str
    window: Window


# the columns a planned window is written with (the others start empty)
_PLANNED_COLUMNS = (
    "project",
    "model",
    "window_start",
    "window_end",
    "state",
    "revision",
    "attempts",
    "created_at",
    "updated_at",
)


class _Bound(dict):
    """The values of one column, each bound once (``db.NewRows.bind``) when first seen: a
    fleet's windows share a few dozen times, one project and one revision, and binding (a
    time's conversion above all) was most of the insert's cost."""

    def __init__(self, insert: db.NewRows, column: str) -> None:
        super().__init__()
        self._insert, self._column = insert, column

    def __missing__(self, value: object) -> object:
        self[value] = bound = self._insert.bind(self._column, value)
        return bound


def _planned_rows(
    insert: db.NewRows, windows: Iterable[PlannedWindow], compacted: set, now: datetime
) -> Iterator[tuple]:
    """The windows not in ``compacted`` as bound rows of ``_PLANNED_COLUMNS``."""
    projects, models, revisions = _Bound(insert, "project"), _Bound(insert, "model"), _Bound(insert, "revision")
    starts, ends = _Bound(insert, "window_start"), _Bound(insert, "window_end")
    state, attempts = insert.bind("state", State.PLANNED.value), insert.bind("attempts", 0)
    stamp = insert.bind("created_at", now)
    for item in windows:
        window = item.window
        if compacted and (item.project, item.model, window.start) in compacted:
            continue
        yield (
            projects[item.project],
            models[item.model],
            starts[window.start],
            ends[window.end],
            state,
            revisions[item.revision],
            attempts,
            stamp,
            stamp,
        )


class Ledger:
    def __init__(self, engine: Engine, clock: Clock = system_clock) -> None:
        self._engine = engine
        self._clock = clock

    @property
    def engine(self) -> Engine:
        """The Latigo database the ledger lives in."""
        return self._engine

    def plan(self, windows: Sequence[PlannedWindow]) -> int:
        """Record windows as planned; windows planned before (or compacted into history
        since) are left alone. Returns how many were new. One transaction, counted without
        reading keys back (``db.NewRows``)."""
        if not windows:
            return 0
        now = self._clock()
        models = list(dict.fromkeys((item.project, item.model) for item in windows))
        starts = [item.window.start for item in windows]
        with self._engine.begin() as connection:
            # a window compacted into history was planned once already
            compacted = history.covered(connection, models, min(starts), max(starts) + timedelta.resolution)
            insert = db.NewRows(connection.dialect, ledger, _PLANNED_COLUMNS)
            return insert.execute(connection, _planned_rows(insert, windows, compacted, now))

    def compactable(self, before: datetime) -> bool:
        """Whether a done, no-data or dead window ended by ``before`` (one index seek)."""
        return history.compactable(self._engine, before)

    def compact(self, before: datetime, limit: int = history.COMPACT_BATCH) -> int:
        """Move up to ``limit`` done, no-data and dead windows that ended by ``before`` into the
        ledger's history (latigo.history); returns how many moved."""
        return history.compact(self._engine, before, limit)

    def planned(
        self,
        *,
        ending_after: datetime | None = None,
        ending_by: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[PlannedWindow]:
        """Windows planned but not yet handed to the queue, newest (or oldest) first; optionally
        only those ending after / by a moment, and at most ``limit`` (so a huge backfill is
        read in slices)."""
        order = ledger.c.window_start.desc() if newest_first else ledger.c.window_start.asc()
        query = (
            select(ledger.c.project, ledger.c.model, ledger.c.revision, ledger.c.window_start, ledger.c.window_end)
            .where(ledger.c.state == State.PLANNED)
            .order_by(order, ledger.c.project, ledger.c.model)
            .limit(limit)
        )
        if ending_after is not None:
            query = query.where(ledger.c.window_end > ending_after)
        if ending_by is not None:
            query = query.where(ledger.c.window_end <= ending_by)
        with self._engine.connect() as connection:
            return [
                PlannedWindow(row.project, row.model, row.revision, Window(row.window_start, row.window_end))
                for row in connection.execute(query)
            ]

    def watermarks(self, since: datetime | None = None) -> dict[tuple[str, str], datetime]:
        """The newest planned window start of every model, looking only at windows starting at
        or after ``since`` (the ledger keeps history; the scheduler needs only recent rows)."""
        query = select(ledger.c.project, ledger.c.model, func.max(ledger.c.window_start)).group_by(
            ledger.c.project, ledger.c.model
        )
        if since is not None:
            query = query.where(ledger.c.window_start >= since)
        with self._engine.connect() as connection:
            return {(project, model): latest for project, model, latest in connection.execute(query)}

    def watermarks_of(self, models: Sequence[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
        """The newest planned window start of the given models, at any age: for models without
        a recent window, to tell a gap from a model never seen. One index seek per model (a
        correlated ``max`` on the primary key), in batches: a GROUP BY over an IN list would
        scan the whole ledger."""
        found: dict[tuple[str, str], datetime] = {}
        with self._engine.connect() as connection:
            for offset in range(0, len(models), WATERMARK_BATCH):
                wanted = (
                    values(column("project", String), column("model", String), name="wanted")
                    .data(list(models[offset : offset + WATERMARK_BATCH]))
                    .cte("wanted")
                )
                newest = (
                    select(func.max(ledger.c.window_start))
                    .where(ledger.c.project == wanted.c.project, ledger.c.model == wanted.c.model)
                    .scalar_subquery()
                )
                rows = connection.execute(select(wanted.c.project, wanted.c.model, newest))
                found.update({(project, model): latest for project, model, latest in rows if latest is not None})
            # a model whose every window is in history (stopped longer than compact_after)
            unseen = [model for model in models if model not in found]
            if unseen:
                found.update(history.newest_starts(connection, unseen))
        return found

    def _covered(self, task: Task):
        return and_(
            ledger.c.project == task.project,
            ledger.c.model == task.model,
            ledger.c.window_start >= task.start,
            ledger.c.window_start < task.end,
        )

    def mark_queued(
        self,
        tasks: Iterable[Task],
        *,
        fence: Callable[[Connection], bool] | None = None,
        publish: Callable[[Connection], None] | None = None,
    ) -> bool:
        """Record that the tasks are on the queue: one batched statement for any number.

        With a ``fence`` (the leader's, see ``latigo.leader``) it runs first, in the same
        transaction: if it refuses (this scheduler no longer leads), nothing is marked and
        this returns False. ``publish`` runs in that transaction too, after the fence: a
        queue that is a table of this database enqueues there, so that publishing, marking
        and the fence commit together or not at all."""
        rows = [
            {"p": task.project, "m": task.model, "s": task.start, "e": task.end, "t": str(task.id), "r": task.revision}
            for task in tasks
        ]
        if not rows and fence is None and publish is None:
            return True
        now = self._clock()
        statement = (
            update(ledger)
            .where(
                ledger.c.project == bindparam("p"),
                ledger.c.model == bindparam("m"),
                ledger.c.window_start >= bindparam("s"),
                ledger.c.window_start < bindparam("e"),
                _state_in([State.PLANNED]),
            )
            .values(state=State.QUEUED, task_id=bindparam("t"), revision=bindparam("r"), updated_at=now)
        )
        with self._engine.begin() as connection:
            if fence is not None and not fence(connection):
                return False  # nothing written yet: the transaction commits nothing
            if publish is not None:
                publish(connection)
            if rows:
                connection.execute(statement, rows)
        return True

    def requeue(self, tasks: Iterable[Task]) -> None:
        """Put the tasks' windows back to queued with a clean slate (a replayed dead letter,
        whose windows may have been compacted into history as dead since)."""
        now = self._clock()
        with self._engine.begin() as connection:
            for task in tasks:
                history.restore(connection, task.project, task.model, task.start, task.end, now, [State.DEAD])
                connection.execute(
                    update(ledger)
                    .where(self._covered(task))
                    .values(
                        state=State.QUEUED,
                        attempts=0,
                        last_error=None,
                        task_id=str(task.id),
                        revision=task.revision,
                        updated_at=now,
                    )
                )

    def finish(self, task: Task, state: State, note: str | None = None) -> None:
        """Put every window of a task in one state, with one note (a task re-planned at a new
        revision is queued again)."""
        with self._engine.begin() as connection:
            connection.execute(
                update(ledger)
                .where(self._covered(task))
                .values(
                    state=state,
                    revision=task.revision,
                    task_id=str(task.id),
                    note=_text(note),
                    last_error=None,
                    updated_at=self._clock(),
                )
            )

    def record(self, task: Task, outcomes: Sequence[Outcome]) -> None:
        """Record each window's own outcome (state, note, stored and expected rows), in one
        statement; only windows the task covers can change."""
        statement = (
            update(ledger)
            .where(self._covered(task), ledger.c.window_start == bindparam("w"))
            .values(
                state=bindparam("s"),
                note=bindparam("n"),
                stored_rows=bindparam("stored"),
                expected_rows=bindparam("expected"),
                last_error=None,
                revision=task.revision,
                updated_at=self._clock(),
            )
        )
        rows = [
            {
                "w": outcome.window.start,
                "s": outcome.state,
                "n": _text(outcome.note),
                "stored": outcome.stored_rows,
                "expected": outcome.expected_rows,
            }
            for outcome in outcomes
        ]
        if rows:
            with self._engine.begin() as connection:
                connection.execute(statement, rows)

    def fail(self, task: Task, error: str) -> int:
        """Count a failed attempt on the task's windows; return the attempts so far."""
        with self._engine.begin() as connection:
            connection.execute(
                update(ledger)
                .where(self._covered(task))
                .values(
                    state=State.FAILED,
                    attempts=ledger.c.attempts + 1,
                    last_error=_text(error),
                    # a store cut off half way (InfluxDB: after its delete) leaves them unknown
                    stored_rows=None,
                    updated_at=self._clock(),
                )
            )
            attempts = connection.execute(select(func.max(ledger.c.attempts)).where(self._covered(task))).scalar()
        return int(attempts or 0)

    def dead_letter(self, body: bytes, reason: str, error: str, attempts: int, task: Task | None = None) -> None:
        """Keep a message that cannot be handled, with why, for ``latigo dlq``; mark its
        windows dead."""
        # a second letter of one task (two executors held it) is no letter
        letter = db.dialect_insert(self._engine.dialect, dead_letters).on_conflict_do_nothing(
            index_elements=["task_id"], index_where=dead_letters.c.task_id.is_not(None)
        )
        with self._engine.begin() as connection:
            connection.execute(
                letter.values(
                    task_id=str(task.id) if task else None,
                    project=task.project if task else None,
                    model=task.model if task else None,
                    body=body,
                    reason=reason,
                    error=_text(error),
                    attempts=attempts,
                    created_at=self._clock(),
                )
            )
            if task is not None:
                connection.execute(
                    update(ledger)
                    .where(self._covered(task))
                    .values(state=State.DEAD, last_error=_text(error), stored_rows=None, updated_at=self._clock())
                )

    def expire_dead_letters(self, before: datetime, limit: int = history.COMPACT_BATCH) -> int:
        """Delete up to ``limit`` dead letters created before ``before`` (their windows stay
        dead in the ledger, where ``backfill --mode failed`` finds them); returns how many."""
        oldest = select(dead_letters.c.id).where(dead_letters.c.created_at < before).limit(limit)
        with self._engine.begin() as connection:
            return connection.execute(delete(dead_letters).where(dead_letters.c.id.in_(oldest))).rowcount

    def recorded(self, project: str, model: str, start: datetime, end: datetime) -> tuple[list[history.Run], HotRows]:
        """One model's windows with a start in ``[start, end)``, as the ledger holds them: its
        compacted runs (one each, however long) and its hot rows, which win where both hold a
        window. Bounded by time: the hot rows are at most ``compact_after`` deep."""
        # as the driver hands it over (SQLite's text, PostgreSQL's naive datetime): an aware
        # datetime made per row cost more than the rest of a backfill's planning
        stored_start = type_coerce(ledger.c.window_start, String())
        query = select(stored_start, ledger.c.state).where(
            ledger.c.project == project,
            ledger.c.model == model,
            ledger.c.window_start >= start,
            ledger.c.window_start < end,
        )
        with self._engine.connect() as connection:
            runs = history.runs(connection, start=start, end=end, models=[(project, model)])
            rows = connection.execute(query).all()
        return runs, HotRows(_naive_utc([row[0] for row in rows]), [row[1] for row in rows])

    def states(self, project: str, model: str, start: datetime, end: datetime) -> dict[datetime, State]:
        """The state of every window of one model recorded with a start in ``[start, end)``."""
        runs, rows = self.recorded(project, model, start, end)
        found = {window_start: run.state for run in runs for window_start in run.starts(start, end)}
        found.update(rows.items())
        return found

    def replan(
        self,
        project: str,
        model: str,
        start: datetime,
        end: datetime,
        states_from: Iterable[State],
        revision: str,
    ) -> int:
        """Set one model's windows starting in ``[start, end)`` that are in one of
        ``states_from`` back to planned, at ``revision``, as if never tried: attempts 0, last
        error and task cleared (a dead window's error stays in the dead-letter table). Done,
        no-data or dead windows asked for come back from the ledger's history first. One statement
        for the whole range; returns how many windows were reset."""
        states = [State(state) for state in states_from]
        statement = (
            update(ledger)
            .where(
                ledger.c.project == project,
                ledger.c.model == model,
                ledger.c.window_start >= start,
                ledger.c.window_start < end,
                _state_in(states),
            )
            .values(
                state=State.PLANNED,
                revision=revision,
                attempts=0,
                last_error=None,
                note=None,
                task_id=None,
                updated_at=self._clock(),
            )
        )
        with self._engine.begin() as connection:
            if compacted := [state for state in states if state in COMPACTED]:
                history.restore(connection, project, model, start, end, self._clock(), compacted)
            return connection.execute(statement).rowcount
