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
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import monotonic
from typing import Iterator

from latigo import metrics, status
from latigo.components import Components
from latigo.executor import Executor
from latigo.leader import leadership_for
from latigo.scheduler import Scheduler, TickReport

log = logging.getLogger(__name__)

# longest a waiting main thread goes without running signal handlers, seconds
SIGNAL_CHECK_S = 0.25
# the variable that gives each child of `latigo run` its own metrics port
METRICS_PORT_VARIABLE = "LATIGO_METRICS__PORT"
# seconds a child gets to exit after SIGTERM before it is killed
CHILD_GRACE_S = 45.0
# a child that dies sooner than this after starting is not restarted in a tight loop
MIN_CHILD_LIFETIME_S = 5.0


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


def run_scheduler(parts: Components, *, once: bool = False) -> None:
    leadership = leadership_for(parts.engine, parts.config.schedule.leader_ttl, parts.clock)
    scheduler = Scheduler(parts.config, parts.model_info, parts.ledger, parts.queue, parts.clock, leadership)
    if once:
        try:
            scheduler.tick()
        finally:
            leadership.release()
        return
    metrics.serve(parts.config.metrics.host, parts.config.metrics.port)

    def observe(report: TickReport) -> None:
        """The leader measures what the whole service is doing: queue, dead letters, lags."""
        if not report.leader:
            return
        metrics.QUEUE_DEPTH.set(parts.queue.depth())
        metrics.DEAD_LETTERS.set(status.dead_letter_count(parts.engine))
        metrics.observe_lags(status.lags(parts.engine, report.now, report.now - parts.config.schedule.catch_up))

    with stop_on_signals() as stop:
        scheduler.run(stop, after_tick=observe)


def run_executor(parts: Components, *, max_tasks: int | None = None, until_idle: bool = False) -> int:
    executor = Executor(parts)
    metrics.serve(parts.config.metrics.host, parts.config.metrics.port)
    with stop_on_signals() as stop:
        # wakes a receive() that is waiting; tasks in hand still acknowledge; parts.close() closes the queue
        threading.Thread(target=lambda: (stop.wait(), parts.queue.stop_receiving()), daemon=True).start()
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

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env={**os.environ, **self.env})
        self.started = monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)


def run_service(executors: int, metrics_port: int | None = None) -> int:
    """The scheduler and ``executors`` executors as children; restart any that dies. Each
    child serves its metrics on its own port, numbered up from ``metrics_port``."""
    base = [sys.executable, "-m", "latigo"]
    roles = [("scheduler", "scheduler")] + [(f"executor-{number}", "executor") for number in range(1, executors + 1)]
    children = [
        Child(name, [*base, role], {} if not metrics_port else {METRICS_PORT_VARIABLE: str(metrics_port + offset)})
        for offset, (name, role) in enumerate(roles)
    ]
    with stop_on_signals() as stop:
        for child in children:
            child.start()
        while not stop.wait(1.0):
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is None:
                    continue
                log.error("%s exited with %d", child.name, code)
                if monotonic() - child.started < MIN_CHILD_LIFETIME_S:
                    log.error("%s dies at start; stopping the service", child.name)
                    stop.set()
                    break
                child.start()
    return _stop_children(children)


def _stop_children(children: list[Child]) -> int:
    running = [child for child in children if child.process and child.process.poll() is None]
    for child in running:
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
