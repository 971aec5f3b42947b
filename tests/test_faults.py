"""Executors that lose nothing: the scheduler and executor pipeline against the real Gordo
server behind a fault-injecting proxy (tests/fault_proxy.py).

Every window must end ``done`` or ``dead``; a dead one has a dead letter saying why:
``permanent`` for an answer that is not a prediction (an HTML page with a 200), ``exhausted``
for transient faults (5xx, resets, hangs) on every attempt. A controllable clock makes the
retry backoffs pass without waiting; Gordo's read timeout is short so hangs end fast.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from time import monotonic
from typing import Iterator

import pandas as pd
import pytest
from sqlalchemy import func, select

from latigo import calls
from latigo.components import Components, build
from latigo.config import Config
from latigo.demo.feeder import feed
from latigo.demo.models import tags_of
from latigo.executor import Executor
from latigo.ledger import PlannedWindow, State
from latigo.providers.predictions.sql import read as read_predictions
from latigo.scheduler import Scheduler
from latigo.schema import dead_letters, ledger
from latigo.status import prediction_duplicates
from latigo.task import Task
from tests.clock import Clock
from tests.fault_proxy import FAULTS, TRANSIENT_FAULTS, FaultProxy, Plan, always, seeded

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 2, 12, 7, tzinfo=timezone.utc)
STEP = timedelta(minutes=10)
INTERVAL = timedelta(minutes=30)
# Gordo's read timeout: a hang costs this much real time per attempt; Gordo itself answers
# in a tenth of that (a slow fault adds 0.2 s)
READ_TIMEOUT = 2.0
# how long a whole run may take (it takes a few seconds)
RUN_DEADLINE_S = 120
# how far the clock moves per look at the ledger while the executor works: past any backoff
CLOCK_STEP = timedelta(seconds=0.5)
# what each fault looks like in the error the executor records
SIGNATURES = {
    "error_500": "Gordo answered 500: 500 Internal Server Error",
    "error_503": "Gordo answered 503: 503 Service Unavailable",
    "reset": "cannot reach Gordo",
    "hang": "Gordo timed out (ReadTimeout)",
    "html_200": "got text/html; charset=utf-8: Sign in to your account",
}
FAILING_TRANSIENT = ("error_500", "error_503", "reset", "hang")
UNSETTLED = (State.PLANNED, State.QUEUED, State.FAILED)


def make_config(database_url: str, gordo_url: str, backfill: str, **executor: object) -> Config:
    return Config(
        database={"url": database_url},
        models={
            "base_url": gordo_url, "projects": ["demo"], "connect_timeout": 2, "read_timeout": READ_TIMEOUT,
        },
        schedule={"interval": "30m", "initial_backfill": backfill, "max_task_span": "30m"},
        # a lease far longer than any run, even on the fast-moving clock: no redelivery by lease
        queue={"type": "sql", "lease": "2h", "poll_interval": "0.02s"},
        executor={"concurrency": 4, "retry_base": "0.1s", "retry_max": "0.4s", "max_attempts": 4,
                  "shutdown_grace": "10s", **executor},
    )


@contextmanager
def pipeline(
    database_url: str,
    gordo_url: str,
    plan: Plan,
    *,
    backfill: str = "6h",
    hang_s: float = 30.0,
    **executor: object,
) -> Iterator[tuple[FaultProxy, Components, Clock]]:
    """Components talking to Gordo through a fault proxy, with demo sensor data fed."""
    clock = Clock(NOW)
    with FaultProxy(gordo_url, plan, hang_s=hang_s, slow_s=0.2) as proxy:
        parts = build(make_config(database_url, proxy.url, backfill, **executor), clock=clock)
        try:
            feed(parts.sensors, NOW - timedelta(hours=10), NOW)
            yield proxy, parts, clock
        finally:
            parts.close()


def windows(parts: Components) -> pd.DataFrame:
    query = select(ledger.c.model, ledger.c.window_start, ledger.c.state, ledger.c.attempts,
                   ledger.c.last_error, ledger.c.task_id)
    with parts.engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).all(),
                             columns=["model", "start", "state", "attempts", "last_error", "task_id"])
    frame["start"] = pd.to_datetime(frame.start, utc=True)
    return frame


def letters(parts: Components) -> pd.DataFrame:
    query = select(dead_letters.c.task_id, dead_letters.c.reason, dead_letters.c.error,
                   dead_letters.c.attempts, dead_letters.c.body)
    with parts.engine.connect() as connection:
        rows = connection.execute(query).all()
    return pd.DataFrame(rows, columns=["task_id", "reason", "error", "attempts", "body"])


def unsettled(parts: Components) -> int:
    with parts.engine.connect() as connection:
        open_windows = connection.execute(
            select(func.count()).select_from(ledger).where(ledger.c.state.in_(list(UNSETTLED)))
        ).scalar_one()
    return open_windows + parts.queue.depth()


def run_to_the_end(parts: Components, clock: Clock) -> int:
    """Plan and publish, then let an executor work until every window is settled and the
    queue is empty, moving the clock past each backoff meanwhile. Returns the windows planned."""
    planned = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, parts.clock).tick().planned
    stop = threading.Event()
    executor = Executor.from_components(parts)
    worker = threading.Thread(target=executor.run, args=(stop,), name="executor")
    worker.start()
    try:
        deadline = monotonic() + RUN_DEADLINE_S
        while unsettled(parts) and monotonic() < deadline:
            clock.advance(CLOCK_STEP)
            stop.wait(0.05)  # stop is never set here: a pause between two looks at the ledger
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive(), "the executor did not stop"
    assert unsettled(parts) == 0, windows(parts).query("state in @UNSETTLED")
    return planned


def prediction_times(parts: Components) -> dict[str, set[pd.Timestamp]]:
    """The times each model has predictions for; each time must have every value once: one
    per tag of the five per-tag groups, and the three totals."""
    rows = read_predictions(parts.engine).groupby(["model", "time"]).size().rename("values").reset_index()
    for model, group in rows.groupby("model"):
        assert set(group["values"]) == {5 * len(tags_of(model)) + 3}, model
    rows["time"] = pd.to_datetime(rows.time, utc=True)
    return {model: set(group.time) for model, group in rows.groupby("model")}


def steps(starts) -> set[pd.Timestamp]:
    return {pd.Timestamp(start) + k * STEP for start in starts for k in range(INTERVAL // STEP)}


def check_every_window_accounted_for(parts: Components, proxy: FaultProxy, expected: int) -> pd.DataFrame:
    """Every window done or dead; every dead one with its dead letter and a reason matching a
    fault that was injected; predictions exactly once per step of every done window."""
    ledger_rows = windows(parts)
    assert len(ledger_rows) == expected
    assert set(ledger_rows.state) <= {State.DONE, State.DEAD}, ledger_rows.state.value_counts()
    mail = letters(parts)
    dead = ledger_rows[ledger_rows.state == State.DEAD]
    # one dead letter per dead task (a task is one window here), naming that very window
    assert sorted(mail.task_id) == sorted(dead.task_id)
    for letter in mail.itertuples():
        task = Task.from_json(letter.body)
        [window] = dead[dead.task_id == letter.task_id].itertuples()
        assert (task.model, pd.Timestamp(task.start)) == (window.model, window.start)
        assert window.last_error == letter.error
        if letter.reason == "permanent":
            assert SIGNATURES["html_200"] in letter.error and letter.attempts == window.attempts + 1
        else:
            assert letter.reason == "exhausted", letter
            assert letter.attempts == window.attempts == parts.config.executor.max_attempts
            assert any(SIGNATURES[kind] in letter.error for kind in FAILING_TRANSIENT), letter.error
    # an answer that is not a prediction is never retried: one dead letter per HTML page served
    injected = Counter(proxy.kinds())
    assert (mail.reason == "permanent").sum() == injected["html_200"]
    # every transient failure was counted as one attempt, no more and no fewer
    assert ledger_rows.attempts.sum() == sum(injected[kind] for kind in FAILING_TRANSIENT)
    # predictions: exactly the 10-minute steps of the done windows, once each
    done = ledger_rows[ledger_rows.state == State.DONE]
    stored = prediction_times(parts)
    for model, mine in done.groupby("model"):
        assert stored.get(model, set()) == steps(mine.start), model
    assert set(stored) <= set(done.model)
    assert prediction_duplicates(parts.engine) == 0
    return ledger_rows


def test_mixed_faults_end_every_window_done_or_dead_with_its_reason(database_url, gordo_server):
    # 30 % of Gordo's prediction and metadata requests fail, every kind in turn; and every
    # metadata request for turbine-1 fails with a (quick) transient fault, so its windows
    # exhaust their attempts
    mixed = seeded(0.3, FAULTS, seed=7)
    down = seeded(1.0, ("error_500", "error_503", "reset"), only=r"/turbine-1/metadata")

    def plan(method: str, path: str) -> str:
        return down(method, path) if "/turbine-1/metadata" in path else mixed(method, path)

    with pipeline(database_url, gordo_server.base_url, plan) as (proxy, parts, clock):
        planned = run_to_the_end(parts, clock)
        # 6 h of backfill and the newest window: 13 windows of 30 minutes per model
        assert planned == 13 * len(gordo_server.models)
        ledger_rows = check_every_window_accounted_for(parts, proxy, planned)
        mail = letters(parts)
        injected = Counter(proxy.kinds())
    assert set(FAULTS) <= set(injected), injected
    turbine = ledger_rows[ledger_rows.model == "turbine-1"]
    assert set(turbine.state) == {State.DEAD}
    assert set(turbine.attempts) == {parts.config.executor.max_attempts}
    assert (mail.reason == "exhausted").sum() >= len(turbine)
    assert (mail.reason == "permanent").sum() > 0
    # the other models lost a few windows to the HTML pages, most were done
    others = ledger_rows[ledger_rows.model != "turbine-1"].state.value_counts()
    assert 0 < others.get(State.DEAD, 0) < others.get(State.DONE, 0)


def test_transient_faults_only_end_every_window_done(postgres_url, gordo_server):
    plan = seeded(0.3, TRANSIENT_FAULTS, seed=11)
    with pipeline(postgres_url, gordo_server.base_url, plan, max_attempts=10) as (proxy, parts, clock):
        planned = run_to_the_end(parts, clock)
        ledger_rows = check_every_window_accounted_for(parts, proxy, planned)
        injected = Counter(proxy.kinds())
    assert set(TRANSIENT_FAULTS) <= set(injected), injected
    assert set(ledger_rows.state) == {State.DONE}
    assert ledger_rows.attempts.sum() > 0  # faults happened, and were retried away


@pytest.mark.parametrize(
    "kind, reason, attempts",
    [
        ("error_500", "exhausted", 2),
        ("error_503", "exhausted", 2),
        ("reset", "exhausted", 2),
        ("hang", "exhausted", 2),
        ("html_200", "permanent", 1),
        ("slow", None, 0),
    ],
)
def test_each_fault_kind_is_classed_as_the_issue_says(postgres_url, gordo_server, kind, reason, attempts):
    """pump-1's predictions always meet the fault; the other models are untouched."""
    plan = always(kind, only=r"/pump-1/anomaly/prediction")
    with pipeline(postgres_url, gordo_server.base_url, plan, backfill="0s", max_attempts=2) as (
        proxy, parts, clock
    ):
        assert run_to_the_end(parts, clock) == len(gordo_server.models)
        rows = windows(parts).set_index("model")
        mail = letters(parts)
        stored = prediction_times(parts)
        faulted = [record for record in proxy.records if record[0] != "pass"]
    assert len(faulted) == max(attempts, 1)
    others = rows.drop(index="pump-1")
    assert set(others.state) == {State.DONE} and set(others.attempts) == {0}
    pump = rows.loc["pump-1"]
    if reason is None:
        assert pump.state == State.DONE and pump.attempts == 0 and mail.empty
        assert stored["pump-1"] == steps([pump.start])
        return
    [letter] = mail.itertuples()
    assert (letter.reason, letter.attempts, pump.state) == (reason, attempts, State.DEAD)
    assert SIGNATURES[kind] in letter.error and pump.last_error == letter.error
    assert "pump-1" not in stored


