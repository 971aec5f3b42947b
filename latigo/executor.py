"""The executor: receive a task, fetch its sensor data, ask Gordo, store the answer, record
the outcome in the ledger, and only then acknowledge the message.

Acknowledging last is what makes the executor safe to kill at any instruction: an
unacknowledged message is delivered again, and idempotent storage makes the second run
harmless. All retry and dead-letter policy is here, by error class, so every queue backend
and every provider behaves the same.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import timedelta
from time import monotonic
from typing import TYPE_CHECKING, Self

import pandas as pd
from sqlalchemy import Engine

from latigo import calls, db, frames, logs, runs
from latigo.config import ExecutorConfig, GordoConfig, ScheduleConfig
from latigo.errors import MalformedTask, PermanentError, RevisionGone, TransientError
from latigo.ledger import Ledger, Outcome, State
from latigo.metrics import HEALTH, STAGE_SECONDS, TASK_FAILURES, TASKS_HANDLED
from latigo.outages import DATABASE, GORDO, PREDICTION_STORE, SENSOR_STORE, Outages, recorder
from latigo.providers.models import ModelExecutionProvider, ModelInformationProvider, ModelMetadata
from latigo.providers.predictions import PredictionStorageProvider
from latigo.providers.sensors import SensorDataProvider
from latigo.queues import Message, TaskQueue
from latigo.retry import backoff
from latigo.task import Task, TaskRules
from latigo.window import Grid, Window

if TYPE_CHECKING:
    from latigo.components import Components

log = logging.getLogger(__name__)

# how long one receive call waits for work before the loop checks for shutdown again
RECEIVE_WAIT = timedelta(seconds=1)
# when a task put back during an outage becomes available again (the executors are paused
# meanwhile; a short delay keeps the put-back tasks from circling)
RELEASE_IN_OUTAGE = timedelta(seconds=1)
# the first and the longest wait after a failed receive (the queue or its database is down)
RECEIVE_RETRY_FIRST_S, RECEIVE_RETRY_MAX_S = 1.0, 30.0


class DeadlineExceeded(TransientError):
    """The task ran past ``executor.task_deadline``."""


def dependency_outages(
    engine: Engine,
    sensors: SensorDataProvider,
    predictions: PredictionStorageProvider,
    model_execution: ModelExecutionProvider,
) -> Outages:
    """The outage watch of an executor in this process: a probe per dependency, and each
    outage recorded in the database under this process's name (for ``latigo status``)."""
    return Outages(
        {
            DATABASE: lambda: db.probe(engine),
            SENSOR_STORE: sensors.probe,
            PREDICTION_STORE: predictions.probe,
            GORDO: model_execution.probe,
        },
        recorder(engine, f"{socket.gethostname()}:{os.getpid()}"),
    )


