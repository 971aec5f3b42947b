"""Chaos: executors SIGKILLed at random moments while 500+ windows flow lose nothing and
duplicate nothing.

Everything is real and runs on the real clock: ``latigo scheduler --once`` and
``latigo executor`` as OS processes, the Latigo database (ledger, SQL queue, sensor data)
on PostgreSQL, the demo models at the real Gordo server, predictions in PostgreSQL or in
InfluxDB. Three demo models x 169 half-hour windows (84 h of initial backfill, one window
per task) are planned and published once; three executors work through them while a
seeded chaos loop kills one of them (at random, among those in their work loop) with
SIGKILL every 0.2-1.5 s and starts a replacement.
A killed executor's claimed messages come back when their short lease (5 s) runs out.

At the end every window must be ``done``, once; the prediction store must hold every
expected value once (none lost, none twice); the queue must be empty and no message
dead-lettered; the surviving executors must stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from latigo.components import build
from latigo.config import Config
from latigo.demo.feeder import feed
from latigo.demo.models import model_names, tags_of
from latigo.ledger import State
from latigo.providers.predictions.sql import read as read_predictions
from latigo.schema import dead_letters, ledger, task_queue
from latigo.window import Grid

pytestmark = pytest.mark.integration  # latigo processes killed mid-task against real Gordo, PostgreSQL and InfluxDB

# the demo models' resolution: one prediction per 10 minutes
STEP = timedelta(minutes=10)
INTERVAL = timedelta(minutes=30)
DELAY = timedelta(minutes=5)  # schedule.delay (the default)
# 84 h of initial backfill: 168 + 1 windows per model, 507 windows for the 3 demo models
BACKFILL = timedelta(hours=84)
MIN_WINDOWS = 500
# sensor history fed before the first window, enough for the models' offset and data margin
FEED_LEAD = timedelta(hours=2)
# per-tag output groups of the anomaly endpoint, and the totals (one column each)
PER_TAG_GROUPS = (
    "model-input", "model-output", "tag-anomaly-scaled", "tag-anomaly-unscaled", "anomaly-confidence",
)
TOTAL_GROUPS = ("total-anomaly-scaled", "total-anomaly-unscaled", "total-anomaly-confidence")

EXECUTORS = 3
SEED = 20260302
# a kill every PAUSE_MIN..PAUSE_MAX seconds, at most MAX_KILLS, for at most CHAOS_S seconds
PAUSE_MIN, PAUSE_MAX = 0.2, 1.5
MAX_KILLS = 40
CHAOS_S = 60.0
# kills that must really have been delivered (to a live executor in its work loop)
MIN_KILLS = 10
# redelivered messages (deliveries > 1) the test must have seen on the queue
MIN_REDELIVERIES = 5
# after the chaos, how long the survivors may take to finish every window and empty the queue
# (generous: a loaded CI machine is slow; a passing run stops waiting as soon as all is done)
SETTLE_S = 150.0
# how often the queue is sampled during the chaos loop's pauses, and the ledger while settling
POLL_S = 0.05
# how long an executor may take to start, and to stop after SIGTERM
START_S = 30.0
STOP_S = 30.0


def _clean_env() -> dict[str, str]:
    """The environment without LATIGO_* overrides: the test's config file is the only one."""
    return {key: value for key, value in os.environ.items() if not key.startswith("LATIGO_")}


@dataclass
class Executor:
    number: int
    log: Path
    process: subprocess.Popen

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ready(self) -> bool:
        return "executor ready" in self.text()


