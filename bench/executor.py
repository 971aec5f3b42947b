"""Executor benchmark: continuous windows per second against the local real Gordo, on
SQLite and on PostgreSQL, and how Latigo's time per window compares with Gordo's own.

    .venv/bin/python -m bench.executor [--windows 200] [--concurrency 4] [--processes 2]
                                       [--databases sqlite,postgresql] [--modes ...]
                                       [--gordo-workers 1]

What runs: the local Gordo 6.0.4 (gunicorn, 1 worker — or ``--gordo-workers`` — 4 threads,
as ``latigo demo`` serves it) with the 3 demo models
(3, 8 and 20 tags), a fresh PostgreSQL 15 (fsync off) and SQLite files, all on this
machine. For each run a fresh Latigo database gets the demo sensor data (one value a
minute per tag, anomalies included) for the windows, one scheduler tick plans
``--windows`` windows per model as one-window tasks (``max_task_span`` 30m: what
continuous operation looks like), and executors drain the queue:

* ``in-process``: one :class:`latigo.executor.Executor` in this process, ``--concurrency``
  tasks at once (and once with concurrency 1, the per-window latency without queueing);
* ``processes``: ``--processes`` ``latigo executor`` child processes (the product as
  deployed), each with ``executor.concurrency`` = ``--concurrency / --processes``;
* ``pipeline``: in this process, ``--concurrency`` tasks at once but one Gordo call at a
  time (``models.max_concurrency`` 1): while Gordo works on one window, Latigo reads, stores
  and acknowledges the others. Gordo's calls never overlap, so their times add up to its busy
  time, and the run's time over them says how far Latigo is from keeping Gordo busy.

The baseline, measured in the same run (the machine is shared and noisy): **raw Gordo
calls** — the very frames Latigo sends, built in memory from the same synthetic data,
encoded as Latigo encodes them (``latigo.providers.models.wire``: JSON for a window's few
rows), POSTed with ``requests`` and the parquet answer decoded as Latigo decodes it, from
as many threads as Latigo has tasks in flight. It is measured before and after the
Latigo runs. "vs raw" is Latigo's wall time over the raw calls' wall time for the same
windows: what Latigo adds to Gordo (reading the sensor store, resampling, storing the
predictions, the ledger and the queue). One more single-threaded run sends and reads
parquet both ways through pandas, as gordo-client does: what the wire format saves.

"task/server" is the mean time of one task — from the executor taking the message to its
acknowledgement: sensor read, resampling, encoding and decoding, the HTTP call (including any
wait for a free Gordo thread and for the GIL), storing the predictions, the ledger update
and the ack; not the queue poll before it — over the mean of Gordo's own time per call
(its ``Server-Timing`` header, ``latigo_gordo_server_seconds``), which itself grows when
Gordo's 4 threads share 2 cores with everything else. "run/server" is the run's seconds
per window over Gordo's seconds per call, for runs where Gordo served one call at a time
(the pipeline, one task at a time, one raw thread): the end-to-end time of the work over
Gordo's own time in it. The end-to-end target is judged on the pipeline; the latency of one
task alone is printed beside it.

Also printed: each executor stage's mean time (``latigo_stage_seconds``); the CPU
milliseconds per window of every process (executor or raw client, Gordo's server,
PostgreSQL), which say where the cores go however busy the machine is; and peak RSS
(VmHWM: of each ``latigo executor``, or of this whole process, reset before the drain).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean
from typing import Any

import pandas as pd
import requests

from bench import _services as services
from latigo import frames, readmodel
from latigo.components import Components, build
from latigo.config import Config, dump_config
from latigo.demo.feeder import feed
from latigo.demo.gordo import free_port
from latigo.demo.models import DEMO_PROJECT, model_names
from latigo.demo.signals import signal
from latigo.executor import Executor
from latigo.ledger import State
from latigo.providers.models import wire
from latigo.providers.models.gordo import GordoModels
from latigo.queues import Message
from latigo.scheduler import Scheduler
from latigo.window import Grid

# window length and task span of continuous operation
INTERVAL = timedelta(minutes=30)
# the scheduler's default delay: a window is due this long after its end
DELAY = timedelta(minutes=5)
# ledger states of a window that is finished
FINISHED = {State.DONE, State.NO_DATA, State.DEAD}
# how often the bench looks at the ledger while child executors work, seconds (the end itself
# is read from the ledger's timestamps: a slow poll costs no precision, and little CPU)
LEDGER_POLL_S = 0.5
# longest a run may take before the bench gives up on it
RUN_TIMEOUT_S = 600
# an executor's log line for a finished task: "task <id> <key> [<window>) done in 0.05s"
TASK_LINE = re.compile(r"\btask \S+ \S+ \[.*\) (?:done|no_data) in (\d+(?:\.\d+)?)s")
# Gordo's own time in its Server-Timing header
SERVER_TIMING = re.compile(r"request_walltime_s;dur=([0-9.eE+-]+)")
# stages Latigo's executor times (latigo_stage_seconds)
STAGES = ("metadata", "fetch", "gordo", "store")
# the targets of the issue
TARGET_WINDOWS_PER_S = 25
TARGET_E2E_OVER_SERVER = 1.3
TARGET_RSS_MB = 300


@dataclass
class Result:
    """One measured run: ``windows`` windows drained in ``seconds``."""

    name: str
    in_flight: int
    windows: int
    seconds: float
    task_seconds: list[float] = field(default_factory=list)  # one per task: take -> ack (or one raw call)
    server_sum: float = 0.0  # Gordo's own time, summed over calls
    server_calls: int = 0
    client_sum: float = 0.0  # the HTTP calls as the client saw them (answer read)
    stages: dict[str, float] = field(default_factory=dict)  # summed seconds per stage
    peak_rss_mib: list[float] = field(default_factory=list)  # per process
    states: dict[str, int] = field(default_factory=dict)
    feed_seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process during the run
    mode: str = "raw"  # raw, in-process or processes
    gordo_serial: bool = False  # Gordo served one call at a time: its times add up to its busy time

    @property
    def run_over_server(self) -> float:
        """The run's seconds per window over Gordo's own seconds per call: how much longer the
        whole pipeline takes than Gordo's work in it (only when Gordo's calls never overlap,
        else their times count Gordo's busy time more than once)."""
        if not self.gordo_serial:
            return float("nan")
        return 1000 * self.seconds / self.windows / self.server_ms

    @property
    def per_second(self) -> float:
        return self.windows / self.seconds

    @property
    def task_ms(self) -> float:
        return 1000 * mean(self.task_seconds) if self.task_seconds else float("nan")

    @property
    def server_ms(self) -> float:
        return 1000 * self.server_sum / self.server_calls if self.server_calls else float("nan")


