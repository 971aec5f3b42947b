"""Only one scheduler publishes at a time: the leader.

The ledger's primary key already makes planning exact, whoever plans; leadership keeps two
schedulers from publishing the same planned windows twice and from doubling discovery load
on Gordo.

Leadership is one lease row (``scheduler_leader``), on SQLite and on PostgreSQL alike: a
holder, an expiry and an **epoch**, a number that grows by one at every new term (whenever
the row is taken, by another scheduler or by the same one after its lease ran out). The
leader renews the row every tick; a standby takes it once it has expired. A leader that
stops ticking (it died, or it hangs: SIGSTOP, a stuck host) therefore loses the lead within
``schedule.leader_ttl``, whether or not its database connection stays open.

**Fencing.** The lease alone cannot stop a deposed leader that wakes up in the middle of a
tick from publishing what it read before it slept. So the ledger update that marks windows
queued runs in one transaction with a conditional update of the lease row: holder, epoch
and expiry must still be this scheduler's (see :meth:`Leadership.fence`). The row lock that
update takes (PostgreSQL) or the write lock of ``BEGIN IMMEDIATE`` (SQLite) orders it
against any takeover: either the fence commits first, and the takeover then finds the
lease renewed, or the takeover does, and the fence finds another holder and epoch and
marks nothing. Safety rests on that row only, never on clocks.

**Clocks.** Expiry is compared with the scheduler's own clock (the injected ``Clock``,
``system_clock`` in production), for renewing, taking and fencing alike. Clock skew between
scheduler hosts moves takeover earlier or later by the skew (keep hosts on NTP), but cannot
let two leaders publish: the holder and epoch decide that.

**PostgreSQL: a dead leader is replaced at once.** As an optimisation, the leader of epoch
``e`` also holds the session advisory lock ``(ADVISORY_CLASS, e)`` on a connection of its
own. The server drops it the moment that connection dies, so a standby that can take the
lock knows the leader of the current epoch is gone and takes the row without waiting for
the expiry. The lock grants nothing: a hung leader keeps it and loses the lead at expiry all
the same, and a standby only ever looks at the lock of the current epoch, so a deposed
leader's lock is ignored (and dropped as soon as it notices).

**PostgreSQL: a leader stopped inside a transaction.** Its row locks (of the lease, or of
ledger rows it was inserting) would block a standby for as long as its connection lives.
The scheduler's sessions therefore run with ``idle_in_transaction_session_timeout`` of one
lease: the server ends such a session, and releases its locks, within ``leader_ttl``. On
SQLite nothing can: a process stopped inside a write transaction holds the file's write
lock, and every writer waits for it (see the README).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, event, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from latigo import db
from latigo.clock import Clock, system_clock
from latigo.schema import scheduler_leader

log = logging.getLogger(__name__)

# the name of the scheduler's lease row
LEASE_NAME = "scheduler"
# the first key of the leader's advisory lock ("schd"); the second is the epoch
ADVISORY_CLASS = 0x73636864
# advisory lock keys are 32-bit signed integers
_INT4 = 2**31


def holder_name() -> str:
    """Who holds the lease, readable in the table: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leadership(ABC):
    @abstractmethod
    def hold(self) -> bool:
        """Take or keep the leadership; True while this process leads. Called every tick."""

    @abstractmethod
    def fence(self, connection: Connection) -> bool:
        """In the caller's transaction, check that this process still leads (same holder,
        same epoch, lease not expired) and renew the lease; False if it does not, and then
        the caller must roll back whatever it wrote in that transaction."""

    @abstractmethod
    def confirm(self) -> bool:
        """The fence in a transaction of its own: whether this process still leads (and the
        lease renewed), checked just before publishing to a queue outside the database."""

    @abstractmethod
    def step_down(self) -> None:
        """Forget the lead, as the fence found it lost: publish nothing until ``hold``."""

    @abstractmethod
    def release(self) -> None:
        """Step down, so a standby takes over at once."""


