"""Growth benchmark: what a week and a year of history cost the scheduler, the operator's
views and the executors' store, on SQLite and on a fresh PostgreSQL 15 (fsync off).

    .venv/bin/python -m bench.growth [--models 1000] [--databases sqlite,postgresql] [--spans 1w,1y]

A fleet's ledger gets 48 rows per model a day: 17.5 M rows a year at 1,000 models, were
its windows older than ``retention.compact_after`` (8 days) not compacted into runs
(``latigo.history``). Per database and span, a fresh database gets the history of
``bench._history.fill_history`` (ledger and its history, dead letters, SQL predictions;
what it holds and what it cannot is said there), then this measures:

- **scheduler tick**: ``Scheduler.tick()`` of a scheduler in step (one new window due per
  model, planned, published on the SQL queue, marked queued), as ``bench.scheduler
  --history`` does; each run a window later, after the bench marked the previous run's
  windows done and emptied the queue, as executors would have;
- **latigo status**: the command itself, through click's ``CliRunner`` with a config file
  (loading it, the migrations check, the queries and the printed table);
- **GET /** and **GET /api/status.json**: ``latigo.web.StatusApp`` called in-process with
  a WSGI environ from ``wsgiref.util``: the first page, the default 24 hours;
- **backfill --dry-run** over the 30 days before now: ``Backfill.plan`` (dry) and
  ``cli_backfill.format_summary``, the command's work; the command itself would discover
  the models through Gordo, and no Gordo here serves 1,000 (``latigo.demo.fleet`` answers);
- **store / window**: ``SqlPredictions.store`` of one new window (309 values) of a model
  with the whole span stored, as an executor in continuous operation does;
- **read / window**: that model's newest window read by the status page's
  ``web.data.prediction_series`` and by ``latigo predictions --model``'s
  ``status.recent_predictions``;
- **bytes / model-window** of each table with its indexes (SQLite's ``dbstat``,
  PostgreSQL's ``pg_total_relation_size``) over the model-windows it holds, and their sum:
  one window of one model on disk. InfluxDB is not measured: influxd keeps new points in
  its WAL and cache until a shard has been cold for 10 minutes (its default), so a cheap
  measure would be of the WAL, not of the compressed TSM files a year lives in.

The spans of a database are filled side by side, then each figure is timed with the spans
taking turns (1w, 1y, 1w, 1y, ...), so a change of the shared machine's load between the
week's runs and the year's cannot pass for growth. Each time is the median of REPEATS runs
after one untimed warm-up (LONG_REPEATS when the slowest warm-up took over LONG_S). The
warm-up is profiled (``bench._statements``): for the longest span the statements taking
most of each figure's SQL time are printed with the Latigo function that issued them and
the database's plan.

The 9,000-model projection is linear: a figure for the whole fleet (tick, status, pages,
backfill) times 9,000 / models, a figure of one window (store, reads, bytes) as measured.
Linear is an upper bound for the tick: ``bench.scheduler`` measured 9,000 models at
0.74-0.96 of nine times 1,000. The one read that scans the predictions table grows with
that table, which is built only in part (``bench._history``): see its plan.

Limits: the default run (1,000 models; 1 week and 1 year; both databases) takes about 25
minutes on 2 cores and 15 GB of disk at most (one database's spans at a time, dropped after
their figures); ``--models 50 --spans 1d,1w`` takes under 2 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pandas as pd
from click.testing import CliRunner
from sqlalchemy import Engine, delete, text, update

from bench import _services as services
from bench import _statements
from bench._history import RESOLUTION, History, check_compaction, fill_history, gordo_answer
from bench._statements import Profiler, Recording
from latigo import cli, status
from latigo.backfill import Backfill, Mode
from latigo.cli_backfill import format_summary
from latigo.components import Components, build
from latigo.config import Config, dump_config, parse_duration
from latigo.demo.fleet import FLEET_REVISION, Fleet
from latigo.ledger import State
from latigo.scheduler import Scheduler
from latigo.schema import dead_letters, ledger, ledger_history, prediction_tags, predictions, task_queue
from latigo.web import StatusApp
from latigo.web.data import CHARTS, prediction_series
from latigo.window import Grid, Window

# the moment the history ends and the views look from: any time works
NOW = datetime(2026, 3, 2, 12, 7, tzinfo=UTC)
# the fleet's project
PROJECT = "growth"
# models in the fleet by default
DEFAULT_MODELS = 1000
# spans of history measured by default
DEFAULT_SPANS = "1w,1y"
# the fleet size the figures are projected to
PROJECTED_MODELS = 9000
# what "y" means in --spans (Latigo's durations stop at weeks)
YEAR = timedelta(days=365)
# timed runs per figure (after one untimed warm-up)
REPEATS = 5
# timed runs of a figure whose warm-up took longer than LONG_S seconds
LONG_REPEATS = 3
# the warm-up time, seconds, past which a figure gets LONG_REPEATS
LONG_S = 5.0
# the warm-up time, seconds, past which one timed run is enough (noise is a few % of it)
VERY_LONG_S = 60.0
# the reach of the measured backfill --dry-run
BACKFILL_REACH = timedelta(days=30)
# a ratio longest / shortest span above this is a figure that grows with history
GROWS = 1.2
# a figure for the whole fleet, projected linearly to PROJECTED_MODELS
FLEET_SCOPE = "fleet"
# a figure of one window of one model, the same at any fleet size
WINDOW_SCOPE = "window"


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str  # "ms" (a time) or "B" (bytes per model-window)
    scope: str  # FLEET_SCOPE or WINDOW_SCOPE: how it projects to PROJECTED_MODELS


# what is printed, in this order; the timed ones are the keys of views' runs
FIGURES = (
    Figure("scheduler tick", "ms", FLEET_SCOPE),
    Figure("latigo status", "ms", FLEET_SCOPE),
    Figure("GET /", "ms", FLEET_SCOPE),
    Figure("GET /api/status.json", "ms", FLEET_SCOPE),
    Figure("backfill --dry-run, 30 days", "ms", FLEET_SCOPE),
    Figure("store / window", "ms", WINDOW_SCOPE),
    Figure("read / window, prediction_series", "ms", WINDOW_SCOPE),
    Figure("read / window, recent_predictions", "ms", WINDOW_SCOPE),
    Figure("bytes / model-window, ledger", "B", WINDOW_SCOPE),
    Figure("bytes / model-window, ledger_history", "B", WINDOW_SCOPE),
    Figure("bytes / model-window, dead_letters", "B", WINDOW_SCOPE),
    Figure("bytes / model-window, predictions", "B", WINDOW_SCOPE),
    Figure("bytes / model-window, all", "B", WINDOW_SCOPE),
)


@dataclass
class Measured:
    """One figure of one database and span: its value (seconds or bytes), how many timed
    runs it is the median of, and its profiled warm-up."""

    value: float
    runs: int = 0
    warm_up: Recording | None = None


def measure(profiler: Profiler, runs: Sequence[Callable[[int], object]]) -> list[Measured]:
    """Median seconds of ``run(k)`` for k = 1..REPEATS (fewer when slow) of each of ``runs``
    (one per span), after a profiled warm-up ``run(0)`` of each. The timed runs take turns
    (1w, 1y, 1w, 1y, ...), so a drift of the shared machine's load weighs on every span
    alike instead of on whichever was measured while it lasted."""
    warm_ups = []
    for run in runs:
        with profiler.recording() as warm_up:
            run(0)
        warm_ups.append(warm_up)
    slowest = max(warm_up.seconds for warm_up in warm_ups)
    repeats = 1 if slowest > VERY_LONG_S else LONG_REPEATS if slowest > LONG_S else REPEATS
    times: list[list[float]] = [[] for _ in runs]
    for number in range(1, repeats + 1):
        for run, timed in zip(runs, times):
            started = time.perf_counter()
            run(number)
            timed.append(time.perf_counter() - started)
    return [Measured(statistics.median(timed), len(timed), warm_up) for timed, warm_up in zip(times, warm_ups)]


# ---------------------------------------------------------------- the measured views


def get(app: StatusApp, path: str) -> bytes:
    """One GET of the WSGI app in this process: its body (anything but 200 raises)."""
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    answered: list[str] = []
    body = b"".join(app(environ, lambda status_line, headers: answered.append(status_line)))
    if not answered[0].startswith("200"):
        raise RuntimeError(f"GET {path}: {answered[0]}: {body[:300]!r}")
    return body


def latigo_status(config_file: Path) -> None:
    """``latigo status`` as an operator runs it; anything but exit 0 raises."""
    result = CliRunner().invoke(cli.main, ["--config", str(config_file), "status"])
    if result.exit_code != 0:
        raise RuntimeError(f"latigo status exited {result.exit_code}: {result.output[-500:]}") from result.exception


def settle_tick(engine: Engine) -> None:
    """What executors would do after a tick, in bulk: its windows done, the queue empty.
    The bench's housekeeping between two ticks, not a measured part."""
    with engine.begin() as connection:
        connection.execute(update(ledger).where(ledger.c.state == State.QUEUED).values(state=State.DONE))
        connection.execute(delete(task_queue))


