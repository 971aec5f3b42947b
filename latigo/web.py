"""The status page: which of thousands of models are fresh, late or failing, at a glance.

``latigo status`` answers in a terminal; operators watching a fleet want a picture. This is
a small WSGI application (the standard library's, no framework) that renders HTML with
inline SVG straight from the Latigo database: no JavaScript, no CDN, nothing fetched from
elsewhere, because the networks Latigo runs in are often closed.

- ``/`` a heatmap of models against the recent windows, worst models first, filtered and
  paged, so the page costs the same with ten models or ten thousand;
- ``/model/<project>/<model>`` one model's total anomaly over time and its recent windows;
- ``/api/status.json`` the heatmap's data, for scripts.

Every query is bounded by time (``window_start >= now - hours``), and the heatmap's cells
are read only for the models on the page shown. The layout (window states, colours, the
"late" decision, chart scales and ticks) is pure functions; the queries and the HTML are
apart from them.
"""

from __future__ import annotations

import html
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs, quote, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sqlalchemy import Engine, and_, case, func, select, tuple_
from sqlalchemy.exc import SQLAlchemyError

from latigo.clock import Clock, system_clock
from latigo.config import Config, InfluxPredictionsConfig
from latigo.ledger import State, partial
from latigo.schema import ledger, predictions
from latigo.status import Outage, current_outages
from latigo.window import Grid, Window

log = logging.getLogger(__name__)

# hours shown when the request names none
DEFAULT_HOURS = 24
# the most hours a request may ask for (the queries stay bounded)
MAX_HOURS = 168
# the ranges offered as links on every page, hours
HOUR_CHOICES = (6, 12, 24, 48, 168)
# models per heatmap page
PAGE_SIZE = 200
# the most columns a heatmap draws; with more windows, one column stands for several (the worst shown)
MAX_COLUMNS = 96
# the most windows read per model: a short interval shortens the range instead of growing the query
MAX_WINDOWS = 2016
# the most points drawn per chart line; more are reduced to each bucket's largest value, so spikes stay
MAX_POINTS = 1500
# the prediction outputs charted on a model page: (output, title, threshold line or None)
CHARTS = (
    ("total-anomaly-scaled", "Total anomaly (scaled)", None),
    ("total-anomaly-confidence", "Total anomaly confidence (1 = the model's threshold)", 1.0),
)
# the longest error quoted in a tooltip; the model page shows more
TOOLTIP_ERROR = 300
# the longest error shown in a model page's window table
TABLE_ERROR = 600
# seconds between the page's own reloads (a meta refresh: no script)
REFRESH_S = 60
# the responses' policy: no script, nothing from elsewhere, only the page's own style
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'"


class Cell(StrEnum):
    """What a heatmap cell shows: a window's ledger state, with planned and queued windows
    split by whether they are due yet."""

    DEAD = "dead"
    FAILED = "failed"
    LATE = "late"  # planned or queued, and past its due time
    NO_DATA = "no_data"
    PARTIAL = "partial"  # done, with some of its rows missing (data gaps)
    DONE = "done"
    PENDING = "pending"  # planned or queued, not yet due
    EMPTY = "empty"  # no ledger row: not planned (yet)


# how bad each cell is, worst first: a column standing for several windows shows its worst
SEVERITY = {cell: rank for rank, cell in enumerate(reversed(list(Cell)))}
# each cell's colour (legend, counts and tooltips also name the state, for the colour-blind)
COLOURS = {
    Cell.DONE: "#2f9e44",
    Cell.PARTIAL: "#8ce99a",
    Cell.NO_DATA: "#adb5bd",
    Cell.FAILED: "#f76707",
    Cell.DEAD: "#c92a2a",
    Cell.LATE: "#fcc419",
    Cell.PENDING: "#d0ebff",
    Cell.EMPTY: "#f1f3f5",
}
# the legend's words for each cell
MEANINGS = {
    Cell.DONE: "done",
    Cell.PARTIAL: "partial (rows missing: data gaps)",
    Cell.NO_DATA: "no data",
    Cell.LATE: "late (queued past due)",
    Cell.FAILED: "failed, retrying",
    Cell.DEAD: "dead (dead letter)",
    Cell.PENDING: "queued, not yet due",
    Cell.EMPTY: "not planned / not due",
}
# a word or two for each cell, for counts and their column headers
SHORT = {
    Cell.DONE: "done",
    Cell.PARTIAL: "partial",
    Cell.NO_DATA: "no data",
    Cell.LATE: "late",
    Cell.FAILED: "failed",
    Cell.DEAD: "dead",
    Cell.PENDING: "not yet due",
    Cell.EMPTY: "not planned",
}
# the per-model counts shown beside the heatmap, in this order
COUNTED = (Cell.DONE, Cell.PARTIAL, Cell.NO_DATA, Cell.LATE, Cell.FAILED, Cell.DEAD)
# cells whose tooltip quotes the window's error or note
EXPLAINED = (Cell.FAILED, Cell.DEAD, Cell.PARTIAL, Cell.NO_DATA)


