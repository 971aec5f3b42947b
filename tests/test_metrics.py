"""Metrics and probes: a real process serves /metrics, /healthz and /readyz; the numbers move
when work is done, and Gordo's own server time is measured beside the client's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import requests
from prometheus_client import REGISTRY

from latigo import metrics
from latigo.components import build
from latigo.demo.feeder import feed
from latigo.executor import Executor
from latigo.scheduler import Scheduler
from tests.clock import Clock
from tests.test_pipeline import NOW, make_config

# how long a process may take to start serving
START_BOUND_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_work_moves_the_counters_and_gordo_time_is_measured(tmp_path, gordo_server):
    clock = Clock(NOW)
    parts = build(make_config(f"sqlite:///{tmp_path}/latigo.db", gordo_server.base_url), clock=clock)
    before = {
        "published": sample("latigo_tasks_published_total"),
        "done": sample("latigo_tasks_handled_total", outcome="done"),
        "gordo": sample("latigo_stage_seconds_count", stage="gordo"),
        "server": sample("latigo_gordo_server_seconds_count"),
        "client_sum": sample("latigo_gordo_client_seconds_sum"),
        "server_sum": sample("latigo_gordo_server_seconds_sum"),
    }
    try:
        feed(parts.sensors, NOW - timedelta(hours=5), NOW)
        report = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, clock).tick()
        Executor.from_components(parts).run(threading.Event(), until_idle=True)
    finally:
        parts.close()
    assert sample("latigo_tasks_published_total") - before["published"] == report.published_tasks
    assert sample("latigo_tasks_handled_total", outcome="done") - before["done"] == report.published_tasks
    calls = sample("latigo_stage_seconds_count", stage="gordo") - before["gordo"]
    assert calls == report.published_tasks
    assert sample("latigo_gordo_server_seconds_count") - before["server"] == calls
    client = sample("latigo_gordo_client_seconds_sum") - before["client_sum"]
    server = sample("latigo_gordo_server_seconds_sum") - before["server_sum"]
    assert 0 < server <= client  # Gordo's own time is part of what the client waited


def test_probes_follow_the_main_loop():
    health = metrics.Health(stale_after=0.5)
    server = metrics.serve("127.0.0.1", free_port(), health)
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200  # starting: alive
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 503  # but not ready
        health.beat()
        health.ready = True
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
        assert "latigo_tasks_handled_total" in requests.get(f"{base}/metrics", timeout=5).text
        health._last_beat -= 1.0  # the loop has not turned for a second: stuck
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 503
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 503
    finally:
        server.shutdown()
        server.server_close()


def test_the_leader_measures_dead_letters_and_lags_from_the_ledger(tmp_path):
    from datetime import datetime, timezone

    from latigo.config import Config
    from latigo.ledger import PlannedWindow, State
    from latigo.task import Task
    from latigo.window import Window

    now = datetime(2026, 3, 2, 12, 37, tzinfo=timezone.utc)
    recent = Window(datetime(2026, 3, 2, 11, 30, tzinfo=timezone.utc), datetime(2026, 3, 2, 12, tzinfo=timezone.utc))
    old = Window(recent.start - timedelta(days=2), recent.end - timedelta(days=2))
    with build(Config(database={"url": f"sqlite:///{tmp_path}/latigo.db"}), clock=Clock(now)) as parts:
        for model, window in (("fresh", recent), ("stale", old)):
            parts.ledger.plan([PlannedWindow("p", model, "1", window)])
            done = Task(project="p", model=model, revision="1", start=window.start, end=window.end)
            parts.ledger.finish(done, State.DONE)
        parts.ledger.dead_letter(b"{}", "malformed", "not JSON", 0)
        metrics.MODEL_LAG.labels("p", "gone").set(1.0)  # a model the ledger no longer has recently
        metrics.observe_ledger(parts.engine, now, since=now - timedelta(days=1))
    assert sample("latigo_dead_letters") == 1
    assert sample("latigo_model_lag_seconds", project="p", model="fresh") == 37 * 60
    # only models done since the cutoff are measured: the others' series are gone
    assert REGISTRY.get_sample_value("latigo_model_lag_seconds", {"project": "p", "model": "stale"}) is None
    assert REGISTRY.get_sample_value("latigo_model_lag_seconds", {"project": "p", "model": "gone"}) is None


def test_a_taken_port_costs_the_metrics_not_the_process():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert metrics.serve("127.0.0.1", taken.getsockname()[1]) is None


@pytest.mark.integration  # latigo run: a supervisor process and its children, on a database
def test_latigo_run_children_serve_their_own_ports(tmp_path):
    port = free_port()
    config = tmp_path / "latigo.yaml"
    config.write_text(
        f"database: {{url: 'sqlite:///{tmp_path}/latigo.db'}}\n"
        "models: {base_url: 'http://127.0.0.1:9', connect_timeout: 0.5}\n"
        f"metrics: {{port: {port}}}\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "latigo", "--config", str(config), "run", "--executors", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        deadline = time.monotonic() + START_BOUND_S
        ready = set()
        while time.monotonic() < deadline and len(ready) < 3:
            for child_port in (port, port + 1, port + 2):
                try:
                    if requests.get(f"http://127.0.0.1:{child_port}/readyz", timeout=2).status_code == 200:
                        ready.add(child_port)
                except requests.ConnectionError:
                    pass
            time.sleep(0.2)
        assert ready == {port, port + 1, port + 2}
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "latigo_queue_depth 0.0" in text  # the scheduler (leader) measured the queue
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_json_log_lines_carry_the_task(tmp_path, gordo_server, capsys):
    """One JSON object per line, with the task's identity on the executor's lines."""
    import json
    import logging

    from latigo import logs
    from latigo.config import LoggingConfig

    logs.configure(LoggingConfig(level="INFO", json_lines=True))
    clock = Clock(NOW)
    parts = build(make_config(f"sqlite:///{tmp_path}/latigo.db", gordo_server.base_url), clock=clock)
    try:
        feed(parts.sensors, NOW - timedelta(hours=2), NOW)
        Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, clock).tick()
        Executor.from_components(parts).run(threading.Event(), until_idle=True)
    finally:
        parts.close()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    done = [line for line in lines if line["logger"] == "latigo.executor" and " done in " in line["message"]]
    assert done and all({"task_id", "project", "model", "window_start", "revision"} <= set(line) for line in done)
    assert {line["model"] for line in done} == set(gordo_server.models)
    ticks = [line for line in lines if line["message"].startswith("tick:")]
    assert ticks and "task_id" not in ticks[0]  # no task, no task fields
