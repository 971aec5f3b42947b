"""The status page's layout: what each heatmap cell shows, which windows a column stands
for, how models sort and what a tooltip says. Pure functions of ledger rows and the clock,
so they are tested with plain values; the queries are the read model's, the HTML the
templates'.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import quote, urlencode

from latigo.ledger import State
from latigo.readmodel import WindowRow, is_due, lag
from latigo.web.chart import TIME_STEPS, tick_label
from latigo.window import Grid, Window

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
# the longest error quoted in a tooltip; the model page shows more
TOOLTIP_ERROR = 300


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


def bounded(text: str | None, default: int, low: int, high: int) -> int:
    """An integer query parameter clamped to ``[low, high]``; missing or unreadable: the default."""
    try:
        value = int(text) if text is not None else default
    except ValueError:
        value = default
    return max(low, min(high, value))


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


def format_span(window: Window) -> str:
    """``03-02 11:30–12:00``: a window as a tooltip names it."""
    end = f"{window.end:%H:%M}" if window.end - window.start < timedelta(days=1) else f"{window.end:%m-%d %H:%M}"
    return f"{window.start:%m-%d %H:%M}–{end}"


def page_count(total: int, size: int) -> int:
    return max(1, math.ceil(total / size))


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


@dataclass(frozen=True)
class CellView:
    cell: Cell
    title: str


def cell_of_row(row: WindowRow, now: datetime, delay: timedelta) -> Cell:
    return cell_of(row.state, row.end, now, delay, row.partial)


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
        return lag(self.newest_done, now)

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
    cells = [cell_of_row(row, now, delay) for row in rows]
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
    errors = [row.error for row in rows if row.error and cell_of_row(row, now, delay) in EXPLAINED]
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


def tally_cells(states: dict[State, int], partial: int, late: int, pending: int) -> dict[Cell, int]:
    """A read-model tally as the counts of the cells it paints."""
    return {
        Cell.DONE: states.get(State.DONE, 0) - partial,
        Cell.PARTIAL: partial,
        Cell.NO_DATA: states.get(State.NO_DATA, 0),
        Cell.FAILED: states.get(State.FAILED, 0),
        Cell.DEAD: states.get(State.DEAD, 0),
        Cell.LATE: late,
        Cell.PENDING: pending,
    }


def hours_label(choice: int) -> str:
    """``6h``, ``24h``, ``7d``: a range as its link reads."""
    return f"{choice // 24}d" if choice % 24 == 0 and choice > 24 else f"{choice}h"


def model_href(project: str, model: str, hours: int) -> str:
    return f"/model/{quote(project, safe='')}/{quote(model, safe='')}?{urlencode({'hours': hours})}"


def index_href(hours: int, query: str = "", page_number: int = 1) -> str:
    params: dict[str, object] = {"hours": hours}
    if query:
        params["q"] = query
    if page_number > 1:
        params["page"] = page_number
    return "/?" + urlencode(params)