# --- pure layout ----------------------------------------------------------------------


def bounded(text: str | None, default: int, low: int, high: int) -> int:
    """An integer query parameter clamped to ``[low, high]``; missing or unreadable: the default."""
    try:
        value = int(text) if text is not None else default
    except ValueError:
        value = default
    return max(low, min(high, value))


def is_due(window_end: datetime, now: datetime, delay: timedelta) -> bool:
    """A window is due once ``now >= end + delay`` (the ledger queries use the same cutoff)."""
    return window_end <= now - delay


def cell_of(state: str | None, window_end: datetime, now: datetime, delay: timedelta, partial: bool = False) -> Cell:
    """The cell of one window: its ledger state, planned or queued ones late once due, done
    ones with rows missing partial."""
    if state is None:
        return Cell.EMPTY
    if state in (State.PLANNED, State.QUEUED):
        return Cell.LATE if is_due(window_end, now, delay) else Cell.PENDING
    if state == State.DONE and partial:
        return Cell.PARTIAL
    return Cell(state)


def worst(cells: Iterable[Cell]) -> Cell:
    return max(cells, key=SEVERITY.__getitem__, default=Cell.EMPTY)


def columns(grid: Grid, now: datetime, hours: int) -> list[Window]:
    """The heatmap's columns, oldest first: the windows that ended in the last ``hours`` (at
    most MAX_WINDOWS of them). Beyond MAX_COLUMNS windows, a column spans several, on a grid
    of its own span (so columns start at round times); the newest may then hold windows not
    yet ended."""
    newest_end = grid.floor(now)
    windows = max(1, min(MAX_WINDOWS, int(timedelta(hours=hours) / grid.interval)))
    per_column = math.ceil(windows / MAX_COLUMNS)
    span = grid.interval * per_column
    end = Grid(span, grid.anchor).ceil(newest_end)
    count = math.ceil(windows / per_column)
    start = end - span * count
    return [Window(start + span * index, start + span * (index + 1)) for index in range(count)]


def column_index(moment: datetime, layout: Sequence[Window]) -> int | None:
    """Which column a window starting at ``moment`` falls in, if any."""
    if not layout or not layout[0].start <= moment < layout[-1].end:
        return None
    return int((moment - layout[0].start) / (layout[0].end - layout[0].start))


def format_age(age: timedelta | None) -> str:
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


def format_span(window: Window) -> str:
    """``03-02 11:30–12:00``: a window as a tooltip names it."""
    end = f"{window.end:%H:%M}" if window.end - window.start < timedelta(days=1) else f"{window.end:%m-%d %H:%M}"
    return f"{window.start:%m-%d %H:%M}–{end}"


def page_count(total: int, size: int) -> int:
    return max(1, math.ceil(total / size))


def nice_step(span: float, target: int) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``target`` ticks over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / max(1, target)
    power = 10 ** math.floor(math.log10(raw))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= raw)


def value_ticks(high: float, target: int = 4) -> list[float]:
    """Ticks from 0 up to the first one at or above ``high``."""
    step = nice_step(high, target)
    count = max(1, math.ceil(high / step - 1e-9))
    return [round(step * index, 10) for index in range(count + 1)]


# candidate spacings of a chart's time ticks
TIME_STEPS = tuple(timedelta(minutes=minutes) for minutes in (10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880))


def time_ticks(start: datetime, end: datetime, target: int = 8) -> list[datetime]:
    """Round UTC moments (whole hours, midnights, ...) inside ``[start, end]``, about ``target`` of them."""
    span = end - start
    step = next((step for step in TIME_STEPS if span / step <= target), TIME_STEPS[-1])
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    tick = epoch + math.ceil((start - epoch) / step) * step
    ticks = []
    while tick <= end:
        ticks.append(tick)
        tick += step
    return ticks


def tick_label(moment: datetime) -> str:
    return moment.strftime("%d %b") if moment.hour == 0 and moment.minute == 0 else moment.strftime("%H:%M")


@dataclass(frozen=True)
class Scale:
    """A linear map from a domain to pixels."""

    low: float
    high: float
    pixel_low: float
    pixel_high: float

    def __call__(self, value: float) -> float:
        if self.high == self.low:
            return self.pixel_low
        return self.pixel_low + (value - self.low) * (self.pixel_high - self.pixel_low) / (self.high - self.low)


Point = tuple[datetime, float]


def downsample(points: Sequence[Point], limit: int = MAX_POINTS) -> list[Point]:
    """At most about ``limit`` points: consecutive buckets each keep their largest value
    (an anomaly spike must survive the reduction)."""
    if len(points) <= limit:
        return list(points)
    size = math.ceil(len(points) / limit)
    return [max(points[index : index + size], key=lambda point: point[1]) for index in range(0, len(points), size)]


def segments(points: Sequence[Point], max_gap: timedelta) -> list[list[Point]]:
    """The points split where more than ``max_gap`` separates two of them, so missing
    windows show as gaps rather than as a straight line across."""
    runs: list[list[Point]] = []
    for point in points:
        if runs and point[0] - runs[-1][-1][0] <= max_gap:
            runs[-1].append(point)
        else:
            runs.append([point])
    return runs


