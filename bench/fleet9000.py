"""Fleet benchmark: Latigo against a real Gordo serving 9,000 models, at Latigo's default
settings — the first start, a tick in step, and the continuous windows of the whole fleet
drained by executor processes, against a plain ``requests`` loop in the same run.

    .venv/bin/python -m bench.fleet9000 [--models 9000] [--databases sqlite,postgresql]
                                        [--executors 2] [--gordo-workers 2] [--drains cold,warm]
                                        [--profile DIR]

What runs: Gordo 6.0.4 (``bench.gordo_fleet``: the demo's ``pump-1`` linked ``--models``
times, gunicorn ``--gordo-workers`` x 4 threads, access log on), a fresh PostgreSQL 15
(fsync off) and SQLite files. The Latigo configuration is the default but for what must
name this machine: ``database.url``, ``models.base_url``, ``models.projects`` and
``metrics.port: 0`` (a free port, so as not to collide with other work on this machine).

Per database, on a fresh Latigo database:

1. **first start**: ``latigo scheduler --once`` as a child process (through
   ``bench._timed_scheduler``, which times its phases and otherwise is the command):
   migrations, discovery of the fleet from Gordo, one day of backfill planned per model
   (``schedule.initial_backfill`` 1d: 48 windows each), the continuous windows published
   (history waits: the queue already holds more than ``schedule.backlog_limit``). Timed from
   spawn to exit; peak RSS from ``wait4``.
2. **cold drain**: the demo's sensor data written (not timed), then ``--executors``
   ``latigo executor --until-idle`` processes drain the published continuous windows, one
   per model, with an empty model catalogue: each model's metadata is asked of Gordo here.
3. **steady tick**: the ledger is put in step — the day of history marked done, the newest
   window of every model removed — and ``latigo scheduler --once`` runs again: one window
   due per model, planned and published, ledger full.
4. **warm drain** (``--drains``): the executors (new processes) drain those windows with the
   catalogue filled: the steady state of a restarted executor.

Drain rates are (windows - 1) / (last finish - first finish), read from the ledger's
timestamps, so the executors' start (imports, migrations check, ~2 s) is not counted; their
wall time from spawn is printed beside it. The baseline, before and after the databases'
runs: **raw Gordo calls** — the frame Latigo sends for a continuous window of ``pump-1``
(the same synthetic data, padded and resampled by Latigo's functions), encoded and decoded
as Latigo does (``latigo.providers.models.wire``), POSTed with ``requests`` once per model
from as many threads as Latigo has tasks in flight (executors x ``executor.concurrency``);
its rate is counted the same way. "vs raw" = Latigo's windows/s over the raw calls' (mean
of before and after).

Gordo's access log counts what Gordo got in each phase: ``/metadata`` requests per model and
revision, and prediction requests. Also printed: each executor stage's mean
(``latigo_stage_seconds``, scraped every second), metadata lookups by source
(``latigo_metadata_lookups``), CPU seconds per process, peak RSS, Gordo's start time and
memory. ``--profile DIR`` profiles each scheduler's tick with cProfile (slower: for the functions,
not the times) and prints its top functions. ``--drains none`` runs the schedulers alone
(no drain, no baseline): a minute at 9,000 models.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import requests
import yaml
from sqlalchemy import delete, func, select, update

from bench import _services as services
from bench import gordo_fleet
from bench.executor import server_seconds
from latigo import frames
from latigo.components import build
from latigo.config import Config
from latigo.demo.feeder import feed
from latigo.demo.gordo import free_port
from latigo.demo.signals import signal
from latigo.ledger import State
from latigo.providers.models import wire
from latigo.providers.models.gordo import GordoModels
from latigo.schema import ledger, predictions, task_queue
from latigo.task import Task
from latigo.window import Grid

# Latigo's defaults this benchmark relies on (checked against the configuration at start)
DEFAULTS = Config()
# ledger states of a finished window
FINISHED = (State.DONE, State.NO_DATA, State.DEAD)
# sensor history written before the newest window's start: the model's padding and more
FEED_BEFORE = timedelta(hours=3)
# and after now: the windows that fall due while the run goes on
FEED_AFTER = timedelta(hours=1)
# how often the executors' metrics are scraped while they drain, seconds
SCRAPE_S = 1.0
# longest a scheduler run or a drain may take before the bench gives up
CHILD_TIMEOUT_S = 1800
# the executor stages of latigo_stage_seconds
STAGES = ("metadata", "fetch", "gordo", "store")
# the targets
TARGET_FIRST_START_S = 10.0
TARGET_SCHEDULER_RSS_MIB = 300
TARGET_VS_RAW = 0.95
TARGET_METADATA_PER_MODEL = 1
# cProfile lines printed per profiled scheduler
PROFILE_LINES = 25
# queue rows deleted per statement (bound parameters per statement stay few)
DELETE_BATCH = 500


# ---------------------------------------------------------------- Latigo processes


def write_config(folder: Path, name: str, url: str, gordo: gordo_fleet.FleetGordo) -> Path:
    """The settings that must name this machine; everything else is Latigo's default."""
    path = folder / f"{name}.yaml"
    settings = {
        "database": {"url": url},
        "models": {"base_url": gordo.base_url, "projects": [gordo.project]},
        "metrics": {"port": 0},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def child_env(config_file: Path, **extra: str) -> dict[str, str]:
    """Our environment without any LATIGO_* setting of the shell, plus the config file."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LATIGO_")}
    return {**env, "LATIGO_CONFIG": str(config_file), **extra}


@dataclass
class SchedulerRun:
    name: str
    seconds: float  # spawn to exit
    exit: services.Exit
    phases: dict[str, float]  # bench._timed_scheduler's
    planned: int
    queued: int
    metadata_requests: int
    profile: Path | None = None


def run_scheduler(
    name: str, config_file: Path, folder: Path, gordo: gordo_fleet.FleetGordo, profile_dir: Path | None
) -> SchedulerRun:
    """``latigo scheduler --once`` in a child process; its time, peak RSS and phases."""
    phases_file = folder / f"{name}-phases.json"
    log_file = folder / f"{name}.log"
    profile = profile_dir / f"{name}.prof" if profile_dir else None
    command = [sys.executable, "-m", "bench._timed_scheduler"]
    env = child_env(config_file, BENCH_PHASES=str(phases_file), **({"BENCH_PROFILE": str(profile)} if profile else {}))
    mark = gordo.mark()
    started = time.perf_counter()
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    exit_ = services.wait_with_peak(proc, CHILD_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if exit_.code != 0:
        raise RuntimeError(f"{name}: the scheduler exited {exit_.code}:\n{log_file.read_text()[-3000:]}")
    phases = json.loads(phases_file.read_text())
    text = log_file.read_text(errors="replace")
    planned, queued = _tick_counts(text)
    metadata = len(gordo_fleet.metadata_per_model(gordo.requests(mark)))
    return SchedulerRun(name, seconds, exit_, phases, planned, queued, metadata, profile)


def _tick_counts(log_text: str) -> tuple[int, int]:
    """Windows planned and tasks published, from the scheduler's "tick: ..." line."""
    for line in reversed(log_text.splitlines()):
        if "tick: " in line:
            words = line.split("tick: ", 1)[1].replace(",", "").split()
            # "<models> models <planned> windows planned <tasks> tasks published ..."
            return int(words[2]), int(words[5])
    raise RuntimeError(f"no tick line in the scheduler's log:\n{log_text[-3000:]}")


@dataclass
class Drain:
    name: str
    windows: int
    seconds: float  # first finished window to the last (ledger timestamps)
    wall_seconds: float  # executors spawned to the last finished window
    states: dict[str, int]
    exits: list[services.Exit]
    samples: list[dict]  # each executor's last metrics scrape
    gordo_cpu: float
    metadata: Counter
    prediction_requests: int

    @property
    def per_second(self) -> float:
        return (self.windows - 1) / self.seconds if self.seconds > 0 else float("nan")


def drain(
    name: str,
    config_file: Path,
    folder: Path,
    engine,
    gordo: gordo_fleet.FleetGordo,
    window_start: datetime,
    executors: int,
) -> Drain:
    """``executors`` ``latigo executor --until-idle`` processes until they exit; what the
    ledger, their metrics and Gordo's access log say about the windows starting at
    ``window_start``."""
    ports = [free_port() for _ in range(executors)]
    latest: list[dict] = [{} for _ in ports]
    done = threading.Event()

    def scrape_all() -> None:
        while not done.wait(SCRAPE_S):
            for number, port in enumerate(ports):
                with contextlib.suppress(OSError, ValueError):
                    latest[number] = services.scrape(port)

    mark = gordo.mark()
    gordo_before = services.tree_cpu_seconds(gordo.process.pid)
    spawned = datetime.now(UTC)
    children = []
    for number, port in enumerate(ports):
        with open(folder / f"{name}-executor-{number}.log", "wb") as log:
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "latigo", "executor", "--until-idle"],
                    env=child_env(config_file, LATIGO_METRICS__PORT=str(port)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
    scraper = threading.Thread(target=scrape_all, daemon=True)
    scraper.start()
    try:
        exits = [services.wait_with_peak(child, CHILD_TIMEOUT_S) for child in children]
    finally:
        done.set()
        for child in children:
            if child.returncode is None:
                services.stop_child(child)
    scraper.join()
    gordo_cpu = services.tree_cpu_seconds(gordo.process.pid) - gordo_before
    time.sleep(0.5)  # gunicorn writes its access lines after the answers
    requests_ = gordo.requests(mark)
    with engine.connect() as connection:
        rows = connection.execute(
            select(ledger.c.state, func.count(), func.min(ledger.c.updated_at), func.max(ledger.c.updated_at))
            .where(ledger.c.window_start == window_start)
            .group_by(ledger.c.state)
        ).all()
    states = {str(state): count for state, count, _, _ in rows}
    finished = [(first, last) for state, _, first, last in rows if State(state) in FINISHED]
    windows = sum(count for state, count, _, _ in rows if State(state) in FINISHED)
    if not finished:
        raise RuntimeError(f"{name}: no window finished: {states}; see {folder}")
    first, last = min(f for f, _ in finished), max(last for _, last in finished)
    return Drain(
        name,
        windows,
        (last - first).total_seconds(),
        (last - spawned).total_seconds(),
        states,
        exits,
        latest,
        gordo_cpu,
        gordo_fleet.metadata_per_model(requests_),
        gordo_fleet.predictions(requests_),
    )


def step_in(engine, config: Config, now: datetime) -> datetime:
    """Put the ledger in step at ``now``: every window planned so far done (the backfill
    finished), the newest due window of every model gone (with its predictions), so the
    next tick finds one window due per model. Returns that window's start."""
    schedule = config.schedule
    newest = Grid(schedule.interval, schedule.anchor).last_due_end(now, schedule.delay) - schedule.interval
    with engine.begin() as connection:
        connection.execute(delete(ledger).where(ledger.c.window_start >= newest))
        connection.execute(delete(predictions).where(predictions.c.time >= newest))
        connection.execute(
            update(ledger).where(ledger.c.state.not_in([str(state) for state in FINISHED])).values(state=State.DONE)
        )
    return newest


def hold_back_history(engine, newest: datetime) -> int:
    """Take the history tasks a first start published out of the queue (their windows back
    to planned), so a drain is the continuous windows alone; how many. Only a fleet smaller
    than ``schedule.backlog_limit`` has any: 9,000 continuous tasks already fill the queue."""
    with engine.begin() as connection:
        rows = connection.execute(select(task_queue.c.id, task_queue.c.body)).all()
        history = [row.id for row in rows if Task.from_json(row.body).start < newest]
        for offset in range(0, len(history), DELETE_BATCH):
            connection.execute(delete(task_queue).where(task_queue.c.id.in_(history[offset : offset + DELETE_BATCH])))
        connection.execute(
            update(ledger)
            .where(ledger.c.window_start < newest, ledger.c.state == State.QUEUED)
            .values(state=State.PLANNED, task_id=None)
        )
    return len(history)


def newest_window(engine) -> datetime:
    with engine.connect() as connection:
        return connection.execute(select(func.max(ledger.c.window_start))).scalar_one()


# ---------------------------------------------------------------- one database


@dataclass
class DatabaseRun:
    database: str
    first_start: SchedulerRun
    steady: SchedulerRun | None = None
    drains: list[Drain] = field(default_factory=list)
    feed_seconds: float = 0.0
    held_back: int = 0  # history tasks of the first start taken out of the queue before the drain


def run_database(
    database: str, url: str, folder: Path, gordo: gordo_fleet.FleetGordo, args: argparse.Namespace
) -> DatabaseRun:
    config_file = write_config(folder, database, url, gordo)
    first = run_scheduler(f"{database}-first-start", config_file, folder, gordo, args.profile)
    print(
        f"{database} first start: {first.seconds:.2f} s, peak RSS {first.exit.peak_rss_mib:.0f} MiB,"
        f" {first.planned} windows planned, {first.queued} tasks published",
        flush=True,
    )
    result = DatabaseRun(database, first)
    parts = build(Config(database={"url": url}), migrate=False)
    try:
        start = newest_window(parts.engine)
        result.held_back = hold_back_history(parts.engine, start)
        if result.held_back:
            print(f"  {result.held_back} history tasks taken out of the queue: the drain is the continuous windows")
        started = time.perf_counter()
        feed(parts.sensors, start - FEED_BEFORE, datetime.now(UTC) + FEED_AFTER)
        result.feed_seconds = time.perf_counter() - started
        if "cold" in args.drains:
            cold = drain(f"{database}-cold", config_file, folder, parts.engine, gordo, start, args.executors)
            result.drains.append(cold)
            print(f"{database} cold drain: {cold.per_second:.1f} windows/s, {cold.states}", flush=True)
        steady_start = step_in(parts.engine, parts.config, datetime.now(UTC))
        result.steady = run_scheduler(f"{database}-steady-tick", config_file, folder, gordo, args.profile)
        print(
            f"{database} steady tick: {result.steady.seconds:.2f} s, {result.steady.planned} windows planned",
            flush=True,
        )
        if "warm" in args.drains:
            warm = drain(f"{database}-warm", config_file, folder, parts.engine, gordo, steady_start, args.executors)
            result.drains.append(warm)
            print(f"{database} warm drain: {warm.per_second:.1f} windows/s, {warm.states}", flush=True)
    finally:
        parts.close()
    return result


# ---------------------------------------------------------------- the baseline


@dataclass
class Raw:
    name: str
    windows: int
    seconds: float  # first answer to the last, as for the drains
    wall_seconds: float
    cpu: float  # this process
    gordo_cpu: float
    server_ms: float  # Gordo's own mean per call (Server-Timing)

    @property
    def per_second(self) -> float:
        return (self.windows - 1) / self.seconds


def continuous_frame(gordo: gordo_fleet.FleetGordo) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frames Latigo sends for the newest due window of a fleet model: the same data,
    padded and resampled by Latigo's own functions (every fleet model is ``pump-1``)."""
    settings = Config(models={"base_url": gordo.base_url}).models
    models = GordoModels(settings)
    try:
        metadata = models.metadata(gordo.project, gordo.models[0], gordo.revision)
    finally:
        models.close()
    schedule = DEFAULTS.schedule
    end = Grid(schedule.interval, schedule.anchor).last_due_end(datetime.now(UTC), schedule.delay)
    start = end - schedule.interval
    raw = signal(frames.needed_tags(metadata), frames.data_start(start, metadata, settings.data_margin), end,
                 with_anomalies=True)  # fmt: skip
    X = frames.to_model_input(raw, metadata)
    return X, frames.to_model_target(X, metadata)


def run_raw(name: str, gordo: gordo_fleet.FleetGordo, X: pd.DataFrame, y: pd.DataFrame, threads: int) -> Raw:
    """One POST per fleet model from ``threads`` threads, encoded and decoded as Latigo does."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))
    ends: list[float] = []
    server: list[float] = []

    def one(model: str) -> None:
        body = wire.request_body(X, y)
        response = session.post(
            f"{gordo.base_url}/gordo/v0/{gordo.project}/{model}/anomaly/prediction",
            params={"format": "parquet", "revision": gordo.revision},
            timeout=(3.05, 60),
            **body,
        )
        response.raise_for_status()
        wire.read_answer(response.content)
        server.append(server_seconds(response))
        ends.append(time.perf_counter())

    gordo_before, own_before = services.tree_cpu_seconds(gordo.process.pid), services.own_cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, gordo.models))
    session.close()
    return Raw(
        name,
        len(ends),
        max(ends) - min(ends),
        max(ends) - started,
        services.own_cpu_seconds() - own_before,
        services.tree_cpu_seconds(gordo.process.pid) - gordo_before,
        1000 * sum(server) / len(server),
    )


# ---------------------------------------------------------------- report


def _sum(samples: list[dict], name: str, **labels: str) -> float:
    return sum(services.sample(each, name, **labels) for each in samples)


def print_schedulers(runs: list[DatabaseRun]) -> None:
    print("\nscheduler, `latigo scheduler --once` (spawn to exit; tick = Scheduler.tick() inside it):")
    print(
        f"{'run':<26}{'seconds':>9}{'tick s':>8}{'peak RSS MiB':>14}{'CPU s':>7}{'planned':>9}{'tasks':>7}"
        f"{'metadata GETs':>15}"
    )
    for run in runs:
        for each in (run.first_start, run.steady):
            if each is None:
                continue
            print(
                f"{each.name:<26}{each.seconds:>9.2f}{each.phases.get('tick', float('nan')):>8.2f}"
                f"{each.exit.peak_rss_mib:>14.0f}{each.exit.cpu_seconds:>7.1f}{each.planned:>9}{each.queued:>7}"
                f"{each.metadata_requests:>15}"
            )
    print("\nwhere the scheduler's time goes, seconds (nested phases are inside their callers):")
    names = list(runs[0].first_start.phases)
    print(
        f"{'phase':<28}" + "".join(f"{each.name:>26}" for run in runs for each in (run.first_start, run.steady) if each)
    )
    for phase in names:
        values = [each.phases.get(phase, 0.0) for run in runs for each in (run.first_start, run.steady) if each]
        print(f"{phase:<28}" + "".join(f"{value:>26.3f}" for value in values))


def print_drains(runs: list[DatabaseRun], raws: list[Raw], threads: int) -> None:
    raw_rate = (sum(raw.windows for raw in raws) - len(raws)) / sum(raw.seconds for raw in raws)
    print(f"\ncontinuous windows, one per model ({threads} in flight on both sides):")
    print(
        f"{'run':<24}{'windows':>8}{'seconds':>9}{'windows/s':>11}{'vs raw':>8}{'wall s':>8}"
        f"{'Gordo CPU ms/w':>16}{'client CPU ms/w':>17}{'server ms':>11}{'peak RSS MiB':>14}"
    )
    for raw in raws:
        print(
            f"{raw.name:<24}{raw.windows:>8}{raw.seconds:>9.2f}{raw.per_second:>11.1f}"
            f"{raw.per_second / raw_rate:>8.2f}{raw.wall_seconds:>8.2f}{1000 * raw.gordo_cpu / raw.windows:>16.1f}"
            f"{1000 * raw.cpu / raw.windows:>17.1f}{raw.server_ms:>11.1f}{'-':>14}"
        )
    drains = [each for run in runs for each in run.drains]
    for each in drains:
        calls = _sum(each.samples, "latigo_gordo_server_seconds_count")
        server = 1000 * _sum(each.samples, "latigo_gordo_server_seconds_sum") / calls if calls else float("nan")
        cpu = sum(exit_.cpu_seconds for exit_ in each.exits)
        rss = "/".join(f"{exit_.peak_rss_mib:.0f}" for exit_ in each.exits)
        print(
            f"{each.name:<24}{each.windows:>8}{each.seconds:>9.2f}{each.per_second:>11.1f}"
            f"{each.per_second / raw_rate:>8.2f}{each.wall_seconds:>8.2f}{1000 * each.gordo_cpu / each.windows:>16.1f}"
            f"{1000 * cpu / each.windows:>17.1f}{server:>11.1f}{rss:>14}"
        )
    print(
        f"  windows/s = (windows - 1) / (last finish - first finish); vs raw = over the raw calls' mean"
        f" ({raw_rate:.1f}/s); wall = from spawning the executors (their start included) to the last finish;"
        f" client CPU = executors' (or the raw loop's) CPU per window"
    )
    print("\nwhere a task's time goes, mean ms per task (latigo_stage_seconds, all executors):")
    print(
        f"{'run':<24}{'tasks':>7}" + "".join(f"{stage:>10}" for stage in STAGES) + f"{'lookups memory/table/gordo':>30}"
    )
    for each in drains:
        tasks = _sum(each.samples, "latigo_stage_seconds_count", stage="gordo")
        means = [1000 * _sum(each.samples, "latigo_stage_seconds_sum", stage=s) / max(1, tasks) for s in STAGES]
        lookups = "/".join(
            f"{_sum(each.samples, 'latigo_metadata_lookups_total', source=source):.0f}"
            for source in ("memory", "table", "gordo")
        )
        print(f"{each.name:<24}{tasks:>7.0f}" + "".join(f"{mean:>10.1f}" for mean in means) + f"{lookups:>30}")
    print("  (from the last scrape before each executor exited: up to a second of tasks may be missing)")
    print("\nGordo's access log, per drain:")
    for each in drains:
        per_model = each.metadata
        most = max(per_model.values(), default=0)
        revisions = sorted({revision or "-" for _, revision in per_model})
        print(
            f"  {each.name:<22} /metadata requests {sum(per_model.values()):>6} for {len(per_model):>5} models"
            f" (at most {most} per model and revision; revisions {', '.join(revisions) or '-'});"
            f" prediction requests {each.prediction_requests:>6}"
        )


def print_profiles(runs: list[DatabaseRun]) -> None:
    for run in runs:
        for each in (run.first_start, run.steady):
            if each is None or each.profile is None:
                continue
            print(f"\ncProfile of {each.name}'s tick (the profiler slows it), by cumulative and by own time:")
            stats = pstats.Stats(str(each.profile))
            stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
            stats.sort_stats("tottime").print_stats(PROFILE_LINES)


def print_targets(runs: list[DatabaseRun], raws: list[Raw], models: int) -> None:
    raw_rate = (sum(raw.windows for raw in raws) - len(raws)) / sum(raw.seconds for raw in raws) if raws else 0.0

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print("\ntargets:")
    for run in runs:
        first = run.first_start
        print(
            f"  {run.database}: first start <= {TARGET_FIRST_START_S:.0f} s: {first.seconds:.2f} s (tick"
            f" {first.phases.get('tick', float('nan')):.2f} s): {verdict(first.seconds <= TARGET_FIRST_START_S)};"
            f" scheduler RSS <= {TARGET_SCHEDULER_RSS_MIB} MiB: {first.exit.peak_rss_mib:.0f} MiB:"
            f" {verdict(first.exit.peak_rss_mib <= TARGET_SCHEDULER_RSS_MIB)}"
        )
        for each in run.drains:
            most = max(each.metadata.values(), default=0)
            print(
                f"  {each.name}: >= {TARGET_VS_RAW} x raw: {each.per_second / raw_rate:.2f}:"
                f" {verdict(each.per_second / raw_rate >= TARGET_VS_RAW)}; /metadata <= {TARGET_METADATA_PER_MODEL}"
                f" per model and revision: at most {most}: {verdict(most <= TARGET_METADATA_PER_MODEL)};"
                f" {each.windows}/{models} windows finished"
            )


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=9000, help="fleet size: links to one built model")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--executors", type=int, default=2, help="latigo executor processes per drain")
    parser.add_argument("--gordo-workers", type=int, default=2, help="gunicorn workers of Gordo [default: 2]")
    parser.add_argument("--drains", default="cold,warm", help="cold (empty catalogue), warm (filled) or both")
    parser.add_argument("--profile", type=Path, help="run the schedulers under cProfile, files in this folder")
    args = parser.parse_args()
    args.drains = args.drains.split(",")
    databases = args.databases.split(",")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    threads = args.executors * DEFAULTS.executor.concurrency
    began = time.perf_counter()
    print(
        f"fleet benchmark: {args.models} models (links to pump-1), Gordo 6.0.4 with {args.gordo_workers} worker(s)"
        f" x 4 threads, {args.executors} executors x concurrency {DEFAULTS.executor.concurrency}, Latigo defaults"
        f" (initial_backfill {DEFAULTS.schedule.initial_backfill}, backlog_limit {DEFAULTS.schedule.backlog_limit},"
        f" max_task_span {DEFAULTS.schedule.max_task_span}); {os.cpu_count()} cores, load average"
        f" {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    runs: list[DatabaseRun] = []
    with (
        tempfile.TemporaryDirectory(prefix="latigo-bench-fleet-") as tmp,
        gordo_fleet.fleet_gordo(args.models, Path(tmp), workers=args.gordo_workers) as gordo,
        services.postgres_server() if "postgresql" in databases else contextlib.nullcontext() as postgres,
    ):
        folder = Path(tmp)
        print(
            f"Gordo up in {gordo.start_seconds:.1f} s, {gordo_memory_mib(gordo):.0f} MiB (master + workers)",
            flush=True,
        )
        baseline = any(kind in args.drains for kind in ("cold", "warm"))
        X, y = continuous_frame(gordo)
        raws = [run_raw("raw Gordo calls (before)", gordo, X, y, threads)] if baseline else []
        if raws:
            print(f"raw Gordo calls: {raws[0].per_second:.1f} windows/s", flush=True)
        for database in databases:
            if database == "sqlite":
                url = f"sqlite:///{folder / 'latigo.db'}"
            else:
                url = postgres.url(postgres.create_database())
            runs.append(run_database(database, url, folder, gordo, args))
        if baseline:
            raws.append(run_raw("raw Gordo calls (after)", gordo, X, y, threads))
        memory = gordo_memory_mib(gordo)
    print_schedulers(runs)
    if raws:
        print_drains(runs, raws, threads)
    print(f"\nGordo: started in {gordo.start_seconds:.1f} s; {memory:.0f} MiB (master + workers) at the end")
    print_profiles(runs)
    print_targets(runs, raws, args.models)
    print(f"\ntotal {time.perf_counter() - began:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")


def gordo_memory_mib(gordo: gordo_fleet.FleetGordo) -> float:
    """Resident memory of gunicorn's master and its workers now."""
    return sum(services.rss_mib(pid) for pid in _tree(gordo.process.pid))


def _tree(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return found


if __name__ == "__main__":
    main()
