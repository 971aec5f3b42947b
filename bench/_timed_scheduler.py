"""``latigo scheduler --once`` exactly as the command runs it, with the seconds of its
phases written at exit as one JSON document to the file named by ``$BENCH_PHASES`` (and,
with ``$BENCH_PROFILE``, a cProfile of the tick alone, without the imports, to that file).

Why not time it from outside only: a first start's wall time holds the interpreter's start,
imports and the migrations of a fresh database besides the tick, and the target is about
the tick. Why not in the bench process: its peak RSS (``wait4``'s ru_maxrss) must be the
scheduler's own, without the bench's pandas, requests and Gordo frames. So this module
imports nothing but Latigo, wraps a few functions with a timer and hands over to the CLI.

    python -m bench._timed_scheduler [latigo's global options]   # = latigo [options] scheduler --once
"""

from __future__ import annotations

import atexit
import cProfile
import functools
import json
import os
import sys
import time

# the interpreter is up; from here on, the imports and the command
STARTED = time.perf_counter()

from latigo import cli, db, ledger, scheduler  # noqa: E402

# environment variable naming the file the phases go to
PHASES_VARIABLE = "BENCH_PHASES"
# environment variable naming the file the tick's profile goes to (none: not profiled)
PROFILE_VARIABLE = "BENCH_PROFILE"
# what is timed: (owner, attribute, phase); nested phases count inside their callers too
TIMED = (
    (db, "upgrade", "migrations"),
    (scheduler.Scheduler, "tick", "tick"),
    (scheduler.Scheduler, "discover", "discovery"),
    (scheduler.Scheduler, "watermarks", "watermarks"),
    (scheduler.Scheduler, "due_windows", "due windows (Python)"),
    (ledger.Ledger, "plan", "ledger plan (insert)"),
    (scheduler.Scheduler, "publish_planned", "publish"),
    (ledger.Ledger, "mark_queued", "mark queued + enqueue"),
)

phases: dict[str, float] = {"imports": time.perf_counter() - STARTED}


def _timed(function, phase: str):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - started

    return wrapper


def _profiled(function, profiler: cProfile.Profile):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        profiler.enable()
        try:
            return function(*args, **kwargs)
        finally:
            profiler.disable()

    return wrapper


def _write() -> None:
    phases["process (from imports)"] = time.perf_counter() - STARTED
    path = os.environ.get(PHASES_VARIABLE)
    if path:
        with open(path, "w") as out:
            json.dump(phases, out)


def main() -> None:
    for owner, name, phase in TIMED:
        setattr(owner, name, _timed(getattr(owner, name), phase))
    atexit.register(_write)
    profile = os.environ.get(PROFILE_VARIABLE)
    if profile:  # inside the timers: the profile holds the tick's own functions only
        profiler = cProfile.Profile()
        scheduler.Scheduler.tick = _profiled(scheduler.Scheduler.tick, profiler)
        atexit.register(profiler.dump_stats, profile)
    cli.main([*sys.argv[1:], "scheduler", "--once"], prog_name="latigo")


if __name__ == "__main__":
    main()
