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

from latigo.components import Components
from latigo.executor import Executor
from latigo.leader import leadership_for
from latigo.scheduler import Scheduler

log = logging.getLogger(__name__)

# longest a waiting main thread goes without running signal handlers, seconds
SIGNAL_CHECK_S = 0.25
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
    with stop_on_signals() as stop:
        scheduler.run(stop)


def run_executor(parts: Components, *, max_tasks: int | None = None, until_idle: bool = False) -> int:
    executor = Executor(parts)
    with stop_on_signals() as stop:
        # closing the queue wakes a receive() that is waiting for work
        threading.Thread(target=lambda: (stop.wait(), parts.queue.close()), daemon=True).start()
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
    process: subprocess.Popen | None = None
    started: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(self.command)
        self.started = monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)


def run_service(executors: int, extra_args: list[str] | None = None) -> int:
    """The scheduler and ``executors`` executors as children; restart any that dies."""
    base = [sys.executable, "-m", "latigo", *(extra_args or [])]
    children = [Child("scheduler", [*base, "scheduler"])]
    children += [Child(f"executor-{number}", [*base, "executor"]) for number in range(1, executors + 1)]
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