# ---------------------------------------------------------------- CPU

# what each server has used so far, CPU seconds: "Gordo server", "PostgreSQL"
Probes = dict[str, Callable[[], float]]


def cpu_now(probes: Probes) -> dict[str, float]:
    return {name: probe() for name, probe in probes.items()}


def cpu_since(before: dict[str, float], probes: Probes) -> dict[str, float]:
    return {name: probe() - before[name] for name, probe in probes.items()}


# ---------------------------------------------------------------- Latigo


def latigo_config(
    url: str, gordo_url: str, windows: int, concurrency: int, gordo_concurrency: int | None = None
) -> Config:
    # models.max_concurrency: calls in flight to Gordo per executor process (Latigo's default if None)
    gordo_limit = {} if gordo_concurrency is None else {"max_concurrency": gordo_concurrency}
    return Config(
        database={"url": url},
        models={"base_url": gordo_url, "projects": [DEMO_PROJECT], **gordo_limit},
        schedule={
            # the newest due window plus windows - 1 before it, one window per task
            "initial_backfill": f"{(windows - 1) * int(INTERVAL.total_seconds())}s",
            "max_task_span": f"{int(INTERVAL.total_seconds())}s",
            "interval": f"{int(INTERVAL.total_seconds())}s",
            "delay": f"{int(DELAY.total_seconds())}s",
            "backlog_limit": max(2000, 10 * windows * len(model_names())),
        },
        # an idle executor looks for work every 0.1 s, so starting to poll costs no whole second
        queue={"poll_interval": "0.1s"},
        executor={"concurrency": concurrency},
        metrics={"port": 0},
    )


