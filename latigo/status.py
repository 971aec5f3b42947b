"""What an operator asks first: per model, how many windows are in which state, how fresh
its predictions are, and what failed, as ``latigo status`` prints it (a table or JSON).
The ledger's answers come from the read model; the outages and the prediction store's
checks are read here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine, func, select

from latigo import readmodel
from latigo.ledger import State
from latigo.providers.predictions.sql import read as stored_predictions
from latigo.readmodel import Failure, dead_letter_count, recent_failures
from latigo.schema import dependency_outages

# what the status command reads from here, though the read model answers it
__all__ = [
    "Failure",
    "ModelStatus",
    "Outage",
    "current_outages",
    "dead_letter_count",
    "model_statuses",
    "prediction_duplicates",
    "recent_failures",
    "recent_predictions",
    "status_document",
    "status_table",
]


@dataclass(frozen=True)
class ModelStatus:
    project: str
    model: str
    states: dict[State, int]
    newest_done_end: datetime | None
    last_error: str | None
    # windows between the model's first and newest planned one that were never planned:
    # gaps the catch-up limit left behind, for latigo backfill
    missing: int = 0
    # done windows with fewer rows stored than they have (data gaps; their notes say why)
    partial: int = 0

    def lag(self, now: datetime) -> timedelta | None:
        return readmodel.lag(self.newest_done_end, now)


def model_statuses(engine: Engine, interval: timedelta) -> list[ModelStatus]:
    """Every model's whole ledger, counted (one grouped query), with its last error."""
    errors = readmodel.last_errors(engine)
    return [
        ModelStatus(
            tally.project,
            tally.model,
            tally.states,
            tally.newest_done,
            errors.get((tally.project, tally.model)),
            tally.missing(interval),
            tally.partial,
        )
        for tally in sorted(readmodel.tallies(engine), key=lambda tally: (tally.project, tally.model))
    ]


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
                "lag": readmodel.format_lag(lag),
            }
        )
    return pd.DataFrame(rows)


def recent_predictions(
    engine: Engine, output: str, since: datetime, model: str | None = None, projects: Sequence[str] = ()
) -> pd.DataFrame:
    """One output group's values per model since ``since`` (time x model), for a quick look;
    one model's found through the key given its possible ``projects``."""
    frame = stored_predictions(engine, outputs=[output], projects=projects, model=model, start=since)
    if frame.empty:
        return frame
    frame["column"] = frame["model"] if output.startswith("total-") else frame["model"] + ":" + frame["tag"]
    return frame.pivot_table(index="time", columns="column", values="value", aggfunc="last")


def prediction_duplicates(engine: Engine) -> int:
    """Values sharing (project, model, time, output, tag): always zero, the key and the
    tags catalogue forbid it; kept as a check the demo and tests can run against any layout."""
    frame = stored_predictions(engine)
    return int(frame.duplicated(["project", "model", "time", "output", "tag"]).sum())


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
                "lag_seconds": lag.total_seconds() if (lag := status.lag(now)) is not None else None,
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
