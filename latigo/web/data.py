"""What each page of the status page shows, read from the database: the heatmap of one
page of models, and one model's windows and charted predictions. The ledger is asked
through the read model (one grouped query for every model's counts, the cells only for
the models on the page); every query is bounded by time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import Engine

from latigo import readmodel
from latigo.config import Config
from latigo.providers.predictions.sql import read as stored_predictions
from latigo.readmodel import WindowRow
from latigo.status import Outage, current_outages
from latigo.web.chart import Point
from latigo.web.layout import (
    COLOURS,
    MAX_WINDOWS,
    Cell,
    CellView,
    ModelRow,
    columns,
    describe,
    lay_out,
    page_count,
    severity_key,
    tally_cells,
)
from latigo.window import Grid, Window

# the prediction outputs charted on a model page: (output, title, threshold line or None)
CHARTS = (
    ("total-anomaly-scaled", "Total anomaly (scaled)", None),
    ("total-anomaly-confidence", "Total anomaly confidence (1 = the model's threshold)", 1.0),
)


def model_rows(engine: Engine, start: datetime, end: datetime, now: datetime, delay: timedelta) -> list[ModelRow]:
    """Every model with a window starting in ``[start, end)``, with its counts per cell
    state and its newest done window: one grouped query, whatever the number of models."""
    return [
        ModelRow(
            tally.project,
            tally.model,
            tally_cells(tally.states, tally.partial, tally.late, tally.pending),
            tally.newest_done,
        )
        for tally in readmodel.tallies(engine, start=start, end=end, now=now, delay=delay)
    ]


def prediction_series(
    engine: Engine, project: str, model: str, outputs: Sequence[str], start: datetime, end: datetime
) -> dict[str, list[Point]]:
    """The model's stored values of the given (total) outputs in ``[start, end)``, oldest first."""
    frame = stored_predictions(engine, outputs=outputs, projects=[project], model=model, start=start, end=end)
    series: dict[str, list[Point]] = {output: [] for output in outputs}
    frame = frame[np.isfinite(frame["value"].to_numpy())].sort_values("time", kind="stable")
    for output, time, value in zip(frame["output"], frame["time"], frame["value"]):
        series[output].append((time, float(value)))
    return series


# --- the heatmap ------------------------------------------------------------------------


@dataclass
class Heatmap:
    now: datetime
    hours: int
    query: str
    layout: list[Window]
    rows: list[ModelRow]  # the page's
    matching: int  # models matching the filter
    total: int  # models with windows in the range
    totals: dict[Cell, int]  # windows per cell state, over the matching models
    affected: dict[Cell, int]  # matching models with at least one window in that state
    page: int
    pages: int
    # dependencies executors are paused for now
    outages: list[Outage] = field(default_factory=list)

    def to_dict(self, config: Config) -> dict:
        return {
            "now": self.now.isoformat(),
            "hours": self.hours,
            "interval_seconds": config.schedule.interval.total_seconds(),
            "delay_seconds": config.schedule.delay.total_seconds(),
            "query": self.query,
            "columns": [{"start": window.start.isoformat(), "end": window.end.isoformat()} for window in self.layout],
            "colours": {cell.value: colour for cell, colour in COLOURS.items()},
            "models_total": self.total,
            "models_matching": self.matching,
            "totals": {cell.value: count for cell, count in self.totals.items()},
            "models_with": {cell.value: count for cell, count in self.affected.items()},
            "page": self.page,
            "pages": self.pages,
            "paused_for": [
                {"dependency": o.dependency, "since": o.since.isoformat(), "executors": o.executors, "error": o.error}
                for o in self.outages
            ],
            "models_on_page": len(self.rows),
            "models": [
                {
                    "project": row.project,
                    "model": row.model,
                    "counts": {cell.value: count for cell, count in row.counts.items()},
                    "newest_done_end": row.newest_done.isoformat() if row.newest_done else None,
                    "lag_seconds": lag.total_seconds() if (lag := row.lag(self.now)) is not None else None,
                    "cells": [view.cell.value for view in row.cells],
                }
                for row in self.rows
            ],
        }


def heatmap(
    engine: Engine, config: Config, now: datetime, hours: int, query: str, page: int, page_size: int
) -> Heatmap:
    """The heatmap of one page: every model's counts (one grouped query), filtered, sorted
    worst first, and the cells of the page's models only."""
    grid = Grid(config.schedule.interval, config.schedule.anchor)
    delay = config.schedule.delay
    layout = columns(grid, now, hours)
    start, end = layout[0].start, layout[-1].end
    everyone = model_rows(engine, start, end, now, delay)
    needle = query.strip().lower()
    matching = [row for row in everyone if needle in row.name.lower()]
    matching.sort(key=lambda row: severity_key(row, now))
    pages = page_count(len(matching), page_size)
    page = max(1, min(page, pages))
    shown = matching[(page - 1) * page_size : page * page_size]
    cells = readmodel.window_rows(engine, [(row.project, row.model) for row in shown], start, end)
    for row in shown:
        row.cells = lay_out(layout, cells[(row.project, row.model)], now, delay)
    totals: dict[Cell, int] = {
        cell: sum(row.counts.get(cell, 0) for row in matching) for cell in Cell if cell != Cell.EMPTY
    }
    affected: dict[Cell, int] = {cell: sum(1 for row in matching if row.counts.get(cell, 0)) for cell in totals}
    return Heatmap(
        now,
        hours,
        query,
        layout,
        shown,
        len(matching),
        len(everyone),
        totals,
        affected,
        page,
        pages,
        current_outages(engine, now),
    )


@dataclass
class ModelPage:
    """One model's page: its windows newest first with their cells, its counts and the
    stored series of each chart."""

    project: str
    model: str
    hours: int
    start: datetime
    now: datetime
    interval: timedelta
    windows: list[tuple[WindowRow, Window, CellView]]
    counts: dict[Cell, int]
    newest_done: datetime | None
    # (output, title, threshold, points) of each chart drawn; None: predictions kept elsewhere
    charts: list[tuple[str, str, float | None, list[Point]]] | None

    @property
    def name(self) -> str:
        return f"{self.project}/{self.model}"


def model_page(
    engine: Engine, config: Config, now: datetime, project: str, model: str, hours: int, charted: bool
) -> ModelPage:
    """One model's windows starting in the last ``hours`` (counted by the read model, at most
    MAX_WINDOWS listed) and, when ``charted``, its stored total anomaly."""
    grid = Grid(config.schedule.interval, config.schedule.anchor)
    delay = config.schedule.delay
    start = now - timedelta(hours=hours)
    first = grid.floor(start)
    rows = readmodel.model_windows(engine, project, model, first, now, MAX_WINDOWS)
    windows = [
        (row, Window(row.start, row.end), describe(Window(row.start, row.end), [row], now, delay)) for row in rows
    ]
    tallies = readmodel.tallies(engine, start=first, end=now, models=[(project, model)], now=now, delay=delay)
    counts, newest_done = {}, None
    if tallies:
        [tally] = tallies
        counts = tally_cells(tally.states, tally.partial, tally.late, tally.pending)
        newest_done = tally.newest_done
    charts = None
    if charted:
        series = prediction_series(engine, project, model, [output for output, _, _ in CHARTS], start, now)
        charts = [
            (output, title, threshold, series[output])
            for output, title, threshold in CHARTS
            if series[output] or threshold is None  # a model without thresholds has no confidence
        ]
    return ModelPage(project, model, hours, start, now, grid.interval, windows, counts, newest_done, charts)