def views(parts: Components, fleet: Fleet, history: History, config_file: Path) -> dict[str, Callable[[int], object]]:
    """Every timed figure of one database and span, as a run ``run(k)`` to time. The tick
    goes last: it adds windows."""
    config, engine = parts.config, parts.engine
    interval = config.schedule.interval
    app = StatusApp(engine, config, lambda: NOW)
    planner = Backfill(
        parts.ledger,
        fleet,
        Grid(interval, config.schedule.anchor),
        lambda: NOW,
        max_task_span=config.schedule.max_task_span,
        delay=config.schedule.delay,
    )
    models = planner.models([PROJECT])
    reach = planner.range(NOW - BACKFILL_REACH, NOW)
    model, newest = history.deep[0], history.newest
    outputs = [output for output, _, _ in CHARTS]
    rows = len(pd.date_range(newest.start, newest.end, freq=RESOLUTION, inclusive="left"))
    moment = [NOW]
    scheduler = Scheduler(config, fleet, parts.ledger, parts.queue, lambda: moment[0])

    def store(number: int) -> None:
        # continuous operation: each run a new window after the history, nothing stored there yet
        window = Window(newest.end + number * interval, newest.end + (number + 1) * interval)
        parts.predictions.store(PROJECT, model, FLEET_REVISION, window, gordo_answer(window, number))

    def series(_: int) -> None:
        found = prediction_series(engine, PROJECT, model, outputs, newest.start, newest.end)
        assert len(found[outputs[0]]) == rows, found

    def recent(_: int) -> None:
        assert len(status.recent_predictions(engine, outputs[0], newest.start, model)) == rows

    def backfill(_: int) -> None:
        format_summary(planner.plan(models, *reach, Mode.MISSING, dry_run=True))

    def tick(number: int) -> None:
        moment[0] = NOW + number * interval
        report = scheduler.tick()
        assert report.planned == len(fleet.names) == report.published_tasks, report
        settle_tick(engine)

    runs: dict[str, Callable[[int], object]] = {
        "latigo status": lambda _: latigo_status(config_file),
        "GET /": lambda _: get(app, "/"),
        "GET /api/status.json": lambda _: json.loads(get(app, "/api/status.json")),
        "backfill --dry-run, 30 days": lambda _: format_summary(
            planner.plan(models, *reach, Mode.MISSING, dry_run=True)
        ),
        "read / window, prediction_series": series,
        "read / window, recent_predictions": recent,
        "store / window": store,  # after the reads: it stores windows after the one they read
        "scheduler tick": tick,
    }
    return runs


