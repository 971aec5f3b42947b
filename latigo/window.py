"""Window arithmetic on a fixed UTC grid, free of I/O.

Windows are half-open ``[start, end)`` and lie on ``anchor + k * interval``: aligned to
the clock, never to the moment a process woke up, so a restart or a second scheduler
computes exactly the same windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


def utc(moment: datetime) -> datetime:
    """Reject naive datetimes (their zone is a guess) and normalise aware ones to UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: give a time zone (UTC)")
    return moment.astimezone(UTC)


@dataclass(frozen=True, order=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"empty window {self.start.isoformat()} .. {self.end.isoformat()}")

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


@dataclass(frozen=True)
class Grid:
    interval: timedelta
    anchor: datetime = datetime(1970, 1, 1, tzinfo=UTC)

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0):
            raise ValueError("interval must be positive")
        object.__setattr__(self, "anchor", utc(self.anchor))

    def floor(self, moment: datetime) -> datetime:
        """The latest grid point at or before ``moment``."""
        return self.anchor + ((utc(moment) - self.anchor) // self.interval) * self.interval

    def ceil(self, moment: datetime) -> datetime:
        """The earliest grid point at or after ``moment``."""
        floor = self.floor(moment)
        return floor if floor == utc(moment) else floor + self.interval

    def is_aligned(self, moment: datetime) -> bool:
        return self.floor(moment) == utc(moment)

    def last_due_end(self, now: datetime, delay: timedelta) -> datetime:
        """End of the newest window that is due: a window is due once ``now >= end + delay``."""
        return self.floor(utc(now) - delay)

    def windows(self, start: datetime, end: datetime) -> Iterator[Window]:
        """The grid windows lying wholly inside ``[start, end)``, oldest first."""
        cursor, end = self.ceil(start), utc(end)
        while cursor + self.interval <= end:
            yield Window(cursor, cursor + self.interval)
            cursor += self.interval

    def count(self, start: datetime, end: datetime) -> int:
        """How many windows ``windows(start, end)`` yields, without building them."""
        first, last = self.ceil(start), self.floor(end)
        return max(0, (last - first) // self.interval)

    def per_run(self, max_span: timedelta) -> int:
        """How many windows one run (one task) holds at most: at least one, however short
        ``max_span`` is."""
        return max(1, max_span // self.interval)

    def coalesce(self, starts: Iterable[datetime], max_span: timedelta) -> Iterator[Window]:
        """Merge windows (given by their starts, oldest first) into runs of consecutive
        windows, each at most ``max_span`` long, so one Gordo call can cover many windows.

        A generator, so that counting the runs of a long range (``latigo backfill``) holds
        one run at a time; a repeated start is skipped, one out of order raises ValueError."""
        per_run = self.per_run(max_span)
        interval = self.interval
        run_start: datetime | None = None
        run_end: datetime | None = None
        length = 0
        for start in starts:
            if start == run_end and length < per_run:  # the next window of the run: on the grid, in order
                run_end, length = run_end + interval, length + 1
                continue
            if run_end is not None and start != run_end:  # not the next window: a repeat, a gap or wrong
                previous = run_end - interval
                if start == previous:
                    continue
                if start < previous:
                    raise ValueError(
                        f"{start.isoformat()} comes after {previous.isoformat()}: give starts oldest first"
                    )
            if not self.is_aligned(start):
                raise ValueError(f"{start.isoformat()} is not on the grid")
            if run_start is not None and run_end is not None:
                yield Window(run_start, run_end)
            run_start = utc(start)
            run_end, length = run_start + interval, 1
        if run_start is not None and run_end is not None:
            yield Window(run_start, run_end)
