"""The status page: which of thousands of models are fresh, late or failing, at a glance.

``latigo status`` answers in a terminal; operators watching a fleet want a picture. This is
a small WSGI application that renders HTML with inline SVG straight from the Latigo
database: no JavaScript, no CDN, nothing fetched from elsewhere, because the networks
Latigo runs in are often closed.

- ``/`` a heatmap of models against the recent windows, worst models first, filtered and
  paged, so the page costs the same with ten models or ten thousand;
- ``/model/<project>/<model>`` one model's total anomaly over time and its recent windows;
- ``/api/status.json`` the heatmap's data, for scripts.

The parts: ``app`` (routes and server), ``data`` (what a page shows, read through
``latigo.readmodel``), ``layout`` (cells, columns, sorting, tooltips: pure), ``chart`` (scales,
ticks, downsampling: pure), ``render`` and ``templates/`` (Jinja2, autoescaped).
"""

from latigo.readmodel import WindowRow, is_due
from latigo.readmodel import format_lag as format_age
from latigo.web.app import StatusApp, serve
from latigo.web.chart import (
    MAX_POINTS,
    Scale,
    downsample,
    nice_step,
    segments,
    tick_label,
    time_ticks,
    value_ticks,
)
from latigo.web.data import Heatmap, heatmap, model_rows
from latigo.web.layout import (
    COLOURS,
    MAX_COLUMNS,
    MAX_WINDOWS,
    MEANINGS,
    PAGE_SIZE,
    Cell,
    CellView,
    ModelRow,
    bounded,
    cell_of,
    column_index,
    columns,
    describe,
    label_every,
    label_spans,
    lay_out,
    page_count,
    severity_key,
    worst,
)
from latigo.web.render import render_heatmap

# the names callers (the CLI, tests, benches) use, whichever module now holds them
__all__ = [
    "COLOURS",
    "MAX_COLUMNS",
    "MAX_POINTS",
    "MAX_WINDOWS",
    "MEANINGS",
    "PAGE_SIZE",
    "Cell",
    "CellView",
    "Heatmap",
    "ModelRow",
    "Scale",
    "StatusApp",
    "WindowRow",
    "bounded",
    "cell_of",
    "column_index",
    "columns",
    "describe",
    "downsample",
    "format_age",
    "heatmap",
    "is_due",
    "label_every",
    "label_spans",
    "lay_out",
    "model_rows",
    "nice_step",
    "page_count",
    "render_heatmap",
    "segments",
    "serve",
    "severity_key",
    "tick_label",
    "time_ticks",
    "value_ticks",
    "worst",
]
