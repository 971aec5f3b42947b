"""Backfill benchmark: Latigo against ``gordo-client predict`` on the same work, the same
Gordo server and the same InfluxDB, in the same run.

    .venv/bin/python -m bench.backfill [--models 20] [--days 30] [--runs signal:7d,sql:7d,signal:1d]

The work: ``--models`` Gordo models (``bench-01`` ...: copies of the three demo models'
configs, same tags, built with gordo's own builder and cached under ``.gordo/``) over
``--days`` days of 10-minute data, ending at the newest window due now. One Gordo server
(gunicorn, 1 worker, 4 threads, every model kept loaded) and one InfluxDB serve both
sides; every model is loaded in Gordo before anything is timed.

* **gordo-client** 6.3.0 (its own virtualenv): ``gordo-client predict START END`` with its
  defaults (parquet, ``--batch-size 100000``, ``--parallelism 10``), reading the data
  from ``latigo.demo.gordo_provider.SignalDataProvider`` (the synthetic process,
  generated on the fly) and writing to InfluxDB (``--influx-uri``). Timed from process
  start to exit.
* **Latigo**, as deployed with its defaults (2 executor processes x ``executor.concurrency``
  2): ``latigo backfill --from START --to END`` plans the windows, the scheduler publishes
  them coalesced into tasks of ``max_task_span`` (it ticks in this process every 2 s, on a
  clock fixed at the start, so a window falling due during the run adds no work), the
  executors predict and write to InfluxDB in gordo-client's layout (another database).
  Timed from starting the executors and the backfill command until the ledger shows every
  window finished. Each run is ``source:max_task_span``; the sources:

  - ``sql``: Latigo's default store, the ``sensor_data`` table (SQLite), fed beforehand with
    the same synthetic data. The feed is timed and reported apart: in production the
    data is already in the historian; reading it is part of Latigo's time.
  - ``signal``: the very generator gordo-client's provider calls, on the fly (a small
    SensorDataProvider, run by ``python -m bench.backfill --worker``: ``latigo executor``
    with that provider swapped in) — the same data source as gordo-client's, so the
    fairest comparison.

Printed: each side's wall time and the ratio gordo-client time / Latigo time; the CPU
seconds each process used meanwhile (Gordo's server, InfluxDB, the clients), which say
where the time goes even on a shared machine; the points each side wrote (in all and
inside the range: gordo-client also predicts the 5 resolution steps before START that it
reads as padding) and whether the values agree; peak memory (``wait4``'s ru_maxrss) of
gordo-client, of each Latigo executor and of ``latigo backfill``; and per Latigo run the
mean time per task of each executor stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from bench import _services as services
from latigo import readmodel
from latigo.components import build
from latigo.config import Config, dump_config, parse_duration
from latigo.demo import gordo
from latigo.demo.models import demo_models
from latigo.demo.signals import ONE_MINUTE, signal
from latigo.ledger import State
from latigo.providers.sensors import SensorDataProvider, SensorInformationProvider
from latigo.scheduler import Scheduler
from latigo.window import Grid

# the Gordo project of the benchmark's models
PROJECT = "bench"
# where the benchmark's models are built and cached (git-ignored, like the demo's)
MODEL_ROOT = gordo.GORDO_HOME / "bench-models"
# the data provider gordo-client reads with: the synthetic process, clean, generated on the fly
GORDO_CLIENT_PROVIDER = json.dumps({"type": "latigo.demo.gordo_provider.SignalDataProvider"})
# window grid and delay: Latigo's defaults
INTERVAL = timedelta(minutes=30)
DELAY = timedelta(minutes=5)
# how often the bench ticks the scheduler while Latigo works, seconds
TICK_S = 2.0
# how often it looks at the ledger for the end, seconds (the end itself is read from the
# ledger's timestamps, so a slow poll costs no precision, and little CPU)
LEDGER_POLL_S = 1.0
# ledger states of a finished window
FINISHED = {State.DONE, State.NO_DATA, State.DEAD}
# longest any one side may take, seconds
RUN_TIMEOUT_S = 1800
# sensor data fed into the SQL store per write: bounds the feed's memory
FEED_CHUNK = timedelta(days=1)
# gordo-client reads this many resolution steps before START (model offset 0 + 5)
GORDO_CLIENT_PADDING = 5
# Latigo's executor stages (latigo_stage_seconds)
STAGES = ("metadata", "fetch", "gordo", "store")
# the target of the issue: Latigo at least this many times faster than gordo-client
TARGET_SPEEDUP = 2.0


def bench_models(count: int) -> list[dict]:
    """``count`` gordo model configs: the demo models' configs in turn, renamed bench-NN."""
    sources = demo_models()
    models = []
    for number in range(count):
        config = copy.deepcopy(sources[number % len(sources)])
        config["name"] = f"bench-{number + 1:02d}"
        config["project_name"] = PROJECT
        models.append(config)
    return models