def label_spans(layout: Sequence[Window], every: int) -> list[tuple[str, int]]:
    """The heatmap's time header: (label, columns spanned), a label every ``every`` columns
    starting at the first column whose start is a multiple of that spacing in UTC."""
    if not layout:
        return []
    step = (layout[0].end - layout[0].start) * every
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    # the first column on a round time; none (an anchor off the hour): the first column
    first = next((index for index, window in enumerate(layout) if (window.start - epoch) % step == timedelta(0)), 0)
    spans: list[tuple[str, int]] = [("", first)] if first else []
    for index in range(first, len(layout), every):
        spans.append((tick_label(layout[index].start), min(every, len(layout) - index)))
    return spans


def cell_pixels(count: int) -> int:
    """A heatmap cell's width: the heatmap stays about 800 px wide, cells between 6 and 16 px."""
    return max(6, min(16, 800 // max(1, count)))


def label_every(count: int, layout: Sequence[Window]) -> int:
    """Columns between time labels: at least ~60 px apart, on a round time step."""
    if not layout:
        return 1
    column = layout[0].end - layout[0].start
    minimum = math.ceil(60 / cell_pixels(count))
    for step in TIME_STEPS:
        if step >= column and step % column == timedelta(0) and step / column >= minimum:
            return int(step / column)
    return minimum


# --- what the queries give -------------------------------------------------------------


@dataclass(frozen=True)
class WindowRow:
    """One ledger row, as the pages show it."""

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

    def cell(self, now: datetime, delay: timedelta) -> Cell:
        return cell_of(self.state, self.end, now, delay, self.partial)


@dataclass(frozen=True)
class CellView:
    cell: Cell
    title: str


@dataclass
class ModelRow:
    """One model's line in the heatmap: its counts in the range, freshness, and (for the
    page shown) its cells."""

    project: str
    model: str
    counts: dict[Cell, int]
    newest_done: datetime | None
    cells: list[CellView] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.project}/{self.model}"

    def lag(self, now: datetime) -> timedelta | None:
        return None if self.newest_done is None else now - self.newest_done

    @property
    def worst(self) -> Cell:
        return worst(cell for cell, count in self.counts.items() if count)


def severity_key(row: ModelRow, now: datetime) -> tuple:
    """Worst first: models with dead windows, then failed, then late, then the stalest."""
    lag = row.lag(now)
    return (
        -row.counts.get(Cell.DEAD, 0),
        -row.counts.get(Cell.FAILED, 0),
        -row.counts.get(Cell.LATE, 0),
        -(lag.total_seconds() if lag is not None else math.inf),
        -row.counts.get(Cell.NO_DATA, 0),
        row.project,
        row.model,
    )


def describe(window: Window, rows: Sequence[WindowRow], now: datetime, delay: timedelta) -> CellView:
    """A cell standing for ``window``, from the ledger rows inside it: the worst state, and a
    tooltip naming the span, the states and the last error."""
    cells = [row.cell(now, delay) for row in rows]
    cell = worst(cells)
    if not rows:
        words = "not yet due" if not is_due(window.end, now, delay) else "not planned"
    elif len(rows) == 1:
        row = rows[0]
        words = MEANINGS[cell]
        if row.attempts and cell in (Cell.FAILED, Cell.DEAD):
            words += f", {row.attempts} attempt{'s' if row.attempts != 1 else ''}"
    else:
        present = sorted(set(cells), key=SEVERITY.__getitem__, reverse=True)
        words = ", ".join(f"{cells.count(each)} {MEANINGS[each]}" for each in present)
    errors = [row.error for row in rows if row.error and row.cell(now, delay) in EXPLAINED]
    title = f"{format_span(window)} {words}"
    if errors:
        title += f": {errors[-1][:TOOLTIP_ERROR]}"
    return CellView(cell, title)


def lay_out(layout: Sequence[Window], rows: Iterable[WindowRow], now: datetime, delay: timedelta) -> list[CellView]:
    """One model's cells, a column each."""
    per_column: list[list[WindowRow]] = [[] for _ in layout]
    for row in rows:
        index = column_index(row.start, layout)
        if index is not None:
            per_column[index].append(row)
    return [describe(window, found, now, delay) for window, found in zip(layout, per_column)]


# --- queries ---------------------------------------------------------------------------


def model_rows(engine: Engine, start: datetime, end: datetime, now: datetime, delay: timedelta) -> list[ModelRow]:
    """Every model with a window starting in ``[start, end)``, with its counts per cell
    state and its newest done window: one grouped query, whatever the number of models."""
    waiting = ledger.c.state.in_([State.PLANNED, State.QUEUED])
    due = ledger.c.window_end <= now - delay  # is_due, in SQL

    def count_where(condition) -> object:
        return func.sum(case((condition, 1), else_=0))

    per_cell = {
        Cell.DONE: and_(ledger.c.state == State.DONE, ~partial()),
        Cell.PARTIAL: partial(),
        Cell.NO_DATA: ledger.c.state == State.NO_DATA,
        Cell.FAILED: ledger.c.state == State.FAILED,
        Cell.DEAD: ledger.c.state == State.DEAD,
        Cell.LATE: and_(waiting, due),
        Cell.PENDING: and_(waiting, ~due),
    }
    query = (
        select(
            ledger.c.project,
            ledger.c.model,
            func.max(case((ledger.c.state == State.DONE, ledger.c.window_end))).label("newest_done"),
            *(count_where(condition).label(cell.value) for cell, condition in per_cell.items()),
        )
        .where(ledger.c.window_start >= start, ledger.c.window_start < end)
        .group_by(ledger.c.project, ledger.c.model)
    )
    with engine.connect() as connection:
        result = connection.execute(query).mappings().all()
    return [
        ModelRow(
            row["project"],
            row["model"],
            {cell: int(row[cell.value] or 0) for cell in per_cell},
            row["newest_done"],
        )
        for row in result
    ]


def window_rows(
    engine: Engine, models: Sequence[tuple[str, str]], start: datetime, end: datetime
) -> dict[tuple[str, str], list[WindowRow]]:
    """The ledger rows of the given models (a page of them) starting in ``[start, end)``."""
    found: dict[tuple[str, str], list[WindowRow]] = {model: [] for model in models}
    if not models:
        return found
    query = select(
        ledger.c.project,
        ledger.c.model,
        ledger.c.window_start,
        ledger.c.window_end,
        ledger.c.state,
        ledger.c.revision,
        ledger.c.attempts,
        func.coalesce(ledger.c.last_error, ledger.c.note).label("error"),
        partial().label("partial"),
    ).where(
        tuple_(ledger.c.project, ledger.c.model).in_(list(models)),
        ledger.c.window_start >= start,
        ledger.c.window_start < end,
    )
    with engine.connect() as connection:
        for row in connection.execute(query):
            found[(row.project, row.model)].append(
                WindowRow(
                    row.window_start,
                    row.window_end,
                    row.state,
                    row.revision,
                    row.attempts,
                    row.error,
                    partial=bool(row.partial),
                )
            )
    return found


def model_windows(engine: Engine, project: str, model: str, start: datetime, end: datetime) -> list[WindowRow]:
    """One model's ledger rows starting in ``[start, end)``, newest first."""
    query = (
        select(
            ledger.c.window_start,
            ledger.c.window_end,
            ledger.c.state,
            ledger.c.revision,
            ledger.c.attempts,
            func.coalesce(ledger.c.last_error, ledger.c.note),
            ledger.c.updated_at,
            partial(),
        )
        .where(ledger.c.project == project, ledger.c.model == model)
        .where(ledger.c.window_start >= start, ledger.c.window_start < end)
        .order_by(ledger.c.window_start.desc())
        .limit(MAX_WINDOWS)
    )
    with engine.connect() as connection:
        return [WindowRow(*row[:7], partial=bool(row[7])) for row in connection.execute(query)]


def model_known(engine: Engine, project: str, model: str) -> bool:
    """Whether the ledger has ever had a window of the model (one index seek)."""
    query = select(ledger.c.window_start).where(ledger.c.project == project, ledger.c.model == model).limit(1)
    with engine.connect() as connection:
        return connection.execute(query).first() is not None


def prediction_series(
    engine: Engine, project: str, model: str, outputs: Sequence[str], start: datetime, end: datetime
) -> dict[str, list[Point]]:
    """The model's stored values of the given (total) outputs in ``[start, end)``, oldest first."""
    query = (
        select(predictions.c.output, predictions.c.time, predictions.c.value)
        .where(predictions.c.project == project, predictions.c.model == model)
        .where(predictions.c.output.in_(list(outputs)), predictions.c.time >= start, predictions.c.time < end)
        .order_by(predictions.c.time)
    )
    series: dict[str, list[Point]] = {output: [] for output in outputs}
    with engine.connect() as connection:
        for output, time, value in connection.execute(query):
            if value is not None and math.isfinite(value):
                series[output].append((time, value))
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
                    "lag_seconds": row.lag(self.now).total_seconds() if row.newest_done else None,
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
    cells = window_rows(engine, [(row.project, row.model) for row in shown], start, end)
    for row in shown:
        row.cells = lay_out(layout, cells[(row.project, row.model)], now, delay)
    totals = {cell: sum(row.counts.get(cell, 0) for row in matching) for cell in Cell if cell != Cell.EMPTY}
    affected = {cell: sum(1 for row in matching if row.counts.get(cell, 0)) for cell in totals}
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


# --- HTML ---------------------------------------------------------------------------------


def e(value: object) -> str:
    """HTML-escaped text, quotes included: everything from the database goes through here."""
    return html.escape(str(value), quote=True)


STYLE = """
*{box-sizing:border-box}
body{font:13px/1.35 system-ui,-apple-system,"Segoe UI","DejaVu Sans",sans-serif;margin:0;color:#212529}
header{background:#1c2b39;color:#f1f3f5;padding:8px 16px;display:flex;gap:16px;align-items:baseline;
  flex-wrap:wrap}
header h1{font-size:16px;margin:0}
header a{color:#f1f3f5;text-decoration:none}
header .meta{color:#adb5bd}
main{padding:10px 16px}
a{color:#1864ab}
.bar{display:flex;gap:18px;align-items:center;flex-wrap:wrap;margin:4px 0 10px}
.paused{background:#fff3bf;border-left:4px solid #f08c00;padding:6px 10px;margin:4px 0 10px}
.chip{display:inline-flex;align-items:center;gap:5px;margin-right:10px;white-space:nowrap}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;border:1px solid rgba(0,0,0,.12)}
.big{font-size:15px;font-weight:600}
form input[type=search]{width:220px;padding:3px 6px;font:inherit}
form button{font:inherit;padding:2px 10px}
.ranges a{padding:1px 6px;border-radius:3px;text-decoration:none}
.ranges a.on{background:#1c2b39;color:#fff}
table.hm{border-collapse:separate;border-spacing:1px;table-layout:fixed}
table.hm th,table.hm td{padding:0;font-weight:normal}
table.hm thead th{color:#868e96;font-size:11px;text-align:left;white-space:nowrap;overflow:hidden}
table.hm th.name{width:260px;max-width:260px;text-align:left;white-space:nowrap;overflow:hidden;
  text-overflow:ellipsis;padding:0 6px 0 4px;border-left:4px solid transparent}
table.hm td.n{width:44px;text-align:right;padding-right:6px;color:#495057;white-space:nowrap;
  font-variant-numeric:tabular-nums}
table.hm td.lag{width:64px}
table.hm td.n.z{color:#ced4da}
table.hm td.n.bad{color:#c92a2a;font-weight:600}
table.hm td.n.warn{color:#b35c00;font-weight:600}
table.hm tbody tr:hover th.name{background:#e7f5ff}
table.hm thead th.num{text-align:right;padding-right:6px}
.pager{margin:10px 0;display:flex;gap:12px}
.note{background:#fff9db;border:1px solid #ffe066;padding:8px 10px;border-radius:4px;max-width:900px}
.muted{color:#868e96}
h2{font-size:14px;margin:16px 0 4px}
svg.chart{display:block;max-width:1150px;width:100%;height:auto}
svg.chart text{font-size:11px;fill:#495057}
table.win{border-collapse:collapse;font-size:12px}
table.win th{text-align:left;color:#868e96;font-weight:normal;border-bottom:1px solid #dee2e6;
  padding:2px 10px 2px 0}
table.win td{padding:2px 10px 2px 0;border-bottom:1px solid #f1f3f5;vertical-align:top}
table.win td.err{max-width:700px;white-space:pre-wrap;word-break:break-word;color:#862e2e}
"""


def cell_styles(count: int) -> str:
    """The cells' colours and width, as CSS classes (a class per state keeps each cell short)."""
    width = cell_pixels(count)
    cells = ",".join(f"table.hm td.{cell.value}" for cell in Cell)
    rules = [f"{cells},table.hm th.t{{width:{width}px;min-width:{width}px;height:14px}}"]
    rules += [f"td.{cell.value}{{background:{colour}}}" for cell, colour in COLOURS.items()]
    rules += [f"th.name.w-{cell.value}{{border-left-color:{colour}!important}}" for cell, colour in COLOURS.items()]
    return "\n".join(rules)


def swatch(cell: Cell) -> str:
    return f'<span class="sw" style="background:{COLOURS[cell]}"></span>'


def tally(cell: Cell, count: int) -> str:
    return f'<span class="chip">{swatch(cell)}<b>{count:,}</b> {SHORT[cell]}</span>'


def page(title: str, body: str, extra_style: str = "") -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">'
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">{meta}'
        f"<style>{STYLE}{extra_style}</style></head><body>{body}</body></html>\n"
    )


