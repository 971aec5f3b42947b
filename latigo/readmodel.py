"""The read model: every question the operator's views ask of the ledger, answered once.

``latigo status``, the status page, the metrics and ``backfill --wait`` all want to know how
many windows of a model are in which state, which window finished last, which are due and
late, which were never planned and how many letters are dead. Each answer is written here
once, so the definitions cannot drift apart: "due" is one SQL clause (and its pure twin for a
window in hand), "newest done" one aggregate, the per-model state count one grouped query.
``Ledger`` keeps the writes; nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, Select, and_, case, func, select, tuple_

from latigo import history
from latigo.schema import dead_letters, ledger
from latigo.states import State, partial

# the states of a window handed to no executor yet, or handed and not finished: late once due
WAITING = (State.PLANNED, State.QUEUED)


def is_due(window_end: datetime, now: datetime, delay: timedelta) -> bool:
    """A window is due once ``now >= end + delay``: its sensor data has had time to arrive."""
    return window_end <= now - delay


def due(now: datetime, delay: timedelta) -> ColumnElement[bool]:
    """SQL: the window is due (``is_due``, for rows of the ledger)."""
    return ledger.c.window_end <= now - delay


def late(now: datetime, delay: timedelta) -> ColumnElement[bool]:
    """SQL: the window is due and still waiting for an executor."""
    return and_(ledger.c.state.in_(WAITING), due(now, delay))


def newest_done() -> ColumnElement:
    """SQL aggregate: the end of the group's newest done window (NULL: none done)."""
    return func.max(case((ledger.c.state == State.DONE, ledger.c.window_end)))


def lag(newest_done_end: datetime | None, now: datetime) -> timedelta | None:
    """How far a model's predictions trail ``now``: None while it has no done window."""
    return None if newest_done_end is None else now - newest_done_end


