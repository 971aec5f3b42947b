"""Compaction benchmark: a quarter day of windows moved into the ledger's history at once,
against the same windows moved a tick (30 minutes) at a time, on a year's history.

    .venv/bin/python -m bench.compaction [--databases sqlite,postgresql] [--models 1000]

Per database, two fresh databases get the same year of history (``bench._history``, as
``bench.growth`` fills it: compacted up to ``retention.compact_after`` before now), then
one has the next 12 windows of every model compacted in one ``Ledger.compact`` and the
other in 12, one window a model each (what the leader did every tick before
``scheduler.COMPACT_SLACK``). Printed: seconds each, and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from bench import _services as services
from bench.growth import NOW, fill_span
from latigo.config import Config

# windows of every model compacted, in one step or in as many
WINDOWS = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--models", type=int, default=1000)
    args = parser.parse_args()
    config = Config.model_validate({})
    cutoff = NOW - config.retention.compact_after
    step = config.schedule.interval
    for database in args.databases.split(","):
        with (
            tempfile.TemporaryDirectory(prefix="latigo-compaction-") as folder,
            services.postgres_server() if database == "postgresql" else contextlib.nullcontext() as postgres,
            contextlib.ExitStack() as stack,
        ):
            seconds = {}
            for name, steps in (("a tick at a time", WINDOWS), ("at once", 1)):
                url = postgres.url(postgres.create_database()) if postgres else f"sqlite:///{folder}/{steps}.db"
                ledger = fill_span(stack, database, url, "1y", args.models, Path(folder)).parts.ledger
                started = time.perf_counter()
                ends = [cutoff + k * step for k in range(WINDOWS // steps, WINDOWS + 1, WINDOWS // steps)]
                moved = sum(ledger.compact(end) for end in ends)
                seconds[name] = time.perf_counter() - started
                assert moved == WINDOWS * args.models, moved
                what = f"{WINDOWS} windows of {args.models:,} models {name}"
                print(f"{database}: {what}: {seconds[name]:.2f} s", flush=True)
            print(f"{database}: at once / a tick at a time: {seconds['at once'] / seconds['a tick at a time']:.2f}")


if __name__ == "__main__":
    main()