class LeaseLeadership(Leadership):
    """The lease row with holder, expiry and epoch; on PostgreSQL with the advisory lock of
    the epoch that tells a standby when the leader's connection is gone."""

    def __init__(self, engine: Engine, ttl: timedelta, clock: Clock = system_clock) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self.holder = holder_name()
        # the epoch of the term this process leads; None while standing by
        self.epoch: int | None = None
        # whether the last hold found another leader (logged once, when that starts)
        self._standing_by = False
        self._watch = _DeathWatch(engine) if engine.dialect.name == "postgresql" else None

    # -- holding -------------------------------------------------------------------------

    def hold(self) -> bool:
        try:
            with self._engine.begin() as connection:
                row = connection.execute(
                    select(scheduler_leader.c.holder, scheduler_leader.c.epoch, scheduler_leader.c.expires_at)
                    .where(scheduler_leader.c.name == LEASE_NAME)
                    .with_for_update()
                ).first()
                now = self._clock()  # once the row is ours: waiting for its lock must not age the time
                if row is None:
                    term = self._create(connection, now)
                elif row.holder == self.holder and row.epoch == self.epoch and row.expires_at > now:
                    self._renew(connection, now)
                    return True
                elif row.expires_at <= now:
                    if row.holder == self.holder and row.epoch == self.epoch:
                        log.warning("the lease of epoch %d ran out between renewals; taking it again", row.epoch)
                    term = self._take(connection, now, row.epoch, f"took over from {row.holder}: its lease expired")
                elif row.holder != self.holder and self._watch is not None and self._watch.gone(row.epoch):
                    why = f"took over from {row.holder}: its connection is gone"
                    term = self._take(connection, now, row.epoch, why)
                else:
                    term = None
        except BaseException:
            if self._watch is not None and self.epoch is None:
                self._watch.drop()  # a lock taken for a term that was never committed
            raise
        if term is None:
            self._lost(row.holder if row is not None else "another scheduler", row.epoch if row is not None else 0)
            return False
        epoch, why = term
        self.epoch = epoch
        self._standing_by = False
        log.info("leading the schedulers, epoch %d: %s", epoch, why)
        return True

    def _create(self, connection: Connection, now: datetime) -> tuple[int, str] | None:
        """The very first scheduler creates the row; one racing it finds it taken."""
        created = connection.execute(
            db.dialect_insert(connection.dialect, scheduler_leader)
            .values(name=LEASE_NAME, holder=self.holder, epoch=1, expires_at=now + self._ttl)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(scheduler_leader.c.epoch)  # the driver's rowcount of such an INSERT may be -1
        ).first()
        return self._begin_term(1, "nobody led before") if created is not None else None

    def _renew(self, connection: Connection, now: datetime) -> None:
        connection.execute(
            update(scheduler_leader).where(scheduler_leader.c.name == LEASE_NAME).values(expires_at=now + self._ttl)
        )
        if self._watch is not None and self.epoch is not None:
            self._watch.keep(self.epoch)  # again, if its connection was lost

    def _take(self, connection: Connection, now: datetime, epoch: int, why: str) -> tuple[int, str] | None:
        """A new term: holder, expiry and the next epoch, in the transaction that read the row
        (and holds it: FOR UPDATE on PostgreSQL, the write lock on SQLite)."""
        taken = connection.execute(
            update(scheduler_leader)
            .where(scheduler_leader.c.name == LEASE_NAME, scheduler_leader.c.epoch == epoch)
            .values(holder=self.holder, epoch=epoch + 1, expires_at=now + self._ttl)
        ).rowcount
        return self._begin_term(epoch + 1, why) if taken == 1 else None

    def _begin_term(self, epoch: int, why: str) -> tuple[int, str]:
        """Inside the transaction that takes the row, before its commit, so no standby ever
        sees the new epoch without its advisory lock."""
        self.epoch = None  # until the commit: an earlier term of ours is over either way
        if self._watch is not None:
            self._watch.keep(epoch)  # drops a lock of an earlier term of ours first
        return epoch, why

    def _lost(self, holder: str, epoch: int) -> None:
        if self.epoch is not None:
            log.warning("lost the lead: %s leads now, epoch %d (ours was %d); standing by", holder, epoch, self.epoch)
        elif not self._standing_by:
            log.info("%s leads the schedulers, epoch %d; standing by", holder, epoch)
        self._standing_by = True
        self._forget()

    def _forget(self) -> None:
        self.epoch = None
        if self._watch is not None:
            self._watch.drop()

    # -- fencing -------------------------------------------------------------------------

    def fence(self, connection: Connection) -> bool:
        if self.epoch is None:
            return False
        now = self._clock()
        renewed = connection.execute(
            update(scheduler_leader)
            .where(
                scheduler_leader.c.name == LEASE_NAME,
                scheduler_leader.c.holder == self.holder,
                scheduler_leader.c.epoch == self.epoch,
                scheduler_leader.c.expires_at > now,
            )
            .values(expires_at=now + self._ttl)
        ).rowcount
        return renewed == 1

    def confirm(self) -> bool:
        if self.epoch is None:
            return False
        with self._engine.begin() as connection:
            return self.fence(connection)

    def step_down(self) -> None:
        if self.epoch is not None:
            log.warning("lost the lead (epoch %d) while publishing: nothing more published; standing by", self.epoch)
        self._forget()

    def release(self) -> None:
        if self.epoch is None:
            self._forget()
            return
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    update(scheduler_leader)
                    .where(
                        scheduler_leader.c.name == LEASE_NAME,
                        scheduler_leader.c.holder == self.holder,
                        scheduler_leader.c.epoch == self.epoch,
                    )
                    .values(expires_at=self._clock() - timedelta(seconds=1))
                )
        except SQLAlchemyError as error:
            log.warning(
                "could not step down (%s): a standby takes over when the lease expires", error.__class__.__name__
            )
        finally:
            self._forget()


