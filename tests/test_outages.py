"""PostgreSQL and InfluxDB stopped for 30 seconds in the middle of a run: nothing is lost
once they return.

Real processes throughout: ``latigo run --executors 2`` (a scheduler and two executor
processes) with the Latigo database, the queue and the sensor data on PostgreSQL, the
predictions in InfluxDB, and the real Gordo server. While windows are flowing both stores
are stopped, for the issue's 30 seconds, and started again on the same ports. Then every
planned window must end ``done``, once, and InfluxDB must hold exactly one point per
(measurement, machine, sensor_name, time).

Gordo's predictions go through tests/fault_proxy.py, which only slows each one down by a
second: so the executors always have tasks in hand when the stores go away, and those
tasks cannot record their outcome. They must come back when their lease runs out.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path
from time import monotonic
from typing import Iterator

import pandas as pd
import pytest
import requests
from sqlalchemy import func, select

from latigo import db
from latigo.components import build
from latigo.config import load_config
from latigo.demo.feeder import feed
from latigo.demo.models import tags_of
from latigo.ledger import State
from latigo.schema import dead_letters, ledger
from tests.fault_proxy import FaultProxy, always
from tests.influx_fixture import InfluxServer

pytestmark = pytest.mark.integration

# the number: how long both stores are down
OUTAGE_S = 30
# history the scheduler plans at its first tick: 17 windows of 30 minutes per model
BACKFILL = timedelta(hours=8)
# how long the service may take to start predicting, and to finish after the outage
START_DEADLINE_S = 60
FINISH_DEADLINE_S = 150
# how often the test looks at the ledger while it waits
POLL_S = 0.2
# how long the proxy holds each prediction: tasks are in flight at any moment
SLOW_S = 1.0
# how long the service may take to stop on SIGTERM (its executors' grace is 10 s)
STOP_DEADLINE_S = 60
STEP = timedelta(minutes=10)
INTERVAL = timedelta(minutes=30)
# the output groups Gordo's anomaly endpoint answers; per tag, or one total (sensor_name = group)
PER_TAG = ("model-input", "model-output", "tag-anomaly-scaled", "tag-anomaly-unscaled", "anomaly-confidence")
TOTALS = ("total-anomaly-scaled", "total-anomaly-unscaled", "total-anomaly-confidence")


@contextmanager
def influx_stopped(server: InfluxServer) -> Iterator[None]:
    """influxd down inside the block, and up again after it on the same ports, whatever
    happens. (The fixture's ``start`` picks new ports, which the service would not know: this
    starts the same configuration file again.)"""
    server.stop()
    try:
        yield
    finally:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("INFLUXDB_")}
        with (server.root / "influxd.log").open("ab") as log:
            server.process = subprocess.Popen(
                [shutil.which("influxd"), "-config", str(server.root / "influxdb.conf")],
                stdout=log, stderr=subprocess.STDOUT, env=environment,
            )
        deadline, ready = monotonic() + 30, False
        while not ready and monotonic() < deadline and server.process.poll() is None:
            try:
                ready = requests.get(f"{server.url}/ping", timeout=(1, 5)).status_code == 204
            except requests.ConnectionError:
                # not listening yet: wait a little, or less if influxd exits (port taken?)
                with suppress(subprocess.TimeoutExpired):
                    server.process.wait(timeout=0.05)
        if not ready:
            pytest.fail(f"influxd did not start again on {server.url}:\n{server.log_tail()}", pytrace=False)


def write_config(path: Path, database_url: str, gordo_url: str, influx_url: str, influx_db: str) -> Path:
    path.write_text(
        f"database: {{url: '{database_url}'}}\n"
        f"models: {{base_url: '{gordo_url}', projects: [demo], connect_timeout: 2, read_timeout: 5}}\n"
        "sensors: {type: sql}\n"
        f"predictions: {{type: influx, url: '{influx_url}', database: '{influx_db}', "
        "connect_timeout: 2, read_timeout: 5}\n"
        # a small backlog limit spreads the publishing over the run, so the scheduler works
        # through the outage too
        f"schedule: {{interval: 30m, initial_backfill: {int(BACKFILL.total_seconds())}s, max_task_span: 30m, "
        "tick: 1s, backlog_limit: 10}\n"
        "queue: {type: sql, lease: 20s, poll_interval: 0.2s}\n"
        "executor: {concurrency: 2, max_attempts: 50, retry_base: 0.5s, retry_max: 3s, task_deadline: 10s, "
        "shutdown_grace: 10s}\n"
        "metrics: {port: 0}\n"  # no fixed ports: other tests may run a service at the same time
    )
    return path


def ledger_counts(engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(select(ledger.c.state, func.count()).group_by(ledger.c.state)).all()
    return {state: count for state, count in rows}


def wait_for(condition, deadline_s: float, service: subprocess.Popen, log: Path, what: str):
    """Poll ``condition`` (None/False until it holds) with a deadline; the service must live."""
    deadline = monotonic() + deadline_s
    while monotonic() < deadline:
        assert service.poll() is None, f"the service exited ({service.returncode}):\n{tail(log)}"
        try:
            result = condition()
        except Exception:  # the database is starting; look again
            result = None
        if result:
            return result
        with suppress(subprocess.TimeoutExpired):
            service.wait(timeout=POLL_S)  # a pause between two looks that ends if the service dies
    raise AssertionError(f"timed out waiting for {what}:\n{tail(log)}")


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def test_nothing_is_lost_when_postgres_and_influx_stop_for_30_seconds(
    tmp_path, postgres_server, postgres_url, influx_server, influx_database, gordo_server
):
    models = len(gordo_server.models)
    windows_per_model = BACKFILL // INTERVAL + 1
    engine = db.create_engine(postgres_url)
    log = tmp_path / "service.log"
    slow_predictions = always("slow", only=r"/anomaly/prediction")
    with FaultProxy(gordo_server.base_url, slow_predictions, slow_s=SLOW_S) as gordo:
        config = write_config(
            tmp_path / "latigo.yaml", postgres_url, gordo.url, influx_server.url, influx_database
        )
        now = datetime.now(timezone.utc)
        parts = build(load_config(config))  # migrates the database, as the service would
        try:
            feed(parts.sensors, now - BACKFILL - timedelta(hours=3), now)
        finally:
            parts.close()
        with log.open("wb") as output:
            service = subprocess.Popen(
                [sys.executable, "-m", "latigo", "--config", str(config), "run", "--executors", "2"],
                stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:

            def flowing():  # every window planned, some done, most still to do
                counts = ledger_counts(engine)
                planned, done = sum(counts.values()), counts.get(State.DONE, 0)
                return counts if planned >= models * windows_per_model and done >= 8 else None

            before = wait_for(flowing, START_DEADLINE_S, service, log, "the first windows to be done")
            with postgres_server.stopped(), influx_stopped(influx_server):
                # the outage: the service must live through it (a wait that ends early if it dies)
                with pytest.raises(subprocess.TimeoutExpired):
                    service.wait(timeout=OUTAGE_S)
            assert 0 < before.get(State.DONE, 0) < sum(before.values()), before

            def finished():
                counts = ledger_counts(engine)
                return counts if set(counts) == {State.DONE} else None

            after = wait_for(finished, FINISH_DEADLINE_S, service, log, "every window to be done")
            assert service.poll() is None
        finally:
            if service.poll() is None:
                service.send_signal(signal.SIGTERM)
            try:
                code = service.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                service.kill()
                code = service.wait()
    output = log.read_text(errors="replace")
    assert code == 0, tail(log)
    assert "dies at start" not in output
    # the outage was felt: the executors paused for a dependency and resumed by themselves,
    # and tasks in hand could not record their outcome (they came back when their lease ran out)
    assert "is down: no new tasks until it answers again" in output, tail(log)
    assert "answers again after" in output and "resuming" in output, tail(log)
    assert "handling a task failed, it will be delivered again" in output, tail(log)

    # every planned window done, once: the ledger's key holds one row per window
    with engine.connect() as connection:
        rows = pd.DataFrame(connection.execute(select(ledger.c.model, ledger.c.window_start)).all(),
                            columns=["model", "start"])
        letters = connection.execute(select(func.count()).select_from(dead_letters)).scalar_one()
    engine.dispose()
    assert letters == 0
    assert sum(after.values()) == len(rows) >= models * windows_per_model
    rows["start"] = pd.to_datetime(rows.start, utc=True)
    starts = {model: sorted(group.start) for model, group in rows.groupby("model")}
    assert set(starts) == set(gordo_server.models)
    for model, mine in starts.items():
        # contiguous: no window skipped
        assert list(pd.date_range(mine[0], mine[-1], freq=INTERVAL)) == mine, model
    assert gordo.kinds().count("slow") >= len(rows)  # every task went through the slow proxy

    # InfluxDB: one point per (measurement, machine, sensor_name, time), every step present
    counted = influx_server.points('SELECT count("sensor_value") FROM /.*/ GROUP BY "machine", "sensor_name"',
                                   influx_database)
    per_series = {(row["_measurement"], row["machine"], row["sensor_name"]): row["count"] for row in counted}
    expected = {}
    for model, mine in starts.items():
        points = len(mine) * (INTERVAL // STEP)
        expected.update({(group, model, tag): points for group in PER_TAG for tag in tags_of(model)})
        expected.update({(group, model, group): points for group in TOTALS})
    assert per_series == expected
    totals = influx_server.points('SELECT "sensor_value" FROM "total-anomaly-scaled" GROUP BY "machine"',
                                  influx_database)
    for model, mine in starts.items():
        times = sorted(pd.Timestamp(row["time"], tz="UTC") for row in totals if row["machine"] == model)
        assert times == list(pd.date_range(mine[0], mine[-1] + INTERVAL, freq=STEP, inclusive="left")), model
