"""Sensor read benchmark: how fast Latigo reads sensor data out of each store it supports,
against the same rows fetched with the bare driver in the same run.

    .venv/bin/python -m bench.sensors [--days 8] [--windows 300] [--weeks 5]
                                      [--stores sqlite,postgresql,influx]

Why: every task starts with a sensor read, and migration 0006 changed how it reads the
time column (PostgreSQL ``timestamptz``, read back as ``timezone('UTC', time)``: naive UTC
datetimes; SQLite canonical UTC text, kept so by a CHECK constraint and parsed in bulk by
numpy), while ``frames.pivot`` now averages several samples of one tag at one instant
(``np.bincount``) instead of letting the last one win, and InfluxDB reads go through it
too. This says what those cost, store by store, so a change that slows reading shows up.

What runs: each store gets the demo model ``turbine-1``'s 20 tags (``latigo.demo.signals``,
anomalies included) at one sample a minute for ``--days`` days, written through Latigo's
own ``write`` (reported, not timed): a SQLite file, a fresh PostgreSQL 15 (fsync off;
``VACUUM ANALYZE`` after the fill, as autovacuum would do soon after) and a fresh InfluxDB
1.x (influxd in a temporary folder; the points just written may still sit in its in-memory
cache, as recent data does in production). Then, per store:

* **window**: ``--windows`` continuous-operation reads, each a 30-minute window plus 8 rows
  of 10-minute padding (110 minutes, 2,200 samples), sliding back 30 minutes at a time;
* **week**: ``--weeks`` reads of 7 days (201,600 samples), shifted an hour apart.

Each read is done by Latigo (``SqlSensors.data`` / ``InfluxSensors.data``: query, rows into
arrays, ``frames.pivot`` into the wide frame a task uses) and by the **bare driver** on the
same rows, taking turns read by read (so drifting load hits both alike):

* SQLite: ``sqlite3`` ``cursor.execute(...).fetchall()`` of the very SELECT Latigo
  compiles, on one open connection;
* PostgreSQL: ``psycopg`` ``cursor.execute(...).fetchall()`` of the very SELECT Latigo
  compiles (``timezone('UTC', time)``), on one autocommit connection; and, to price the
  ``timezone()`` read, the same with the plain ``timestamptz`` column (aware datetimes in
  the session's zone);
* InfluxDB: a bare ``requests`` POST of the same InfluxQL (``epoch=ns``), the answer parsed
  with ``response.json()``; and the same chunked as Latigo asks for it (``chunk_size``
  10,000, one JSON document per chunk), read with ``iter_lines()``, as Latigo read it before
  (512 bytes at a time) and in 64 KiB pieces, to price the chunking and the reading apart
  from Latigo's own work.

One more row per store is Latigo's read with the process's older objects frozen out of the
cyclic garbage collector (``gc.freeze()`` before the read, ``gc.unfreeze()`` after): a long
read allocates a few hundred thousand tracked objects (the driver's rows, SQLAlchemy's
``Row``), each full collection they trigger traverses every object of the process (its
modules and caches: ~136,000 here, ~125,000 in a process that imported the executor and
its providers), and the difference to the plain row is what those collections cost.

Printed per store and read: the samples fetched, the median time and its p10-p90 spread,
samples per second, and the time over the bare driver's (``vs bare``): what Latigo adds to
the driver (connection checkout, SQLAlchemy's rows, the arrays, the pivot). Then the pivot
alone on the same samples (``frames.pivot``, against the last-wins pivot it replaced),
and its share of Latigo's read. No timing is asserted: the machine is shared, and the
ratios are the figures to compare across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import requests

from bench import _services as services
from latigo import db, frames
from latigo.config import InfluxSensorsConfig
from latigo.demo.models import tags_of
from latigo.demo.signals import ONE_MINUTE, signal
from latigo.providers.influx import QUERY_CHUNK
from latigo.providers.sensors.influx import InfluxSensors
from latigo.providers.sensors.sql import SqlSensors
from latigo.schema import sensor_data

# the sensor stores Latigo reads, as --stores names them
STORES = ("sqlite", "postgresql", "influx")
# the demo model whose tags fill the stores: 20 tags, the largest demo model
MODEL = "turbine-1"
# a continuous-operation window, and the padding read before it (8 rows at 10 minutes)
WINDOW = timedelta(minutes=30)
PADDING = 8 * timedelta(minutes=10)
# the long read: a week, the default task span of a backfill
WEEK = timedelta(days=7)
# how far apart the week reads start
WEEK_SHIFT = timedelta(hours=1)
# written per write() call while filling a store
FILL_CHUNK = timedelta(days=1)
# the InfluxDB database of the sensor data (the measurement is Latigo's default, sensors)
INFLUX_DATABASE = "bench"
# (connect, read) timeouts of the bare InfluxDB calls, as Latigo's defaults
HTTP_TIMEOUT = (3.05, 60.0)
# repeats of the pivot-alone timing per read
PIVOT_REPEATS = {"window": 300, "week": 10}
# SQLAlchemy's SQLite text form of a time (the one the CHECK of migration 0006 allows)
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
# bytes per read of a streamed InfluxDB answer in the variant that reads in large pieces
# (requests' iter_lines reads 512 at a time unless told otherwise)
LARGE_READ = 1 << 16

# one read: the range [start, end) of the model's tags -> whatever the reader hands back
Reader = Callable[[datetime, datetime], object]


@dataclass
class Timing:
    """One way of reading, timed over every range of one kind of read."""

    store: str
    read: str  # window or week
    how: str
    rows: int  # samples fetched by one read (the first range)
    seconds: list[float]
    bare: bool = False  # the baseline the others are compared with

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.seconds, q))


# ---------------------------------------------------------------- filling


def fill(sensors, tags: list[str], start: datetime, end: datetime) -> tuple[int, float]:
    """Write the tags' synthetic values for [start, end) through the store's own ``write``:
    rows, seconds."""
    started = time.perf_counter()
    rows = 0
    cursor = start
    while cursor < end:
        stop = min(end, cursor + FILL_CHUNK)
        rows += sensors.write(signal(tags, cursor, stop, ONE_MINUTE, with_anomalies=True))
        cursor = stop
    return rows, time.perf_counter() - started


# ---------------------------------------------------------------- the reads


def rows_of(answer: object) -> int:
    """Samples in a reader's answer: cells of a frame, rows of a driver, points of an InfluxDB
    answer, or the count a reader gave."""
    if isinstance(answer, int):
        return answer
    if isinstance(answer, pd.DataFrame):
        return int(answer.notna().to_numpy().sum())
    if isinstance(answer, dict):  # one InfluxDB JSON document
        series = [one for result in answer["results"] for one in result.get("series") or []]
        return sum(len(one.get("values") or []) for one in series)
    return len(answer)


def measure(
    store: str, read: str, readers: dict[str, Reader], ranges: Sequence[tuple[datetime, datetime]], bare: str
) -> list[Timing]:
    """Every reader on every range, taking turns range by range (the order rotating, so none
    is always first after the others warmed the caches); each reader once on the first
    range before timing. The readers must agree on the samples of the first range."""
    names = list(readers)
    counts = {name: rows_of(readers[name](*ranges[0])) for name in names}
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"{store} {read}: the readers disagree on the samples: {counts}")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for number, (start, end) in enumerate(ranges):
        for name in names[number % len(names) :] + names[: number % len(names)]:
            began = time.perf_counter()
            readers[name](start, end)
            seconds[name].append(time.perf_counter() - began)
    return [Timing(store, read, name, counts[name], seconds[name], bare=name == bare) for name in names]


def frozen(read: Reader) -> Reader:
    """The read with every object allocated before it moved out of the cyclic garbage
    collector's reach (``gc.freeze()``, undone after it: what a process could do once its
    imports are done), so the full collections its own allocations trigger traverse only
    what the read allocated, not the process's modules and caches."""

    def run(start: datetime, end: datetime) -> object:
        gc.freeze()
        try:
            return read(start, end)
        finally:
            gc.unfreeze()

    return run


