"""The long-lived processes stop cleanly and promptly on SIGTERM and SIGINT, whatever they
are waiting for (a scheduler between ticks, an executor on an empty queue)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

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