def all_tags() -> list[str]:
    return sorted({tag for model in demo_models() for tag in model["dataset"]["tag_list"]})


class SignalSensors(SensorDataProvider, SensorInformationProvider):
    """The synthetic process, generated on the fly: what gordo-client's data provider reads."""

    def range_query(self, tags: Sequence[str], start: datetime, end: datetime) -> str:
        return f"signal({list(tags)}, {start.isoformat()}, {end.isoformat()})"

    def data(self, tags: Sequence[str], start: datetime, end: datetime) -> pd.DataFrame:
        return signal(tags, start, end, ONE_MINUTE)

    def write(self, frame: pd.DataFrame) -> int:
        raise NotImplementedError("generated, not stored")

    def sensors(self) -> list[str]:
        return all_tags()

    def exists(self, tag: str) -> bool:
        return True


def worker() -> None:
    """``latigo executor`` with the sensor provider swapped for :class:`SignalSensors`."""
    from latigo import logs
    from latigo.config import load_config
    from latigo.service import run_executor

    config = load_config()
    logs.configure(config.logging)
    parts = build(config)
    parts.sensors = SignalSensors()
    try:
        run_executor(parts)
    finally:
        parts.close()


# ---------------------------------------------------------------- one side


@dataclass
class Side:
    """One side's run: its wall time, what it used and what it wrote."""

    name: str
    database: str  # InfluxDB database it wrote to
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process during the run
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)  # Latigo: mean seconds per task
    points: int = 0
    points_in_range: int = 0
    notes: list[str] = field(default_factory=list)


class Servers:
    """What both sides share, and the CPU those servers use while a side runs."""

    def __init__(self, gordo_server, influx) -> None:
        self.gordo = gordo_server
        self.influx = influx

    def cpu(self) -> dict[str, float]:
        return {
            "Gordo server": services.tree_cpu_seconds(self.gordo.process.pid),
            "InfluxDB": services.tree_cpu_seconds(self.influx.process.pid),
        }