def handle_one_through(proxy: FaultProxy, parts: Components, join_s: float) -> tuple[bool, list[State]]:
    """Plan one window per model, hand the first task to Executor.handle in a thread; return
    whether the thread was still running after ``join_s`` seconds, and its outcome. The
    proxy is stopped before returning, which ends any connection it holds."""
    Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, parts.clock).tick()
    [message] = parts.queue.receive(1, timedelta(0))
    outcome: list[State] = []
    handler = threading.Thread(target=lambda: outcome.append(Executor.from_components(parts).handle(message)), daemon=True)
    handler.start()
    handler.join(timeout=join_s)
    blocked = handler.is_alive()
    proxy.stop()  # ends a hang or a drip at once: a blocked thread gets an error and finishes
    handler.join(timeout=30)
    return blocked, outcome


def test_a_hanging_gordo_never_blocks_an_executor(postgres_url, gordo_server):
    # the proxy holds every request for two minutes; Gordo's read timeout is two seconds
    with pipeline(postgres_url, gordo_server.base_url, always("hang"), backfill="0s", hang_s=120) as (
        proxy, parts, clock
    ):
        blocked, outcome = handle_one_through(proxy, parts, join_s=30)  # generous: it takes 2 s
        failed = windows(parts).query("state == 'failed'")
    assert not blocked, "a hanging Gordo blocked the executor"
    assert outcome == [State.FAILED]  # released for a retry after a backoff
    [window] = failed.itertuples()
    assert window.attempts == 1 and SIGNATURES["hang"] in window.last_error
    [held] = [record for record in proxy.records if record[0] == "hang"]
    assert "/metadata" in held[2]  # the task's first call to Gordo


