"""Only one scheduler publishes at a time: the leader.

The ledger's primary key already makes planning exact, whoever plans; leadership keeps two
schedulers from publishing the same planned windows twice and from doubling discovery load
on Gordo. A standby scheduler takes over within a lease (or at once on PostgreSQL, whose
advisory lock dies with the leader's connection).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from abc import ABC, abstractmethod
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, insert, text, update
from sqlalchemy.exc import DBAPIError, OperationalError

from latigo.clock import Clock, system_clock
from latigo.schema import scheduler_leader

log = logging.getLogger(__name__)

# the name of the scheduler's lease row, and the key of its advisory lock ("schedule")
LEASE_NAME = "scheduler"
ADVISORY_KEY = 0x7363686564756C65


def holder_name() -> str:
    """Who holds the lease, readable in the table: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leadership(ABC):
    @abstractmethod
    def hold(self) -> bool:
        """Take or keep the leadership; True while this process leads. Called every tick."""

    @abstractmethod
    def release(self) -> None:
        """Step down, so a standby takes over at once."""


class LeaseLeadership(Leadership):
    """A lock row with an expiry: the leader renews it every tick; when it stops renewing
    (it died, or hangs), another scheduler takes the row once it has expired."""

    def __init__(self, engine: Engine, ttl: timedelta, clock: Clock = system_clock) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self.holder = holder_name()

    def hold(self) -> bool:
        now = self._clock()
        take = (
            update(scheduler_leader)
            .where(scheduler_leader.c.name == LEASE_NAME)
            .where((scheduler_leader.c.holder == self.holder) | (scheduler_leader.c.expires_at < now))
            .values(holder=self.holder, expires_at=now + self._ttl)
        )
        with self._engine.begin() as connection:
            if connection.execute(take).rowcount == 1:
                return True
            return self._claim_first(connection, now)

    def _claim_first(self, connection: Connection, now: datetime) -> bool:
        """The very first scheduler creates the row; anyone else finds it taken."""
        exists = connection.execute(
            scheduler_leader.select().where(scheduler_leader.c.name == LEASE_NAME)
        ).first()
        if exists is not None:
            return False
        connection.execute(
            insert(scheduler_leader).values(name=LEASE_NAME, holder=self.holder, expires_at=now + self._ttl)
        )
        return True

    def release(self) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                update(scheduler_leader)
                .where(scheduler_leader.c.name == LEASE_NAME, scheduler_leader.c.holder == self.holder)
                .values(expires_at=self._clock() - timedelta(seconds=1))
            )


class AdvisoryLeadership(Leadership):
    """PostgreSQL's session advisory lock on a connection kept for the purpose: it is
    released by the server the moment the leader's connection dies, so takeover is
    immediate and needs no clock."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None

    def hold(self) -> bool:
        try:
            if self._connection is not None:
                self._connection.execute(text("SELECT 1"))  # the lock lives as long as this connection
                self._connection.commit()
                return True
            connection = self._engine.connect()
            locked = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}).scalar()
            connection.commit()
            if locked:
                self._connection = connection
                return True
            connection.close()
            return False
        except (OperationalError, DBAPIError) as error:
            log.warning("lost the scheduler lock's connection: %s", error.__class__.__name__)
            self._drop()
            return False

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except Exception:  # the connection is already gone; nothing to release
                pass
            self._connection = None

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
                self._connection.commit()
            finally:
                self._connection.close()
                self._connection = None


def leadership_for(engine: Engine, ttl: timedelta, clock: Clock = system_clock) -> Leadership:
    if engine.dialect.name == "postgresql":
        return AdvisoryLeadership(engine)
    return LeaseLeadership(engine, ttl, clock)
