"""The status page, served for real and looked at in a real browser.

The ledger and the prediction store are made by the real pipeline: the scheduler and
executors run in-process against the local Gordo with a controllable clock, through a
sensor outage, then a few windows are failed, dead-lettered or left queued past their due
time with the ledger's own calls, and a fleet of models is planned beside them so the page
has to sort, filter and page. The app is served on 127.0.0.1 and read over HTTP; Debian's
Chromium renders it headless, and its screenshots are checked pixel by pixel and kept in
docs/ for the README.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote
from wsgiref.util import setup_testing_defaults

import numpy as np
import pytest
import requests
from sqlalchemy import delete, func
from sqlalchemy import select as sql_select

from latigo import web
from latigo.components import Components, build
from latigo.config import Config
from latigo.demo.feeder import feed
from latigo.demo.models import tags_of
from latigo.executor import Executor
from latigo.ledger import Ledger, Outcome, PlannedWindow, State
from latigo.providers.predictions.sql import code_of
from latigo.scheduler import Scheduler
from latigo.schema import ledger, predictions, sensor_data
from latigo.task import Task
from latigo.web import Cell
from latigo.window import Grid, Window
from tests.clock import Clock

UTC = timezone.utc
# the repository, where the screenshots are kept for the README
REPO = Path(__file__).resolve().parent.parent
# the first run of the pipeline: one hour before the continuous windows
START = datetime(2026, 3, 2, 11, 7, tzinfo=UTC)
# where the clock stands while the page is looked at: [12:00, 12:30) is due (12:35) and still queued
NOW = datetime(2026, 3, 2, 12, 37, tzinfo=UTC)
HALF_HOUR = timedelta(minutes=30)
# the heatmap's first column at NOW with the default 24 hours: 48 windows ending at 12:30
FIRST_COLUMN = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
# turbine-1's sensors are silent for these four hours: one whole task (history is coalesced into
# runs of schedule.max_task_span from its oldest window, 14:30), eight no_data windows
OUTAGE = Window(datetime(2026, 3, 1, 22, 30, tzinfo=UTC), datetime(2026, 3, 2, 2, 30, tzinfo=UTC))
# the window of pump-1 whose last attempt failed (it will be retried)
FAILED = Window(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
FAILED_ERROR = "cannot reach Gordo: connection refused (attempt 1 of 5)"
# the window of compressor-1 given up on
DEAD = Window(datetime(2026, 3, 2, 7, 0, tzinfo=UTC), datetime(2026, 3, 2, 7, 30, tzinfo=UTC))
DEAD_ERROR = "Gordo answered 503 Service Unavailable 5 times"
# the newest window, queued at 12:37 and not handled: late for every demo model
LATE = Window(datetime(2026, 3, 2, 12, 0, tzinfo=UTC), datetime(2026, 3, 2, 12, 30, tzinfo=UTC))
# a model whose name and error are HTML: the page must show them, never run them
EVIL_MODEL = '<script>alert("model")</script>'
EVIL_ERROR = "<img src=x onerror=alert(1)> & broken"
# models of a fleet planned beside the demo's, so there is more than one page
FLEET = 240
# fleet models whose newest three windows are stuck in the queue
STUCK = ("unit-011", "unit-012")
# the models on the page: the three demo models, the fleet, the one with an HTML name
MODELS = 3 + FLEET + 1
# Chromium's own command line, as it runs headless here (no sandbox as root, no calls home)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# the screenshots' size
SCREEN = (1400, 900)
# how long Chromium may take to render a page
BROWSER_TIMEOUT_S = 90
# a heatmap cell's class is its state
CELLS = {cell.value for cell in Cell}
# how long `latigo web` may take to start serving
START_BOUND_S = 60


# --- the scenario ---------------------------------------------------------------------------


@dataclass
class Site:
    url: str
    parts: Components
    clock: Clock
    revision: str


def config_for(database_url: str, gordo_url: str) -> Config:
    return Config(
        database={"url": database_url},
        models={"base_url": gordo_url, "projects": ["demo"], "read_timeout": 20},
        schedule={"initial_backfill": "20h", "max_task_span": "4h"},
        executor={"retry_base": "1s"},
    )


def drain(parts: Components) -> None:
    Executor.from_components(parts).run(threading.Event(), until_idle=True)


def task(project: str, model: str, revision: str, window: Window) -> Task:
    return Task(project=project, model=model, revision=revision, start=window.start, end=window.end)


def plan_fleet(led: Ledger, revision: str) -> None:
    """A fleet of models, all done but for a few: some with a sensor outage, some with a
    partial window, some new (planned only for the last six hours), two with their newest
    windows stuck in the queue."""
    day = Window(FIRST_COLUMN, LATE.end)
    windows = list(Grid(HALF_HOUR).windows(day.start, day.end))
    for index in range(FLEET):
        model = f"unit-{index:03d}"
        mine = windows[-12:] if index % 40 == 7 else windows
        led.plan([PlannedWindow("fleet", model, revision, window) for window in mine])
        stuck = model in STUCK
        led.finish(
            task("fleet", model, revision, Window(mine[0].start, mine[-4 if stuck else -1].end)), State.DONE
        )
        if stuck:
            led.mark_queued([task("fleet", model, revision, Window(mine[-3].start, mine[-1].end))])
        if index % 17 == 3:
            outage = Window(windows[20].start, windows[23].end)
            led.finish(task("fleet", model, revision, outage), State.NO_DATA, "no sensor data in the window")
        if index % 31 == 9:  # a short gap: one window with a row missing
            gap = windows[30]
            led.record(
                task("fleet", model, revision, gap),
                [Outcome(gap, State.DONE, f"2 of 3 rows: no complete sensor data at {gap.start:%H:%M}", 2, 3)],
            )


@pytest.fixture(scope="module")
def site(tmp_path_factory, gordo_server):
    """The demo models predicted for 21 hours by the real pipeline, then failures, a late
    window and a fleet; the app served on a free port of 127.0.0.1 with the clock at NOW."""
    folder = tmp_path_factory.mktemp("web")
    clock = Clock(START)
    parts = build(config_for(f"sqlite:///{folder}/latigo.db", gordo_server.base_url), clock=clock)
    server = None
    try:
        feed(parts.sensors, START - timedelta(hours=22), NOW)
        with parts.engine.begin() as connection:  # turbine-1's historian was down for an hour
            connection.execute(
                delete(sensor_data).where(
                    sensor_data.c.tag.in_(tags_of("turbine-1")),
                    sensor_data.c.time >= OUTAGE.start,
                    sensor_data.c.time < OUTAGE.end,
                )
            )
        scheduler = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, clock)
        scheduler.tick()  # 20 h of history
        drain(parts)
        clock.now = START + timedelta(hours=1)
        scheduler.tick()  # the continuous windows of the hour
        drain(parts)
        revision = gordo_server.revision
        parts.ledger.fail(task("demo", "pump-1", revision, FAILED), FAILED_ERROR)
        dead = task("demo", "compressor-1", revision, DEAD)
        parts.ledger.dead_letter(dead.to_json(), "exhausted", DEAD_ERROR, 5, dead)
        evil = PlannedWindow("demo", EVIL_MODEL, revision, DEAD)
        parts.ledger.plan([evil])
        parts.ledger.dead_letter(b"{}", "permanent", EVIL_ERROR, 1, task("demo", EVIL_MODEL, revision, DEAD))
        plan_fleet(parts.ledger, revision)
        clock.now = NOW
        assert scheduler.tick().planned == 3  # queued, and no executor takes it: late
        app = web.StatusApp(parts.engine, parts.config, clock)
        server = web.serve(app, "127.0.0.1", 0)
        yield Site(f"http://127.0.0.1:{server.server_port}", parts, clock, revision)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        parts.close()


# --- reading the page -----------------------------------------------------------------------


@dataclass
class Row:
    model: str
    href: str
    lag: str
    counts: list[str]
    cells: list[tuple[str, str]]  # (state class, tooltip)


class HeatmapParser(HTMLParser):
    """The heatmap's rows as a browser's DOM has them."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        classes = (found.get("class") or "").split()
        if tag == "tr" and "row" in classes:
            self.rows.append(Row(found["data-model"] or "", "", "", [], []))
        elif not self.rows:
            return
        elif tag == "a" and not self.rows[-1].href:
            self.rows[-1].href = found["href"] or ""
        elif tag == "td" and classes and classes[0] in CELLS:
            self.rows[-1].cells.append((classes[0], found.get("title") or ""))
        elif tag == "td" and "n" in classes:
            self._cell = "lag" if "lag" in classes else "count"

    def handle_data(self, data: str) -> None:
        if self._cell == "lag":
            self.rows[-1].lag = data
        elif self._cell == "count":
            self.rows[-1].counts.append(data)
        self._cell = None