# the tables whose bytes the growth figures count
HISTORY_TABLES = (ledger.name, ledger_history.name, dead_letters.name, predictions.name, prediction_tags.name)


def table_bytes(engine: Engine, tables: Sequence[str] = HISTORY_TABLES) -> dict[str, int]:
    """Bytes of each table with its indexes (TOAST and partitions): SQLite's ``dbstat``,
    PostgreSQL's ``pg_total_relation_size``."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            owner: dict[str, str] = dict(connection.exec_driver_sql("SELECT name, tbl_name FROM sqlite_schema").all())
            sizes: dict[str, int] = defaultdict(int)
            for name, size in connection.exec_driver_sql("SELECT name, pgsize FROM dbstat WHERE aggregate = TRUE"):
                sizes[owner.get(name, name)] += size
            found = {table: sizes[table] for table in tables}
        else:
            # a partitioned table has no storage of its own: its partitions hold it
            size = text(
                "SELECT pg_total_relation_size(CAST(:table AS regclass)) "
                "+ coalesce(sum(pg_total_relation_size(inhrelid)), 0) "
                "FROM pg_inherits WHERE inhparent = CAST(:table AS regclass)"
            )
            found = {table: int(connection.execute(size, {"table": table}).scalar_one()) for table in tables}
        connection.rollback()
    return found


def bytes_per_window(sizes: dict[str, int], history: History) -> dict[str, Measured]:
    """Bytes per model-window: the ledger's, its history's and the dead letters' over every
    window of the span, the predictions' over the windows they hold; their sum is one
    model-window on disk."""
    per = {
        "ledger": sizes[ledger.name] / history.model_windows,
        "ledger_history": sizes[ledger_history.name] / history.model_windows,
        "dead_letters": sizes[dead_letters.name] / history.model_windows,
        "predictions": (sizes[predictions.name] + sizes[prediction_tags.name]) / history.prediction_windows,
    }
    per["all"] = sum(per.values())
    return {f"bytes / model-window, {name}": Measured(value) for name, value in per.items()}


# ---------------------------------------------------------------- one database and span


@dataclass
class Run:
    """The figures of one database and span, and what its history held."""

    database: str
    span: str
    history: History
    figures: dict[str, Measured]
    file_bytes: int | None  # the SQLite file's


@dataclass
class Filled:
    """One database of one span, filled and open, with its figures so far."""

    span: str
    parts: Components
    history: History
    runs: dict[str, Callable[[int], object]]
    figures: dict[str, Measured]


def fill_span(stack: contextlib.ExitStack, database: str, url: str, span: str, models: int, folder: Path) -> Filled:
    """A fresh database with ``span`` of history, open until ``stack`` closes, its bytes counted."""
    config = Config.model_validate(
        {"database": {"url": url}, "models": {"projects": [PROJECT]}, "schedule": {"initial_backfill": "0s"}}
    )
    config_file = folder / f"{database}-{span}.yaml"
    config_file.write_text(dump_config(config))
    fleet = Fleet(models, PROJECT)
    parts = stack.enter_context(build(config, clock=lambda: NOW))
    history = fill_history(parts.engine, fleet, parse_span(span), NOW, config)
    print(
        f"  {database} {span}: {history.ledger_rows:,} ledger rows, {history.history_runs:,} runs in its history, "
        f"{history.dead_letters:,} dead letters, "
        f"{history.prediction_rows:,} prediction rows, filled in {history.seconds:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    figures = bytes_per_window(table_bytes(parts.engine), history)
    return Filled(span, parts, history, views(parts, fleet, history, config_file), figures)


def run_database(database: str, urls: dict[str, str], models: int, folder: Path, profiler: Profiler) -> list[Run]:
    """Every span of one database filled side by side, then each figure timed with the
    spans taking turns (``measure``); the plans of the profiled statements are asked for
    while the databases hold the data."""
    with contextlib.ExitStack() as stack:
        filled = [fill_span(stack, database, url, span, models, folder) for span, url in urls.items()]
        for name in filled[0].runs:
            started = time.perf_counter()
            for one, measured in zip(filled, measure(profiler, [one.runs[name] for one in filled])):
                one.figures[name] = measured
            print(f"    {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        runs = []
        for one in filled:
            for measured in one.figures.values():
                if measured.warm_up is not None:
                    _statements.explain(one.parts.engine, measured.warm_up)
            url = urls[one.span]
            file_bytes = Path(url.removeprefix("sqlite:///")).stat().st_size if database == "sqlite" else None
            runs.append(Run(database, one.span, one.history, one.figures, file_bytes))
    return runs


def parse_span(text: str) -> timedelta:
    """A span of history: a Latigo duration (1d, 1w) or years (1y = 365 days)."""
    if text.endswith("y") and text[:-1].isdigit():
        return int(text[:-1]) * YEAR
    span = parse_duration(text)
    if not isinstance(span, timedelta):
        raise SystemExit(f"--spans: {text!r} is not a span such as 1d, 1w or 1y")
    return span


# ---------------------------------------------------------------- the report


def print_report(runs: list[Run], spans: list[str], models: int) -> None:
    """Per database, each figure at every span, the ratio longest / shortest span, and the
    projection of every span to PROJECTED_MODELS."""
    scale = PROJECTED_MODELS / models
    print(f"\n{models:,} models; times in ms (median of [runs]), bytes per model-window")
    print(
        f"{'figure':<38}{'database':<12}"
        + "".join(f"{span:>11}" for span in spans)
        + f"{spans[-1] + '/' + spans[0]:>9} "
        + "".join(f"{f'{PROJECTED_MODELS:,} x {span}':>15}" for span in spans)
    )
    by = {(run.database, run.span): run for run in runs}
    for database in dict.fromkeys(run.database for run in runs):
        for figure in FIGURES:
            measured = [by[(database, span)].figures[figure.name] for span in spans]
            values = [item.value * (1000 if figure.unit == "ms" else 1) for item in measured]
            factor = scale if figure.scope == FLEET_SCOPE else 1
            ratio = values[-1] / values[0] if values[0] else float("nan")
            repeats = f"  [{'/'.join(str(item.runs) for item in measured)}]" if figure.unit == "ms" else ""
            print(
                f"{figure.name:<38}{database:<12}"
                + "".join(f"{_number(value):>11}" for value in values)
                + f"{ratio:>9.2f}{'*' if ratio > GROWS else ' '}"
                + "".join(f"{_number(value * factor):>15}" for value in values)
                + repeats
            )
        for span in spans:
            run = by[(database, span)]
            file = f", file {run.file_bytes / 2**30:.2f} GiB" if run.file_bytes is not None else ""
            print(
                f"  {database} {span}: {run.history.ledger_rows:,} ledger rows, {run.history.history_runs:,} history "
                f"runs, {run.history.dead_letters:,} dead "
                f"letters, {run.history.prediction_rows:,} prediction rows ({run.history.prediction_windows:,} "
                f"model-windows), filled in {run.history.seconds:.0f} s{file}"
            )
    print(f"* grows with history: {spans[-1]} / {spans[0]} > {GROWS}")


def print_profile(runs: list[Run], span: str) -> None:
    """For one span, where each timed figure's warm-up went (``bench._statements``)."""
    print(
        f"\nwhere the time goes ({span}, each figure's warm-up under cProfile): the Latigo functions that ran SQL"
        f" and took over {_statements.LEAST_SHARE:.0%} of it, with their fetches and own Python, and their statements"
    )
    for run in (run for run in runs if run.span == span):
        for name, measured in run.figures.items():
            if measured.warm_up is not None:
                print(f"{run.database} / {name}: {measured.warm_up.seconds * 1000:,.0f} ms")
                print("\n".join(_statements.report(measured.warm_up)))


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=DEFAULT_MODELS, help=f"models in the fleet [{DEFAULT_MODELS}]")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--spans", default=DEFAULT_SPANS, help=f"spans of history, e.g. 1d,1w,1y [{DEFAULT_SPANS}]")
    args = parser.parse_args()
    spans = args.spans.split(",")
    for span in spans:
        parse_span(span)
    databases = args.databases.split(",")
    started = time.perf_counter()
    profiler = Profiler()
    runs = []
    with (
        tempfile.TemporaryDirectory(prefix="latigo-growth-") as folder,
        services.postgres_server() if "postgresql" in databases else contextlib.nullcontext() as postgres,
    ):
        check_compaction(Path(folder), NOW)
        for database in databases:
            if database == "sqlite":
                urls = {span: f"sqlite:///{Path(folder) / f'{span}.db'}" for span in spans}
                runs += run_database(database, urls, args.models, Path(folder), profiler)
                for leftover in Path(folder).glob("*.db*"):  # the files, their WAL and shared memory
                    leftover.unlink()
            else:
                assert postgres is not None  # started above for postgresql
                names = {span: postgres.create_database() for span in spans}
                runs += run_database(database, {span: postgres.url(name) for span, name in names.items()},
                                     args.models, Path(folder), profiler)  # fmt: skip
                for name in names.values():
                    postgres.drop_database(name)
    print_report(runs, spans, args.models)
    print_profile(runs, spans[-1])
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
