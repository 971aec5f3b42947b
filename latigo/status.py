"""What an operator asks first: per model, how many windows are in which state, how fresh
its predictions are, and what failed. Read-only queries on the Latigo database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine, func, select

from latigo.ledger import State, partial
from latigo.schema import dead_letters, dependency_outages, ledger, predictions


@dataclass(frozen=True)
class ModelStatus:
    project: str
    model: str
    states: dict[str, int]
    newest_done_end: datetime | None
    last_error: str | None
    # windows between the model's first and newest planned one that were never planned:
    # gaps the catch-up limit left behind, for latigo backfill
    missing: int = 0
    # done windows with fewer rows stored than they have (data gaps; their notes say why)
    partial: int = 0

    def lag(self, now: datetime) -> timedelta | None:
        return None if self.newest_done_end is None else now - self.newest_done_end


def model_statuses(engine: Engine, interval: timedelta) -> list[ModelStatus]:
    counts = select(ledger.c.project, ledger.c.model, ledger.c.state, func.count()).group_by(
        ledger.c.project, ledger.c.model, ledger.c.state
    )
    newest = (
        select(ledger.c.project, ledger.c.model, func.max(ledger.c.window_end))
        .where(ledger.c.state == State.DONE)
        .group_by(ledger.c.project, ledger.c.model)
    )
    errors = (
        select(ledger.c.project, ledger.c.model, ledger.c.last_error)
        .where(ledger.c.last_error.is_not(None))
        .order_by(ledger.c.updated_at)
    )
    partials = (
        select(ledger.c.project, ledger.c.model, func.count())
        .where(partial())
        .group_by(ledger.c.project, ledger.c.model)
    )
    extent = select(
        ledger.c.project, ledger.c.model, func.min(ledger.c.window_start), func.max(ledger.c.window_start), func.count()
    ).group_by(ledger.c.project, ledger.c.model)
    states: dict[tuple[str, str], dict[str, int]] = {}
    with engine.connect() as connection:
        for project, model, state, count in connection.execute(counts):
            states.setdefault((project, model), {})[state] = count
        done = {(project, model): end for project, model, end in connection.execute(newest)}
        last_error = {(project, model): error for project, model, error in connection.execute(errors)}
        partial_windows = {(project, model): count for project, model, count in connection.execute(partials)}
        missing = {
            (project, model): (last - first) // interval + 1 - count
            for project, model, first, last, count in connection.execute(extent)
        }
    return [
        ModelStatus(
            project,
            model,
            counts,
            done.get((project, model)),
            last_error.get((project, model)),
            missing.get((project, model), 0),
            partial_windows.get((project, model), 0),
        )
        for (project, model), counts in sorted(states.items())
    ]


def dead_letter_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(dead_letters)).scalar_one()


def status_table(statuses: list[ModelStatus], now: datetime) -> pd.DataFrame:
    rows = []
    for status in statuses:
        lag = status.lag(now)
        rows.append(
            {
                "model": f"{status.project}/{status.model}",
                **{state.value: status.states.get(state, 0) for state in State},
                "partial": status.partial,
                "missing": status.missing,
                "newest done": status.newest_done_end.strftime("%Y-%m-%d %H:%M") if status.newest_done_end else "-",
                "lag": str(lag).split(".")[0] if lag is not None else "-",
            }
        )
    return pd.DataFrame(rows)


def recent_predictions(engine: Engine, output: str, since: datetime, model: str | None = None) -> pd.DataFrame:
    """One output group's values per model since ``since`` (time x model), for a quick look."""
    query = (
        select(predictions.c.time, predictions.c.model, predictions.c.tag, predictions.c.value)
        .where(predictions.c.output == output, predictions.c.time >= since)
        .order_by(predictions.c.time)
    )
    if model:
        query = query.where(predictions.c.model == model)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    frame = pd.DataFrame(rows, columns=["time", "model", "tag", "value"])
    if frame.empty:
        return frame
    frame["column"] = frame["model"] if output.startswith("total-") else frame["model"] + ":" + frame["tag"]
    return frame.pivot_table(index="time", columns="column", values="value", aggfunc="last")


def prediction_duplicates(engine: Engine) -> int:
    """Rows sharing (project, model, time, output, tag): always zero, the key forbids it;
    kept as a check the demo and tests can run against any store layout."""
    key = [predictions.c.project, predictions.c.model, predictions.c.time, predictions.c.output, predictions.c.tag]
    query = select(func.count()).select_from(select(*key).group_by(*key).having(func.count() > 1).subquery())
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def lags(engine: Engine, now: datetime, since: datetime) -> list[tuple[str, str, float]]:
    """Seconds since the end of each model's newest done window, for models with a done
    window ending after ``since`` (the recent part of the ledger, so the query stays cheap)."""
    query = (
        select(ledger.c.project, ledger.c.model, func.max(ledger.c.window_end))
        .where(ledger.c.state == State.DONE, ledger.c.window_end >= since)
        .group_by(ledger.c.project, ledger.c.model)
    )
    with engine.connect() as connection:
        return [(project, model, (now - end).total_seconds()) for project, model, end in connection.execute(query)]


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
        return [Failure(*row[:5], row.last_error or "", row.updated_at) for row in connection.execute(query)]


def status_document(
    statuses: list[ModelStatus],
    failures: list[Failure],
    dead_letters: int,
    depth: int,
    now: datetime,
    outages: list | None = None,
) -> dict:
    """Everything ``latigo status`` shows, as JSON-ready data."""
    return {
        "now": now.isoformat(),
        "models": [
            {
                "project": status.project,
                "model": status.model,
                "states": {state.value: status.states.get(state, 0) for state in State},
                "partial": status.partial,
                "missing": status.missing,
                "newest_done_end": status.newest_done_end.isoformat() if status.newest_done_end else None,
                "lag_seconds": status.lag(now).total_seconds() if status.newest_done_end else None,
                "last_error": status.last_error,
            }
            for status in statuses
        ],
        "recent_failures": [
            {
                "project": f.project,
                "model": f.model,
                "window_start": f.window_start.isoformat(),
                "state": f.state,
                "attempts": f.attempts,
                "error": f.error,
                "updated_at": f.updated_at.isoformat(),
            }
            for f in failures
        ],
        "dead_letters": dead_letters,
        "queue_depth": depth,
        "paused_for": [
            {"dependency": o.dependency, "since": o.since.isoformat(), "executors": o.executors, "error": o.error}
            for o in outages or []
        ],
    }


# an outage row not refreshed for this long belongs to an executor that is gone (a paused
# executor refreshes it at every probe, at least every latigo.outages.PROBE_MAX_S)
OUTAGE_FRESH = timedelta(minutes=2)


@dataclass(frozen=True)
class Outage:
    """A dependency some executors wait for."""

    dependency: str
    since: datetime
    executors: int
    error: str


def current_outages(engine: Engine, now: datetime) -> list[Outage]:
    """The dependencies executors are paused for now, longest first."""
    query = (
        select(
            dependency_outages.c.dependency,
            func.min(dependency_outages.c.since),
            func.count(),
            func.max(dependency_outages.c.error),
        )
        .where(dependency_outages.c.checked_at >= now - OUTAGE_FRESH)
        .group_by(dependency_outages.c.dependency)
    )
    with engine.connect() as connection:
        found = [Outage(*row) for row in connection.execute(query)]
    return sorted(found, key=lambda outage: outage.since)