def rows_of(text: str) -> list[Row]:
    parser = HeatmapParser()
    parser.feed(text)
    return parser.rows


def get(site: Site, path: str) -> requests.Response:
    return requests.get(site.url + path, timeout=30)


def column(moment: datetime) -> int:
    return int((moment - FIRST_COLUMN) / HALF_HOUR)


def row_named(rows: list[Row], name: str) -> Row:
    [row] = [row for row in rows if row.model == name]
    return row


# --- over HTTP ------------------------------------------------------------------------------


def test_the_heatmap_has_a_row_per_model_and_a_cell_per_window(site):
    answer = get(site, "/")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in answer.headers["Content-Security-Policy"]  # default-src 'none': no script runs
    rows = rows_of(answer.text)
    assert len(rows) == web.PAGE_SIZE
    assert {len(row.cells) for row in rows} == {48}
    assert {"demo/pump-1", "demo/compressor-1", "demo/turbine-1"} <= {row.model for row in rows}
    assert f"{MODELS} models" in answer.text
    assert (
        len(answer.content) < web.PAGE_SIZE * 48 * 70
    )  # bounded by the page, whatever the fleet: ~55 B a cell
    pump = row_named(rows, "demo/pump-1")
    assert pump.href == "/model/demo/pump-1?hours=24"
    assert pump.lag == "37m"  # now 12:37, newest done window ended 12:00
    # done, partial, no data, late, failed, dead: 42 done (the newest due window at 11:07 and 20 h before
    # it, two more at 12:07: 43 predicted, one failed since)
    assert pump.counts == ["42", "0", "0", "1", "1", "0"]