def window_ranges(end: datetime, windows: int, days: int) -> list[tuple[datetime, datetime]]:
    """The reads of ``windows`` continuous windows, newest first, sliding back a window at a
    time (round again from the newest when the data runs out)."""
    fits = int((timedelta(days=days) - PADDING) / WINDOW)
    ends = [end - (number % fits) * WINDOW for number in range(windows)]
    return [(window_end - WINDOW - PADDING, window_end) for window_end in ends]


def week_ranges(end: datetime, weeks: int, days: int) -> list[tuple[datetime, datetime]]:
    fits = max(1, int((timedelta(days=days) - WEEK) / WEEK_SHIFT) + 1)
    ends = [end - (number % fits) * WEEK_SHIFT for number in range(weeks)]
    return [(week_end - WEEK, week_end) for week_end in ends]


def sqlite_store(path: Path, tags: list[str]) -> tuple[SqlSensors, dict[str, Reader], Callable[[], None]]:
    """Latigo's reader and the bare driver's on a SQLite file; and how to close them."""
    engine = db.create_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    sensors = SqlSensors(engine)
    connection = sqlite3.connect(path)
    sql, fixed, names = _compiled(sensors, tags)

    def bare(start: datetime, end: datetime) -> list:
        values = {**fixed, "time_1": start, "time_2": end}
        params = [_sqlite_param(values[name]) for name in names]
        return connection.execute(sql, params).fetchall()

    def close() -> None:
        connection.close()
        engine.dispose()

    def latigo(start: datetime, end: datetime) -> pd.DataFrame:
        return sensors.data(tags, start, end)

    readers = {
        "SqlSensors.data": latigo,
        "sqlite3 fetchall (bare)": bare,
        "SqlSensors.data, gc.freeze()d heap": frozen(latigo),
    }
    return sensors, readers, close


