"""The status page's HTML: Jinja2 templates with autoescaping always on, so a model name or
an error text from the database reaches the page as text, never as markup. The templates
live in ``templates/`` beside this module (with the page's style: the page fetches nothing);
this fills them from the pages' data.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined

from latigo.config import Config, InfluxPredictionsConfig
from latigo.readmodel import format_lag
from latigo.web.chart import geometry
from latigo.web.data import Heatmap, ModelPage
from latigo.web.layout import (
    COLOURS,
    COUNTED,
    HOUR_CHOICES,
    MEANINGS,
    SHORT,
    TOOLTIP_ERROR,
    Cell,
    cell_pixels,
    format_span,
    hours_label,
    index_href,
    label_every,
    label_spans,
    model_href,
)

# seconds between the page's own reloads (a meta refresh: no script)
REFRESH_S = 60
# the longest error shown in a model page's window table
TABLE_ERROR = 600
# the count columns shown in a warning tone
TONES = {Cell.DEAD: " bad", Cell.FAILED: " bad", Cell.LATE: " warn"}
# the counts a model page sums up: the heatmap's and the windows not due yet
MODEL_SUMMARY = (*COUNTED, Cell.PENDING)

# every template escapes what it is given (autoescape on for all of them, whatever the name)
ENVIRONMENT = Environment(
    loader=PackageLoader("latigo.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENVIRONMENT.filters.update(
    age=format_lag,
    hours=hours_label,
    px=lambda value: f"{value:.1f}",
    span=format_span,
)
ENVIRONMENT.globals.update(
    Cell=Cell,
    all_cells=list(Cell),
    colours=COLOURS,
    counted=COUNTED,
    hour_choices=HOUR_CHOICES,
    index_href=index_href,
    meanings=MEANINGS,
    model_href=model_href,
    refresh=REFRESH_S,
    short=SHORT,
    table_error=TABLE_ERROR,
    tones=TONES,
    tooltip_error=TOOLTIP_ERROR,
)


def _frame(now: datetime, config: Config, title: str) -> dict:
    """What base.html needs: the title, the moment and the schedule named in the header."""
    return {
        "title": title,
        "now": now,
        "interval": config.schedule.interval,
        "delay": config.schedule.delay,
        "columns": 0,
        "cells": list(Cell),
    }


def render_heatmap(data: Heatmap, config: Config) -> str:
    column = data.layout[0].end - data.layout[0].start
    column_words = (
        "" if column == config.schedule.interval else f" (a column is {format_lag(column)}: its worst window shown)"
    )
    json_href = "/api/status.json?" + urlencode({"hours": data.hours, "q": data.query, "page": data.page})
    return ENVIRONMENT.get_template("heatmap.html").render(
        _frame(data.now, config, "Latigo status"),
        data=data,
        columns=cell_pixels(len(data.layout)),
        column_words=column_words,
        labels=label_spans(data.layout, label_every(len(data.layout), data.layout)),
        index_for=lambda hours: index_href(hours, data.query),
        json_href=json_href,
    )


def render_model(page: ModelPage, config: Config) -> str:
    charts = []
    strip = [(window.start, window.end, view) for _, window, view in page.windows if window.end > page.start]
    for index, (output, title, threshold, points) in enumerate(page.charts or ()):
        drawn = (
            geometry(points, page.start, page.now, page.interval, threshold, strip if index == 0 else ())
            if points
            else None
        )
        charts.append((output, title, drawn))
    influx = config.predictions if isinstance(config.predictions, InfluxPredictionsConfig) else None
    return ENVIRONMENT.get_template("model.html").render(
        _frame(page.now, config, f"Latigo · {page.name}"),
        page=page,
        charts=charts,
        influx=influx,
        summary=MODEL_SUMMARY,
        model_for=lambda hours: model_href(page.project, page.model, hours),
    )


def render_not_found(now: datetime, config: Config, message: str) -> str:
    return ENVIRONMENT.get_template("not_found.html").render(_frame(now, config, "Not found"), message=message)
