"""The executor: receive a task, fetch its sensor data, ask Gordo, store the answer, record
the outcome in the ledger, and only then acknowledge the message.

Acknowledging last is what makes the executor safe to kill at any instruction: an
unacknowledged message is delivered again, and idempotent storage makes the second run
harmless. All retry and dead-letter policy is here, by error class, so every queue backend
and every provider behaves the same.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import timedelta
from time import monotonic

from latigo import frames, logs
from latigo.components import Components
from latigo.errors import MalformedTask, PermanentError, RevisionGone, TransientError
from latigo.ledger import State
from latigo.metrics import HEALTH, STAGE_SECONDS, TASK_FAILURES, TASKS_HANDLED
from latigo.queues import Message
from latigo.retry import backoff
from latigo.task import Task

log = logging.getLogger(__name__)

# how long one receive call waits for work before the loop checks for shutdown again
RECEIVE_WAIT = timedelta(seconds=1)


class DeadlineExceeded(TransientError):
    """The task ran past ``executor.task_deadline``."""


class Executor:
    def __init__(self, parts: Components) -> None:
        self._parts = parts
        self._settings = parts.config.executor
        self._margin = parts.config.models.data_margin
        self._grace = parts.config.executor.shutdown_grace
        self.handled = 0
        # tasks still running when the grace period ended
        self.unfinished = 0

    # -- one task ----------------------------------------------------------------------

    def process(self, task: Task) -> tuple[State, str | None]:
        """Predict one task and store the result; return the windows' state and a note."""
        parts = self._parts
        deadline = monotonic() + self._settings.task_deadline.total_seconds()

        def check(stage: str) -> None:
            if monotonic() > deadline:
                raise DeadlineExceeded(f"task deadline ({self._settings.task_deadline}) exceeded after {stage}")

        with STAGE_SECONDS.labels("metadata").time():
            metadata = parts.model_info.metadata(task.project, task.model, task.revision)
        with STAGE_SECONDS.labels("fetch").time():
            raw = parts.sensors.data(
                frames.needed_tags(metadata), frames.data_start(task.start, metadata, self._margin), task.end
            )
        check("fetching sensor data")
        if raw.empty:
            return State.NO_DATA, f"no sensor data in {task.window}"
        missing = frames.missing_tags(raw, metadata)
        if missing:
            note = f"no data for tags {', '.join(missing)} in {task.window}"
            if self._settings.missing_tags == "retry":  # the data may arrive late
                raise TransientError(note)
            if self._settings.missing_tags == "dead":
                raise PermanentError(note)
            return State.NO_DATA, note
        X = frames.to_model_input(raw, metadata)
        if not frames.any_inside(X, task.window):
            return State.NO_DATA, f"no complete rows in {task.window}"
        with STAGE_SECONDS.labels("gordo").time():
            answer = parts.model_execution.predict(metadata, X, frames.to_model_target(X, metadata))
        check("the Gordo call")
        answer = frames.inside(answer, task.window)
        if answer.empty:
            return State.NO_DATA, f"Gordo answered no rows inside {task.window}"
        with STAGE_SECONDS.labels("store").time():
            parts.predictions.store(task.project, task.model, task.revision, answer)
        return State.DONE, None

    def handle(self, message: Message) -> State:
        """Process one message to its end: acknowledged, dead-lettered, or released for a retry."""
        state = self._handle(message)
        TASKS_HANDLED.labels(state.value).inc()
        return state

    def _handle(self, message: Message) -> State:
        parts = self._parts
        try:
            task = Task.from_json(message.body)
        except MalformedTask as error:
            log.error("dead-lettering a malformed message: %s", error)
            parts.ledger.dead_letter(message.body, "malformed", str(error), message.deliveries)
            parts.queue.ack(message)
            return State.DEAD
        with logs.task_context(
            task_id=str(task.id), project=task.project, model=task.model, window_start=task.start.isoformat(),
            window_end=task.end.isoformat(), revision=task.revision,
        ):
            return self._run(message, task)

    def _run(self, message: Message, task: Task) -> State:
        parts = self._parts
        if message.deliveries > self._settings.max_deliveries:
            # every earlier delivery ended without an outcome: the task kills its executor
            # (out of memory, a crash in a native library); stop it before it kills more
            error = f"delivered {message.deliveries} times without an outcome: does it crash its executor?"
            log.error("task %s %s %s: %s", task.id, task.key, task.window, error)
            parts.ledger.dead_letter(message.body, "poison", error, message.deliveries, task)
            parts.queue.ack(message)
            return State.DEAD
        started = monotonic()
        try:
            state, note = self.process(task)
        except RevisionGone as error:
            return self._replan(message, task, error)
        except PermanentError as error:
            TASK_FAILURES.labels(error.__class__.__name__).inc()
            log.error("task %s %s %s failed permanently: %s", task.id, task.key, task.window, error)
            parts.ledger.dead_letter(message.body, "permanent", str(error), message.deliveries, task)
            parts.queue.ack(message)
            return State.DEAD
        except Exception as error:  # transient, or a bug: retried a bounded number of times
            if not isinstance(error, TransientError):
                log.exception("task %s %s: unexpected error", task.id, task.key)
            return self._retry_or_give_up(message, task, error)
        parts.ledger.finish(task, state, note)
        parts.queue.ack(message)
        log.info(
            "task %s %s %s %s in %.2fs%s",
            task.id, task.key, task.window, state.value, monotonic() - started, f" ({note})" if note else "",
        )
        return state

    def _retry_or_give_up(self, message: Message, task: Task, error: Exception) -> State:
        parts = self._parts
        reason = f"{error.__class__.__name__}: {error}"
        TASK_FAILURES.labels(error.__class__.__name__).inc()
        # the ledger counts failed attempts, whatever the queue; for a task whose windows
        # were never planned (published by hand) the queue's delivery count stands in. An
        # executor killed mid-task is no failed attempt: only recorded failures count.
        attempts = parts.ledger.fail(task, reason) or max(message.deliveries, task.attempt)
        if attempts >= self._settings.max_attempts:
            log.error("task %s %s %s gave up after %d attempts: %s", task.id, task.key, task.window, attempts, reason)
            parts.ledger.dead_letter(message.body, "exhausted", reason, attempts, task)
            parts.queue.ack(message)
            return State.DEAD
        delay = backoff(attempts, self._settings.retry_base, self._settings.retry_max)
        log.warning(
            "task %s %s %s attempt %d failed, retrying in %.1fs: %s",
            task.id, task.key, task.window, attempts, delay.total_seconds(), reason,
        )
        parts.queue.release(message, delay)
        return State.FAILED

    def _replan(self, message: Message, task: Task, error: RevisionGone) -> State:
        parts = self._parts
        latest = parts.model_info.latest_revision(task.project)
        if latest == task.revision:
            parts.ledger.dead_letter(message.body, "permanent", f"{error} (and it is the latest)", message.deliveries, task)
            parts.queue.ack(message)
            return State.DEAD
        replanned = task.at_revision(latest)
        log.warning("task %s %s: revision %s is gone, re-planned at %s", task.id, task.key, task.revision, latest)
        parts.queue.publish([replanned.to_json()], [replanned.key])
        parts.ledger.finish(replanned, State.QUEUED)
        parts.queue.ack(message)
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
        try:
            while not stop.is_set() and (max_tasks is None or self.handled < max_tasks):
                HEALTH.beat()
                free = concurrency - len(in_flight)
                if max_tasks is not None:
                    free = min(free, max_tasks - self.handled - len(in_flight))
                if free <= 0:
                    # a bounded wait, so that a stop request is seen while every slot is busy
                    finished = wait(in_flight, timeout=RECEIVE_WAIT.total_seconds(), return_when=FIRST_COMPLETED).done
                    in_flight = self._collect(finished, in_flight)
                    continue
                try:
                    messages = self._parts.queue.receive(free, RECEIVE_WAIT)
                    HEALTH.ready = True
                except Exception:
                    HEALTH.ready = False
                    log.exception("receiving from the queue failed; trying again")
                    stop.wait(RECEIVE_WAIT.total_seconds())
                    in_flight = self._collect({future for future in in_flight if future.done()}, in_flight)
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
                log.error("handling a task failed, it will be delivered again: %r", error)
        return in_flight - done