def postgres_store(url: str, tags: list[str]) -> tuple[SqlSensors, dict[str, Reader], Callable[[], None]]:
    """Latigo's reader and the bare driver's (the same SELECT, and with the plain column) on
    a PostgreSQL database; and how to close them."""
    engine = db.create_engine(url)
    db.upgrade(engine)
    sensors = SqlSensors(engine)
    connection = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
    def reader(raw_time: bool) -> Reader:
        sql, fixed, _ = _compiled(sensors, tags, raw_time)

        def read(start: datetime, end: datetime) -> list:
            with connection.cursor() as cursor:
                return cursor.execute(sql, {**fixed, "time_1": start, "time_2": end}).fetchall()

        return read

    def close() -> None:
        connection.close()
        engine.dispose()

    def latigo(start: datetime, end: datetime) -> pd.DataFrame:
        return sensors.data(tags, start, end)

    readers = {
        "SqlSensors.data": latigo,
        "psycopg fetchall (bare)": reader(raw_time=True),
        "psycopg, plain timestamptz column": reader(raw_time=False),
        "SqlSensors.data, gc.freeze()d heap": frozen(latigo),
    }
    return sensors, readers, close


def vacuum(url: str) -> None:
    """VACUUM ANALYZE the sensor table (outside a transaction, as VACUUM needs)."""
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE sensor_data")


def influx_store(url: str, tags: list[str]) -> tuple[InfluxSensors, dict[str, Reader], Callable[[], None]]:
    """Latigo's reader and bare ``requests`` POSTs of the same InfluxQL; and how to close them."""
    sensors = InfluxSensors(InfluxSensorsConfig(type="influx", url=url, database=INFLUX_DATABASE))
    session = requests.Session()

    def bare(start: datetime, end: datetime) -> dict:
        response = session.post(
            f"{url}/query",
            params={"db": INFLUX_DATABASE, "epoch": "ns"},
            data={"q": sensors.range_query(tags, start, end)},
            timeout=HTTP_TIMEOUT,
        )
        response.raise_for_status()
        return response.json()

    def chunked(read_size: int | None) -> Reader:
        """Chunked as Latigo asks for it, one JSON document per line; the answer read as
        ``iter_lines`` reads it by default (512 bytes at a time, as Latigo did), or in
        ``read_size`` pieces."""
        params = {"db": INFLUX_DATABASE, "epoch": "ns", "chunked": "true", "chunk_size": str(QUERY_CHUNK)}
        sizes = {} if read_size is None else {"chunk_size": read_size}

        def read(start: datetime, end: datetime) -> int:
            rows = 0
            with session.post(
                f"{url}/query",
                params=params,
                data={"q": sensors.range_query(tags, start, end)},
                timeout=HTTP_TIMEOUT,
                stream=True,
            ) as response:
                response.raise_for_status()
                for line in response.iter_lines(**sizes):
                    if line:
                        rows += rows_of(json.loads(line))
            return rows

        return read

    def close() -> None:
        session.close()
        sensors.close()

    def latigo(start: datetime, end: datetime) -> pd.DataFrame:
        return sensors.data(tags, start, end)

    readers = {
        "InfluxSensors.data": latigo,
        "requests POST + json (bare)": bare,
        "POST, chunked, iter_lines() (512 B)": chunked(None),
        "POST, chunked, iter_lines(64 KiB)": chunked(LARGE_READ),
        "InfluxSensors.data, gc.freeze()d heap": frozen(latigo),
    }
    return sensors, readers, close