def test_each_cell_shows_its_windows_state(site):
    rows = rows_of(get(site, "/").text)
    pump, compressor, turbine = (
        row_named(rows, f"demo/{name}") for name in ("pump-1", "compressor-1", "turbine-1")
    )
    # the demo models were first planned at 11:07: [10:30, 11:00) and 20 h before it, from 14:30
    first_planned = column(datetime(2026, 3, 1, 14, 30, tzinfo=UTC))
    assert {state for state, _ in pump.cells[:first_planned]} == {"empty"}
    assert "not planned" in pump.cells[0][1]
    assert pump.cells[first_planned][0] == "done"
    state, title = pump.cells[column(FAILED.start)]
    assert (
        state == "failed" and "03-02 09:00–09:30" in title and FAILED_ERROR in title and "1 attempt" in title
    )
    state, title = compressor.cells[column(DEAD.start)]
    assert state == "dead" and DEAD_ERROR in title
    assert [state for state, _ in turbine.cells[column(OUTAGE.start) : column(OUTAGE.end)]] == ["no_data"] * 8
    assert turbine.cells[column(OUTAGE.end)][0] == "done"  # the data is back
    for row in (pump, compressor, turbine):
        assert row.cells[column(LATE.start)][0] == "late"
        assert "late" in row.cells[column(LATE.start)][1]
    # the cells agree with the ledger, window by window, for every demo model
    with site.parts.engine.connect() as connection:
        recorded = connection.execute(
            sql_select(ledger.c.model, ledger.c.window_start, ledger.c.state).where(
                ledger.c.project == "demo"
            )
        ).all()
    expected = {
        State.DONE: "done",
        State.NO_DATA: "no_data",
        State.FAILED: "failed",
        State.DEAD: "dead",
        State.QUEUED: "late",
    }
    for model, start, state in recorded:
        if start >= FIRST_COLUMN:
            assert row_named(rows, f"demo/{model}").cells[column(start)][0] == expected[State(state)]


def stylesheet(text: str) -> dict[str, str]:
    """The page's own cell rules, as a browser would apply them: class -> background."""
    [css] = re.findall(r"<style>(.*?)</style>", text, re.S)
    return dict(re.findall(r"\btd\.([a-z_]+)\{background:(#[0-9a-f]{6})\}", css))


def test_cells_are_painted_in_their_states_colour(site):
    text = get(site, "/").text
    backgrounds = stylesheet(text)
    rows = rows_of(text)
    compressor, turbine = row_named(rows, "demo/compressor-1"), row_named(rows, "demo/turbine-1")
    # each cell's class resolves, through the page's own stylesheet, to its state's colour
    painted = {
        backgrounds[compressor.cells[column(DEAD.start)][0]]: "dead",
        backgrounds[compressor.cells[column(LATE.start)][0]]: "late",
        backgrounds[turbine.cells[column(OUTAGE.start)][0]]: "no data",
        backgrounds[turbine.cells[column(OUTAGE.end)][0]]: "done",
        backgrounds[compressor.cells[0][0]]: "not planned",
    }
    assert painted == {
        "#c92a2a": "dead",
        "#fcc419": "late",
        "#adb5bd": "no data",
        "#2f9e44": "done",
        "#f1f3f5": "not planned",
    }
    # every class a cell of the page carries is painted, and no two states share a colour
    used = {state for row in rows for state, _ in row.cells}
    assert used <= set(backgrounds) and len(set(backgrounds.values())) == len(backgrounds) == len(Cell)


def test_rows_come_worst_first(site):
    rows = rows_of(get(site, "/").text)
    assert [row.model for row in rows[:6]] == [
        "demo/compressor-1",  # dead, and late
        f"demo/{EVIL_MODEL}",  # dead
        "demo/pump-1",  # failed, and late
        "fleet/unit-011",  # three late
        "fleet/unit-012",
        "demo/turbine-1",  # one late
    ]
    # then the stalest, then those with windows without data
    assert all(row.counts[3:] == ["0", "0", "0"] for row in rows[6:])
    assert rows[6].model.startswith("fleet/") and rows[6].lag == "7m" and rows[6].counts[2] == "4"


class Markup(HTMLParser):
    """What a browser makes of a page: the elements it would build, and the text and
    attribute values it would show (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.words: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.words += [value for name, value in attrs if value and not name.startswith("on")]
        assert not [name for name, _ in attrs if name.startswith("on")], f"an event handler on <{tag}>"

    def handle_data(self, data: str) -> None:
        self.words.append(data)


def markup_of(text: str) -> Markup:
    parser = Markup()
    parser.feed(text)
    parser.close()
    return parser


def assert_shown_not_run(text: str, *shown: str) -> None:
    """The page builds no script, image or other element from the values, and shows each of
    them whole, as text or as an attribute's value."""
    found = markup_of(text)
    assert not {"script", "img", "iframe", "object"} & set(found.tags), found.tags
    for value in shown:
        assert any(value in words for words in found.words), f"{value!r} not shown"