def header(now: datetime, config: Config, subtitle: str) -> str:
    interval = format_age(config.schedule.interval)
    delay = format_age(config.schedule.delay)
    return (
        f'<header><h1><a href="/">Latigo</a></h1><span>{subtitle}</span>'
        f'<span class="meta">{now:%Y-%m-%d %H:%M} UTC · windows of {interval}, '
        f"due {delay} after their end</span></header>"
    )


def range_links(hours: int, href: Callable[[int], str]) -> str:
    links = "".join(
        f'<a class="{"on" if choice == hours else ""}" href="{e(href(choice))}">'
        f"{f'{choice // 24}d' if choice % 24 == 0 and choice > 24 else f'{choice}h'}</a>"
        for choice in HOUR_CHOICES
    )
    return f'<span class="ranges">last {links}</span>'


def model_href(project: str, model: str, hours: int) -> str:
    return f"/model/{quote(project, safe='')}/{quote(model, safe='')}?{urlencode({'hours': hours})}"


def index_href(hours: int, query: str = "", page_number: int = 1) -> str:
    params: dict[str, object] = {"hours": hours}
    if query:
        params["q"] = query
    if page_number > 1:
        params["page"] = page_number
    return "/?" + urlencode(params)


def count_cell(count: int, cell: Cell) -> str:
    if not count:
        return '<td class="n z">0</td>'
    tone = {Cell.DEAD: " bad", Cell.FAILED: " bad", Cell.LATE: " warn"}.get(cell, "")
    return f'<td class="n{tone}">{count}</td>'