def _compiled(
    sensors: SqlSensors, tags: list[str], raw_time: bool = True
) -> tuple[str, dict[str, object], list[str]]:
    """The SELECT Latigo sends for these tags, as the driver gets it (the IN list expanded);
    its parameters but the range's two times (``time_1``, ``time_2``); and the parameters'
    names in order (for SQLite's positional ``?``)."""
    column = sensors._raw_time if raw_time else sensor_data.c.time
    now = datetime.now(UTC)
    statement = sensors._query(tags, now, now, column)
    compiled = statement.compile(sensors._engine, compile_kwargs={"render_postcompile": True})
    fixed = dict(compiled.params)
    if [fixed.pop(name, None) for name in ("time_1", "time_2")] != [now, now]:
        raise RuntimeError(f"unexpected parameters in {compiled.string}: {compiled.params}")
    return compiled.string, fixed, list(compiled.positiontup or [])


def _sqlite_param(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(SQLITE_TIME)
    return value


# ---------------------------------------------------------------- the pivot alone


def pivot_last_wins(
    times: np.ndarray, tags: Sequence[str], values: np.ndarray, wanted: Sequence[str]
) -> pd.DataFrame:
    """``frames.pivot`` as it was before 2026-12-02: of two samples of one tag at one instant
    the later one wins (the reference for what the mean costs)."""
    wanted = sorted(set(wanted))
    position = {tag: number for number, tag in enumerate(wanted)}
    codes = np.fromiter((position[tag] for tag in tags), dtype=np.intp, count=len(tags))
    instants, rows = np.unique(times, return_inverse=True)
    matrix = np.full((len(instants), len(wanted)), np.nan)
    matrix[rows, codes] = values
    present = np.zeros(len(wanted), dtype=bool)
    present[codes] = True
    index = pd.DatetimeIndex(instants.astype("datetime64[ns]"), name="time").tz_localize("UTC")
    columns = [tag for tag, has in zip(wanted, present) if has]
    return pd.DataFrame(matrix[:, present], index=index, columns=columns)


Samples = tuple[np.ndarray, list[str], np.ndarray]  # times, tags, values: the pivot's input


def samples_of(rows: list[tuple]) -> Samples:
    """The arrays Latigo makes of the rows SQLite returns (kept instead of the rows, whose
    200,000 tuples would otherwise lengthen every later full garbage collection)."""
    times, names, values = zip(*rows)
    return np.array(times, dtype="datetime64[us]"), list(names), np.array(values, dtype="float64")


def time_pivots(samples: Samples, tags: list[str], read: str) -> list[Timing]:
    """Both pivots on the samples of one read, taking turns."""
    times, names, values = samples
    pivots = {"frames.pivot (bincount mean)": frames.pivot, "last-wins pivot (before)": pivot_last_wins}
    expected = pivot_last_wins(times, names, values, tags)
    if not frames.pivot(times, names, values, tags).equals(expected):
        raise RuntimeError("the two pivots disagree on samples without duplicates")
    seconds: dict[str, list[float]] = {name: [] for name in pivots}
    for number in range(PIVOT_REPEATS[read]):
        order = list(pivots) if number % 2 == 0 else list(reversed(pivots))
        for name in order:
            began = time.perf_counter()
            pivots[name](times, names, values, tags)
            seconds[name].append(time.perf_counter() - began)
    return [
        Timing("numpy", read, name, len(names), seconds[name], bare=name.startswith("last-wins"))
        for name in pivots
    ]


# ---------------------------------------------------------------- report


def print_table(timings: list[Timing]) -> None:
    print()
    print(
        f"{'store':<12}{'read':<8}{'how':<40}{'samples':>9}{'median ms':>11}{'p10-p90 ms':>17}"
        f"{'M samples/s':>13}{'vs bare':>9}"
    )
    groups: dict[tuple[str, str], list[Timing]] = {}
    for timing in timings:
        groups.setdefault((timing.store, timing.read), []).append(timing)
    for group in groups.values():
        bare = next(timing for timing in group if timing.bare)
        for timing in group:
            spread = f"{1000 * timing.percentile(10):.2f}-{1000 * timing.percentile(90):.2f}"
            print(
                f"{timing.store:<12}{timing.read:<8}{timing.how:<40}{timing.rows:>9,}"
                f"{1000 * timing.median:>11.2f}{spread:>17}{timing.rows / timing.median / 1e6:>13.2f}"
                f"{timing.median / bare.median:>9.2f}"
            )
    print(
        "  vs bare = median over the bare driver's median, same store and read (numpy: over the"
        " last-wins pivot); samples = (time, tag, value) rows of one read"
    )


def print_pivot_share(timings: list[Timing]) -> None:
    pivot = {timing.read: timing.median for timing in timings if timing.how.startswith("frames.pivot")}
    latigo = [timing for timing in timings if timing.how.endswith(".data")]
    if not pivot or not latigo:
        return
    print("\nthe pivot's share of Latigo's read (frames.pivot alone over the store's median):")
    for timing in latigo:
        if timing.read in pivot:
            print(
                f"  {timing.store:<12}{timing.read:<8}{1000 * pivot[timing.read]:>8.2f} ms of"
                f" {1000 * timing.median:>8.2f} ms = {pivot[timing.read] / timing.median:>4.0%}"
            )


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=8, help="days of one-minute data in each store")
    parser.add_argument("--windows", type=int, default=300, help="continuous-window reads per store")
    parser.add_argument("--weeks", type=int, default=5, help="week-long reads per store")
    parser.add_argument("--stores", default=",".join(STORES))
    args = parser.parse_args()
    if args.days < WEEK.days + 1:
        parser.error(f"--days must be at least {WEEK.days + 1}: a week plus room to shift the reads")
    stores = args.stores.split(",")
    unknown = [store for store in stores if store not in STORES]
    if unknown:
        parser.error(f"unknown store(s) {', '.join(unknown)}: {', '.join(STORES)}")
    tags = tags_of(MODEL)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    windows = window_ranges(end, args.windows, args.days)
    weeks = week_ranges(end, args.weeks, args.days)
    print(
        f"sensor read benchmark: {MODEL}, {len(tags)} tags x {args.days} days at one sample a minute;"
        f" {args.windows} window reads of {int((WINDOW + PADDING).total_seconds() // 60)} min,"
        f" {args.weeks} week reads; stores {', '.join(stores)}"
        f" ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    timings: list[Timing] = []
    pivot_inputs: dict[str, Samples] = {}
    with (
        tempfile.TemporaryDirectory(prefix="latigo-bench-sensors-") as tmp,
        services.postgres_server() if "postgresql" in stores else contextlib.nullcontext() as postgres,
        services.influx_server() if "influx" in stores else contextlib.nullcontext() as influx,
    ):
        for store in stores:
            if store == "sqlite":
                sensors, readers, close = sqlite_store(Path(tmp) / "sensors.db", tags)
            elif store == "postgresql":
                url = postgres.url(postgres.create_database())
                sensors, readers, close = postgres_store(url, tags)
            else:
                sensors, readers, close = influx_store(influx.url, tags)
            try:
                rows, seconds = fill(sensors, tags, start, end)
                if store == "postgresql":
                    vacuum(url)
                print(f"{store}: filled {rows:,} samples in {seconds:.1f} s (not timed)", flush=True)
                bare = next(name for name in readers if name.endswith("(bare)"))
                for read, ranges in (("window", windows), ("week", weeks)):
                    timings += measure(store, read, readers, ranges, bare)
                    if store == "sqlite":
                        pivot_inputs[read] = samples_of(readers[bare](*ranges[0]))
                print(
                    f"{store}: window {1000 * timings[-2 * len(readers)].median:.2f} ms,"
                    f" week {1000 * timings[-len(readers)].median:.1f} ms (Latigo, median)",
                    flush=True,
                )
            finally:
                close()
    for read, samples in pivot_inputs.items():
        timings += time_pivots(samples, tags, read)
    print_table(timings)
    print_pivot_share(timings)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