@dataclass
class Chaos:
    """The executor processes, started and killed; everything is recorded for the report."""

    config: Path
    logs: Path
    rng: random.Random
    live: list[Executor] = field(default_factory=list)
    dead: list[Executor] = field(default_factory=list)
    started: int = 0
    kills: int = 0  # SIGKILLs that ended a live executor in its work loop
    unexpected: list[tuple[int, int]] = field(default_factory=list)  # (executor, exit code)

    def start(self) -> Executor:
        self.started += 1
        log = self.logs / f"executor-{self.started:03d}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "latigo", "--config", str(self.config), "executor"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(),
            )  # fmt: skip
        executor = Executor(self.started, log, process)
        self.live.append(executor)
        return executor

    def reap(self) -> None:
        """Executors that exited on their own are a failure: record them, start replacements."""
        for executor in list(self.live):
            code = executor.process.poll()
            if code is not None:
                self.unexpected.append((executor.number, code))
                self.live.remove(executor)
                self.dead.append(executor)
                self.start()

    def kill_one(self) -> bool:
        """SIGKILL a random executor among those in their work loop, and start a replacement.
        None is killed while every one is still starting: on a loaded machine starting takes
        seconds (imports, migrations check), and killing starters would only stall the flow
        without ever interrupting a task. Returns whether one was killed."""
        in_loop = [executor for executor in self.live if executor.ready()]
        if not in_loop:
            return False
        victim = self.rng.choice(in_loop)
        if victim.process.poll() is None:
            victim.process.send_signal(signal.SIGKILL)
        code = victim.process.wait(timeout=STOP_S)
        self.live.remove(victim)
        self.dead.append(victim)
        if code == -signal.SIGKILL:
            self.kills += 1
        else:
            self.unexpected.append((victim.number, code))
        self.start()
        return True

    def terminate_all(self) -> dict[int, int]:
        """SIGTERM every live executor (once it is in its loop, so its handler is installed);
        return their exit codes."""
        deadline = time.monotonic() + START_S
        while not all(executor.ready() or executor.process.poll() is not None for executor in self.live):
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        for executor in self.live:
            if executor.process.poll() is None:
                executor.process.send_signal(signal.SIGTERM)
        codes = {}
        for executor in self.live:
            try:
                codes[executor.number] = executor.process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                codes[executor.number] = None
        self.dead.extend(self.live)
        self.live = []
        return codes

    def kill_everything(self) -> None:
        for executor in self.live + self.dead:
            if executor.process.poll() is None:
                executor.process.kill()
                executor.process.wait(timeout=STOP_S)

    def log_tails(self, executors: int = 4, lines: int = 25) -> str:
        everyone = sorted(self.live + self.dead, key=lambda executor: executor.number)
        parts = []
        for executor in everyone[-executors:]:
            tail = "\n".join(executor.text().splitlines()[-lines:])
            parts.append(f"--- executor {executor.number} (exit {executor.process.poll()}):\n{tail}")
        return "\n".join(parts)

    def crashes(self, lines: int = 40) -> str:
        """The log tail of every executor that exited on its own."""
        numbers = {number for number, _ in self.unexpected}
        parts = []
        for executor in self.live + self.dead:
            if executor.number in numbers:
                tail = "\n".join(executor.text().splitlines()[-lines:])
                parts.append(f"--- executor {executor.number} (exit {executor.process.poll()}):\n{tail}")
        return "\n".join(parts) or "(none)"

    def count(self, text: str) -> int:
        """Log lines containing ``text``, over every executor's log."""
        return sum(executor.text().count(text) for executor in self.live + self.dead)

    def errors(self, limit: int = 20) -> str:
        """Tracebacks and errors from every executor's log."""
        found = []
        for executor in sorted(self.live + self.dead, key=lambda executor: executor.number):
            for line in executor.text().splitlines():
                if " ERROR " in line or "Traceback" in line or " WARNING " in line:
                    found.append(f"[{executor.number}] {line}")
        return "\n".join(found[:limit]) or "(none)"


def expected_windows(scheduled_at: datetime) -> list[datetime]:
    """The window starts ``latigo scheduler --once`` plans at ``scheduled_at`` for a model seen
    for the first time: the initial backfill and the newest due window."""
    grid = Grid(INTERVAL)
    last_end = grid.last_due_end(scheduled_at, DELAY)
    return [window.start for window in grid.windows(last_end - INTERVAL - BACKFILL, last_end)]


def columns_of(model: str) -> int:
    """Values the anomaly endpoint answers per time step for a demo model."""
    return len(PER_TAG_GROUPS) * len(tags_of(model)) + len(TOTAL_GROUPS)