def test_an_answer_cut_short_is_transient(postgres_url, gordo_server):
    """Gordo (or a proxy) dropping the connection halfway through the answer is a connection
    error, retried like a reset, not a permanent "bad request"."""
    plan = always("cut", only=r"/anomaly/prediction")
    with pipeline(postgres_url, gordo_server.base_url, plan, backfill="0s") as (proxy, parts, clock):
        blocked, outcome = handle_one_through(proxy, parts, join_s=30)
        assert not blocked
        rows = windows(parts)
        mail = letters(parts)
    assert "cut" in proxy.kinds()
    assert outcome == [State.FAILED], mail.error.tolist()
    assert mail.empty and set(rows.state) == {State.QUEUED, State.FAILED}


def test_a_gordo_that_drips_its_answer_never_blocks_an_executor(postgres_url, gordo_server):
    """Every read gets a byte well within the read timeout (2 s), but the whole answer would
    take hours. The configuration promises a call lasts at most connect_timeout +
    read_timeout (it must fit in executor.task_deadline); here that is 4 s."""
    plan = always("drip", only=r"/anomaly/prediction")
    with pipeline(postgres_url, gordo_server.base_url, plan, backfill="0s") as (proxy, parts, clock):
        blocked, outcome = handle_one_through(proxy, parts, join_s=10)
    assert "drip" in proxy.kinds()
    assert not blocked, "a Gordo dripping its answer held the executor for more than 10 s"
    assert outcome == [State.FAILED]