def prepare(
    url: str, gordo_url: str, args: argparse.Namespace, concurrency: int, gordo_concurrency: int | None
) -> tuple[Components, float]:
    """A fresh Latigo database (migrated) holding the sensor data of the windows; feed seconds."""
    parts = build(latigo_config(url, gordo_url, args.windows, concurrency, gordo_concurrency))
    now = datetime.now(UTC)
    first = Grid(INTERVAL).last_due_end(now, DELAY) - args.windows * INTERVAL
    started = time.perf_counter()
    feed(parts.sensors, first - timedelta(hours=1), now)
    return parts, time.perf_counter() - started


def publish(parts: Components, windows: int) -> None:
    """One scheduler tick: plan ``windows`` windows per model and publish them as tasks."""
    report = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, parts.clock).tick()
    expected = windows * len(model_names())
    if report.published_tasks != expected:
        raise RuntimeError(
            f"the tick published {report.published_tasks} tasks, expected {expected}: {report}"
        )


def unfinished(parts: Components) -> tuple[int, dict[str, int]]:
    totals: dict[str, int] = {}
    for counts in readmodel.state_counts(parts.engine).values():
        for state, count in counts.items():
            totals[state] = totals.get(state, 0) + count
    return sum(count for state, count in totals.items() if State(state) not in FINISHED), totals


class TimedExecutor(Executor):
    """Latigo's executor, timing each task from taking the message to its acknowledgement."""

    def __init__(self, **parts: Any) -> None:
        super().__init__(**parts)
        self.durations: list[float] = []
        self.last_end = 0.0

    def handle(self, message: Message) -> State:
        started = time.perf_counter()
        try:
            return super().handle(message)
        finally:
            self.last_end = time.perf_counter()
            self.durations.append(self.last_end - started)


def run_in_process(
    name: str,
    url: str,
    gordo_url: str,
    args: argparse.Namespace,
    concurrency: int,
    probes: Probes,
    gordo_concurrency: int | None = None,
) -> Result:
    """One executor in this process, ``concurrency`` tasks at once, at most
    ``gordo_concurrency`` of them in a Gordo call (``--gordo-concurrency`` if None)."""
    gordo_concurrency = args.gordo_concurrency if gordo_concurrency is None else gordo_concurrency
    parts, feed_seconds = prepare(url, gordo_url, args, concurrency, gordo_concurrency)
    try:
        executor = TimedExecutor.from_components(parts)
        publish(parts, args.windows)
        before = services.registry_samples()
        reset = services.reset_peak_rss()
        servers_before, own_before = cpu_now(probes), services.own_cpu_seconds()
        started = time.perf_counter()
        executor.run(threading.Event(), until_idle=True)
        # the last ack, not the return of run(): until_idle waits a second for more work first
        seconds = executor.last_end - started
        cpu = {
            "latigo executor": services.own_cpu_seconds() - own_before,
            **cpu_since(servers_before, probes),
        }
        peak = services.peak_rss_mib() if reset else float("nan")
        after = services.registry_samples()
        left, states = unfinished(parts)
        if left:
            raise RuntimeError(f"{name}: {left} windows unfinished: {states}")
        delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
        return Result(
            name,
            concurrency,
            args.windows * len(model_names()),
            seconds,
            executor.durations,
            **_latigo_metrics([delta]),
            peak_rss_mib=[peak],
            states=states,
            feed_seconds=feed_seconds,
            cpu=cpu,
            mode="in-process",
            gordo_serial=concurrency == 1 or gordo_concurrency == 1,
        )
    finally:
        parts.close()


