"""latigo status: per model window states, missing windows, freshness, recent failures,
dead letters and queue depth; as a table and as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from latigo.components import build
from latigo.config import Config
from latigo.ledger import Outcome, PlannedWindow, State
from latigo.task import Task
from latigo.window import Window

pytestmark = pytest.mark.integration  # each test runs latigo status as a process on its database

START = datetime(2026, 3, 2, 10, tzinfo=timezone.utc)
HALF_HOUR = timedelta(minutes=30)


def task(model: str, k: int) -> Task:
    return Task(project="demo", model=model, revision="1", start=START + HALF_HOUR * k, end=START + HALF_HOUR * (k + 1))


def test_status_table_and_json(tmp_path):
    url = f"sqlite:///{tmp_path}/latigo.db"
    parts = build(Config(database={"url": url}))
    try:
        for model in ("pump-1", "turbine-1"):
            parts.ledger.plan([PlannedWindow("demo", model, "1", Window(t.start, t.end))
                               for t in (task(model, k) for k in (0, 1, 2, 4))])  # window 3 never planned
        parts.ledger.record(task("pump-1", 0), [Outcome(task("pump-1", 0).window, State.DONE, None, 3, 3)])
        partial = Outcome(task("pump-1", 1).window, State.DONE, "1 of 3 rows: no complete sensor data at 10:40–10:50", 1, 3)
        parts.ledger.record(task("pump-1", 1), [partial])
        parts.ledger.fail(task("pump-1", 2), "TransientError: Gordo answered 503")
        parts.ledger.dead_letter(b"{}", "permanent", "PermanentError: Gordo answered 404", 1, task("turbine-1", 0))
        parts.queue.publish([b"waiting"])
    finally:
        parts.close()
    env = {**os.environ, "LATIGO_DATABASE__URL": url}

    def latigo(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "latigo", "status", *args], capture_output=True, text=True,
                                timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    table = latigo()
    assert "demo/pump-1" in table and "demo/turbine-1" in table
    assert "recent failures:" in table and "Gordo answered 503" in table and "Gordo answered 404" in table
    assert "dead letters: 1; queue depth: 1" in table
    header, pump = (line.split() for line in table.splitlines() if line.split()[:1] in (["model"], ["demo/pump-1"]))
    assert pump[header.index("partial")] == "1" and pump[header.index("done")] == "2"

    document = json.loads(latigo("--json"))
    models = {entry["model"]: entry for entry in document["models"]}
    assert models["pump-1"]["states"]["done"] == 2 and models["pump-1"]["states"]["failed"] == 1
    assert models["pump-1"]["partial"] == 1 and models["turbine-1"]["partial"] == 0
    assert models["pump-1"]["missing"] == 1 and models["turbine-1"]["states"]["dead"] == 1
    assert models["pump-1"]["newest_done_end"] == (START + HALF_HOUR * 2).isoformat()
    assert models["turbine-1"]["newest_done_end"] is None
    assert {f["state"] for f in document["recent_failures"]} == {"failed", "dead"}
    assert document["dead_letters"] == 1 and document["queue_depth"] == 1


def test_an_executor_paused_for_a_dependency_shows_in_status(tmp_path):
    from datetime import datetime, timedelta, timezone

    from latigo.schema import dependency_outages

    url = f"sqlite:///{tmp_path}/latigo.db"
    parts = build(Config(database={"url": url}))
    now = datetime.now(timezone.utc)
    try:
        with parts.engine.begin() as connection:
            connection.execute(dependency_outages.insert(), [
                {"executor": "a:1", "dependency": "prediction store", "since": now - timedelta(minutes=3),
                 "checked_at": now, "error": "Unavailable: InfluxDB http://db:8086/write: connection refused"},
                {"executor": "b:2", "dependency": "prediction store", "since": now - timedelta(minutes=2),
                 "checked_at": now, "error": "Unavailable: InfluxDB http://db:8086/write: connection refused"},
                # an executor that is gone: not refreshed for an hour
                {"executor": "c:3", "dependency": "gordo", "since": now - timedelta(hours=2),
                 "checked_at": now - timedelta(hours=1), "error": "Unavailable: gone"},
            ])
    finally:
        parts.close()
    env = {**os.environ, "LATIGO_DATABASE__URL": url}
    table = subprocess.run([sys.executable, "-m", "latigo", "status"], capture_output=True, text=True, timeout=60,
                           env=env).stdout
    assert "PAUSED: prediction store is down since" in table and "2 executors waiting" in table
    assert "gordo" not in table
    document = json.loads(subprocess.run([sys.executable, "-m", "latigo", "status", "--json"], capture_output=True,
                                         text=True, timeout=60, env=env).stdout)
    assert [(o["dependency"], o["executors"]) for o in document["paused_for"]] == [("prediction store", 2)]