@pytest.mark.parametrize(
    "kind, route, signature",
    [
        ("drip_headers", r"/anomaly/prediction", "Gordo gave no complete answer in time"),
        ("drip_headers", r"/metadata", "Gordo gave no complete answer in time"),
        ("cut_headers", r"/anomaly/prediction", "Gordo's answer broke off in its headers"),
        ("cut_headers", r"/metadata", "Gordo's answer broke off in its headers"),
    ],
)
def test_a_gordo_that_drips_or_cuts_its_headers_is_transient_within_the_call_limit(
    sqlite_url, gordo_server, kind, route, signature
):
    """``200 OK``, then a header byte every 0.3 s (each read well within the read timeout),
    or half a header and a closed connection: the call ends within connect + read timeout
    (4 s here), is transient, and the window is retried, never dead-lettered as permanent."""
    with pipeline(sqlite_url, gordo_server.base_url, always(kind, only=route), backfill="0s") as (proxy, parts, clock):
        started = monotonic()
        blocked, outcome = handle_one_through(proxy, parts, join_s=10)
        took = monotonic() - started
        [failed] = windows(parts).query("state == 'failed'").itertuples()
    assert kind in proxy.kinds() and not blocked and outcome == [State.FAILED]
    assert signature in failed.last_error and failed.attempts == 1
    assert took < 8  # 4 s of call limit, plus the tick and the ledger