def heatmap_row(row: ModelRow, now: datetime, hours: int) -> str:
    lag = row.lag(now)
    lag_title = (
        f"newest done window ended {row.newest_done:%Y-%m-%d %H:%M} UTC"
        if row.newest_done
        else f"no done window in the last {hours} h"
    )
    cells = "".join(f'<td class="{view.cell.value}" title="{e(view.title)}"></td>' for view in row.cells)
    counts = "".join(count_cell(row.counts.get(cell, 0), cell) for cell in COUNTED)
    return (
        f'<tr class="row" data-model="{e(row.name)}" data-worst="{row.worst.value}">'
        f'<th class="name w-{row.worst.value}"><a href="{e(model_href(row.project, row.model, hours))}" '
        f'title="{e(row.name)}">{e(row.name)}</a></th>'
        f'<td class="n lag" title="{e(lag_title)}">{format_age(lag)}</td>{counts}{cells}</tr>'
    )


def render_heatmap(data: Heatmap, config: Config) -> str:
    count = len(data.layout)
    every = label_every(count, data.layout)
    labels = "".join(
        f'<th class="t" colspan="{span}">{e(label)}</th>' for label, span in label_spans(data.layout, every)
    )
    numbers = "".join(f'<th class="num">{SHORT[cell]}</th>' for cell in COUNTED)
    column = data.layout[0].end - data.layout[0].start
    column_words = (
        "" if column == config.schedule.interval else f" (a column is {format_age(column)}: its worst window shown)"
    )
    legend = "".join(f'<span class="chip">{swatch(cell)}{e(MEANINGS[cell])}</span>' for cell in Cell)
    summary = "".join(tally(cell, data.totals.get(cell, 0)) for cell in COUNTED)
    found = (
        f"{data.matching:,} of {data.total:,} models match “{e(data.query)}”"
        if data.query
        else f"{data.total:,} models"
    )
    form = (
        '<form method="get" action="/">'
        f'<input type="search" name="q" value="{e(data.query)}" placeholder="filter models: project/model">'
        f'<input type="hidden" name="hours" value="{data.hours}"> <button>filter</button></form>'
    )
    pager = ""
    if data.pages > 1:
        previous = (
            f'<a rel="prev" href="{e(index_href(data.hours, data.query, data.page - 1))}">← previous</a>'
            if data.page > 1
            else '<span class="muted">← previous</span>'
        )
        following = (
            f'<a rel="next" href="{e(index_href(data.hours, data.query, data.page + 1))}">next →</a>'
            if data.page < data.pages
            else '<span class="muted">next →</span>'
        )
        pager = f'<nav class="pager">{previous}<span>page {data.page} of {data.pages}</span>{following}</nav>'
    rows = "".join(heatmap_row(row, data.now, data.hours) for row in data.rows)
    if not rows:
        nothing = f"no model with windows in the last {data.hours} h"
        rows = f'<tr><td colspan="{count + 7}" class="muted">{nothing}</td></tr>'
    json_href = "/api/status.json?" + urlencode({"hours": data.hours, "q": data.query, "page": data.page})
    paused = "".join(
        f'<p class="paused">Paused: <b>{e(outage.dependency)}</b> is down since {outage.since:%Y-%m-%d %H:%M} UTC; '
        f"{outage.executors} executor{'s' if outage.executors != 1 else ''} wait for it and resume by "
        f'themselves. <span class="muted">{e(outage.error[:TOOLTIP_ERROR])}</span></p>'
        for outage in data.outages
    )
    body = (
        header(data.now, config, f"status of the last {data.hours} h{column_words}")
        + "<main>"
        + paused
        + f'<div class="bar"><span class="big">{found}</span>{summary}</div>'
        f'<div class="bar">{form}{range_links(data.hours, lambda hours: index_href(hours, data.query))}'
        f'<span class="muted">worst first: {data.affected[Cell.DEAD]:,} models with dead windows, '
        f"{data.affected[Cell.FAILED]:,} with failed, {data.affected[Cell.LATE]:,} with late</span></div>"
        f'<div class="bar legend">{legend}</div>'
        f'<table class="hm"><thead><tr><th class="name">model</th><th class="num">lag</th>{numbers}{labels}'
        f"</tr></thead><tbody>{rows}</tbody></table>{pager}"
        f'<p class="muted">As JSON: <a href="{e(json_href)}">/api/status.json</a>'
        f" · the page reloads every {REFRESH_S} s</p></main>"
    )
    return page("Latigo status", body, cell_styles(count))