def test_names_and_errors_from_the_database_are_escaped(site):
    text = get(site, "/").text
    assert "<script>" not in text and "<img" not in text
    assert_shown_not_run(text, f"demo/{EVIL_MODEL}", EVIL_ERROR)
    evil = row_named(rows_of(text), f"demo/{EVIL_MODEL}")
    assert evil.href == f"/model/demo/{quote(EVIL_MODEL, safe='')}?hours=24"
    page = get(site, evil.href)
    assert page.status_code == 200
    assert "<script>" not in page.text and "<img" not in page.text
    assert_shown_not_run(page.text, f"demo/{EVIL_MODEL}", EVIL_ERROR)


# a model name and an error that try to leave an attribute, a tag and a text node
XSS_MODEL = """x"><script>alert('m')</script><b title='"""
XSS_ERROR = """</td><script>alert("e")</script>' onmouseover="alert(1)"""
XSS_QUERY = """"><script>alert('q')</script>"""


def test_html_from_the_database_or_the_request_is_shown_on_every_page_never_run(tmp_path):
    """Through the WSGI interface, every page that names the model, its error or the
    request's own text: the heatmap (filtered by the hostile text too), the model page and
    the not-found page."""
    now = datetime(2026, 3, 2, 12, 37, tzinfo=UTC)
    parts = build(Config(database={"url": f"sqlite:///{tmp_path}/latigo.db"}), clock=Clock(now))
    try:
        parts.ledger.plan([PlannedWindow("p", XSS_MODEL, "1", LATE)])
        parts.ledger.fail(task("p", XSS_MODEL, "1", LATE), XSS_ERROR)
        app = web.StatusApp(parts.engine, parts.config, parts.clock)
        pages = {
            "/": (f"p/{XSS_MODEL}", XSS_ERROR),
            f"/?q={quote(XSS_MODEL[:6])}": (f"p/{XSS_MODEL}", XSS_MODEL[:6]),
            f"/model/p/{XSS_MODEL}": (f"p/{XSS_MODEL}", XSS_ERROR),
            f"/model/p/{XSS_QUERY}": (f"no model p/{XSS_QUERY} in the ledger",),
        }
        for path, shown in pages.items():
            path, _, query = path.partition("?")
            environ: dict = {"PATH_INFO": path, "QUERY_STRING": query}
            setup_testing_defaults(environ)
            answer: dict = {}
            text = b"".join(app(environ, lambda status, headers: answer.update(status=status))).decode()
            assert answer["status"] in ("200 OK", "404 Not Found"), (path, answer)
            assert "<script" not in text.lower(), path
            assert_shown_not_run(text, *shown)
        status, text = call(app, "/api/status.json")
        assert json.loads(text)["models"][0]["model"] == XSS_MODEL  # JSON carries the name as it is
    finally:
        parts.close()


def test_filter_and_paging(site):
    units = rows_of(get(site, "/?q=UNIT-01").text)
    assert sorted(row.model for row in units) == [f"fleet/unit-{index:03d}" for index in range(10, 20)]
    first = rows_of(get(site, "/").text)
    second_page = get(site, "/?page=2")
    second = rows_of(second_page.text)
    assert len(second) == MODELS - web.PAGE_SIZE
    assert "page 2 of 2" in second_page.text
    assert not {row.model for row in first} & {row.model for row in second}
    assert len({row.model for row in first + second}) == MODELS
    assert [row.model for row in rows_of(get(site, "/?page=99").text)] == [row.model for row in second]
    nothing = get(site, "/?q=no-such-model")
    assert rows_of(nothing.text) == [] and "0 of 244 models match" in nothing.text


def test_hours_choose_the_columns_within_bounds(site):
    assert {len(row.cells) for row in rows_of(get(site, "/?hours=6&q=demo/").text)} == {12}
    [pump] = rows_of(get(site, "/?hours=100000&q=demo/pump").text)  # a week at most: 336 windows,
    assert len(pump.cells) == 84  # four to a column, on even hours: 02-23 14:00 .. 03-02 14:00
    state, title = pump.cells[81]  # [08:00, 10:00) on 03-02
    assert state == "failed" and title.startswith("03-02 08:00–10:00 1 failed, retrying, 3 done: ")
    assert pump.cells[-1] == ("late", "03-02 12:00–14:00 late (queued past due)")  # and the future
    assert {len(row.cells) for row in rows_of(get(site, "/?hours=abc&q=demo/").text)} == {48}


def test_the_json_endpoint_has_the_heatmaps_data(site):
    answer = get(site, "/api/status.json?q=demo/")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    data = answer.json()
    assert data["now"] == NOW.isoformat() and data["hours"] == 24 and data["interval_seconds"] == 1800
    assert len(data["columns"]) == 48 and data["columns"][0]["start"] == FIRST_COLUMN.isoformat()
    assert data["models_total"] == MODELS and data["models_matching"] == 4
    by_name = {f"{model['project']}/{model['model']}": model for model in data["models"]}
    compressor = by_name["demo/compressor-1"]
    assert (
        compressor["cells"][column(DEAD.start)] == "dead"
        and compressor["cells"][column(LATE.start)] == "late"
    )
    assert compressor["counts"] == {
        "done": 42, "partial": 0, "no_data": 0, "failed": 0, "dead": 1, "late": 1, "pending": 0,
    }  # fmt: skip
    assert compressor["lag_seconds"] == 37 * 60
    assert by_name["demo/turbine-1"]["counts"]["no_data"] == 8
    assert data["totals"]["dead"] == 2 and data["models_with"] == {
        "dead": 2,
        "failed": 1,
        "late": 3,
        "done": 3,
        "partial": 0,
        "no_data": 1,
        "pending": 0,  # the HTML one: a dead window
    }
    everything = get(site, "/api/status.json").json()
    assert everything["pages"] == 2 and len(everything["models"]) == web.PAGE_SIZE
    assert everything["totals"]["late"] == 3 + 3 * len(STUCK)