class Executor:
    def __init__(
        self,
        *,
        queue: TaskQueue,
        ledger: Ledger,
        model_info: ModelInformationProvider,
        model_execution: ModelExecutionProvider,
        sensors: SensorDataProvider,
        predictions: PredictionStorageProvider,
        settings: ExecutorConfig,
        schedule: ScheduleConfig,
        models: GordoConfig,
        outages: Outages,
    ) -> None:
        """Every part by name, as the scheduler takes them: ``settings`` is the executor
        section; ``schedule`` gives the window grid and longest task, ``models`` the
        projects and data margin; ``outages`` probes the dependencies (see
        ``dependency_outages``)."""
        self._queue = queue
        self._ledger = ledger
        self._model_info = model_info
        self._model_execution = model_execution
        self._sensors = sensors
        self._predictions = predictions
        self._settings = settings
        self._margin = models.data_margin
        self._grace = settings.shutdown_grace
        self._grid = Grid(schedule.interval, schedule.anchor)
        self._outages = outages
        self._rules = TaskRules(
            self._grid, schedule.max_task_span, frozenset(models.projects), int(settings.max_message_size)
        )
        self.handled = 0
        # tasks still running when the grace period ended
        self.unfinished = 0

    @classmethod
    def from_components(cls, parts: Components, outages: Outages | None = None) -> Self:
        """The executor of a process's parts, watching their dependencies unless ``outages`` is given."""
        return cls(
            queue=parts.queue,
            ledger=parts.ledger,
            model_info=parts.model_info,
            model_execution=parts.model_execution,
            sensors=parts.sensors,
            predictions=parts.predictions,
            settings=parts.config.executor,
            schedule=parts.config.schedule,
            models=parts.config.models,
            outages=outages
            or dependency_outages(parts.engine, parts.sensors, parts.predictions, parts.model_execution),
        )

    # -- one task ----------------------------------------------------------------------

    def process(self, task: Task) -> list[Outcome]:
        """Predict one task, replace what is stored for its span, and return each window's
        outcome.

        The model input is cut into contiguous runs (``latigo.runs``) and each run worth it is
        one Gordo call, so no call spans a data gap; windows get their rows from whichever
        runs cover them, and a window with none is ``no_data`` with the reason, however many
        windows the task holds."""
        with calls.task_deadline(self._settings.task_deadline.total_seconds()):  # no call outlives the task
            return self._process(task)

    def _process(self, task: Task) -> list[Outcome]:
        deadline = monotonic() + self._settings.task_deadline.total_seconds()

        def check(stage: str) -> None:
            if monotonic() > deadline:
                raise DeadlineExceeded(f"task deadline ({self._settings.task_deadline}) exceeded after {stage}")

        with STAGE_SECONDS.labels("metadata").time():
            metadata = self._model_info.metadata(task.project, task.model, task.revision)
        with STAGE_SECONDS.labels("fetch").time():
            raw = self._sensors.data(
                frames.needed_tags(metadata),
                frames.data_start(task.start, metadata, self._margin),
                frames.data_end(task.end, metadata),
            )
        check("fetching sensor data")
        windows = list(self._grid.windows(task.start, task.end))
        tags = frames.needed_tags(metadata)
        missing = frames.missing_per_window(raw, tags, windows)
        partly = [(window, gone) for window, gone in zip(windows, missing) if gone and len(gone) < len(tags)]
        if partly and self._settings.missing_tags != "no_data":
            window, gone = partly[0]
            note = f"no data for tags {', '.join(gone)} in {window}"
            if self._settings.missing_tags == "retry":  # the data may arrive late
                raise TransientError(note)
            raise PermanentError(note)
        complete = not raw.empty and not frames.missing_tags(raw, metadata)
        X = frames.to_model_input(raw, metadata) if complete else frames.empty_frame()
        times = frames.epoch_ns(X.index)
        step = frames.step_ns(metadata.resolution)
        planned = runs.plan(times, step, metadata.lookback, task.window)
        answers = []
        for run in planned.calls:
            rows = X.iloc[run]
            with STAGE_SECONDS.labels("gordo").time():
                answer = self._model_execution.predict(metadata, rows, frames.to_model_target(rows, metadata))
            check("a Gordo call")
            first = runs.predicted(times, run, metadata.lookback)
            answers.append(frames.inside(answer, Window(max(task.start, frames.utc_of(first)), task.end)))
        predictions = (answers[0] if len(answers) == 1 else pd.concat(answers)) if answers else frames.empty_frame()
        with STAGE_SECONDS.labels("store").time():
            self._predictions.store(task.project, task.model, task.revision, task.window, predictions)
        accounted = runs.account(windows, step, times, frames.epoch_ns(predictions.index), metadata.lookback)
        return [self._outcome(rows, gone, len(tags), metadata) for rows, gone in zip(accounted, missing)]

    @staticmethod
    def _outcome(rows: runs.WindowRows, missing: list[str], tags: int, metadata: ModelMetadata) -> Outcome:
        """A window's ledger outcome: done with any rows stored (its note says what is
        missing), no_data without, the reason named, all from the window's own data."""
        note = rows.note
        count = f"{rows.stored} of {rows.expected} rows"
        if rows.expected == 0:
            note = f"{count}: the model's resolution ({metadata.resolution}) puts no row in the window"
        elif len(missing) == tags:
            note = f"{count}: no sensor data in the window"
        elif missing:
            note = f"{count}: no data for tags {', '.join(missing)} in the window"
        state = State.NO_DATA if rows.empty else State.DONE
        return Outcome(rows.window, state, note, rows.stored, rows.expected)

    def handle(self, message: Message) -> State:
        """Process one message to its end: acknowledged, dead-lettered, or released for a retry."""
        state = self._handle(message)
        TASKS_HANDLED.labels(state.value).inc()
        return state

    def _handle(self, message: Message) -> State:
        try:
            task = self._rules.parse(message.body)
        except MalformedTask as error:
            log.error("dead-lettering a malformed message: %s", error)
            self._ledger.dead_letter(self._rules.kept(message.body), "malformed", str(error), message.deliveries)
            self._queue.ack(message)
            return State.DEAD
        with logs.task_context(
            task_id=str(task.id),
            project=task.project,
            model=task.model,
            window_start=task.start.isoformat(),
            window_end=task.end.isoformat(),
            revision=task.revision,
        ):
            return self._run(message, task)

    def _run(self, message: Message, task: Task) -> State:
        if message.deliveries > self._settings.max_deliveries:
            # every earlier delivery ended without an outcome: the task kills its executor
            # (out of memory, a crash in a native library); stop it before it kills more
            error = f"delivered {message.deliveries} times without an outcome: does it crash its executor?"
            log.error("task %s %s %s: %s", task.id, task.key, task.window, error)
            self._ledger.dead_letter(message.body, "poison", error, message.deliveries, task)
            self._queue.ack(message)
            return State.DEAD
        started = monotonic()
        try:
            outcomes = self.process(task)
        except RevisionGone as error:
            return self._replan(message, task, error)
        except PermanentError as error:
            TASK_FAILURES.labels(error.__class__.__name__).inc()
            log.error("task %s %s %s failed permanently: %s", task.id, task.key, task.window, error)
            self._ledger.dead_letter(message.body, "permanent", str(error), message.deliveries, task)
            self._queue.ack(message)
            return State.DEAD
        except Exception as error:  # transient, or a bug: retried a bounded number of times
            if not isinstance(error, TransientError):
                log.exception("task %s %s: unexpected error", task.id, task.key)
            return self._retry_or_give_up(message, task, error)
        self._ledger.record(task, outcomes)
        self._queue.ack(message)
        states = Counter(outcome.state.value for outcome in outcomes)
        partial = sum(1 for o in outcomes if o.state == State.DONE and o.stored_rows != o.expected_rows)
        log.info(
            "task %s %s %s: %s%s in %.2fs",
            task.id,
            task.key,
            task.window,
            ", ".join(f"{count} {state}" for state, count in sorted(states.items())),
            f" ({partial} partial)" if partial else "",
            monotonic() - started,
        )
        return State.DONE if states[State.DONE.value] else State.NO_DATA

    def _retry_or_give_up(self, message: Message, task: Task, error: Exception) -> State:
        reason = f"{error.__class__.__name__}: {error}"
        dependency = self._outages.confirm(error)
        if dependency is not None:
            # the dependency is down for everyone: not this task's attempt; back to the queue
            log.warning("task %s %s %s put back, %s is down: %s", task.id, task.key, task.window, dependency, reason)
            self._queue.release(message, RELEASE_IN_OUTAGE)
            return State.QUEUED
        TASK_FAILURES.labels(error.__class__.__name__).inc()
        # the ledger counts failed attempts, whatever the queue; for a task whose windows
        # were never planned (published by hand) the queue's delivery count stands in. An
        # executor killed mid-task is no failed attempt: only recorded failures count.
        attempts = self._ledger.fail(task, reason) or message.deliveries
        if attempts >= self._settings.max_attempts:
            log.error("task %s %s %s gave up after %d attempts: %s", task.id, task.key, task.window, attempts, reason)
            self._ledger.dead_letter(message.body, "exhausted", reason, attempts, task)
            self._queue.ack(message)
            return State.DEAD
        delay = backoff(attempts, self._settings.retry_base, self._settings.retry_max)
        log.warning(
            "task %s %s %s attempt %d failed, retrying in %.1fs: %s",
            task.id,
            task.key,
            task.window,
            attempts,
            delay.total_seconds(),
            reason,
        )
        self._queue.release(message, delay)
        return State.FAILED

    def _replan(self, message: Message, task: Task, error: RevisionGone) -> State:
        try:
            latest = self._model_info.latest_revision(task.project)
        except PermanentError as lookup:
            TASK_FAILURES.labels(lookup.__class__.__name__).inc()
            reason = f"{error}; and the latest revision is unknown: {lookup}"
            self._ledger.dead_letter(message.body, "permanent", reason, message.deliveries, task)
            self._queue.ack(message)
            return State.DEAD
        except Exception as lookup:  # /revisions failing is this task's failed attempt, with its backoff
            return self._retry_or_give_up(message, task, lookup)
        if latest == task.revision:
            self._ledger.dead_letter(
                message.body, "permanent", f"{error} (and it is the latest)", message.deliveries, task
            )
            self._queue.ack(message)
            return State.DEAD
        replanned = task.at_revision(latest)
        log.warning("task %s %s: revision %s is gone, re-planned at %s", task.id, task.key, task.revision, latest)
        self._queue.publish([replanned.to_json()], [replanned.key])
        self._ledger.finish(replanned, State.QUEUED)
        self._queue.ack(message)
        return State.QUEUED

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event, *, max_tasks: int | None = None, until_idle: bool = False) -> int:
        """Work until ``stop`` is set (or ``max_tasks`` are handled, or the queue is empty
        with ``until_idle``), at most ``executor.concurrency`` tasks at once. On stop, take
        no more work and let the tasks in hand finish within the grace period; any that do
        not are delivered again once their lease runs out."""
        concurrency = self._settings.concurrency
        in_flight: set[Future[State]] = set()
        log.info("executor ready: up to %d tasks at once", concurrency)
        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="task")
        receive_retry = RECEIVE_RETRY_FIRST_S
        try:
            while not stop.is_set() and (max_tasks is None or self.handled < max_tasks):
                HEALTH.beat()
                in_flight = self._collect({future for future in in_flight if future.done()}, in_flight)
                if self._outages.paused:
                    # a dependency is down for everyone: take nothing until its probe answers
                    HEALTH.ready = False
                    self._outages.recover(stop)
                    continue
                free = concurrency - len(in_flight)
                if max_tasks is not None:
                    free = min(free, max_tasks - self.handled - len(in_flight))
                if free <= 0:
                    # a bounded wait, so that a stop request is seen while every slot is busy
                    finished = wait(in_flight, timeout=RECEIVE_WAIT.total_seconds(), return_when=FIRST_COMPLETED).done
                    in_flight = self._collect(finished, in_flight)
                    continue
                try:
                    messages = self._queue.receive(free, RECEIVE_WAIT)
                    HEALTH.ready = True
                    receive_retry = RECEIVE_RETRY_FIRST_S
                except Exception as error:  # the queue (or its database) is down: one line a try, backing off
                    HEALTH.ready = False
                    log.warning(
                        "receiving from the queue failed, trying again in %.0fs: %s: %s",
                        receive_retry,
                        error.__class__.__name__,
                        str(error).splitlines()[0][:300] if str(error) else "",
                    )
                    stop.wait(receive_retry)
                    receive_retry = min(RECEIVE_RETRY_MAX_S, receive_retry * 2)
                    continue
                in_flight |= {pool.submit(self.handle, message) for message in messages}
                in_flight = self._collect({future for future in in_flight if future.done()}, in_flight)
                if until_idle and not messages and not in_flight:
                    break
            done, _ = wait(in_flight, timeout=self._grace.total_seconds())
            self.unfinished = len(self._collect(done, in_flight))
        finally:
            # never wait past the grace period: unfinished tasks are delivered again later
            pool.shutdown(wait=False, cancel_futures=True)
        return self.handled

    def _collect(self, done: set[Future[State]], in_flight: set[Future[State]]) -> set[Future[State]]:
        for future in done:
            self.handled += 1
            error = future.exception()
            if error is not None:  # the ledger or queue failed mid-handling: the lease will redeliver
                dependency = self._outages.confirm(error)
                log.error(
                    "handling a task failed, it will be delivered again%s: %s: %s",
                    f" ({dependency} is down)" if dependency else "",
                    error.__class__.__name__,
                    str(error)[:300],
                )
        return in_flight - done