# --- the model page -----------------------------------------------------------------------

# a chart's size in SVG units and its margins (left for the value labels, bottom for the times)
CHART_WIDTH, CHART_HEIGHT = 1100, 200
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 10, 22
# height of the strip of window states under the first chart
STRIP_HEIGHT = 10


def render_chart(
    points: Sequence[Point],
    start: datetime,
    end: datetime,
    gap: timedelta,
    threshold: float | None = None,
    strip: Sequence[tuple[Window, CellView]] = (),
) -> str:
    """An SVG line chart of ``points`` over ``[start, end]``, with value and time axes, a
    dashed threshold line, and optionally a strip of window states under the time axis."""
    points = downsample(points)
    high = max([value for _, value in points] + [threshold or 0.0, 1e-9])
    ticks = value_ticks(high * 1.05)
    bottom = CHART_HEIGHT - MARGIN_BOTTOM
    x = Scale(start.timestamp(), end.timestamp(), MARGIN_LEFT, CHART_WIDTH - MARGIN_RIGHT)
    y = Scale(0.0, ticks[-1], bottom, MARGIN_TOP)
    height = CHART_HEIGHT + (STRIP_HEIGHT + 6 if strip else 0)
    parts = [f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {height}" role="img" xmlns="http://www.w3.org/2000/svg">']
    for tick in ticks:
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{CHART_WIDTH - MARGIN_RIGHT}" '
            f'y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="{"#adb5bd" if tick == 0 else "#e9ecef"}"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
    for moment in time_ticks(start, end):
        left = x(moment.timestamp())
        parts.append(
            f'<line x1="{left:.1f}" x2="{left:.1f}" y1="{MARGIN_TOP}" y2="{bottom + 4}" stroke="#f1f3f5"/>'
            f'<text x="{left:.1f}" y="{bottom + 16}" text-anchor="middle">{e(tick_label(moment))}</text>'
        )
    if threshold is not None:
        parts.append(
            f'<line class="threshold" x1="{MARGIN_LEFT}" x2="{CHART_WIDTH - MARGIN_RIGHT}" '
            f'y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" stroke="#c92a2a" stroke-dasharray="5 4"/>'
            f'<text x="{CHART_WIDTH - MARGIN_RIGHT - 4}" y="{y(threshold) - 4:.1f}" text-anchor="end" '
            f'style="fill:#c92a2a">threshold</text>'
        )
    for run in segments(points, gap):
        coordinates = " ".join(f"{x(moment.timestamp()):.1f},{y(value):.1f}" for moment, value in run)
        if len(run) == 1:
            moment, value = run[0]
            parts.append(f'<circle cx="{x(moment.timestamp()):.1f}" cy="{y(value):.1f}" r="1.8" fill="#1864ab"/>')
        else:
            parts.append(
                f'<polyline class="series" points="{coordinates}" fill="none" stroke="#1864ab" '
                'stroke-width="1.5" stroke-linejoin="round"/>'
            )
    top = CHART_HEIGHT + 2
    if strip:
        parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{top + STRIP_HEIGHT - 1}" text-anchor="end">windows</text>')
    for window, view in strip:
        left, right = x(max(window.start, start).timestamp()), x(min(window.end, end).timestamp())
        parts.append(
            f'<rect class="w {view.cell.value}" x="{left:.1f}" y="{top}" '
            f'width="{max(0.5, right - left - 0.6):.1f}" height="{STRIP_HEIGHT}" fill="{COLOURS[view.cell]}">'
            f"<title>{e(view.title)}</title></rect>"
        )
    parts.append(
        f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT}" y1="{MARGIN_TOP}" y2="{bottom}" stroke="#adb5bd"/></svg>'
    )
    return "".join(parts)