def steps_of(starts: list[datetime]) -> list[datetime]:
    return [start + k * STEP for start in starts for k in range(INTERVAL // STEP)]


@pytest.mark.parametrize("store", ["sql", "influx"])
def test_executors_killed_at_random_lose_and_duplicate_nothing(
    store, request, tmp_path, postgres_url, gordo_server
):
    models = model_names()
    if store == "influx":
        influx_server = request.getfixturevalue("influx_server")
        influx_database = request.getfixturevalue("influx_database")
        predictions_config = f"{{type: influx, url: '{influx_server.url}', database: '{influx_database}'}}"
    else:
        predictions_config = "{type: sql}"
    config_file = tmp_path / "latigo.yaml"
    config_file.write_text(
        f"database: {{url: '{postgres_url}'}}\n"
        f"models: {{base_url: '{gordo_server.base_url}', projects: [demo], "
        "connect_timeout: 1, read_timeout: 2.5}\n"
        "schedule: {initial_backfill: 84h, max_task_span: 30m, backlog_limit: 5000}\n"
        "queue: {type: sql, lease: 5s, poll_interval: 0.1s}\n"
        "executor: {concurrency: 2, task_deadline: 4s, retry_base: 0.2s, retry_max: 1s}\n"
        f"predictions: {predictions_config}\n"
        "metrics: {port: 0}\n"  # no fixed port: dozens of executors start and die here
    )
    engine_parts = build(Config(database={"url": postgres_url}))
    engine = engine_parts.engine
    logs = tmp_path / "logs"
    logs.mkdir()
    chaos = Chaos(config_file, logs, random.Random(SEED))
    redelivered: set[int] = set()
    leased_at_kills: list[int] = []
    began = time.monotonic()

    def ledger_counts() -> Counter:
        query = select(ledger.c.model, ledger.c.state, func.count()).group_by(ledger.c.model, ledger.c.state)
        with engine.connect() as connection:
            rows = connection.execute(query).all()
        return Counter({(model, state): count for model, state, count in rows})

    def queue_depth() -> int:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(task_queue)).scalar_one()

    def sample_queue() -> int:
        """Remember messages delivered more than once; return how many are leased now."""
        now = datetime.now(UTC)
        with engine.connect() as connection:
            columns = task_queue.c
            rows = connection.execute(
                select(columns.id, columns.deliveries, columns.available_at, columns.lease_token)
            ).all()
        redelivered.update(row.id for row in rows if row.deliveries > 1)
        return sum(1 for row in rows if row.lease_token is not None and row.available_at > now)

    def diagnostics() -> str:
        with engine.connect() as connection:
            letters = connection.execute(
                select(dead_letters.c.model, dead_letters.c.reason, dead_letters.c.error).limit(5)
            ).all()
            not_done = connection.execute(
                select(ledger.c.model, ledger.c.window_start, ledger.c.state, ledger.c.attempts)
                .add_columns(ledger.c.last_error)
                .where(ledger.c.state != State.DONE)
                .limit(10)
            ).all()
        return (
            f"\n=== chaos diagnostics ({store}) after {time.monotonic() - began:.1f}s ===\n"
            f"executors started {chaos.started}, SIGKILLs delivered {chaos.kills}, "
            f"unexpected exits {chaos.unexpected}\n"
            f"redelivered messages seen {len(redelivered)}, leased at kills {leased_at_kills}\n"
            f"ledger (model, state) -> windows: {dict(sorted(ledger_counts().items()))}\n"
            f"windows not done: {not_done}\n"
            f"queue depth {queue_depth()}; dead letters: {letters}\n"
            f"errors and warnings in executor logs:\n{chaos.errors()}\n"
            f"executors that exited on their own:\n{chaos.crashes()}\n"
            f"log tails:\n{chaos.log_tails()}\n"
        )

    try:
        # sensor data for every window planned below, and before it for the models' offset
        now = datetime.now(UTC)
        first = expected_windows(now)[0]
        feed(engine_parts.sensors, first - FEED_LEAD, Grid(timedelta(minutes=1)).floor(now))

        before = datetime.now(UTC)
        scheduler = subprocess.run(
            [sys.executable, "-m", "latigo", "--config", str(config_file), "scheduler", "--once"],
            capture_output=True, text=True, timeout=120, env=_clean_env(),
        )  # fmt: skip
        after = datetime.now(UTC)
        assert scheduler.returncode == 0, scheduler.stderr[-3000:]
        with engine.connect() as connection:
            planned = set(connection.execute(select(ledger.c.model, ledger.c.window_start)).all())
        # the scheduler planned at some moment between before and after (a grid line may lie between)
        candidates = [
            {(model, start) for model in models for start in expected_windows(moment)}
            for moment in (before, after)
        ]
        assert planned in candidates, f"unexpected plan: {len(planned)} windows\n{scheduler.stderr[-3000:]}"
        expected = planned
        starts = sorted({start for _, start in expected})
        assert len(expected) >= MIN_WINDOWS and len(starts) * len(models) == len(expected)
        # one window per task: as many messages as windows
        assert queue_depth() == len(expected)

        # --- chaos: kill a random executor every 0.2-1.5 s, start a replacement ---------------
        for _ in range(EXECUTORS):
            chaos.start()
        chaos_end = time.monotonic() + CHAOS_S
        done = 0
        while chaos.kills < MAX_KILLS and time.monotonic() < chaos_end:
            pause_end = time.monotonic() + chaos.rng.uniform(PAUSE_MIN, PAUSE_MAX)
            while time.monotonic() < pause_end:
                sample_queue()
                time.sleep(POLL_S)
            chaos.reap()
            done = sum(count for (_, state), count in ledger_counts().items() if state == State.DONE)
            if done == len(expected):
                break
            leased = sample_queue()
            if chaos.kill_one():
                leased_at_kills.append(leased)
        chaos_seconds = time.monotonic() - began
        done_in_chaos = done

        # --- the survivors finish: every window done and every message acknowledged ----------
        settle_end = time.monotonic() + SETTLE_S
        while time.monotonic() < settle_end:
            chaos.reap()
            sample_queue()
            done = sum(count for (_, state), count in ledger_counts().items() if state == State.DONE)
            if done == len(expected) and queue_depth() == 0:
                break
            time.sleep(POLL_S)
        codes = chaos.terminate_all()

        print(
            f"\n{store}: {len(expected)} windows, {chaos.kills} SIGKILLs of working executors "
            f"in {chaos_seconds:.1f}s with {done_in_chaos} windows done by then, "
            f"{len(redelivered)} redelivered messages seen, "
            f"{chaos.count(' failed, retrying')} retried failures, "
            f"settled after {time.monotonic() - began:.1f}s"
        )

        # the chaos really happened
        assert chaos.kills >= MIN_KILLS
        # no executor died of anything but our SIGKILLs, and the survivors stopped cleanly
        assert chaos.unexpected == []
        assert codes and set(codes.values()) == {0}, codes

        # every window done, exactly once: one ledger row per expected (model, window)
        with engine.connect() as connection:
            rows = connection.execute(select(ledger.c.model, ledger.c.window_start, ledger.c.state)).all()
            letters = connection.execute(select(func.count()).select_from(dead_letters)).scalar_one()
        assert len(rows) == len(expected)
        assert {(model, start) for model, start, _ in rows} == expected
        assert Counter(state for _, _, state in rows) == {State.DONE: len(expected)}
        # every message acknowledged, none dead-lettered
        assert queue_depth() == 0
        assert letters == 0

        steps = steps_of(starts)
        if store == "sql":
            check_sql_predictions(engine, models, steps)
        else:
            check_influx_predictions(influx_server, influx_database, models, steps)
        # and kills landed while messages were in hand: those came back for another delivery
        assert len(redelivered) >= MIN_REDELIVERIES
    except BaseException:
        try:
            print(diagnostics())
        except Exception as error:  # the report must never hide the failure itself
            print(f"(no diagnostics: {error!r})\n{chaos.errors()}\n{chaos.log_tails()}")
        raise
    finally:
        chaos.kill_everything()
        engine_parts.close()


def check_sql_predictions(engine, models: list[str], steps: list[datetime]) -> None:
    values = read_predictions(engine)
    duplicates = int(values.duplicated(["project", "model", "time", "output", "tag"]).sum())
    per_step = values.groupby(["model", "time"]).size().reset_index().itertuples(index=False)
    total = len(values)
    outputs = set(values["output"])
    assert duplicates == 0
    assert outputs == set(PER_TAG_GROUPS) | set(TOTAL_GROUPS)
    # every 10-minute step of every window, with every column of the model, once: nothing lost
    found = {(model, pd.Timestamp(time).tz_convert("UTC")): count for model, time, count in per_step}
    wanted = {(model, pd.Timestamp(step)): columns_of(model) for model in models for step in steps}
    missing = sorted(set(wanted) - set(found))[:5]
    extra = sorted(set(found) - set(wanted))[:5]
    assert not missing and not extra, f"steps missing {missing}, steps outside the windows {extra}"
    short = {key: (found[key], wanted[key]) for key in wanted if found[key] != wanted[key]}
    assert not short, f"steps with a wrong number of values (found, wanted): {list(short.items())[:5]}"
    assert total == sum(wanted.values())


def check_influx_predictions(server, database: str, models: list[str], steps: list[datetime]) -> None:
    wanted_times = sorted(pd.Timestamp(step).value for step in steps)
    totals = server.points('SELECT "sensor_value" FROM "total-anomaly-scaled" GROUP BY "machine"', database)
    per_machine: dict[str, list[int]] = {}
    for row in totals:
        per_machine.setdefault(row["machine"], []).append(row["time"])
    assert set(per_machine) == set(models)
    for model in models:
        # one point per 10-minute step, at exactly the expected steps
        assert len(per_machine[model]) == len(steps), model
        assert sorted(per_machine[model]) == wanted_times, model
    counts = server.points('SELECT count("sensor_value") FROM /.*/ GROUP BY "machine"', database)
    found = Counter()
    for row in counts:
        found[row["machine"]] += row["count"]
    wanted = {model: len(steps) * columns_of(model) for model in models}
    assert dict(found) == wanted
    assert sum(found.values()) == sum(wanted.values())
