"""Running Latigo's long-lived processes: one scheduler or executor in this process, or the
whole service (``latigo run``) as child processes of this one.

Each role is its own OS process so the executors use every core (pandas and parquet hold
the GIL) and a crash in one never takes the others down; ``latigo run`` restarts a child
that dies. On SIGTERM or SIGINT every process stops taking work and exits cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import monotonic

from latigo import db, metrics
from latigo.components import Components, build
from latigo.config import Config
from latigo.executor import Executor
from latigo.leader import end_stuck_transactions, leadership_for
from latigo.scheduler import Scheduler, TickReport

log = logging.getLogger(__name__)

# longest a waiting main thread goes without running signal handlers, seconds
SIGNAL_CHECK_S = 0.25
# the variable that gives each child of `latigo run` its own metrics port
METRICS_PORT_VARIABLE = "LATIGO_METRICS__PORT"
# seconds a child gets to exit after SIGTERM before it is killed
CHILD_GRACE_S = 45.0
# a child that ran this long before it died is restarted at once; sooner, with backoff
MIN_CHILD_LIFETIME_S = 5.0
# the first and the longest wait before a child that died young is started again
RESTART_FIRST_S, RESTART_MAX_S = 1.0, 60.0
# children that die young this many times in a row make `latigo run` give up (exit 1)
MAX_QUICK_DEATHS = 10
# the first and the longest wait between two tries of a database that does not answer
DATABASE_RETRY_FIRST_S, DATABASE_RETRY_MAX_S = 1.0, 30.0


class StopEvent(threading.Event):
    """Set on SIGTERM or SIGINT. Its ``wait`` wakes at least every SIGNAL_CHECK_S: the kernel
    may deliver a signal to one of the threads numpy or pyarrow start, and then nothing
    interrupts the main thread's wait; Python runs the handler only when the main thread
    next runs bytecode."""

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            remaining = SIGNAL_CHECK_S if deadline is None else min(SIGNAL_CHECK_S, deadline - monotonic())
            if remaining <= 0:
                return self.is_set()
            if super().wait(remaining):
                return True


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT, for loops that wait on it."""
    stop = StopEvent()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _stop(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for sig in previous:
        signal.signal(sig, _stop)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def components_when_ready(config: Config, stop: threading.Event) -> Components | None:
    """The process's parts once the Latigo database answers (and is migrated); until then a
    line per try, with capped exponential backoff, and /readyz false. None if ``stop`` is
    set first. A process started during a database outage waits for it to end."""
    wait = DATABASE_RETRY_FIRST_S
    while not stop.is_set():
        try:
            return build(config)
        except db.UNREACHABLE as error:
            metrics.HEALTH.ready = False
            metrics.HEALTH.beat()
            log.warning(
                "the Latigo database is unavailable, trying again in %.0fs: %s",
                wait,
                db.first_line(error) or error.__class__.__name__,
            )
            stop.wait(wait)
            wait = min(DATABASE_RETRY_MAX_S, wait * 2)
    return None


def run_scheduler(parts: Components, *, once: bool = False) -> int:
    """Schedule until stopped; with ``once``, one tick, and 1 if a project could not be
    discovered (0 otherwise)."""
    # PostgreSQL ends a session of ours left idle inside a transaction (this process stopped
    # mid-transaction) after one lease, so its locks cannot hold a standby up for longer
    end_stuck_transactions(parts.engine, parts.config.schedule.leader_ttl)
    leadership = leadership_for(parts.engine, parts.config.schedule.leader_ttl, parts.clock)
    scheduler = Scheduler(
        parts.config, parts.model_info, parts.ledger, parts.queue, parts.clock, leadership, parts.predictions
    )
    if once:
        try:
            report = scheduler.tick()
        finally:
            leadership.release()
        for project, error in report.failed_projects.items():
            log.error("project %s failed: %s", project, error)
        return 1 if report.failed_projects else 0
    metrics.serve(parts.config.metrics.host, parts.config.metrics.port)

    def observe(report: TickReport) -> None:
        """The leader measures what the whole service is doing: queue, dead letters, lags."""
        if not report.leader:
            return
        metrics.QUEUE_DEPTH.set(parts.queue.depth())
        metrics.observe_ledger(parts.engine, report.now, report.now - parts.config.schedule.catch_up)

    with stop_on_signals() as stop:
        scheduler.run(stop, after_tick=observe)
    return 0


def run_executor(parts: Components, *, max_tasks: int | None = None, until_idle: bool = False) -> int:
    executor = Executor.from_components(parts)
    metrics.serve(parts.config.metrics.host, parts.config.metrics.port)

    def wake_receive() -> None:
        """Wakes a receive() that is waiting; tasks in hand still acknowledge; parts.close() closes the queue."""
        stop.wait()
        parts.queue.stop_receiving()

    with stop_on_signals() as stop:
        threading.Thread(target=wake_receive, daemon=True).start()
        handled = executor.run(stop, max_tasks=max_tasks, until_idle=until_idle)
    if executor.unfinished:
        # their threads cannot be interrupted; leave them, their leases will run out and the
        # tasks be delivered again (nothing was acknowledged, storage is idempotent)
        log.warning("%d tasks still running after the grace period; exiting without them", executor.unfinished)
        logging.shutdown()
        os._exit(0)
    return handled


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    started: float = field(default=0.0)
    # deaths in a row, each sooner than MIN_CHILD_LIFETIME_S after its start
    quick_deaths: int = 0
    # when a child that died young is started again (monotonic)
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env={**os.environ, **self.env})
        self.started = monotonic()
        self.restart_at = None
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def died(self, code: int) -> None:
        """Plan the restart: at once after a long life, with backoff after a short one (the
        database may be down, a port taken), as supervisord does."""
        self.process = None
        self.quick_deaths = self.quick_deaths + 1 if monotonic() - self.started < MIN_CHILD_LIFETIME_S else 0
        delay = 0.0 if not self.quick_deaths else min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** (self.quick_deaths - 1))
        self.restart_at = monotonic() + delay
        log.error("%s exited with %d; starting it again in %.0fs", self.name, code, delay)