def format_lag(age: timedelta | None) -> str:
    """A short age such as ``37m``, ``5h 12m`` or ``3d 4h``; ``-`` for none."""
    if age is None:
        return "-"
    minutes = max(0, int(age.total_seconds() // 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m" if minutes else f"{hours}h"
    return f"{minutes}m"


def _count(condition: ColumnElement[bool]) -> ColumnElement:
    return func.sum(case((condition, 1), else_=0))


@dataclass(frozen=True)
class Tally:
    """One model's windows (in the range asked for), counted."""

    project: str
    model: str
    states: dict[State, int]
    newest_done: datetime | None
    # done windows with fewer rows stored than they have (data gaps)
    partial: int = 0
    # planned or queued and due (zero when no moment was given)
    late: int = 0
    # planned or queued and not due yet (zero when no moment was given)
    pending: int = 0
    # the oldest and newest window start, and how many windows there are
    first_start: datetime | None = None
    last_start: datetime | None = None
    windows: int = 0

    def lag(self, now: datetime) -> timedelta | None:
        return lag(self.newest_done, now)

    def missing(self, interval: timedelta) -> int:
        """Windows between the first and the newest planned one that were never planned."""
        if self.first_start is None or self.last_start is None:
            return 0
        return (self.last_start - self.first_start) // interval + 1 - self.windows


def tallies(
    engine: Engine,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    project: str | None = None,
    models: list[tuple[str, str]] | None = None,
    now: datetime | None = None,
    delay: timedelta = timedelta(0),
) -> list[Tally]:
    """Every model's windows per state, partial, late and pending, its newest done window and
    its extent: one grouped query, whatever the number of models. Optionally only windows
    starting in ``[start, end)``, of one project or of the given models; late and pending
    need ``now``."""
    columns = [
        ledger.c.project,
        ledger.c.model,
        newest_done().label("newest_done"),
        func.min(ledger.c.window_start).label("first_start"),
        func.max(ledger.c.window_start).label("last_start"),
        func.count().label("windows"),
        _count(partial()).label("partial"),
        *(_count(ledger.c.state == state).label(state.value) for state in State),
    ]
    if now is not None:
        waiting = ledger.c.state.in_(WAITING)
        columns += [_count(late(now, delay)).label("late"), _count(and_(waiting, ~due(now, delay))).label("pending")]
    query = select(*columns).group_by(ledger.c.project, ledger.c.model)
    if start is not None:
        query = query.where(ledger.c.window_start >= start)
    if end is not None:
        query = query.where(ledger.c.window_start < end)
    if project is not None:
        query = query.where(ledger.c.project == project)
    if models is not None:
        if not models:
            return []
        query = query.where(tuple_(ledger.c.project, ledger.c.model).in_(models))
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    hot = [
        Tally(
            row["project"],
            row["model"],
            {state: int(row[state.value] or 0) for state in State if row[state.value]},
            row["newest_done"],
            int(row["partial"] or 0),
            int(row.get("late") or 0),
            int(row.get("pending") or 0),
            row["first_start"],
            row["last_start"],
            int(row["windows"]),
        )
        for row in rows
    ]
    return _with_history(hot, history.totals(engine, start=start, end=end, models=models, project=project))


def _with_history(hot: list[Tally], old: dict[tuple[str, str], history.Totals]) -> list[Tally]:
    """The hot ledger's tallies with each model's compacted runs added (never late or
    pending: only finished windows are compacted)."""
    merged = []
    for tally in hot:
        runs = old.pop((tally.project, tally.model), None)
        if runs is None or tally.first_start is None or tally.last_start is None:
            merged.append(tally)
            continue
        recent = history.Totals(
            tally.states, tally.partial, tally.newest_done, tally.first_start, tally.last_start, tally.windows
        )
        both = recent + runs
        merged.append(
            replace(
                tally,
                states=both.states,
                newest_done=both.newest_done,
                partial=both.partial,
                first_start=both.first_start,
                last_start=both.last_start,
                windows=both.windows,
            )
        )
    merged += [
        Tally(project, model, runs.states, runs.newest_done, runs.partial, 0, 0, runs.first_start, runs.last_start,
              runs.windows)
        for (project, model), runs in old.items()
    ]  # fmt: skip
    return merged


def state_counts(
    engine: Engine, *, start: datetime | None = None, end: datetime | None = None, project: str | None = None
) -> dict[tuple[str, str], dict[State, int]]:
    """Windows per state, per model (only states a model has a window in)."""
    return {
        (tally.project, tally.model): tally.states for tally in tallies(engine, start=start, end=end, project=project)
    }


def lags(engine: Engine, now: datetime, since: datetime) -> list[tuple[str, str, float]]:
    """Seconds since the end of each model's newest done window, for models with a done
    window ending after ``since`` (the recent part of the ledger, so the query stays cheap)."""
    query = (
        select(ledger.c.project, ledger.c.model, newest_done())
        .where(ledger.c.state == State.DONE, ledger.c.window_end >= since)
        .group_by(ledger.c.project, ledger.c.model)
    )
    with engine.connect() as connection:
        return [(project, model, (now - end).total_seconds()) for project, model, end in connection.execute(query)]


def last_errors_query() -> Select:
    """The windows that hold an error, oldest first: read through ix_ledger_last_error,
    which holds only those rows, so the cost follows the failures, not the ledger."""
    return (
        select(ledger.c.project, ledger.c.model, ledger.c.last_error)
        .where(ledger.c.last_error.is_not(None))
        .order_by(ledger.c.updated_at)
    )


def last_errors(engine: Engine) -> dict[tuple[str, str], str]:
    """Each model's most recently recorded error."""
    with engine.connect() as connection:
        return {(project, model): error for project, model, error in connection.execute(last_errors_query())}


def dead_letter_count(engine: Engine) -> int:
    """Dead letters waiting for an operator."""
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(dead_letters)).scalar_one()


@dataclass(frozen=True)
class WindowRow:
    """One ledger row, as the views show it."""

    start: datetime
    end: datetime
    state: str
    revision: str | None
    attempts: int
    # the last error, or else the outcome's note
    error: str | None
    updated_at: datetime | None = None
    # done with fewer rows stored than the window has
    partial: bool = False


def _window_row(row: Sequence) -> WindowRow:
    """A row of ``_window_columns()`` as a WindowRow."""
    start, end, state, revision, attempts, error, updated_at, is_partial = row
    return WindowRow(start, end, state, revision, attempts, error, updated_at, bool(is_partial))


def _window_columns() -> list:
    return [
        ledger.c.window_start,
        ledger.c.window_end,
        ledger.c.state,
        ledger.c.revision,
        ledger.c.attempts,
        func.coalesce(ledger.c.last_error, ledger.c.note),
        ledger.c.updated_at,
        partial(),
    ]


def window_rows(
    engine: Engine, models: list[tuple[str, str]], start: datetime, end: datetime
) -> dict[tuple[str, str], list[WindowRow]]:
    """The ledger rows of the given models (a page of them) starting in ``[start, end)``."""
    found: dict[tuple[str, str], list[WindowRow]] = {model: [] for model in models}
    if not models:
        return found
    query = select(ledger.c.project, ledger.c.model, *_window_columns()).where(
        tuple_(ledger.c.project, ledger.c.model).in_(models),
        ledger.c.window_start >= start,
        ledger.c.window_start < end,
    )
    with engine.connect() as connection:
        for row in connection.execute(query):
            found[(row[0], row[1])].append(_window_row(row[2:]))
    return found


def model_windows(
    engine: Engine, project: str, model: str, start: datetime, end: datetime, limit: int
) -> list[WindowRow]:
    """One model's ledger rows starting in ``[start, end)``, newest first, at most ``limit``."""
    query = (
        select(*_window_columns())
        .where(ledger.c.project == project, ledger.c.model == model)
        .where(ledger.c.window_start >= start, ledger.c.window_start < end)
        .order_by(ledger.c.window_start.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        return [_window_row(row) for row in connection.execute(query)]


def model_known(engine: Engine, project: str, model: str) -> bool:
    """Whether the ledger has ever had a window of the model, in history included."""
    query = select(ledger.c.window_start).where(ledger.c.project == project, ledger.c.model == model).limit(1)
    with engine.connect() as connection:
        return connection.execute(query).first() is not None or history.known(connection, project, model)


@dataclass(frozen=True)
class Failure:
    project: str
    model: str
    window_start: datetime
    state: str
    attempts: int
    error: str
    updated_at: datetime


def recent_failures(engine: Engine, limit: int = 10) -> list[Failure]:
    """The windows that failed or died most recently, with their last error."""
    query = (
        select(
            ledger.c.project,
            ledger.c.model,
            ledger.c.window_start,
            ledger.c.state,
            ledger.c.attempts,
            ledger.c.last_error,
            ledger.c.updated_at,
        )
        .where(ledger.c.state.in_([State.FAILED, State.DEAD]))
        .order_by(ledger.c.updated_at.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        return [
            Failure(project, model, start, state, attempts, error or "", updated_at)
            for project, model, start, state, attempts, error, updated_at in connection.execute(query)
        ]


def window_states(engine: Engine, models: dict[str, set[str]], start: datetime, end: datetime) -> dict[State, int]:
    """Windows per state of the given models (names per project) starting in ``[start, end)``,
    summed: what ``backfill --wait`` follows."""
    totals: dict[State, int] = {}
    for project, names in models.items():
        for tally in tallies(engine, start=start, end=end, project=project):
            if tally.model in names:
                for state, count in tally.states.items():
                    totals[state] = totals.get(state, 0) + count
    return totals
