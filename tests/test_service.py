"""The long-lived processes stop cleanly and promptly on SIGTERM and SIGINT, whatever they
are waiting for (a scheduler between ticks, an executor on an empty queue)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration  # each test runs latigo processes on a database and signals them

# a stop must not wait for the next tick (30 s here): it should take about a second
STOP_BOUND_S = 10
# how long a process may take to start and reach its loop
START_BOUND_S = 60


def start(tmp_path, *command: str) -> tuple[subprocess.Popen, object]:
    config = tmp_path / "latigo.yaml"
    config.write_text(
        f"database: {{url: 'sqlite:///{tmp_path}/latigo.db'}}\n"
        "models: {base_url: 'http://127.0.0.1:9', connect_timeout: 0.5}\n"
        "schedule: {tick: 30s}\n"
    )
    log = open(tmp_path / f"{command[0]}.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "latigo", "--config", str(config), *command],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return process, log


def wait_for_lines(log, ready: dict[str, int], process: subprocess.Popen) -> None:
    """Until the log has each fragment at least as often as asked."""
    deadline = time.monotonic() + START_BOUND_S
    while time.monotonic() < deadline and process.poll() is None:
        log.seek(0)
        text = log.read()
        if all(text.count(fragment) >= count for fragment, count in ready.items()):
            return
        time.sleep(0.1)
    log.seek(0)
    raise AssertionError(f"never saw {ready}:\n{log.read()[-2000:]}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize(
    "command, ready",
    [
        (("scheduler",), {"tick:": 1}),  # Gordo is unreachable: it logs and waits for the next tick
        (("executor",), {"executor ready": 1}),  # then waits for tasks on an empty queue
        (("run", "--executors", "2"), {"tick:": 1, "executor ready": 2}),
    ],
)
def test_processes_stop_promptly_and_cleanly(tmp_path, command, ready, signum):
    process, log = start(tmp_path, *command)
    try:
        wait_for_lines(log, ready, process)
        # not awaiting anything: a deliberate pause so the signal arrives while the process
        # is inside its wait, which is what this test is about
        time.sleep(1)
        process.send_signal(signum)
        started = time.monotonic()
        code = process.wait(timeout=STOP_BOUND_S + 50)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    log.seek(0)
    output = log.read()
    assert code == 0, output[-2000:]
    assert took < STOP_BOUND_S, f"took {took:.1f}s to stop"
    assert "Traceback" not in output, output[-2000:]


def test_sigterm_with_a_task_in_hand_exits_within_the_grace_and_leaves_it_for_redelivery(tmp_path):
    """Gordo accepts the connection and never answers: the task cannot finish. The executor
    waits the grace period, exits 0 without acknowledging, and the task stays on the queue
    to be delivered again when its lease runs out."""
    import socket
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import select

    from latigo.components import build
    from latigo.config import Config
    from latigo.schema import task_queue
    from latigo.task import Task

    silent = socket.create_server(("127.0.0.1", 0))  # listens, never accepts: requests hang
    port = silent.getsockname()[1]
    config = tmp_path / "latigo.yaml"
    config.write_text(
        f"database: {{url: 'sqlite:///{tmp_path}/latigo.db'}}\n"
        f"models: {{base_url: 'http://127.0.0.1:{port}', read_timeout: 20}}\n"
        "executor: {shutdown_grace: 1s, task_deadline: 30s}\n"
        "queue: {lease: 60s, poll_interval: 0.1s}\n"
    )
    parts = build(Config(database={"url": f"sqlite:///{tmp_path}/latigo.db"}))
    start = datetime(2026, 3, 2, 10, tzinfo=timezone.utc)
    parts.queue.publish([Task(project="demo", model="pump-1", revision="1", start=start,
                              end=start + timedelta(minutes=30)).to_json()])
    log = open(tmp_path / "executor.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "latigo", "--config", str(config), "executor"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_BOUND_S
        while time.monotonic() < deadline:
            with parts.engine.connect() as connection:
                if connection.execute(select(task_queue.c.lease_token)).scalar() is not None:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the executor never took the task")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = process.wait(timeout=STOP_BOUND_S + 50)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
        silent.close()
    log.seek(0)
    output = log.read()
    assert code == 0, output[-2000:]
    assert took < STOP_BOUND_S, f"took {took:.1f}s with a 1s grace"
    assert "1 tasks still running after the grace period" in output
    with parts.engine.connect() as connection:
        rows = connection.execute(select(task_queue.c.deliveries)).scalars().all()
    parts.close()
    assert rows == [1]  # not acknowledged: delivered again once the lease runs out