def run_service(
    executors: int,
    metrics_port: int | None = None,
    *,
    base: list[str] | None = None,
    max_quick_deaths: int = MAX_QUICK_DEATHS,
) -> int:
    """The scheduler and ``executors`` executors as children (``base`` plus their role);
    restart any that dies (with backoff when it dies young). Each child serves its metrics
    on its own port, numbered up from ``metrics_port``. 0 when stopped by a signal, 1 when a
    child died at start ``max_quick_deaths`` times in a row."""
    base = base or [sys.executable, "-m", "latigo"]
    roles = [("scheduler", "scheduler")] + [(f"executor-{number}", "executor") for number in range(1, executors + 1)]
    children = [
        Child(name, [*base, role], {} if not metrics_port else {METRICS_PORT_VARIABLE: str(metrics_port + offset)})
        for offset, (name, role) in enumerate(roles)
    ]
    gave_up = False
    with stop_on_signals() as stop:
        for child in children:
            child.start()
        while not stop.wait(SIGNAL_CHECK_S):
            for child in children:
                if child.process is not None:
                    code = child.process.poll()
                    if code is not None:
                        child.died(code)
                if child.quick_deaths >= max_quick_deaths:
                    log.error("%s died at start %d times in a row: giving up", child.name, child.quick_deaths)
                    gave_up = True
                    stop.set()
                    break
                if child.process is None and child.restart_at is not None and monotonic() >= child.restart_at:
                    child.start()
    code = _stop_children(children)
    return 1 if gave_up else code


def _stop_children(children: list[Child]) -> int:
    for child in children:
        if child.process is not None and child.process.poll() is None:
            child.process.terminate()
    worst = 0
    for child in children:
        if child.process is None:
            continue
        try:
            code = child.process.wait(timeout=CHILD_GRACE_S)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in %.0fs, killing it", child.name, CHILD_GRACE_S)
            child.process.kill()
            code = child.process.wait()
        # a child that had not yet installed its handler dies of our SIGTERM: a clean stop too
        worst = worst or (0 if code == -signal.SIGTERM else code)
    return worst
