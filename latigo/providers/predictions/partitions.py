"""PostgreSQL's time partitions of the predictions table.

The table is partitioned by range of ``time``, one partition per UTC day, so retention
drops whole days instead of deleting rows one by one, and a day's rows sit together.
A row can only be stored once its day's partition exists: the leader creates the coming
days ahead of time (``Partitions.ensure`` from the scheduler's upkeep), and a store
creates any day it needs that is not there yet (a backfill of last year). Creation is
serialised by an advisory lock, so executors racing for the same day create it once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text

from latigo.window import Window

# one partition per UTC day: a day of 9,000 models is about 10 M rows
PARTITION_SPAN = timedelta(days=1)
# the partitioned table
PARENT = "predictions"
# the days the leader keeps created ahead of now, so continuous stores never wait on DDL
AHEAD = timedelta(days=2)
# the advisory lock that serialises partition DDL (any constant, the same in every process)
DDL_LOCK = 0x6C617469676F  # "latigo"
# a partition's name: the parent's and the day it starts
NAME = re.compile(rf"^{PARENT}_p(\d{{8}})$")


def day_of(moment: datetime) -> datetime:
    """The start of the partition holding ``moment``."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def covering(span: Window) -> list[datetime]:
    """The starts of the partitions that rows of ``span`` fall into (its end is open)."""
    days, day = [], day_of(span.start)
    while day < span.end:
        days.append(day)
        day += PARTITION_SPAN
    return days


def name_of(day: datetime) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def day_named(name: str) -> datetime | None:
    found = NAME.match(name)
    return datetime.strptime(found.group(1), "%Y%m%d").replace(tzinfo=UTC) if found else None


def expired(days: Iterable[datetime], before: datetime) -> list[datetime]:
    """The partitions whose every row is older than ``before``: they can go whole."""
    return sorted(day for day in days if day + PARTITION_SPAN <= before)


class Partitions:
    """The partitions that exist, as far as this process knows: it asks PostgreSQL again
    only when a store needs a day it has not seen."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._known: set[datetime] = set()

    def ensure(self, span: Window) -> int:
        """Create the partitions ``span`` needs; return how many were created."""
        needed = [day for day in covering(span) if day not in self._known]
        if not needed:
            return 0
        with self._engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DDL_LOCK})
            self._known = self._existing(connection)
            missing = [day for day in needed if day not in self._known]
            for day in missing:
                connection.execute(
                    text(
                        f'CREATE TABLE "{name_of(day)}" PARTITION OF "{PARENT}" '
                        f"FOR VALUES FROM ('{day:%Y-%m-%d %H:%M:%S}') TO ('{day + PARTITION_SPAN:%Y-%m-%d %H:%M:%S}')"
                    )
                )
        self._known.update(missing)
        return len(missing)

    def drop_expired(self, before: datetime) -> int:
        """Drop the partitions older than ``before``; return how many rows they held (a
        count of each: once a day, for the metric)."""
        with self._engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DDL_LOCK})
            self._known = self._existing(connection)
            dropping = expired(self._known, before)
            rows = 0
            for day in dropping:
                rows += connection.execute(text(f'SELECT count(*) FROM "{name_of(day)}"')).scalar_one()
                connection.execute(text(f'DROP TABLE "{name_of(day)}"'))
        self._known.difference_update(dropping)
        return rows

    @staticmethod
    def _existing(connection: Connection) -> set[datetime]:
        names = connection.execute(
            text(
                "SELECT child.relname FROM pg_inherits JOIN pg_class child ON child.oid = pg_inherits.inhrelid "
                "WHERE pg_inherits.inhparent = to_regclass(:parent)"
            ),
            {"parent": PARENT},
        ).scalars()
        return {day for day in map(day_named, names) if day is not None}
