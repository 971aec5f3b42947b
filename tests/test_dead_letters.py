"""Dead letters: what lands there and why, listing them, and replaying them (against the real
Gordo and both databases)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from latigo import dlq
from latigo.components import build
from latigo.demo.feeder import feed
from latigo.executor import Executor
from latigo.ledger import PlannedWindow, State
from latigo.schema import ledger, predictions
from latigo.task import Task
from tests.clock import Clock
from tests.fault_proxy import FaultProxy, always
from tests.test_pipeline import NOW, make_config

pytestmark = pytest.mark.integration  # the real Gordo server, behind the fault proxy for the failures

HOUR = NOW.replace(minute=0)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def drain(parts) -> None:
    Executor.from_components(parts).run(threading.Event(), until_idle=True)


def window_task(model: str, revision: str, hours_back: int) -> Task:
    start = HOUR - timedelta(hours=hours_back)
    return Task(project="demo", model=model, revision=revision, start=start, end=start + timedelta(minutes=30))


def plan(parts, task: Task) -> None:
    parts.ledger.plan([PlannedWindow(task.project, task.model, task.revision, task.window)])


def test_dead_letters_are_listed_and_replayed(database_url, gordo_server, clock):
    # first Gordo answers pump-1's prediction with a 500 (its own error, not an outage: Gordo
    # is up): one attempt, then the task is given up on
    with FaultProxy(gordo_server.base_url, always("error_500", only=r"/pump-1/anomaly/prediction")) as proxy:
        broken = build(make_config(database_url, proxy.url, max_attempts=1), clock=clock)
        exhausted = window_task("pump-1", gordo_server.revision, 2)
        unknown = window_task("no-such-model", gordo_server.revision, 2)
        try:
            feed(broken.sensors, NOW - timedelta(hours=4), NOW)
            for task in (exhausted, unknown):
                plan(broken, task)
            broken.queue.publish([exhausted.to_json(), b"{broken json"])
            drain(broken)
        finally:
            broken.close()

    parts = build(make_config(database_url, gordo_server.base_url), clock=clock)
    try:
        feed(parts.sensors, NOW - timedelta(hours=4), NOW)
        parts.queue.publish([unknown.to_json()])
        drain(parts)  # Gordo answers 404 for the unknown model: permanent, no retry

        found = {letter.reason: letter for letter in dlq.letters(parts.engine)}
        assert {(letter.model, reason) for reason, letter in found.items()} == {
            ("pump-1", "exhausted"), (None, "malformed"), ("no-such-model", "permanent")
        }
        exhausted_letter, malformed, permanent = found["exhausted"], found["malformed"], found["permanent"]
        assert "Gordo answered 500" in exhausted_letter.error and "404" in permanent.error
        assert exhausted_letter.task.window == exhausted.window and malformed.task is None
        assert "pump-1" in exhausted_letter.describe() and "(malformed message)" in malformed.describe()
        assert [letter.model for letter in dlq.letters(parts.engine, models=["pump-1"])] == ["pump-1"]

        report = dlq.replay(parts.engine, parts.queue, parts.ledger, models=["pump-1"])
        assert report.replayed == [exhausted_letter.id] and report.malformed == []
        with parts.engine.connect() as connection:
            row = connection.execute(select(ledger).where(ledger.c.model == "pump-1")).one()
        assert row.state == State.QUEUED and row.attempts == 0 and row.last_error is None
        drain(parts)
        with parts.engine.connect() as connection:
            assert connection.execute(select(ledger.c.state).where(ledger.c.model == "pump-1")).scalar() == State.DONE
            stored = connection.execute(select(predictions.c.time).where(predictions.c.model == "pump-1")).scalars()
            assert len(set(stored)) == 3  # three 10-minute steps of the replayed window

        # --all replays the rest; the malformed message stays unless dropped
        report = dlq.replay(parts.engine, parts.queue, parts.ledger, everything=True)
        assert report.replayed == [permanent.id] and report.malformed == [malformed.id]
        drain(parts)  # the unknown model dies again, with a new letter
        assert [letter.reason for letter in dlq.letters(parts.engine)] == ["malformed", "permanent"]
        report = dlq.replay(parts.engine, parts.queue, parts.ledger, ids=[malformed.id], drop_malformed=True)
        assert report.dropped == [malformed.id]
        assert [letter.model for letter in dlq.letters(parts.engine)] == ["no-such-model"]
    finally:
        parts.close()


def test_the_dlq_commands(tmp_path, gordo_server, clock):
    database = f"sqlite:///{tmp_path}/latigo.db"
    parts = build(make_config(database, gordo_server.base_url), clock=clock)
    try:
        parts.queue.publish([b"not a task"])
        drain(parts)
    finally:
        parts.close()
    env = {**os.environ, "LATIGO_DATABASE__URL": database}

    def latigo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "latigo", "dlq", *args], capture_output=True, text=True,
                              timeout=60, env=env)

    listed = latigo("list")
    assert listed.returncode == 0 and "(malformed message) malformed" in listed.stdout
    assert '"reason": "malformed"' in latigo("list", "--json").stdout
    refused = latigo("replay")
    assert refused.returncode == 2 and "--id, --model or --all" in refused.stderr
    kept = latigo("replay", "--all")
    assert kept.returncode == 0 and "kept 1 malformed" in kept.stdout
    dropped = latigo("replay", "--all", "--drop-malformed")
    assert "dropped 1 malformed" in dropped.stdout
    assert "no dead letters" in latigo("list").stdout


def test_a_task_that_keeps_killing_its_executor_is_dead_lettered_as_poison(tmp_path, gordo_server, clock):
    """Each delivery's executor died before recording anything (simulated by letting the
    lease run out); past max_deliveries the next one dead-letters it instead of running it."""
    parts = build(make_config(f"sqlite:///{tmp_path}/latigo.db", gordo_server.base_url, max_deliveries=3), clock=clock)
    try:
        task = window_task("pump-1", gordo_server.revision, 2)
        plan(parts, task)
        parts.queue.publish([task.to_json()])
        for _ in range(3):  # three executors took it and died
            [message] = parts.queue.receive(1, timedelta(0))
            clock.advance(timedelta(minutes=16))  # the lease (15 min) runs out
        [message] = parts.queue.receive(1, timedelta(0))
        assert message.deliveries == 4
        assert Executor.from_components(parts).handle(message).value == "dead"
        [letter] = dlq.letters(parts.engine)
        assert letter.reason == "poison" and "delivered 4 times" in letter.error
        with parts.engine.connect() as connection:
            assert connection.execute(select(ledger.c.state)).scalar() == State.DEAD
        assert parts.queue.depth() == 0
    finally:
        parts.close()


def test_kills_are_not_failed_attempts(tmp_path, gordo_server, clock):
    """A task interrupted twice and then failing once has had one failed attempt, not three."""
    proxy = FaultProxy(gordo_server.base_url, always("error_500", only=r"/anomaly/prediction")).__enter__()
    parts = build(make_config(f"sqlite:///{tmp_path}/latigo.db", proxy.url, max_attempts=2), clock=clock)
    try:
        feed(parts.sensors, NOW - timedelta(hours=4), NOW)
        task = window_task("pump-1", gordo_server.revision, 2)
        plan(parts, task)
        parts.queue.publish([task.to_json()])
        for _ in range(2):
            parts.queue.receive(1, timedelta(0))
            clock.advance(timedelta(minutes=16))
        [message] = parts.queue.receive(1, timedelta(0))
        assert Executor.from_components(parts).handle(message) == State.FAILED  # attempt 1 of 2: retried, not given up
        assert dlq.letters(parts.engine) == []
    finally:
        parts.close()
        proxy.stop()
