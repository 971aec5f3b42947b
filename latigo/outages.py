"""Outages are the dependency's, not the task's: the one place that decides whether a
failure belongs to a task or to a dependency that is down for everyone.

A task that fails because the prediction store, the sensor store, the Latigo database or
Gordo as a whole is down did nothing wrong: counting the failure against it would spend its
retries during the outage and dead-letter every window of a busy hour. So when a task fails
with an error that names a dependency (:class:`latigo.errors.Unavailable`, or a database
error), the dependency is probed at once. If the probe fails too, the executor pauses: the
task goes back to the queue without an attempt counted, no new task is taken, and the
dependency is probed with capped exponential backoff until it answers; then work resumes by
itself. If the probe succeeds, the failure was the task's own and counts as usual.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, insert

from latigo.db import DATABASE_ERRORS
from latigo.errors import Unavailable, caught
from latigo.metrics import DEPENDENCY_UP, PAUSED
from latigo.schema import dependency_outages

log = logging.getLogger(__name__)

# the dependencies an executor pauses for
DATABASE = "database"
SENSOR_STORE = "sensor store"
PREDICTION_STORE = "prediction store"
GORDO = "gordo"
DEPENDENCIES = (DATABASE, SENSOR_STORE, PREDICTION_STORE, GORDO)
# the first wait between two probes of a dependency that is down, seconds; it doubles
PROBE_FIRST_S = 1.0
# the longest wait between two probes, seconds: how late work resumes after an outage at most
PROBE_MAX_S = 30.0

# longest error kept with an outage
ERROR_QUOTE = 1_000

Probe = Callable[[], None]
Report = Callable[[str, datetime, "str | None"], None]


def dependency_of(error: BaseException) -> str | None:
    """The dependency an error may mean is down, or None for an error of the task's own."""
    if isinstance(error, Unavailable):
        return error.dependency
    if caught(DATABASE_ERRORS, error) is not None:  # raised by the ledger or the queue, untranslated
        return DATABASE
    return None


class Outages:
    """The dependencies an executor found down, and the probes that tell when they are back.

    ``probes`` maps a dependency to a call that raises when it cannot be reached now;
    ``report`` (optional) is told ``(dependency, since, error)`` at each pause and each failed
    probe, and ``(dependency, since, None)`` when it answers again, for the status page."""

    def __init__(
        self,
        probes: Mapping[str, Probe],
        report: Report | None = None,
        *,
        first_wait: float = PROBE_FIRST_S,
        max_wait: float = PROBE_MAX_S,
    ) -> None:
        self._probes = dict(probes)
        self._report = report
        self._first_wait = first_wait
        self._max_wait = max_wait
        self._lock = threading.Lock()
        # dependency -> (since, the error that paused, the next wait between probes)
        self._down: dict[str, tuple[datetime, str, float]] = {}
        for dependency in self._probes:
            DEPENDENCY_UP.labels(dependency).set(1)

    @property
    def paused(self) -> dict[str, tuple[datetime, str]]:
        """The dependencies down now: since when, and why."""
        with self._lock:
            return {dependency: (since, error) for dependency, (since, error, _) in self._down.items()}

    def confirm(self, error: BaseException) -> str | None:
        """The dependency that is down, if ``error`` came from one and its probe fails too
        (the executor then pauses); None when the error is the task's own."""
        dependency = dependency_of(error)
        if dependency is None or dependency not in self._probes:
            return None
        with self._lock:
            if dependency in self._down:
                return dependency
        if self._up(dependency):
            return None
        self._pause(dependency, f"{error.__class__.__name__}: {error}")
        return dependency

    def recover(self, stop: threading.Event) -> bool:
        """Probe every dependency that is down once, resume those that answer, and wait for
        the next probe (capped exponential backoff, or until ``stop``) if some are still
        down. True when none is down any more: work resumes."""
        with self._lock:
            down = dict(self._down)
        for dependency, (since, error, wait) in down.items():
            if self._up(dependency):
                self._resume(dependency, since)
            else:
                with self._lock:
                    if dependency in self._down:
                        self._down[dependency] = (since, error, min(self._max_wait, wait * 2))
                self._tell(dependency, since, error)
        with self._lock:
            waits = [wait for _, _, wait in self._down.values()]
        if not waits:
            return True
        stop.wait(min(waits))
        return False

    def _up(self, dependency: str) -> bool:
        try:
            self._probes[dependency]()
        except Exception as error:  # whatever the probe raises means: not reachable now
            log.warning("%s is down: %s: %s", dependency, error.__class__.__name__, str(error)[:200])
            DEPENDENCY_UP.labels(dependency).set(0)
            return False
        DEPENDENCY_UP.labels(dependency).set(1)
        return True

    def _pause(self, dependency: str, error: str) -> None:
        since = datetime.now(UTC)
        with self._lock:
            if dependency in self._down:
                return
            self._down[dependency] = (since, error, self._first_wait)
            PAUSED.set(len(self._down))
        log.error("%s is down: no new tasks until it answers again (%s)", dependency, error[:300])
        self._tell(dependency, since, error)

    def _resume(self, dependency: str, since: datetime) -> None:
        with self._lock:
            self._down.pop(dependency, None)
            PAUSED.set(len(self._down))
        log.warning("%s answers again after %.0fs: resuming", dependency, (datetime.now(UTC) - since).total_seconds())
        self._tell(dependency, since, None)

    def _tell(self, dependency: str, since: datetime, error: str | None) -> None:
        if self._report is None:
            return
        try:
            self._report(dependency, since, error)
        except Exception as failure:  # the status page is told when it can be; work goes on
            log.warning(
                "could not record that %s is %s: %s", dependency, "down" if error else "up", failure.__class__.__name__
            )


def recorder(engine: Engine, executor: str) -> Report:
    """A report that keeps an executor's outages in the ``dependency_outages`` table (when
    the database answers: during its own outage nothing can be written)."""

    def report(dependency: str, since: datetime, error: str | None) -> None:
        mine = (dependency_outages.c.executor == executor) & (dependency_outages.c.dependency == dependency)
        with engine.begin() as connection:
            connection.execute(delete(dependency_outages).where(mine))
            if error is not None:
                connection.execute(
                    insert(dependency_outages).values(
                        executor=executor,
                        dependency=dependency,
                        since=since,
                        checked_at=datetime.now(UTC),
                        error=error[:ERROR_QUOTE],
                    )
                )

    return report