def run_processes(
    name: str, url: str, gordo_url: str, args: argparse.Namespace, folder: Path, probes: Probes
) -> Result:
    per_process = max(1, args.concurrency // args.processes)
    parts, feed_seconds = prepare(url, gordo_url, args, per_process, args.gordo_concurrency)
    config_file = folder / f"{name.replace(' ', '-')}.yaml"
    config_file.write_text(dump_config(parts.config))
    children: list[tuple[subprocess.Popen, int, Path]] = []
    peaks: list[float] = []
    try:
        for number in range(args.processes):
            port = free_port()
            log_file = folder / f"{config_file.stem}-executor-{number}.log"
            env = {**os.environ, "LATIGO_CONFIG": str(config_file), "LATIGO_METRICS__PORT": str(port)}
            with open(log_file, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "latigo", "executor"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            children.append((proc, port, log_file))
        for proc, port, _ in children:
            services.await_ready(port, proc)
        probes = {**probes, **{
            f"executor {number + 1}": (lambda pid=proc.pid: services.tree_cpu_seconds(pid))
            for number, (proc, _, _) in enumerate(children)
        }}  # fmt: skip
        cpu_before = cpu_now(probes)
        publish(parts, args.windows)
        started, started_at = time.perf_counter(), datetime.now(UTC)
        while True:
            left, states = unfinished(parts)
            if not left:
                break
            if time.perf_counter() - started > RUN_TIMEOUT_S:
                raise RuntimeError(f"{name}: {left} windows unfinished after {RUN_TIMEOUT_S} s: {states}")
            time.sleep(LEDGER_POLL_S)
        seconds = (services.last_ledger_update(parts.engine) - started_at).total_seconds()
        cpu = cpu_since(cpu_before, probes)
        cpu = {
            "latigo executor": sum(v for k, v in cpu.items() if k.startswith("executor ")),
            **{k: v for k, v in cpu.items() if not k.startswith("executor ")},
        }
        samples = [services.scrape(port) for _, port, _ in children]
        peaks = [services.peak_rss_mib(proc.pid) for proc, _, _ in children]
    finally:
        for proc, _, _ in children:
            services.stop_child(proc)
        parts.close()
    durations = [
        float(match.group(1))
        for _, _, log_file in children
        for match in TASK_LINE.finditer(log_file.read_text(errors="replace"))
    ]
    return Result(
        name,
        per_process * args.processes,
        args.windows * len(model_names()),
        seconds,
        durations,
        **_latigo_metrics(samples),
        peak_rss_mib=peaks,
        states=states,
        feed_seconds=feed_seconds,
        cpu=cpu,
        mode="processes",
    )


def _latigo_metrics(samples: list[dict]) -> dict:
    """Gordo server/client time and stage sums over one or more processes' samples."""

    def total(name: str, **labels: str) -> float:
        return sum(services.sample(each, name, **labels) for each in samples)

    return {
        "server_sum": total("latigo_gordo_server_seconds_sum"),
        "server_calls": int(total("latigo_gordo_server_seconds_count")),
        "client_sum": total("latigo_gordo_client_seconds_sum"),
        "stages": {stage: total("latigo_stage_seconds_sum", stage=stage) for stage in STAGES},
    }


# ---------------------------------------------------------------- the baseline


@dataclass(frozen=True)
class Call:
    model: str
    revision: str
    X: pd.DataFrame
    y: pd.DataFrame


def raw_calls(gordo_url: str, windows: int) -> list[Call]:
    """The frames Latigo sends for the same windows: the same synthetic data, padded and
    resampled by Latigo's own functions."""
    settings = Config(models={"base_url": gordo_url}).models
    margin = settings.data_margin
    gordo = GordoModels(settings)
    try:
        revision = gordo.latest_revision(DEMO_PROJECT)
        newest_end = Grid(INTERVAL).last_due_end(datetime.now(UTC), DELAY)
        calls = []
        for model in model_names():
            metadata = gordo.metadata(DEMO_PROJECT, model, revision)
            for number in range(windows):
                end = newest_end - number * INTERVAL
                start = end - INTERVAL
                raw = signal(
                    frames.needed_tags(metadata),
                    frames.data_start(start, metadata, margin),
                    end,
                    with_anomalies=True,
                )
                X = frames.to_model_input(raw, metadata)
                calls.append(Call(model, revision, X, frames.to_model_target(X, metadata)))
        return calls
    finally:
        gordo.close()


def server_seconds(response: requests.Response) -> float:
    """Gordo's own time for a request: ``Server-Timing: request_walltime_s;dur=<seconds>``."""
    match = SERVER_TIMING.search(response.headers.get("Server-Timing", ""))
    return float(match.group(1)) if match else 0.0


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def run_raw(
    name: str, gordo_url: str, calls: list[Call], threads: int, probes: Probes, *, pandas_parquet: bool = False
) -> Result:
    """POST every call from ``threads`` threads and decode the answer: encoded and decoded as
    Latigo does (``latigo.providers.models.wire``), or with ``pandas_parquet`` parquet both
    ways through pandas, as gordo-client does (and Latigo did before)."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))
    lock = threading.Lock()
    result = Result(name, threads, len(calls), 0.0, gordo_serial=threads == 1)

    def one(call: Call) -> None:
        started = time.perf_counter()
        if pandas_parquet:
            body = {"files": {"X": ("X", _parquet(call.X)), "y": ("y", _parquet(call.y))}}
        else:
            body = wire.request_body(call.X, call.y)
        posted = time.perf_counter()
        response = session.post(
            f"{gordo_url}/gordo/v0/{DEMO_PROJECT}/{call.model}/anomaly/prediction",
            params={"format": "parquet", "revision": call.revision},
            timeout=(3.05, 60),
            **body,
        )
        answered = time.perf_counter()
        response.raise_for_status()
        if pandas_parquet:
            pd.read_parquet(io.BytesIO(response.content))
        else:
            wire.read_answer(response.content)
        elapsed = time.perf_counter() - started
        with lock:
            result.task_seconds.append(elapsed)
            result.server_sum += server_seconds(response)
            result.server_calls += 1
            result.client_sum += answered - posted

    servers_before, own_before = cpu_now(probes), services.own_cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, calls))
    result.seconds = time.perf_counter() - started
    result.cpu = {"raw client": services.own_cpu_seconds() - own_before, **cpu_since(servers_before, probes)}
    session.close()
    return result


# ---------------------------------------------------------------- report


def print_results(results: list[Result], raw: Result) -> None:
    print()
    print(
        f"{'run':<34}{'in flight':>10}{'windows':>9}{'seconds':>9}{'windows/s':>11}{'vs raw':>8}"
        f"{'task ms':>9}{'server ms':>11}{'task/server':>13}{'run/server':>12}{'peak RSS MiB':>16}"
    )
    for result in results:
        ratio = result.seconds / raw.seconds * raw.windows / result.windows
        rss = "/".join(f"{peak:.0f}" for peak in result.peak_rss_mib) or "-"
        print(
            f"{result.name:<34}{result.in_flight:>10}{result.windows:>9}{result.seconds:>9.2f}"
            f"{result.per_second:>11.1f}{ratio:>8.2f}{result.task_ms:>9.1f}{result.server_ms:>11.1f}"
            f"{result.task_ms / result.server_ms:>13.2f}{_number(result.run_over_server):>12}{rss:>16}"
        )
    print(
        "  task/server = a task's mean time (take to ack; one raw call) over Gordo's mean time per call;"
        " run/server = the run's seconds per window over Gordo's per call, where Gordo served one call at a time"
    )
    latigo = [result for result in results if result.stages]
    if latigo:
        print(
            "\nwhere a task's time goes, mean ms per task (stages as latigo_stage_seconds; gordo = encode +"
            " HTTP + decode; http = the HTTP call, answer read; other = ledger, ack, threads):"
        )
        columns = ("fetch", "gordo", "http", "server", "store", "other")
        print(f"{'run':<34}{'metadata':>10}" + "".join(f"{column:>8}" for column in columns))
        for result in latigo:
            tasks = len(result.task_seconds) or result.windows
            per = {stage: 1000 * result.stages[stage] / tasks for stage in STAGES}
            other = result.task_ms - sum(per.values())
            http = 1000 * result.client_sum / max(1, result.server_calls)
            values = (per["fetch"], per["gordo"], http, result.server_ms, per["store"], other)
            print(
                f"{result.name:<34}{per['metadata']:>10.1f}" + "".join(f"{value:>8.1f}" for value in values)
            )


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def print_cpu(results: list[Result]) -> None:
    """CPU per window by process: what the machine's cores are spent on, however noisy it is."""
    print(
        "\nCPU ms per window, by process (client = Latigo's executor(s) or the raw client;"
        " Gordo = gunicorn master + worker; PostgreSQL = postmaster + backends):"
    )
    print(f"{'run':<34}{'client':>8}{'Gordo':>8}{'PgSQL':>8}{'total':>8}{'cores busy':>12}")
    for result in results:
        ms = {key: 1000 * value / result.windows for key, value in result.cpu.items()}
        client = sum(value for key, value in ms.items() if key not in ("Gordo server", "PostgreSQL"))
        total = sum(ms.values())
        print(
            f"{result.name:<34}{client:>8.1f}{ms.get('Gordo server', 0):>8.1f}{ms.get('PostgreSQL', 0):>8.1f}"
            f"{total:>8.1f}{total / 1000 * result.per_second:>12.2f}"
        )
    print(
        "  cores busy = CPU seconds per wall second of these processes (2 cores: at most 2); a gunicorn"
        " worker runs on one core at a time: with one worker, 1000 / Gordo's ms caps the windows per second"
    )


def print_targets(results: list[Result]) -> None:
    latigo = [result for result in results if result.stages]
    if not latigo:
        return
    best = max(latigo, key=lambda result: result.per_second)
    children = [result for result in latigo if result.mode == "processes"]
    rss = max((peak for result in children for peak in result.peak_rss_mib), default=float("nan"))

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def ratio(result: Result) -> float:
        return result.task_ms / result.server_ms

    print("\ntargets:")
    print(
        f"  >= {TARGET_WINDOWS_PER_S} windows/s: best {best.per_second:.1f} ({best.name}): "
        f"{verdict(best.per_second >= TARGET_WINDOWS_PER_S)}"
    )
    # the run's end-to-end time over Gordo's own, Gordo serving one call at a time (else its
    # per-call times overlap, and their sum is not its busy time): how far Latigo is from
    # keeping Gordo busy all the time, which is what the target is about
    for result in (result for result in latigo if result.mode == "pipeline"):
        print(
            f"  end-to-end <= {TARGET_E2E_OVER_SERVER} x Gordo server time, the whole run over Gordo's time in it:"
            f" {result.run_over_server:.2f} ({result.name}): {verdict(result.run_over_server <= TARGET_E2E_OVER_SERVER)}"
        )
    # one task alone, take to ack, over its Gordo call: the latency Latigo adds to a window
    for result in (result for result in latigo if result.in_flight == 1):
        print(f"    one task alone, take to ack ({result.name}): {ratio(result):.2f} of its Gordo call")
    for result in (result for result in latigo if result.in_flight > 1 and result.mode != "pipeline"):
        print(f"    with {result.in_flight} in flight ({result.name}): {ratio(result):.2f}, waits for Gordo included")
    if children:
        ok = rss * 2**20 <= TARGET_RSS_MB * 10**6
        print(
            f"  executor RSS <= {TARGET_RSS_MB} MB: peak {rss:.0f} MiB (latigo executor processes):"
            f" {verdict(ok)}"
        )


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=200, help="windows per model (3 demo models)")
    parser.add_argument("--concurrency", type=int, default=4, help="tasks in flight, over all executors")
    parser.add_argument(
        "--processes", type=int, default=2, help="latigo executor processes of the processes mode"
    )
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--gordo-workers", type=int, default=1, help="gunicorn workers of Gordo [default: 1]")
    parser.add_argument(
        "--gordo-concurrency",
        type=int,
        help="models.max_concurrency of each executor: calls in flight to Gordo [default: Latigo's, 4]",
    )
    parser.add_argument(
        "--modes",
        default="in-process,processes,latency,pipeline",
        help="latency: in-process, one task at a time; pipeline: in-process, --concurrency tasks at once,"
        " one Gordo call at a time (models.max_concurrency 1)",
    )
    args = parser.parse_args()
    databases = args.databases.split(",")
    modes = args.modes.split(",")
    windows_total = args.windows * len(model_names())
    print(
        f"executor benchmark: {len(model_names())} demo models x {args.windows} one-window tasks ="
        f" {windows_total} windows per run; Gordo 6.0.4 (gunicorn {args.gordo_workers} worker(s) x 4 threads)"
        f" on this machine ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="latigo-bench-executor-") as tmp,
        services.gordo_server(workers=args.gordo_workers) as gordo,
        services.postgres_server() if "postgresql" in databases else contextlib.nullcontext() as postgres,
    ):
        folder = Path(tmp)
        probes: Probes = {"Gordo server": lambda: services.tree_cpu_seconds(gordo.process.pid)}
        if postgres is not None:
            probes["PostgreSQL"] = lambda: services.tree_cpu_seconds(services.postgres_pid(postgres))
        calls = raw_calls(gordo.base_url, args.windows)
        # warm up: every model loaded in Gordo's cache, connections and code paths hot
        run_raw("warm-up", gordo.base_url, calls[:: max(1, args.windows // 4)], 1, probes)
        raw_before = run_raw(
            f"raw Gordo calls x{args.concurrency} (before)", gordo.base_url, calls, args.concurrency, probes
        )
        raw_one = run_raw("raw Gordo calls x1", gordo.base_url, calls, 1, probes)
        raw_pandas = run_raw(
            "raw x1, pandas parquet both ways", gordo.base_url, calls, 1, probes, pandas_parquet=True
        )
        print(
            f"raw Gordo calls: {raw_before.per_second:.1f} windows/s with {args.concurrency} threads, "
            f"{raw_one.per_second:.1f} with 1",
            flush=True,
        )

        def url(database: str, name: str) -> str:
            if database == "sqlite":
                return f"sqlite:///{folder / (name.replace(' ', '-') + '.db')}"
            return postgres.url(postgres.create_database())

        for database in databases:
            runs = []
            if "in-process" in modes:
                runs.append((f"{database} in-process c={args.concurrency}", args.concurrency, "in-process"))
            if "processes" in modes:
                per = max(1, args.concurrency // args.processes)
                runs.append((f"{database} {args.processes} processes x c={per}", per, "processes"))
            if "latency" in modes:
                runs.append((f"{database} in-process c=1", 1, "in-process"))
            if "pipeline" in modes:
                runs.append((f"{database} pipeline c={args.concurrency}, Gordo x1", args.concurrency, "pipeline"))
            for name, concurrency, mode in runs:
                if mode in ("in-process", "pipeline"):
                    result = run_in_process(
                        name, url(database, name), gordo.base_url, args, concurrency, probes,
                        gordo_concurrency=1 if mode == "pipeline" else None,
                    )
                    result.mode = mode
                else:
                    result = run_processes(name, url(database, name), gordo.base_url, args, folder, probes)
                print(
                    f"{name}: {result.per_second:.1f} windows/s (sensor feed {result.feed_seconds:.1f} s, "
                    f"not timed)",
                    flush=True,
                )
                results.append(result)
        raw_after = run_raw(
            f"raw Gordo calls x{args.concurrency} (after)", gordo.base_url, calls, args.concurrency, probes
        )
    raw = _merge(f"raw Gordo calls x{args.concurrency} (mean)", [raw_before, raw_after])
    print_results([raw_pandas, raw_one, raw_before, raw_after, *results], raw)
    print_cpu([raw_pandas, raw_one, raw_before, raw_after, *results])
    print(
        f"\n'vs raw' = seconds per window over those of raw Gordo calls x{args.concurrency}, "
        f"mean of before and after ({raw.per_second:.1f} windows/s)"
    )
    print_targets(results)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


def _merge(name: str, parts: list[Result]) -> Result:
    return Result(
        name,
        parts[0].in_flight,
        sum(p.windows for p in parts),
        sum(p.seconds for p in parts),
        [s for p in parts for s in p.task_seconds],
        sum(p.server_sum for p in parts),
        sum(p.server_calls for p in parts),
        sum(p.client_sum for p in parts),
        cpu={key: sum(p.cpu.get(key, 0.0) for p in parts) for key in parts[0].cpu},
    )


if __name__ == "__main__":
    main()