def render_model(engine: Engine, config: Config, now: datetime, project: str, model: str, hours: int) -> str:
    grid = Grid(config.schedule.interval, config.schedule.anchor)
    delay = config.schedule.delay
    start = now - timedelta(hours=hours)
    windows = model_windows(engine, project, model, grid.floor(start), now)
    views = [(Window(row.start, row.end), describe(Window(row.start, row.end), [row], now, delay)) for row in windows]
    counts: dict[Cell, int] = {}
    for _, view in views:
        counts[view.cell] = counts.get(view.cell, 0) + 1
    newest_done = max((row.end for row in windows if row.state == State.DONE), default=None)
    name = f"{project}/{model}"
    summary = "".join(tally(cell, counts.get(cell, 0)) for cell in (*COUNTED, Cell.PENDING))
    lag = f"lag {format_age(now - newest_done)}" if newest_done else f"no done window in the last {hours} h"
    charts = ""
    if isinstance(config.predictions, InfluxPredictionsConfig):
        charts = (
            '<p class="note">Predictions are stored in InfluxDB '
            f"(database <code>{e(config.predictions.database)}</code> at "
            f"<code>{e(config.predictions.url)}</code>), not in the Latigo database: chart them in Grafana, "
            "measurement <code>total-anomaly-scaled</code>, "
            f"tag <code>machine = {e(model)}</code>, field <code>sensor_value</code>.</p>"
        )
    else:
        series = prediction_series(engine, project, model, [output for output, _, _ in CHARTS], start, now)
        strip = [(window, view) for window, view in views if window.end > start]
        for index, (output, title, threshold) in enumerate(CHARTS):
            points = series[output]
            if not points and threshold is not None:
                continue  # a model without thresholds has no confidence
            charts += f"<h2>{e(title)}</h2>"
            if points:
                charts += render_chart(points, start, now, grid.interval, threshold, strip if index == 0 else ())
            else:
                charts += f'<p class="muted">no {e(output)} predictions stored in the last {hours} h</p>'
    table_rows = "".join(
        f'<tr class="{view.cell.value}"><td>{e(format_span(window))}</td>'
        f'<td><span class="chip">{swatch(view.cell)}{e(MEANINGS[view.cell])}</span></td>'
        f"<td>{e(row.revision or '')}</td><td>{row.attempts}</td>"
        f"<td>{row.updated_at:%m-%d %H:%M:%S}</td>"
        f'<td class="err">{e((row.error or "")[:TABLE_ERROR])}</td></tr>'
        for row, (window, view) in zip(windows, views)
    )
    table = (
        '<table class="win"><thead><tr><th>window (UTC)</th><th>state</th><th>revision</th><th>attempts</th>'
        f"<th>updated</th><th>last error or note</th></tr></thead><tbody>{table_rows}</tbody></table>"
        if table_rows
        else f'<p class="muted">no windows in the last {hours} h</p>'
    )
    body = (
        header(now, config, f'<a href="{e(index_href(hours))}">all models</a> / {e(name)}') + "<main>"
        f'<div class="bar"><span class="big">{e(name)}</span><span>{e(lag)}</span>{summary}</div>'
        f'<div class="bar">{range_links(hours, lambda choice: model_href(project, model, choice))}</div>'
        f"{charts}<h2>Windows, newest first</h2>{table}</main>"
    )
    return page(f"Latigo · {name}", body)


