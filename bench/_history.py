"""A synthetic history of a fleet in a Latigo database: ledger, dead letters and SQL
predictions, as a fleet in step would have left them after a span of operation.

``fill_history`` is the one place it is written, so that a change to how Latigo keeps its
history (old windows compacted elsewhere, say) is made here once for every benchmark. It
is bulk SQL: one ``INSERT ... SELECT`` per window (per resolution step for predictions)
writing every model at once from small scratch tables of the fleet and the outputs, as an
``executemany``. Building 17.5 M Python rows (a year of 1,000 models) would take longer
than the figures it is for.

What it writes:

- **ledger**: every model's windows of the span, ending just before the window due at
  ``now``, oldest first and all models of a window together (the order a scheduler in
  step writes them), each row as the executors leave it: ``done``, a revision, a task id,
  309 of 309 rows stored. One window in PARTIAL_EVERY is partial (PARTIAL_ROWS stored, a
  note), one in DEAD_EVERY ``dead`` (5 attempts, its last error). Rows are written in their
  final state: a PostgreSQL table holds none of the dead tuples that the updates from
  planned to queued to done leave until vacuumed, so its sizes are the compact ones.
- **the ledger's history**: what the leading scheduler's compaction (``latigo.history``)
  leaves of the windows that ended ``retention.compact_after`` before ``now``: their done
  and dead windows as runs in ``ledger_history`` (a partial or a dead window is a run of its
  own between two done ones), written directly, since compacting a year of rows through
  ``Ledger.compact`` would take longer than the figures it is for. ``check_compaction``
  shows, on a small fleet, that this is exactly what ``Ledger.compact`` leaves.
- **dead letters**: one per dead window (0.1 % of the windows), the task's own JSON as its
  body, as an executor writes it after exhausting its attempts.
- **predictions** of a 20-tag model (Gordo's anomaly answer with thresholds: 3 times of 8
  output groups a window, 309 values in 24 rows), and each model's tags in
  ``prediction_tags``. A year of 1,000 models is 420 M rows, which cannot be built here.
  Written: the last RECENT_WINDOWS windows (6 hours, ``latigo predictions``' default
  reach) of every model, and the whole span of DEEP_MODELS, the
  models whose store and reads a benchmark times.

PostgreSQL gets ``VACUUM ANALYZE`` at the end, as autovacuum would give it soon after such
a load; SQLite gets no ``ANALYZE``, as Latigo never runs one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    insert,
    literal,
    not_,
    select,
    true,
)

from latigo.components import build
from latigo.config import Config
from latigo.demo.fleet import FLEET_REVISION, Fleet
from latigo.demo.models import MODEL_TAGS
from latigo.frames import output_series
from latigo.history import Run, sums, totals_rows
from latigo.ledger import State
from latigo.providers.models.wire import ANOMALY_GROUPS
from latigo.providers.predictions import layout
from latigo.providers.predictions.partitions import Partitions
from latigo.providers.predictions.sql import output_codes
from latigo.schema import (
    UTCDateTime,
    dead_letters,
    ledger,
    ledger_history,
    ledger_history_totals,
    prediction_tags,
    predictions,
)
from latigo.task import Task
from latigo.window import Grid, Window

# one window in this many is dead, with a dead letter (0.1 %)
DEAD_EVERY = 1000
# a window's place in the history is ``w * PLACE_STRIDE + n`` (window w, model n): a prime
# that divides neither count, so every model has its dead and partial windows, scattered
# through its history (``w * models + n`` gave 1,000 models the same few models dead or
# partial in every window: a year of history as 1,000 runs)
PLACE_STRIDE = 7919
# one window in this many is partial (a data gap), unless it is dead
PARTIAL_EVERY = 100
# a partial window's stored rows, of its 309
PARTIAL_ROWS = 206
# attempts of a dead window: the executor's default
DEAD_ATTEMPTS = 5
# the error of a dead window and of its letter, as an executor words an exhausted Gordo call
DEAD_ERROR = (
    "exhausted after 5 attempts: TransientError: Gordo answered 503 Service Unavailable: upstream request timeout"
)
# the note of a partial window
PARTIAL_NOTE = "1 of 20 tags had no data from 10:10 to 10:30 (TURB1-TT-303); 2 of 3 rows predicted"
# the stored model's tags: the demo's 20-tag model
TAGS = MODEL_TAGS["turbine-1"]
# the stored model's resolution: 3 rows a 30-minute window
RESOLUTION = timedelta(minutes=10)
# Gordo's output groups of an anomaly model with thresholds (all_columns would add smooth-*)
OUTPUT_GROUPS = (*ANOMALY_GROUPS, "anomaly-confidence", "total-anomaly-confidence")
# the newest windows of every model with predictions stored: 6 hours, `latigo predictions`' reach
RECENT_WINDOWS = 12
# models with predictions for the whole span (the stored and read ones)
DEEP_MODELS = 1
# SQLite's page cache for the fill, KiB: the ledger's key index takes a window's rows at
# one place per model, and a year's index does not fit the default 2 MiB
FILL_CACHE_KIB = 2_000_000
# statements per executemany of the fill: bounds the parameters held at once
FILL_BATCH = 500
# what an executor takes from a window's end to its record: planned after the delay, done later
RECORDED_AFTER = timedelta(seconds=20)
# what an executor takes from a window's end to dead-lettering it (its retries' backoff)
DEAD_AFTER = timedelta(minutes=40)


def gordo_answer(window: Window, seed: int = 0) -> pd.DataFrame:
    """Gordo's anomaly answer for one window of the 20-tag model, as Latigo receives it:
    ``start``/``end`` bookkeeping and every output group, one row per resolution step."""
    index = pd.date_range(window.start, window.end, freq=RESOLUTION, tz="UTC", inclusive="left")
    # a total once, not once per tag
    outputs = list(
        dict.fromkeys((group, "" if group.startswith("total-") else tag) for group in OUTPUT_GROUPS for tag in TAGS)
    )
    values = np.random.default_rng(seed).random((len(index), len(outputs)))
    frame = pd.DataFrame(values, index=index, columns=pd.MultiIndex.from_tuples(outputs))
    frame.insert(0, ("end", ""), [str(time + RESOLUTION) for time in index])
    frame.insert(0, ("start", ""), [str(time) for time in index])
    return frame


@dataclass(frozen=True)
class History:
    """What ``fill_history`` wrote."""

    windows: int  # per model, in the ledger and its history
    model_windows: int  # windows of all models: what a figure per model-window divides by
    ledger_rows: int  # the hot ledger's: the windows newer than compact_after
    history_runs: int
    dead_letters: int
    prediction_windows: int  # model-windows with predictions stored
    prediction_rows: int
    seconds: float
    deep: list[str]  # the models with predictions for the whole span
    newest: Window  # the newest window written


def newest_due(config: Config, now: datetime) -> Window:
    """The newest window due at ``now``: the one a scheduler in step plans next."""
    interval = config.schedule.interval
    end = Grid(interval, config.schedule.anchor).last_due_end(now, config.schedule.delay)
    return Window(end - interval, end)


def fill_history(engine: Engine, fleet: Fleet, span: timedelta, now: datetime, config: Config) -> History:
    """Write ``span`` of history of ``fleet``, ending just before the window due at ``now``,
    into a migrated, empty database (see the module's docstring for what it holds)."""
    started = time.perf_counter()
    interval = config.schedule.interval
    count = span // interval
    first = newest_due(config, now).start - count * interval
    starts = [first + number * interval for number in range(count)]
    models = len(fleet.names)
    deep = fleet.names[:DEEP_MODELS]
    recent_from = max(0, count - RECENT_WINDOWS)
    # windows that ended by then are compacted (the leader's upkeep, latigo.history)
    cutoff = now - config.retention.compact_after
    compacted = sum(1 for start in starts if start + interval <= cutoff)
    classes = _classes(models, count)
    runs = _history_runs(fleet, classes[:, :compacted], first, interval)
    series, values = output_series(gordo_answer(Window(first, first + interval)))
    groups = layout.groups(series, values)
    steps = interval // RESOLUTION
    scratch = MetaData()
    fleet_table = Table(
        "bench_fleet",
        scratch,
        Column("n", Integer, primary_key=True),
        Column("name", String),
        Column("suffix", String),  # the end of its task ids
        Column("deep", Integer),  # 1: predictions for the whole span
        prefixes=["TEMPORARY"],
    )
    groups_table = Table(
        "bench_groups",
        scratch,
        Column("k", Integer, primary_key=True),
        Column("output", Integer),  # the group's code in prediction_outputs
        Column("tag_values", LargeBinary),
        prefixes=["TEMPORARY"],
    )
    if engine.dialect.name == "postgresql":
        Partitions(engine).ensure(Window(first, starts[-1] + interval))
    with _loading(engine) as connection, connection.begin():
        scratch.create_all(connection)
        connection.execute(
            insert(fleet_table),
            [
                {"n": n, "name": name, "suffix": f"{n:012x}", "deep": int(name in deep)}
                for n, name in enumerate(fleet.names)
            ],
        )
        codes = output_codes(connection, [group.output for group in groups])
        connection.execute(
            insert(groups_table),
            [{"k": k, "output": codes[group.output], "tag_values": group.blobs()[0]} for k, group in enumerate(groups)],
        )
        connection.execute(
            insert(prediction_tags),
            [
                {"project": fleet.project, "model": name, "revision": FLEET_REVISION, "output": group.output,
                 "tags": layout.encode_tags(group.tags)}
                for name in fleet.names
                for group in groups
            ],
        )  # fmt: skip
        recorded = _ledger_rows(fleet_table, fleet.project, len(series) * steps)
        for offset in range(0, count, FILL_BATCH):
            connection.execute(
                recorded,
                [
                    {
                        "w": number,
                        "start": start,
                        "end": start + interval,
                        "created": start + interval + config.schedule.delay,
                        "updated": start + interval + config.schedule.delay + RECORDED_AFTER,
                        "task": f"{number:08x}-{number % 65536:04x}-4000-8000-",
                        "hot": int(number >= compacted),
                    }
                    for number, start in enumerate(starts[offset : offset + FILL_BATCH], start=offset)
                ],
            )
        for offset in range(0, len(runs), FILL_BATCH):
            connection.execute(insert(ledger_history), runs[offset : offset + FILL_BATCH])
        totals = _history_totals(runs, interval)
        for offset in range(0, len(totals), FILL_BATCH):
            connection.execute(insert(ledger_history_totals), totals[offset : offset + FILL_BATCH])
        letters = [
            _letter(fleet.project, fleet.names[n], starts[w], interval)
            for w, n in np.argwhere(classes.T == DEAD)  # oldest window first, as written
        ]
        if letters:
            connection.execute(insert(dead_letters), letters)
        parameters = [
            {"time": start + step * RESOLUTION, "deep_only": int(number < recent_from)}
            for number, start in enumerate(starts)
            for step in range(steps)
        ]
        stored = _prediction_rows(fleet_table, groups_table, fleet.project)
        for offset in range(0, len(parameters), FILL_BATCH):
            connection.execute(stored, parameters[offset : offset + FILL_BATCH])
        scratch.drop_all(connection)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    prediction_windows = recent_from * DEEP_MODELS + (count - recent_from) * models
    return History(
        windows=count,
        model_windows=count * models,
        ledger_rows=(count - compacted) * models,
        history_runs=len(runs),
        dead_letters=len(letters),
        prediction_windows=prediction_windows,
        prediction_rows=prediction_windows * len(groups) * steps,
        seconds=time.perf_counter() - started,
        deep=deep,
        newest=Window(starts[-1], starts[-1] + interval),
    )


@contextlib.contextmanager
def _loading(engine: Engine) -> Iterator[Connection]:
    """The fill's connection. On SQLite it writes without a journal (a third of the time
    of WAL, which would also hold the whole fill a second time until its checkpoint): a
    change of journal mode needs the file to itself, so the engine's other connections
    are closed first, and the file is back in WAL, as Latigo keeps it, at the end."""
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        engine.dispose()
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None  # a live connection's
        if sqlite:  # outside any transaction: SQLite ignores a journal mode changed inside one
            cache = driver.execute("PRAGMA cache_size").fetchone()[0]
            driver.execute("PRAGMA journal_mode=OFF")
            driver.execute("PRAGMA synchronous=OFF")
            driver.execute(f"PRAGMA cache_size=-{FILL_CACHE_KIB}")
        try:
            yield connection
        finally:
            if sqlite:  # as Latigo's connections are: this one goes back to the engine's pool
                driver.execute("PRAGMA journal_mode=WAL")
                driver.execute("PRAGMA synchronous=NORMAL")
                driver.execute(f"PRAGMA cache_size={cache}")


# a window's class in ``_classes``
DONE, PARTIAL, DEAD = 0, 1, 2


def _classes(models: int, count: int) -> np.ndarray:
    """Each model's windows (rows: models, columns: windows oldest first) as DONE, PARTIAL or
    DEAD, picked by the window's place in the history (``PLACE_STRIDE``), as the SQL of
    ``_ledger_rows`` picks them."""
    position = np.arange(count, dtype=np.int64)[None, :] * PLACE_STRIDE + np.arange(models, dtype=np.int64)[:, None]
    dead = position % DEAD_EVERY == DEAD_EVERY // 2
    is_partial = (position % PARTIAL_EVERY == PARTIAL_EVERY // 3) & ~dead
    return np.where(dead, DEAD, np.where(is_partial, PARTIAL, DONE))


def _history_runs(fleet: Fleet, classes: np.ndarray, first: datetime, interval: timedelta) -> list[dict]:
    """The ``ledger_history`` rows compaction leaves of these windows: per model, each run
    of consecutive windows of one class (done, partial or dead)."""
    rows = []
    for n, name in enumerate(fleet.names):
        row = classes[n]
        edges = np.flatnonzero(np.diff(row)) + 1
        for begin, end in zip(np.r_[0, edges], np.r_[edges, len(row)], strict=True):
            if begin == end:
                continue
            rows.append(
                {
                    "project": fleet.project,
                    "model": name,
                    "run_start": first + int(begin) * interval,
                    "run_end": first + int(end) * interval,
                    "windows": int(end - begin),
                    "state": State.DEAD.value if row[begin] == DEAD else State.DONE.value,
                    "partial": int(row[begin] == PARTIAL),
                    "revision": FLEET_REVISION,
                }
            )
    return rows


def _history_totals(runs: list[dict], interval: timedelta) -> list[dict]:
    """The ``ledger_history_totals`` rows of these runs, summed as compaction sums them."""
    summed = sums(
        Run(row["project"], row["model"], row["revision"], State(row["state"]), bool(row["partial"]),
            row["run_start"], row["windows"], interval)
        for row in runs
    )  # fmt: skip
    return totals_rows(summed)


def _ledger_rows(fleet_table: Table, project: str, rows: int):
    """INSERT of one window (number ``w``) of every model, each in its final state: the
    window's place in the history (``PLACE_STRIDE``) picks the dead and partial ones (as
    ``_classes`` does); a window not ``hot`` (compacted) writes none."""
    position = bindparam("w", type_=Integer) * PLACE_STRIDE + fleet_table.c.n
    dead = position % DEAD_EVERY == DEAD_EVERY // 2
    is_partial = and_(position % PARTIAL_EVERY == PARTIAL_EVERY // 3, not_(dead))
    times = {name: bindparam(name, type_=UTCDateTime()) for name in ("start", "end", "created", "updated")}
    values = {
        "project": literal(project),
        "model": fleet_table.c.name,
        "window_start": times["start"],
        "window_end": times["end"],
        "state": case((dead, literal(State.DEAD.value)), else_=literal(State.DONE.value)),
        "revision": literal(FLEET_REVISION),
        "attempts": case((dead, DEAD_ATTEMPTS), else_=0),
        "last_error": case((dead, literal(DEAD_ERROR)), else_=None),
        "task_id": bindparam("task", type_=String).concat(fleet_table.c.suffix),
        "created_at": times["created"],
        "updated_at": times["updated"],
        "note": case((is_partial, literal(PARTIAL_NOTE)), else_=None),
        "stored_rows": case((dead, None), (is_partial, PARTIAL_ROWS), else_=rows),
        "expected_rows": case((dead, None), else_=rows),
    }
    rows = select(*values.values()).where(bindparam("hot", type_=Integer) == 1)
    return insert(ledger).from_select(list(values), rows)


def _prediction_rows(fleet_table: Table, groups_table: Table, project: str):
    """INSERT of one resolution step (``time``) of a window: every output group of every
    model, or of the deep models only when ``deep_only``."""
    values = {
        "project": literal(project),
        "model": fleet_table.c.name,
        "time": bindparam("time", type_=UTCDateTime()),
        "output": groups_table.c.output,
        "revision": literal(FLEET_REVISION),
        "tag_values": groups_table.c.tag_values,
    }
    rows = (
        select(*values.values())
        .select_from(fleet_table.join(groups_table, true()))
        .where(fleet_table.c.deep >= bindparam("deep_only", type_=Integer))
    )
    return insert(predictions).from_select(list(values), rows)


def _letter(project: str, model: str, start: datetime, interval: timedelta) -> dict:
    """The dead letter of one window's task."""
    task = Task(project=project, model=model, revision=FLEET_REVISION, start=start, end=start + interval)
    return {
        "task_id": str(task.id),
        "project": project,
        "model": model,
        "body": task.to_json(),
        "reason": "exhausted",
        "error": DEAD_ERROR,
        "attempts": DEAD_ATTEMPTS,
        "created_at": task.end + DEAD_AFTER,
    }


# the fleet and span ``check_compaction`` compares on: a few runs, partial and dead windows
CHECK_MODELS, CHECK_SPAN = 7, timedelta(days=12)


def check_compaction(folder: Path, now: datetime) -> None:
    """Show that ``fill_history`` leaves exactly what ``Ledger.compact`` would: a small
    fleet filled with its past compacted, and filled all hot then compacted by the
    ledger, hold the same ledger and history rows; anything else raises."""
    fleet = Fleet(CHECK_MODELS, "compaction-check")
    found = []
    for name, compact_after in (("direct", None), ("ledger", timedelta(days=3650))):
        settings: dict = {"database": {"url": f"sqlite:///{folder / name}.db"}}
        if compact_after is not None:
            settings["retention"] = {"compact_after": f"{compact_after.days}d"}
        config = Config.model_validate(settings)
        with build(config, clock=lambda: now) as parts:
            fill_history(parts.engine, fleet, CHECK_SPAN, now, config)
            if compact_after is not None:  # as the leader's upkeep, at the default compact_after
                cutoff = now - Config.model_validate({}).retention.compact_after
                while parts.ledger.compact(cutoff, limit=100) == 100:
                    pass
            with parts.engine.connect() as connection:
                kept = connection.execute(
                    select(ledger.c.model, ledger.c.window_start, ledger.c.state).order_by(
                        ledger.c.model, ledger.c.window_start
                    )
                ).all()
                runs = connection.execute(select(ledger_history).order_by(*ledger_history.primary_key)).all()
                runs += connection.execute(
                    select(ledger_history_totals).order_by(*ledger_history_totals.primary_key)
                ).all()
            found.append((kept, runs))
    (direct_kept, direct_runs), (kept, runs) = found
    if direct_kept != kept or direct_runs != runs or not runs:
        raise AssertionError(
            f"fill_history's history differs from Ledger.compact's: ledger {len(direct_kept)} / {len(kept)} rows, "
            f"history {direct_runs[:3]}... / {runs[:3]}..."
        )