def test_a_call_never_outlives_its_task(sqlite_url, gordo_server):
    """A task deadline shorter than one call's limit (a task that spent its time elsewhere):
    the Gordo call is cut when the task's time is up, not when its own limit is."""
    with pipeline(sqlite_url, gordo_server.base_url, always("drip_headers", only=r"/anomaly/prediction"),
                  backfill="0s") as (proxy, parts, clock):
        Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, parts.clock).tick()
        [message] = parts.queue.receive(1, timedelta(0))
        task = Task.from_json(message.body)
        started = monotonic()
        with calls.task_deadline(1.5), pytest.raises(calls.CallTimedOut):
            Executor.from_components(parts)._process(task)
        assert monotonic() - started < 3.5  # 1.5 s of task left, not the call's 4 s
        with calls.task_deadline(0), pytest.raises(calls.CallTimedOut, match="task's deadline has passed"):
            parts.model_info.models("demo")


def test_a_replan_while_revisions_fail_is_a_counted_attempt_with_backoff_and_its_error(sqlite_url, gordo_server):
    """A task at a revision Gordo no longer has (410) while /revisions answers 503: each try
    is a failed attempt with its backoff, and the dead letter, if it comes to that, says
    why; when /revisions answers again, the task is re-planned at the latest revision."""
    with pipeline(sqlite_url, gordo_server.base_url, always("error_503", only=r"/revisions"), backfill="0s",
                  max_attempts=2) as (proxy, parts, clock):
        window_start = NOW.replace(minute=0) - INTERVAL
        stale = Task(project="demo", model="pump-1", revision="1000", start=window_start, end=window_start + INTERVAL)
        parts.ledger.plan([PlannedWindow("demo", "pump-1", "1000", stale.window)])
        parts.queue.publish([stale.to_json()])
        executor = Executor.from_components(parts)
        [message] = parts.queue.receive(1, timedelta(0))
        assert executor.handle(message) == State.FAILED
        [row] = windows(parts).itertuples()
        assert row.attempts == 1 and "Gordo answered 503" in row.last_error
        assert parts.queue.receive(1, timedelta(0)) == []  # held back by its backoff
        clock.advance(timedelta(seconds=1))
        [message] = parts.queue.receive(1, timedelta(0))
        assert executor.handle(message) == State.DEAD
        [letter] = letters(parts).itertuples()
        assert letter.reason == "exhausted" and "Gordo answered 503" in letter.error

        # the same, with /revisions answering: re-planned, then predicted at the latest
        proxy.plan = always("pass")
        again = Task(project="demo", model="pump-1", revision="1000", start=window_start - INTERVAL, end=window_start)
        parts.ledger.plan([PlannedWindow("demo", "pump-1", "1000", again.window)])
        parts.queue.publish([again.to_json()])
        [message] = parts.queue.receive(1, timedelta(0))
        assert executor.handle(message) == State.QUEUED
        executor.run(threading.Event(), until_idle=True)
        states = windows(parts).set_index("start").state
        assert states[pd.Timestamp(again.start)] == State.DONE
