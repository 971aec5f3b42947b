"""End to end, as the README runs it: ``latigo demo`` starts a local real Gordo, feeds demo
sensor data and runs the scheduler and two executors as processes, on the real clock.
Every due window of every demo model must end up predicted, once; SIGTERM stops it all
cleanly. Also the command line's promises: --help lists the commands, bad config stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from latigo import db
from latigo.demo import gordo
from latigo.demo.models import model_names
from latigo.ledger import State
from latigo.schema import ledger, prediction_outputs, predictions
from latigo.status import prediction_duplicates
from latigo.window import Grid

pytestmark = pytest.mark.integration  # latigo (and for the demo, Gordo) as real processes

# how long the demo may take to predict every due window (Gordo setup is cached by then)
E2E_DEADLINE_S = 180
# how often the test looks at the ledger while it waits
POLL_S = 0.5


def latigo(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "latigo", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_the_commands():
    result = latigo("--help")
    assert result.returncode == 0
    for command in ("run", "scheduler", "executor", "db", "models", "status", "predictions", "demo", "config"):
        assert f"  {command} " in result.stdout


@pytest.mark.parametrize(
    "yaml_text, env, message",
    [
        ("schedule:\n  interval: soon\n", {}, "schedule.interval"),
        ("sensors:\n  type: excel\n", {}, "sensors.type: 'excel' is not one of sql, influx"),
        ("", {"LATIGO_EXECUTOR__CONCURRENCY": "many"}, "executor.concurrency"),
        ("", {"LATIGO_QUEUE_TYPE": "sql"}, "unknown configuration variables: LATIGO_QUEUE_TYPE"),
    ],
)
def test_a_bad_config_stops_every_process_naming_the_key(tmp_path, yaml_text, env, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    for command in (["scheduler", "--once"], ["executor", "--until-idle"], ["run"]):
        result = latigo("--config", str(config), *command, env=env)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def due_windows(now: datetime, backfill: timedelta) -> list[datetime]:
    grid = Grid(timedelta(minutes=30))
    last_end = grid.last_due_end(now, timedelta(minutes=5))
    return [window.start for window in grid.windows(last_end - timedelta(minutes=30) - backfill, last_end)]


def test_the_demo_predicts_every_due_window_of_every_model_once(tmp_path):
    port = gordo.free_port()
    config = tmp_path / "latigo.yaml"
    database = tmp_path / "latigo.db"
    config.write_text(
        f"database: {{url: 'sqlite:///{database}'}}\n"
        f"models: {{base_url: 'http://127.0.0.1:{port}', projects: [demo]}}\n"
        "schedule: {initial_backfill: 2h, tick: 2s}\n"
        "queue: {poll_interval: 0.2s}\n"
    )
    started = datetime.now(timezone.utc)
    log = open(tmp_path / "demo.log", "w+")
    demo = subprocess.Popen(
        [sys.executable, "-m", "latigo", "--config", str(config), "demo"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        engine = None
        deadline = time.monotonic() + E2E_DEADLINE_S
        expected = {(model, start) for model in model_names() for start in due_windows(started, timedelta(hours=2))}
        done: set[tuple[str, datetime]] = set()
        while time.monotonic() < deadline and demo.poll() is None:
            if engine is None and database.exists():
                engine = db.create_engine(f"sqlite:///{database}")
            if engine is not None:
                try:
                    with engine.connect() as connection:
                        done = set(
                            connection.execute(
                                select(ledger.c.model, ledger.c.window_start).where(ledger.c.state == State.DONE)
                            ).all()
                        )
                except Exception:  # tables not created yet
                    done = set()
            if expected <= done:
                break
            time.sleep(POLL_S)
        log.seek(0)
        output = log.read()
        assert demo.poll() is None, f"the demo exited early:\n{output[-3000:]}"
        assert expected <= done, f"missing windows: {sorted(expected - done)[:5]}\n{output[-3000:]}"

        with engine.connect() as connection:
            per_window = connection.execute(
                select(predictions.c.model, prediction_outputs.c.name, func.count())
                .join(prediction_outputs, prediction_outputs.c.code == predictions.c.output)
                .group_by(predictions.c.model, prediction_outputs.c.name)
            ).all()
            states = set(connection.execute(select(ledger.c.state).distinct()).scalars())
        assert prediction_duplicates(engine) == 0
        outputs = {(model, output) for model, output, _ in per_window}
        for model in model_names():
            assert (model, "total-anomaly-scaled") in outputs and (model, "anomaly-confidence") in outputs
        assert states <= {State.DONE, State.QUEUED, State.PLANNED}  # nothing failed
        engine.dispose()
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            code = demo.wait(timeout=90)
        finally:
            if demo.poll() is None:
                demo.kill()
        log.seek(0)
        output = log.read()
        log.close()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # Gordo was stopped with the demo: nothing answers on its port any more
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_db_upgrade_creates_the_schema(tmp_path):
    database = tmp_path / "fresh.db"
    result = latigo("db", "upgrade", env={"LATIGO_DATABASE__URL": f"sqlite:///{database}"})
    assert result.returncode == 0, result.stderr
    assert "newest revision" in result.stdout
    engine = db.create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        tables = set(connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'").scalars())
    engine.dispose()
    assert {"ledger", "task_queue", "dead_letters", "sensor_data", "predictions", "alembic_version"} <= tables
