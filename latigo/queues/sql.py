"""The task queue as a table in the Latigo database: the embedded default, and with
PostgreSQL a queue several machines can share.

A receiver claims rows by pushing their ``available_at`` one lease into the future under a
fresh lease token; ``ack`` deletes the row, ``release`` makes it available again. A
receiver that dies simply lets its lease run out, and the row is delivered again. On
PostgreSQL claims use ``FOR UPDATE SKIP LOCKED`` so concurrent receivers never wait on or
double-claim each other's rows; SQLite serialises writers anyway.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import timedelta
from time import monotonic

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from latigo.clock import Clock, system_clock
from latigo.queues import Message, TaskQueue
from latigo.schema import task_queue

# rows per INSERT when publishing a large batch
PUBLISH_CHUNK = 5_000


class SqlQueue(TaskQueue):
    def __init__(
        self,
        engine: Engine,
        *,
        lease: timedelta,
        poll_interval: timedelta,
        clock: Clock = system_clock,
    ) -> None:
        self._engine = engine
        self._lease = lease
        self._poll_seconds = poll_interval.total_seconds()
        self._clock = clock
        self._closed = threading.Event()

    def publish(self, bodies: Sequence[bytes], keys: Sequence[str] | None = None) -> None:
        # one table, no partitions: the keys need no place
        if not bodies:
            return
        with self._engine.begin() as connection:
            self.publish_in(connection, bodies)

    def shares(self, engine: Engine) -> bool:
        """Whether the queue's table lives in ``engine``'s database, so that a publish can
        join another transaction there (the scheduler's fenced publish, see latigo.scheduler)."""
        return self._engine is engine

    def publish_in(self, connection: Connection, bodies: Sequence[bytes]) -> None:
        """Publish within the caller's transaction: the tasks exist once it commits."""
        now = self._clock()
        rows = [{"body": body, "available_at": now, "enqueued_at": now, "deliveries": 0} for body in bodies]
        for offset in range(0, len(rows), PUBLISH_CHUNK):
            connection.execute(insert(task_queue), rows[offset : offset + PUBLISH_CHUNK])

    def receive(self, max_messages: int, wait: timedelta) -> list[Message]:
        deadline = monotonic() + wait.total_seconds()
        while not self._closed.is_set():
            messages = self._claim(max_messages)
            remaining = deadline - monotonic()
            if messages or remaining <= 0:
                return messages
            # a table cannot notify us of new rows: poll, but wake at once on close()
            self._closed.wait(min(self._poll_seconds, remaining))
        return []

    def _claim(self, max_messages: int) -> list[Message]:
        now = self._clock()
        token = str(uuid.uuid4())
        ready = (
            select(task_queue.c.id)
            .where(task_queue.c.available_at <= now)
            .order_by(task_queue.c.id)
            .limit(max_messages)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claim = (
            update(task_queue)
            .where(task_queue.c.id.in_(ready))
            .values(
                available_at=now + self._lease,
                lease_token=token,
                deliveries=task_queue.c.deliveries + 1,
            )
            .returning(task_queue.c.id, task_queue.c.body, task_queue.c.deliveries)
        )
        with self._engine.begin() as connection:
            rows = connection.execute(claim).all()
        return sorted(
            (Message(body=bytes(row.body), deliveries=row.deliveries, receipt=(row.id, token)) for row in rows),
            key=lambda message: message.receipt[0],
        )

    def ack(self, message: Message) -> None:
        row_id, token = message.receipt
        with self._engine.begin() as connection:
            connection.execute(delete(task_queue).where(task_queue.c.id == row_id, task_queue.c.lease_token == token))

    def release(self, message: Message, delay: timedelta = timedelta(0)) -> None:
        row_id, token = message.receipt
        with self._engine.begin() as connection:
            connection.execute(
                update(task_queue)
                .where(task_queue.c.id == row_id, task_queue.c.lease_token == token)
                .values(available_at=self._clock() + delay, lease_token=None)
            )

    def depth(self) -> int:
        with self._engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(task_queue)).scalar_one()

    def close(self) -> None:
        self._closed.set()