# --- the application ----------------------------------------------------------------------


class NotFound(Exception):
    pass


class StatusApp:
    """The WSGI application; reads the database at every request, holds no state."""

    def __init__(self, engine: Engine, config: Config, clock: Clock = system_clock, page_size: int = PAGE_SIZE) -> None:
        self._engine = engine
        self._config = config
        self._clock = clock
        self._page_size = page_size

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            status, kind, text = "405 Method Not Allowed", "text/plain", "GET only\n"
        else:
            # WSGI hands the path over as latin-1; names are UTF-8
            path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
            params = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
            status, kind, text = self._route(path, params)
        body = text.encode("utf-8")
        start_response(
            status,
            [
                ("Content-Type", f"{kind}; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("Content-Security-Policy", CSP),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [] if method == "HEAD" else [body]

    def _route(self, path: str, params: dict[str, str]) -> tuple[str, str, str]:
        """(status, content type, text) of one GET."""
        hours = bounded(params.get("hours"), DEFAULT_HOURS, 1, MAX_HOURS)
        now = self._clock()
        try:
            if path == "/":
                return "200 OK", "text/html", render_heatmap(self._heatmap(now, hours, params), self._config)
            if path == "/api/status.json":
                data = self._heatmap(now, hours, params).to_dict(self._config)
                return "200 OK", "application/json", json.dumps(data, indent=1)
            if path.startswith("/model/"):
                project, _, model = path[len("/model/") :].partition("/")
                if not project or not model or not model_known(self._engine, project, model):
                    raise NotFound(f"no model {project}/{model} in the ledger")
                return (
                    "200 OK",
                    "text/html",
                    render_model(self._engine, self._config, now, project, model, hours),
                )
            raise NotFound(f"nothing at {path}")
        except NotFound as missing:
            body = f'<main><p>{e(missing)}</p><p><a href="/">all models</a></p></main>'
            return (
                "404 Not Found",
                "text/html",
                page("Not found", header(now, self._config, "not found") + body),
            )
        except SQLAlchemyError as error:
            log.warning("status page: the database failed: %s", error)
            reason = str(error).splitlines()[0]  # the driver's words, without the statement
            return "503 Service Unavailable", "text/plain", f"the Latigo database cannot be read: {reason}\n"

    def _heatmap(self, now: datetime, hours: int, params: dict[str, str]) -> Heatmap:
        page_number = bounded(params.get("page"), 1, 1, 1_000_000)
        query = params.get("q", "")[:200]
        return heatmap(self._engine, self._config, now, hours, query, page_number, self._page_size)


class _Server(ThreadingMixIn, WSGIServer):
    """A request per thread, so one slow browser never holds the page up for the others."""

    daemon_threads = True


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # to the log, not stderr
        log.debug("%s %s", self.address_string(), format % args)


def serve(app: Callable, host: str, port: int) -> WSGIServer:
    """Serve ``app`` on host:port (0: any free port, see ``server_port``) in a daemon thread;
    ``shutdown()`` then ``server_close()`` stop it."""
    server = make_server(host, port, app, server_class=_Server, handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    return server