def run_gordo_client(servers: Servers, start: datetime, end: datetime, folder: Path) -> Side:
    side = Side("gordo-client predict", "gordo_client")
    servers.influx.query(f'CREATE DATABASE "{side.database}"')
    command = [
        str(gordo.DEFAULT_VENV / "bin" / "gordo-client"),
        "--project", PROJECT, "--host", "127.0.0.1", "--port", str(servers.gordo.port), "--scheme", "http",
        "predict", start.isoformat(), end.isoformat(),
        "--data-provider", GORDO_CLIENT_PROVIDER,
        "--influx-uri", f"root:root@{servers.influx.url.removeprefix('http://')}/{side.database}",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env["PYTHONPATH"] = str(gordo.REPO_ROOT)
    log_file = folder / "gordo-client.log"
    before = servers.cpu()
    started = time.perf_counter()
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        ended = services.wait_with_peak(proc, RUN_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            services.stop_child(proc)
    side.seconds = time.perf_counter() - started
    if ended.code != 0:
        raise RuntimeError(
            f"gordo-client exited with {ended.code}; {log_file}:\n{log_file.read_text()[-3000:]}"
        )
    side.cpu = {"gordo-client": ended.cpu_seconds, **_delta(before, servers.cpu())}
    side.peak_rss_mib = {"gordo-client": ended.peak_rss_mib}
    return side


def feed_sql(url: str, start: datetime, end: datetime) -> tuple[int, float]:
    """A Latigo database holding the synthetic sensor data of every tag over [start, end): rows, seconds."""
    parts = build(Config(database={"url": url}, metrics={"port": 0}))
    try:
        started = time.perf_counter()
        rows = 0
        cursor = start
        while cursor < end:
            stop = min(end, cursor + FEED_CHUNK)
            rows += parts.sensors.write(signal(all_tags(), cursor, stop, ONE_MINUTE))
            cursor = stop
        return rows, time.perf_counter() - started
    finally:
        parts.close()


def run_latigo(
    source: str,
    span: str,
    servers: Servers,
    start: datetime,
    end: datetime,
    now: datetime,
    folder: Path,
    args: argparse.Namespace,
    sql_template: Path | None,
) -> Side:
    name = f"latigo ({source}, {span} tasks)"
    side = Side(name, f"latigo_{source}_{span}")
    database_file = folder / f"{side.database}.db"
    if source == "sql":
        assert sql_template is not None
        # the fed sensor data and an empty ledger (the feed's connections are closed: no WAL left)
        shutil.copyfile(sql_template, database_file)
    config = Config(
        database={"url": f"sqlite:///{database_file}"},
        models={"base_url": servers.gordo.base_url, "projects": [PROJECT]},
        predictions={"type": "influx", "url": servers.influx.url, "database": side.database},
        schedule={"max_task_span": span},
        executor={"concurrency": args.concurrency},
        metrics={"port": 0},
        # the run's end is read from the ledger's timestamps (last_ledger_update), and the
        # scheduler's compaction would move the range's older windows into runs, which keep
        # none: nothing is compacted during a run (compaction's cost is bench.growth's)
        retention={"compact_after": "3650d"},
    )
    config_file = folder / f"{side.database}.yaml"
    config_file.write_text(dump_config(config))
    env = {**os.environ, "LATIGO_CONFIG": str(config_file)}
    role = ["-m", "latigo", "executor"] if source == "sql" else ["-m", "bench.backfill", "--worker"]
    parts = build(config, clock=lambda: now)
    scheduler = Scheduler(config, parts.model_info, parts.ledger, parts.queue, lambda: now)
    servers.influx.query(f'CREATE DATABASE "{side.database}"')
    children: list[tuple[str, subprocess.Popen, int]] = []
    exits: dict[str, services.Exit] = {}
    samples: list[dict] = []
    before, own_before = servers.cpu(), services.own_cpu_seconds()
    try:
        started, started_at = time.perf_counter(), datetime.now(UTC)
        for number in range(args.executors):
            port = gordo.free_port()
            with open(folder / f"{side.database}-executor-{number + 1}.log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, *role],
                    env={**env, "LATIGO_METRICS__PORT": str(port)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            children.append((f"executor-{number + 1}", proc, port))
        with open(folder / f"{side.database}-backfill.log", "wb") as log:
            command = [
                "-m",
                "latigo",
                "backfill",
                "--from",
                start.isoformat(),
                "--to",
                end.isoformat(),
                "--json",
            ]
            planner = subprocess.Popen(
                [sys.executable, *command],
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
            output = planner.stdout.read()
            exits["latigo backfill"] = services.wait_with_peak(planner, RUN_TIMEOUT_S)
        if exits["latigo backfill"].code != 0:
            raise RuntimeError(
                f"latigo backfill exited with {exits['latigo backfill'].code}: {output[-2000:]!r}"
            )
        planned = json.loads(output)["total"]["planned"]
        planned_after = time.perf_counter() - started
        last_tick = 0.0
        while True:
            if time.perf_counter() - last_tick >= TICK_S:
                scheduler.tick()
                last_tick = time.perf_counter()
            if not outstanding(parts):
                break
            if time.perf_counter() - started > RUN_TIMEOUT_S:
                raise RuntimeError(
                    f"{name}: windows unfinished after {RUN_TIMEOUT_S} s: {state_totals(parts)}"
                )
            for child, proc, _ in children:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name}: {child} exited with {proc.returncode}")
            time.sleep(LEDGER_POLL_S)
        side.seconds = (services.last_ledger_update(parts.engine) - started_at).total_seconds()
        states = state_totals(parts)
        samples = [services.scrape(port) for _, _, port in children]
        servers_cpu, own_cpu = servers.cpu(), services.own_cpu_seconds()
    finally:
        for child, proc, _ in children:
            exits[child] = services.stop_child(proc)
        parts.close()
    side.cpu = {
        "latigo executors": sum(
            exit.cpu_seconds for child, exit in exits.items() if child.startswith("executor")
        ),
        "latigo backfill": exits["latigo backfill"].cpu_seconds,
        "bench (scheduler ticks)": own_cpu - own_before,
        **_delta(before, servers_cpu),
    }
    side.peak_rss_mib = {child: exit.peak_rss_mib for child, exit in exits.items()}
    side.stages = stage_means(samples)
    tasks = side.stages.get("tasks", 0)
    side.notes.append(
        f"{planned} windows planned {planned_after:.1f} s after the start, as {tasks:.0f} tasks;"
        f" finished {dict(sorted(states.items()))}"
    )
    return side


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before}


def state_totals(parts) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counts in readmodel.state_counts(parts.engine).values():
        for state, count in counts.items():
            totals[state] = totals.get(state, 0) + count
    return totals


def outstanding(parts) -> int:
    return sum(count for state, count in state_totals(parts).items() if State(state) not in FINISHED)


def stage_means(samples: list[dict]) -> dict[str, float]:
    """Mean seconds per task of each executor stage, over the executors' metrics; the Gordo
    call as the client saw it (``http``, to the response headers) and as Gordo did (``server``)."""

    def total(name: str, **labels: str) -> float:
        return sum(services.sample(each, name, **labels) for each in samples)

    tasks = sum(
        total("latigo_tasks_handled_total", outcome=outcome) for outcome in ("done", "no_data", "dead")
    )
    if not tasks:
        return {}
    means = {stage: total("latigo_stage_seconds_sum", stage=stage) / tasks for stage in STAGES}
    calls = total("latigo_gordo_server_seconds_count") or 1
    means["http"] = total("latigo_gordo_client_seconds_sum") / calls
    means["server"] = total("latigo_gordo_server_seconds_sum") / calls
    means["tasks"] = tasks
    return means


# ---------------------------------------------------------------- checks


def _influx_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def count_points(influx, database: str, start: datetime | None = None, end: datetime | None = None) -> int:
    where = f" WHERE time >= '{_influx_time(start)}' AND time < '{_influx_time(end)}'" if start else ""
    total = 0
    for result in influx.query(f'SELECT count("sensor_value") FROM /.*/{where}', db=database):
        for series in result.get("series", []):
            total += int(series["values"][0][1])
    return total


def series(
    influx, database: str, measurement: str, machine: str, start: datetime, end: datetime
) -> pd.Series:
    rows = influx.points(
        f'SELECT "sensor_value" FROM "{measurement}" WHERE "machine" = \'{machine}\' '
        f"AND time >= '{_influx_time(start)}' AND time < '{_influx_time(end)}'",
        database,
    )
    return pd.Series({row["time"]: row["sensor_value"] for row in rows}, dtype="float64")


def largest_difference(
    influx, reference: str, database: str, names: list[str], start: datetime, end: datetime
) -> float:
    """Largest relative difference of total-anomaly-scaled between two databases at the
    times both wrote, over a model of each kind."""
    worst = 0.0
    for name in names[:3]:
        theirs = series(influx, reference, "total-anomaly-scaled", name, start, end)
        ours = series(influx, database, "total-anomaly-scaled", name, start, end)
        common = theirs.index.intersection(ours.index)
        if len(common) != len(ours):
            return float("inf")
        relative = (ours[common] - theirs[common]).abs() / theirs[common].abs().clip(lower=1e-9)
        worst = max(worst, float(relative.max()))
    return worst


def warm_up(base_url: str, names: list[str], start: datetime) -> None:
    """One small prediction per model, so every model is loaded in Gordo before timing."""
    from latigo import frames
    from latigo.providers.models.gordo import GordoModels

    models = GordoModels(Config(models={"base_url": base_url}).models)
    try:
        revision = models.latest_revision(PROJECT)
        for name in names:
            metadata = models.metadata(PROJECT, name, revision)
            X = frames.to_model_input(
                signal(frames.needed_tags(metadata), start, start + timedelta(hours=1)), metadata
            )
            models.predict(metadata, X, X.loc[:, list(metadata.target_tags)])
    finally:
        models.close()


# ---------------------------------------------------------------- report


def print_report(sides: list[Side], differences: dict[str, float]) -> None:
    client = sides[0]
    print(f"\n{'side':<30}{'seconds':>9}{'speed-up':>10}{'points':>12}{'in range':>12}{'max rel Δ':>11}")
    for side in sides:
        difference = differences.get(side.name)
        print(
            f"{side.name:<30}{side.seconds:>9.1f}{client.seconds / side.seconds:>10.2f}{side.points:>12,}"
            f"{side.points_in_range:>12,}{'-' if difference is None else f'{difference:.1e}':>11}"
        )
    print(
        "  speed-up = gordo-client's seconds / the side's; 'in range' = points at or after START"
        f" (gordo-client also predicts the {GORDO_CLIENT_PADDING} steps before it, from its padding);"
        " max rel Δ = total-anomaly-scaled against gordo-client's at the same times (a model of each kind)"
    )
    print("\nCPU seconds during each side's run (Gordo server = gunicorn master + worker):")
    for side in sides:
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in side.cpu.items())
        print(f"  {side.name:<30} total {sum(side.cpu.values()):6.1f}: {parts}")
    print("\npeak RSS, MiB:")
    for side in sides:
        print(
            f"  {side.name:<30} "
            + ", ".join(f"{name} {peak:.0f}" for name, peak in side.peak_rss_mib.items())
        )
    latigo = [side for side in sides if side.stages]
    if latigo:
        print(
            "\nLatigo's executors, mean ms per task (gordo = encoding, HTTP and decoding; http = the HTTP call,"
            " answer read; server = Gordo's own Server-Timing):"
        )
        print(f"  {'side':<30}{'tasks':>7}{'fetch':>8}{'gordo':>8}{'http':>8}{'server':>8}{'store':>8}")
        for side in latigo:
            ms = {key: 1000 * value for key, value in side.stages.items()}
            print(
                f"  {side.name:<30}{side.stages['tasks']:>7.0f}{ms['fetch']:>8.1f}{ms['gordo']:>8.1f}"
                f"{ms['http']:>8.1f}{ms['server']:>8.1f}{ms['store']:>8.1f}"
            )
    for side in sides:
        for note in side.notes:
            print(f"  {side.name}: {note}")
    best = max(sides[1:], key=lambda side: client.seconds / side.seconds, default=None)
    if best is not None:
        speedup = client.seconds / best.seconds
        print(
            f"\ntarget: backfill >= {TARGET_SPEEDUP} x faster than gordo-client: best {speedup:.2f}"
            f" ({best.name}): {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}"
        )
        memory = max(peak for side in sides[1:] for peak in side.peak_rss_mib.values())
        theirs = client.peak_rss_mib["gordo-client"]
        print(f"Latigo's largest process peaked at {memory:.0f} MiB (gordo-client: {theirs:.0f} MiB)")


# ---------------------------------------------------------------- main


def main() -> None:
    if "--worker" in sys.argv[1:]:
        worker()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--runs",
        default="signal:7d,sql:7d,signal:1d",
        help="Latigo runs as source:max_task_span (sources: signal, sql) [default: %(default)s]",
    )
    parser.add_argument(
        "--executors", type=int, default=2, help="Latigo executor processes [default: %(default)s]"
    )
    parser.add_argument(
        "--concurrency", type=int, default=2, help="tasks per executor [default: %(default)s]"
    )
    args = parser.parse_args()
    runs = [tuple(run.split(":")) for run in args.runs.split(",")]
    for source, span in runs:
        if source not in ("signal", "sql") or not isinstance(parse_duration(span), timedelta):
            parser.error(
                f"a run is source:span with source signal or sql and a span such as 1d: {source}:{span}"
            )

    now = datetime.now(UTC).replace(microsecond=0)
    end = Grid(INTERVAL).last_due_end(now, DELAY)
    start = end - timedelta(days=args.days)
    models = bench_models(args.models)
    names = [model["name"] for model in models]
    print(
        f"backfill benchmark: {args.models} models x {args.days} days,"
        f" [{start.isoformat()}, {end.isoformat()}); {os.cpu_count()} cores,"
        f" load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    began = time.perf_counter()
    sides: list[Side] = []
    with (
        tempfile.TemporaryDirectory(prefix="latigo-bench-backfill-") as tmp,
        services.gordo_server(models, MODEL_ROOT) as gordo_server,
        services.influx_server() as influx,
    ):
        folder = Path(tmp)
        servers = Servers(gordo_server, influx)
        print(
            f"Gordo serving {len(names)} models ({time.perf_counter() - began:.0f} s to build and start)",
            flush=True,
        )
        warm_up(gordo_server.base_url, names, start)

        sides.append(run_gordo_client(servers, start, end, folder))
        print(f"  {sides[-1].name}: {sides[-1].seconds:.1f} s", flush=True)
        sql_template = None
        if any(source == "sql" for source, _ in runs):
            sql_template = folder / "sensors.db"
            rows, seconds = feed_sql(f"sqlite:///{sql_template}", start - timedelta(hours=1), end)
            print(
                f"  sensor data for the sql runs: {rows:,} rows fed in {seconds:.1f} s (not timed)",
                flush=True,
            )
        for source, span in runs:
            sides.append(run_latigo(source, span, servers, start, end, now, folder, args, sql_template))
            print(f"  {sides[-1].name}: {sides[-1].seconds:.1f} s", flush=True)

        for side in sides:
            side.points = count_points(influx, side.database)
            side.points_in_range = count_points(influx, side.database, start, end)
        differences = {
            side.name: largest_difference(influx, sides[0].database, side.database, names, start, end)
            for side in sides[1:]
        }
    print_report(sides, differences)
    print(f"\nwhole benchmark {time.perf_counter() - began:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