def test_the_model_page_charts_the_stored_anomaly(site):
    answer = get(site, "/model/demo/compressor-1")
    assert answer.status_code == 200
    text = answer.text
    with site.parts.engine.connect() as connection:
        stored = connection.execute(
            sql_select(func.count()).where(
                predictions.c.model == "compressor-1",
                predictions.c.output == code_of("total-anomaly-scaled"),
                predictions.c.time >= NOW - timedelta(hours=24),
            )
        ).scalar_one()
    charts = re.findall(r'<svg class="chart".*?</svg>', text)
    assert len(charts) == 2  # total anomaly, and its confidence with the threshold
    drawn = sum(
        len(points.split()) for points in re.findall(r'<polyline class="series" points="([^"]+)"', charts[0])
    )
    assert drawn == stored > 100
    assert 'class="threshold"' in charts[1] and 'class="threshold"' not in charts[0]
    for label in ("18:00", "02 Mar", "06:00", "12:00"):  # the time axis, midnight as a date
        assert f">{label}</text>" in charts[0]
    # the strip of window states under the first chart, and the windows table
    assert 'class="w dead"' in charts[0] and 'class="w late"' in charts[0]
    assert DEAD_ERROR in text and "Windows, newest first" in text
    assert text.index("03-02 12:00–12:30") < text.index("03-02 11:30–12:00")  # newest first


def test_unknown_models_and_paths_are_not_found(site):
    assert get(site, "/model/demo/no-such-model").status_code == 404
    assert get(site, "/model/demo").status_code == 404
    assert get(site, "/nothing-here").status_code == 404
    assert requests.post(site.url + "/", timeout=10).status_code == 405
    head = requests.head(site.url + "/", timeout=30)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["Content-Length"]) > 10_000


def call(app: web.StatusApp, path: str) -> tuple[str, str]:
    """One request straight through the WSGI interface."""
    environ: dict = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    answer: dict = {}
    body = b"".join(app(environ, lambda status, headers: answer.update(status=status)))
    return answer["status"], body.decode()


def test_predictions_in_influxdb_point_to_grafana(site):
    config = site.parts.config.model_copy(
        update={"predictions": Config(predictions={"type": "influx", "database": "plant"}).predictions}
    )
    status, text = call(web.StatusApp(site.parts.engine, config, site.clock), "/model/demo/pump-1")
    assert status == "200 OK"
    assert "Grafana" in text and "<code>plant</code>" in text and "<svg" not in text
    assert FAILED_ERROR in text  # the windows are still the ledger's


def test_a_broken_database_is_a_503_not_a_traceback(tmp_path, site):
    app = web.StatusApp(
        build(Config(database={"url": f"sqlite:///{tmp_path}/empty.db"}), migrate=False).engine,
        site.parts.config,
        site.clock,
    )
    status, text = call(app, "/")
    assert status.startswith("503") and "cannot be read" in text and "no such table: ledger" in text


# --- the real browser -----------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail(
            "chromium not found: install Debian's package (apt-get install -y chromium)", pytrace=False
        )
    return found


