"""Latigo's processes live through their dependencies, and say how they ended.

Real processes against a real PostgreSQL that the tests stop and start: a scheduler and an
executor started while the database is down wait for it (a line a try, /readyz false) and
then work; ``latigo run`` restarts a child killed during an outage, and gives up (exit 1)
on a child that keeps dying at start; ``scheduler --once`` and the operator commands exit
non-zero, with one line, when what they need does not answer.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path
from time import monotonic

import pytest
import requests
from sqlalchemy import func, select

from latigo import db
from latigo.demo.gordo import free_port
from latigo.schema import ledger
from latigo.service import run_service

pytestmark = pytest.mark.integration

# how long the tests wait for what they expect to see, seconds
DEADLINE_S = 60
# the pause between two looks, seconds
POLL_S = 0.2


def write_config(path: Path, database_url: str, gordo_url: str, metrics_port: int = 0) -> Path:
    path.write_text(
        f"database: {{url: '{database_url}'}}\n"
        f"models: {{base_url: '{gordo_url}', projects: [demo], connect_timeout: 1, read_timeout: 3}}\n"
        "schedule: {initial_backfill: 1h, tick: 1s}\n"
        "queue: {type: sql, poll_interval: 0.2s}\n"
        "executor: {shutdown_grace: 5s}\n"
        f"metrics: {{port: {metrics_port}}}\n"
    )
    return path


def start(config: Path, log: Path, *args: str) -> subprocess.Popen:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "latigo", "--config", str(config), *args],
            stdout=output, stderr=subprocess.STDOUT,
            # faulthandler: a child that a test gives up on prints its threads' stacks (SIGABRT)
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
        )


def until(condition, what: str, *processes: subprocess.Popen, log: Path | None = None):
    """Wait for ``condition`` to hold; every process given must stay alive meanwhile."""
    deadline = monotonic() + DEADLINE_S
    while monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"a process exited ({process.returncode}): {tail(log)}"
        with suppress(Exception):
            if result := condition():
                return result
        if processes:
            with suppress(subprocess.TimeoutExpired):
                processes[0].wait(timeout=POLL_S)  # a pause that ends if the process dies
        else:
            threading.Event().wait(POLL_S)
    raise AssertionError(f"timed out waiting for {what}: {tail(log)}")


def tail(log: Path | None, lines: int = 40) -> str:
    """The log's last lines, less the scheduler's idle ticks (a minute of them hides the rest)."""
    if log is None or not log.exists():
        return ""
    kept = [line for line in log.read_text(errors="replace").splitlines() if "0 windows planned" not in line]
    return "\n".join(kept[-lines:])


def stacks_then_tail(pid: int, log: Path) -> str:
    """For a timeout: where process ``pid`` is stuck, as faulthandler prints it on SIGABRT."""
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGABRT)
    until_quiet = monotonic() + 5
    while monotonic() < until_quiet and "most recent call first" not in log.read_text(errors="replace"):
        threading.Event().wait(POLL_S)
    return tail(log, 120)


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def readiness(port: int) -> int:
    return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=(1, 2)).status_code


def windows(url: str) -> int:
    engine = db.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(ledger)).scalar_one()
    finally:
        engine.dispose()


def test_processes_started_while_the_database_is_down_wait_and_then_work(
    tmp_path, postgres_server, postgres_url, gordo_server
):
    executor_port, scheduler_port = free_port(), free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("scheduler", "executor")}
    with postgres_server.stopped():
        scheduler = start(write_config(tmp_path / "s.yaml", postgres_url, gordo_server.base_url, scheduler_port),
                          logs["scheduler"], "scheduler")
        executor = start(write_config(tmp_path / "e.yaml", postgres_url, gordo_server.base_url, executor_port),
                         logs["executor"], "executor")
        try:
            for name, log in logs.items():
                until(lambda log=log: log.read_text().count("the Latigo database is unavailable, trying again") >= 2,
                      f"the {name} to wait for the database", scheduler, executor, log=log)
            assert readiness(executor_port) == 503 and readiness(scheduler_port) == 503
        except BaseException:
            stop(scheduler), stop(executor)
            raise
    try:
        until(lambda: windows(postgres_url) > 0, "windows planned", scheduler, executor, log=logs["scheduler"])
        until(lambda: readiness(executor_port) == 200, "the executor to be ready", scheduler, executor,
              log=logs["executor"])
    finally:
        codes = stop(scheduler), stop(executor)
    assert codes == (0, 0)
    for log in logs.values():
        text = log.read_text()
        assert "Traceback" not in text, tail(log)
        waits = [float(seconds) for seconds in re.findall(r"trying again in (\d+)s", text)]
        assert waits == sorted(waits) and waits[0] == 1  # capped exponential backoff, a line a try


def test_run_restarts_a_child_killed_while_the_database_is_down(tmp_path, postgres_server, postgres_url, gordo_server):
    log = tmp_path / "run.log"
    service = start(write_config(tmp_path / "r.yaml", postgres_url, gordo_server.base_url), log, "run", "--executors", "1")
    try:
        [first] = until(lambda: re.findall(r"started executor-1 \(pid (\d+)\)", log.read_text()), "the executor", service,
                        log=log)
        until(lambda: windows(postgres_url) > 0, "windows planned", service, log=log)
        with postgres_server.stopped():
            os.kill(int(first), signal.SIGKILL)
            until(lambda: len(re.findall(r"started executor-1", log.read_text())) == 2, "the restart", service, log=log)
            until(lambda: "the Latigo database is unavailable" in log.read_text(), "the new child to wait", service,
                  log=log)
        # the new child got through to its work once the database was back
        try:
            until(lambda: log.read_text().count("executor ready") == 2, "the new child to start working", service)
        except AssertionError as timeout:
            [_, second] = re.findall(r"started executor-1 \(pid (\d+)\)", log.read_text())
            raise AssertionError(f"{timeout}\n{stacks_then_tail(int(second), log)}") from None
    finally:
        code = stop(service)
    assert code == 0, tail(log)
    assert re.search(r"executor-1 exited with -9; starting it again in [01]s", log.read_text())


def test_run_gives_up_on_a_child_that_keeps_dying_at_start():
    died = [sys.executable, "-c", "import sys; sys.exit(3)"]
    started = monotonic()
    assert run_service(1, None, base=died, max_quick_deaths=3) == 1
    assert monotonic() - started < 20  # 1 s, then 2 s of backoff between the deaths


def test_scheduler_once_exits_1_when_gordo_is_unreachable(tmp_path):
    config = write_config(tmp_path / "o.yaml", f"sqlite:///{tmp_path}/latigo.db", "http://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-m", "latigo", "--config", str(config), "scheduler", "--once"],
                            capture_output=True, text=True, timeout=DEADLINE_S)
    assert result.returncode == 1, result.stderr
    assert "project demo failed" in result.stderr and "Traceback" not in result.stderr


def test_an_operator_command_with_the_database_down_says_so_in_one_line(tmp_path, postgres_server, postgres_url):
    config = write_config(tmp_path / "c.yaml", postgres_url, "http://127.0.0.1:9")
    db.upgrade(db.create_engine(postgres_url))  # migrated while it is up
    with postgres_server.stopped():
        result = subprocess.run([sys.executable, "-m", "latigo", "--config", str(config), "status"],
                                capture_output=True, text=True, timeout=DEADLINE_S)
    assert result.returncode == 1
    assert result.stderr.startswith("latigo: the Latigo database is unavailable") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