class _DeathWatch:
    """PostgreSQL: the leader's advisory lock ``(ADVISORY_CLASS, epoch)``, held on a
    connection kept for it, which a standby probes to tell a dead leader from a live one."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None
        self._held: int | None = None

    def _try_lock(self, epoch: int) -> bool:
        if self._connection is None:
            self._connection = self._engine.connect()
        locked = self._connection.execute(
            text("SELECT pg_try_advisory_lock(:class, :key)"), {"class": ADVISORY_CLASS, "key": _key(epoch)}
        ).scalar()
        self._connection.commit()  # session locks outlive transactions; leave none open
        return bool(locked)

    def keep(self, epoch: int) -> None:
        """Hold the lock of ``epoch`` (taking it if not held yet). Without it a standby takes
        over at once, and the fence deposes this leader: it costs a term, never safety."""
        try:
            if self._held == epoch:
                assert self._connection is not None
                self._connection.execute(text("SELECT 1"))  # still there, and so is the lock
                self._connection.commit()
                return
            self.drop()
            if self._try_lock(epoch):
                self._held = epoch
            else:
                log.warning("the advisory lock of epoch %d is taken; a standby may take over early", epoch)
        except SQLAlchemyError as error:
            log.warning("could not take the leader's advisory lock: %s", error.__class__.__name__)
            self._close()

    def gone(self, epoch: int) -> bool:
        """Whether no session holds the lock of ``epoch``: its leader's connection is gone."""
        try:
            if not self._try_lock(epoch):
                return False
            assert self._connection is not None
            self._connection.execute(
                text("SELECT pg_advisory_unlock(:class, :key)"), {"class": ADVISORY_CLASS, "key": _key(epoch)}
            )
            self._connection.commit()
            return True
        except SQLAlchemyError as error:
            log.warning("could not probe the leader's advisory lock: %s", error.__class__.__name__)
            self._close()
            return False

    def drop(self) -> None:
        """Let go of any lock held: it must not outlive the term it was taken for."""
        if self._held is None:
            return
        self._held = None
        try:
            if self._connection is not None:
                self._connection.execute(text("SELECT pg_advisory_unlock_all()"))
                self._connection.commit()
        except SQLAlchemyError:
            self._close()

    def _close(self) -> None:
        self._held = None
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except Exception:  # the connection is already gone; so is its lock
                pass
            self._connection = None


def _key(epoch: int) -> int:
    """An epoch as the second key of an advisory lock (a signed 32-bit integer)."""
    return (epoch + _INT4) % (2 * _INT4) - _INT4


def end_stuck_transactions(engine: Engine, ttl: timedelta) -> None:
    """PostgreSQL: have the server end any session of this engine that sits idle inside a
    transaction for longer than ``ttl``, releasing its locks (a scheduler stopped mid
    transaction, connection open, would block a standby otherwise). For new connections,
    so the pool is emptied first; no-op on SQLite."""
    if engine.dialect.name != "postgresql":
        return
    milliseconds = max(1, int(ttl.total_seconds() * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET idle_in_transaction_session_timeout = {milliseconds}")
        cursor.close()
        dbapi_connection.commit()

    engine.dispose()


def leadership_for(engine: Engine, ttl: timedelta, clock: Clock = system_clock) -> Leadership:
    return LeaseLeadership(engine, ttl, clock)