def browse(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def png_pixels(path: Path) -> np.ndarray:
    """The RGB pixels of an 8-bit, non-interlaced PNG (what Chromium writes), decoded with
    the standard library's zlib and PNG's five row filters."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    assert depth == 8 and colour_type in (2, 6) and interlace == 0
    channels = 3 if colour_type == 2 else 4
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(
        height, width * channels + 1
    )
    pixels = np.zeros((height, width * channels), dtype=np.uint8)
    previous = np.zeros(width * channels, dtype=np.uint8)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].copy()
        if kind == 1:  # Sub: add the pixel to the left, a running sum per channel
            line = np.cumsum(line.reshape(width, channels), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            line = line + previous
        elif kind in (3, 4):  # Average, Paeth: each byte depends on the one just decoded
            row = [0] * channels + line.tolist()  # a zero pixel to the left of the first
            above = [0] * channels + previous.tolist()
            for x in range(channels, len(row)):
                left, up, upper_left = row[x - channels], above[x], above[x - channels]
                if kind == 3:
                    row[x] = (row[x] + (left + up) // 2) & 255
                    continue
                to_left, to_up = abs(up - upper_left), abs(left - upper_left)  # |estimate - left|, |... - up|
                to_corner = abs(left + up - 2 * upper_left)
                guess = (
                    left
                    if to_left <= to_up and to_left <= to_corner
                    else up
                    if to_up <= to_corner
                    else upper_left
                )
                row[x] = (row[x] + guess) & 255
            row = row[channels:]
            line = np.array(row, dtype=np.uint8)
        pixels[y], previous = line, line
    return pixels.reshape(height, width, channels)[:, :, :3]


def colours_in(pixels: np.ndarray) -> set[int]:
    packed = (
        (pixels[:, :, 0].astype(np.uint32) << 16) | (pixels[:, :, 1].astype(np.uint32) << 8) | pixels[:, :, 2]
    )
    return set(np.unique(packed).tolist())


def rgb(colour: str) -> int:
    return int(colour.lstrip("#"), 16)


def screenshot(tmp_path: Path, url: str, name: str) -> tuple[Path, np.ndarray]:
    target = tmp_path / name
    browse(tmp_path, f"--screenshot={target}", f"--window-size={SCREEN[0]},{SCREEN[1]}", url)
    assert target.exists()
    width, height = struct.unpack(">II", target.read_bytes()[16:24])
    assert (width, height) == SCREEN
    return target, png_pixels(target)


def test_a_real_browser_renders_the_heatmap_and_the_chart(site, tmp_path):
    # the DOM after Chromium has parsed and laid out the page: every row of the page is there
    dom = browse(tmp_path, "--dump-dom", site.url + "/").stdout
    rows = rows_of(dom)
    assert len(rows) == web.PAGE_SIZE and rows[0].model == "demo/compressor-1"
    assert {len(row.cells) for row in rows} == {48}
    assert "<script>" not in dom

    status, pixels = screenshot(tmp_path, site.url + "/", "status-page.png")
    seen = colours_in(pixels)
    # the cells are painted: every state on the first screen shows in its exact colour
    for cell in (Cell.DONE, Cell.PARTIAL, Cell.NO_DATA, Cell.LATE, Cell.FAILED, Cell.DEAD, Cell.EMPTY):
        assert rgb(web.COLOURS[cell]) in seen, f"no {cell.value} pixel in the screenshot"
    done = np.all(pixels == np.array([0x2F, 0x9E, 0x44], dtype=np.uint8), axis=2).sum()
    assert done > 40 * 48 * 8 * 8  # dozens of rows of green cells, not a stray pixel
    assert len(seen) > 50  # text is antialiased: a blank or a flat page has a handful

    model, chart = screenshot(tmp_path, site.url + "/model/demo/compressor-1", "model-page.png")
    line = np.all(chart == np.array([0x18, 0x64, 0xAB], dtype=np.uint8), axis=2)
    assert line.sum() > 500  # the anomaly line is drawn
    columns = np.flatnonzero(line.any(axis=0))
    assert columns.max() - columns.min() > 800  # across most of the chart's width
    assert rgb(web.COLOURS[Cell.DEAD]) in colours_in(chart)  # the threshold and the dead window

    docs = REPO / "docs"
    docs.mkdir(exist_ok=True)
    shutil.copyfile(status, docs / "status-page.png")
    shutil.copyfile(model, docs / "model-page.png")


# --- the command ----------------------------------------------------------------------------


def test_latigo_web_serves_until_sigterm(site, tmp_path):
    # a copy of the scenario's database, with one window of pump-1 done an hour ago by the real clock
    copy = tmp_path / "latigo.db"
    shutil.copyfile(site.parts.config.database.url.removeprefix("sqlite:///"), copy)
    recent = build(Config(database={"url": f"sqlite:///{copy}"}), migrate=False)
    try:
        ended = Grid(HALF_HOUR).floor(datetime.now(UTC)) - HALF_HOUR
        window = Window(ended - HALF_HOUR, ended)
        recent.ledger.plan([PlannedWindow("demo", "pump-1", site.revision, window)])
        recent.ledger.finish(task("demo", "pump-1", site.revision, window), State.DONE)
    finally:
        recent.close()
    config = tmp_path / "latigo.yaml"
    config.write_text(f"database: {{url: 'sqlite:///{copy}'}}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "latigo", "--config", str(config), "web", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url, seen, deadline = None, "", time.monotonic() + START_BOUND_S
        while url is None and time.monotonic() < deadline and process.poll() is None:
            if select.select([process.stderr], [], [], 1.0)[0]:
                line = process.stderr.readline()
                seen += line
                found = re.search(r"status page on (http://127\.0\.0\.1:\d+/)", line)
                url = found.group(1) if found else None
        assert url, f"latigo web did not start:\n{seen}"
        answer = requests.get(url + "api/status.json", timeout=30)
        assert answer.status_code == 200
        # the real clock: the scenario's windows are long past; only the window just done is recent
        data = answer.json()
        assert data["models_total"] == 1 and [model["model"] for model in data["models"]] == ["pump-1"]
        assert 0 <= data["models"][0]["lag_seconds"] < START_BOUND_S + 3600
        assert requests.get(url + "model/demo/pump-1", timeout=30).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- the layout, with plain values ----------------------------------------------------------


def test_late_is_queued_or_planned_past_end_plus_delay():
    end, delay = datetime(2026, 3, 2, 12, 0, tzinfo=UTC), timedelta(minutes=5)
    due = end + delay
    for state in (State.PLANNED, State.QUEUED):
        assert web.cell_of(state, end, due - timedelta(seconds=1), delay) == Cell.PENDING
        assert web.cell_of(state, end, due, delay) == Cell.LATE
    assert web.cell_of(State.DONE, end, due + timedelta(days=1), delay) == Cell.DONE
    assert web.cell_of(State.DEAD, end, due, delay) == Cell.DEAD
    assert web.cell_of(None, end, due, delay) == Cell.EMPTY
    assert web.is_due(end, due, delay) and not web.is_due(end, due - timedelta(microseconds=1), delay)


def test_a_column_of_several_windows_shows_the_worst():
    assert web.worst([Cell.DONE, Cell.EMPTY, Cell.NO_DATA]) == Cell.NO_DATA
    assert web.worst([Cell.LATE, Cell.FAILED, Cell.DONE]) == Cell.FAILED
    assert web.worst([Cell.FAILED, Cell.DEAD]) == Cell.DEAD
    assert web.worst([Cell.PENDING, Cell.DONE]) == Cell.DONE
    assert web.worst([]) == Cell.EMPTY
    assert set(web.COLOURS) == set(Cell) == set(web.MEANINGS) and len(set(web.COLOURS.values())) == len(Cell)


def test_columns_lie_on_the_grid_and_end_at_the_newest_ended_window():
    grid = Grid(HALF_HOUR)
    layout = web.columns(grid, NOW, 24)
    assert len(layout) == 48 and layout[-1].end == datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
    assert all(grid.is_aligned(window.start) and window.end - window.start == HALF_HOUR for window in layout)
    week = web.columns(grid, NOW, 168)  # 336 windows: four per column, starting on even hours
    assert len(week) == 84 and all(window.end - window.start == 4 * HALF_HOUR for window in week)
    assert week[-1] == Window(datetime(2026, 3, 2, 12, tzinfo=UTC), datetime(2026, 3, 2, 14, tzinfo=UTC))
    spans = web.label_spans(week, web.label_every(len(week), week))  # a label a day, at midnight
    assert spans[:2] == [("", 5), ("24 Feb", 12)] and spans[-1] == ("02 Mar", 7)
    minutes = web.columns(Grid(timedelta(minutes=1)), NOW, 168)  # capped at MAX_WINDOWS windows
    assert (minutes[-1].end - minutes[0].start) <= timedelta(minutes=web.MAX_WINDOWS) + minutes[
        0
    ].end - minutes[0].start
    assert len(minutes) <= web.MAX_COLUMNS
    assert web.column_index(layout[3].start + timedelta(minutes=1), layout) == 3
    assert (
        web.column_index(layout[-1].end, layout) is None
        and web.column_index(layout[0].start - HALF_HOUR, layout) is None
    )


def test_tooltips_name_the_window_the_states_and_the_last_error():
    window = Window(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    now, delay = datetime(2026, 3, 2, 12, 0, tzinfo=UTC), timedelta(minutes=5)
    rows = [
        web.WindowRow(window.start, window.start + HALF_HOUR, State.DONE, "7", 1, None),
        web.WindowRow(window.start + HALF_HOUR, window.end, State.FAILED, "7", 2, "timeout"),
    ]
    view = web.describe(window, rows, now, delay)
    assert view.cell == Cell.FAILED and view.title == "03-02 09:00–10:00 1 failed, retrying, 1 done: timeout"
    single = web.describe(Window(rows[1].start, rows[1].end), rows[1:], now, delay)
    assert single.title == "03-02 09:30–10:00 failed, retrying, 2 attempts: timeout"
    assert web.describe(window, [], now, delay).title == "03-02 09:00–10:00 not planned"
    assert web.describe(window, [], window.end, delay).title == "03-02 09:00–10:00 not yet due"
    layout = [window, Window(window.end, window.end + timedelta(hours=1))]
    assert [view.cell for view in web.lay_out(layout, rows, now, delay)] == [Cell.FAILED, Cell.EMPTY]


def test_worst_models_sort_first():
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    fresh = now - timedelta(minutes=30)

    def row(name: str, newest: datetime | None = fresh, **counts: int) -> web.ModelRow:
        return web.ModelRow("p", name, {Cell(key): value for key, value in counts.items()}, newest)

    models = [
        row("ok"),
        row("stale", now - timedelta(hours=5)),
        row("never", None),
        row("late", late=1),
        row("failed", failed=1),
        row("dead", dead=1),
        row("dead-late", dead=1, late=2),
    ]
    ordered = sorted(models, key=lambda model: web.severity_key(model, now))
    assert [model.model for model in ordered] == [
        "dead-late",
        "dead",
        "failed",
        "late",
        "never",
        "stale",
        "ok",
    ]
    assert models[-1].worst == Cell.DEAD and models[0].worst == Cell.EMPTY


def test_query_parameters_are_bounded():
    assert web.bounded(None, 24, 1, 168) == 24
    assert web.bounded("6", 24, 1, 168) == 6
    assert web.bounded("0", 24, 1, 168) == 1
    assert web.bounded("99999", 24, 1, 168) == 168
    assert web.bounded("2h", 24, 1, 168) == 24
    assert web.page_count(0, 200) == 1 and web.page_count(200, 200) == 1 and web.page_count(201, 200) == 2


def test_ages_read_at_a_glance():
    assert web.format_age(None) == "-"
    assert web.format_age(timedelta(minutes=37, seconds=59)) == "37m"
    assert web.format_age(timedelta(hours=5, minutes=2)) == "5h 02m"
    assert web.format_age(timedelta(days=3, hours=4, minutes=9)) == "3d 4h"
    assert web.format_age(timedelta(seconds=-5)) == "0m"


def test_chart_scales_and_ticks():
    assert web.nice_step(10, 5) == 2 and web.nice_step(0.7, 4) == 0.2 and web.nice_step(130, 4) == 50
    assert web.value_ticks(9.3) == [0, 5, 10] and web.value_ticks(9.3, target=10) == list(range(11))
    assert web.value_ticks(1.05)[-1] >= 1.05 and web.value_ticks(1.05)[0] == 0
    scale = web.Scale(0, 10, 100, 0)  # values up, pixels down
    assert scale(0) == 100 and scale(10) == 0 and scale(2.5) == 75
    assert web.Scale(3, 3, 7, 9)(3) == 7
    start = datetime(2026, 3, 1, 12, 37, tzinfo=UTC)
    ticks = web.time_ticks(start, start + timedelta(hours=24))
    assert ticks[0] == datetime(2026, 3, 1, 15, 0, tzinfo=UTC) and len(ticks) == 8
    assert all(later - earlier == timedelta(hours=3) for earlier, later in zip(ticks, ticks[1:]))
    assert (
        web.tick_label(datetime(2026, 3, 2, tzinfo=UTC)) == "02 Mar" and web.tick_label(ticks[0]) == "15:00"
    )


def test_chart_points_keep_spikes_and_break_at_gaps():
    start = datetime(2026, 3, 2, tzinfo=UTC)
    points = [(start + timedelta(minutes=minute), 1.0) for minute in range(3000)]
    points[1234] = (points[1234][0], 50.0)
    reduced = web.downsample(points, 1000)
    assert len(reduced) <= 1000 and max(value for _, value in reduced) == 50.0
    assert web.downsample(points[:10], 1000) == points[:10]
    gappy = points[:5] + points[100:103]
    assert [len(run) for run in web.segments(gappy, timedelta(minutes=30))] == [5, 3]
    assert web.segments([], HALF_HOUR) == []


def test_time_header_labels_round_times():
    layout = web.columns(Grid(HALF_HOUR), NOW, 24)
    every = web.label_every(len(layout), layout)
    spans = web.label_spans(layout, every)
    assert sum(span for _, span in spans) == len(layout)
    assert every == 4 and spans[0] == ("", 3) and spans[1] == ("14:00", 4)  # from 12:30, then every 2 h
    assert ("02 Mar", 4) in spans and spans[-1] == ("12:00", 1)


def test_the_queries_agree_on_sqlite_and_postgresql(database_url):
    """The grouped counts and the page's cells, on both databases, from the ledger's own calls."""
    clock = Clock(NOW)
    parts = build(Config(database={"url": database_url}), clock=clock, migrate=True)
    try:
        windows = list(Grid(HALF_HOUR).windows(LATE.end - timedelta(hours=3), LATE.end))  # 09:30 .. 12:30: 6
        for model in ("a", "b"):
            parts.ledger.plan([PlannedWindow("p", model, "1", window) for window in windows])
        done = [Outcome(window, State.DONE, None, 3, 3) for window in windows[:4]]
        done[2] = Outcome(windows[2], State.DONE, "2 of 3 rows: no complete sensor data at 10:50", 2, 3)
        parts.ledger.record(task("p", "a", "1", Window(windows[0].start, windows[3].end)), done)
        parts.ledger.fail(task("p", "a", "1", windows[4]), "boom")
        parts.ledger.mark_queued([task("p", "a", "1", windows[5])])
        dead = task("p", "b", "1", windows[0])
        parts.ledger.dead_letter(dead.to_json(), "permanent", "<gone>", 1, dead)
        data = web.heatmap(parts.engine, parts.config, NOW, 3, "", 1, 10)
    finally:
        parts.close()
    assert [row.model for row in data.rows] == ["b", "a"]
    b, a = data.rows
    assert a.counts == {
        Cell.DONE: 3,
        Cell.PARTIAL: 1,
        Cell.NO_DATA: 0,
        Cell.FAILED: 1,
        Cell.DEAD: 0,
        Cell.LATE: 1,
        Cell.PENDING: 0,
    }
    assert a.newest_done == windows[3].end and b.newest_done is None
    assert [view.cell for view in a.cells] == [Cell.DONE] * 2 + [Cell.PARTIAL, Cell.DONE, Cell.FAILED, Cell.LATE]
    assert a.cells[2].title.endswith("partial (rows missing: data gaps): 2 of 3 rows: no complete sensor data at 10:50")
    assert [view.cell for view in b.cells] == [Cell.DEAD] + [Cell.LATE] * 5  # planned, never queued, due
    assert "<gone>" in b.cells[0].title  # escaped when rendered, not before
    assert json.loads(json.dumps(data.to_dict(parts.config)))["models"][0]["cells"][0] == "dead"
