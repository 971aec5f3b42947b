"""The base of the task queues on a partitioned log (``kafka``, ``eventhub``): receiving,
holding back, acknowledging, releasing and committing, written once.

A backend implements only what talks to its service, so a third partitioned backend is one
small module:

- ``_send(records)``: publish records, each to its key's partition, or to the one it names;
- ``_start()``: join the consumer group (at the first ``receive``, so a scheduler that only
  publishes never takes partitions); False once closed;
- ``_poll(limit, timeout)``: records received, waiting up to ``timeout`` for the first, each
  recorded with ``_received``;
- ``_commit(positions)``: move the committed position (Kafka's offset, Event Hubs'
  checkpoint) of some partitions past their last acknowledged message;
- ``depth()`` and ``_disconnect()``;

and calls ``_assigned`` and ``_revoked`` when its consumer group gives or takes partitions.

Trade-offs, because a log is not a queue (latigo.queues.partitions has the bookkeeping):

- A position covers every earlier message of its partition, so it only moves up to the
  first message still in flight.
- ``release`` publishes a copy (same partition) marked with its delivery count and a
  not-before time, then acknowledges the original. The consumer that reads the copy holds it
  in memory, uncommitted, until it is due: commits of that partition stop there for the
  delay (at most ``executor.retry_max``), and if that consumer dies meanwhile, everything
  after it is delivered again (harmless). The not-before time is wall-clock.
- ``Message.deliveries`` counts releases: a message delivered again because its consumer
  died keeps its count (the ledger counts attempts as well).
- A message received and neither acknowledged nor released (its handler crashed) stays in
  flight until this consumer gives its partition up; its partition's commits stop there.
- ``close`` is final: acknowledgements that arrive after it commit nothing (their messages
  are delivered again). For a graceful shutdown call ``stop_receiving`` first, let the tasks
  in hand finish and acknowledge, then ``close``.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import monotonic
from typing import Any, ClassVar, Generic, TypeVar

from latigo.clock import Clock
from latigo.errors import LatigoError
from latigo.queues import Message, TaskQueue
from latigo.queues.partitions import HoldBack, PartitionTracker, Token, read_marks, retry_marks

log = logging.getLogger(__name__)

# seconds close() waits for a receive or an acknowledgement running in another thread
CLOSE_TIMEOUT_S = 10.0
# how a backend names a partition (Kafka: topic and number; Event Hubs: the partition id)
Where = TypeVar("Where", bound=Hashable)


@dataclass(frozen=True)
class Receipt(Generic[Where]):
    """Where a received message lies in the log, and the key its released copy carries."""

    # the partition, as the backend names it (Kafka: topic and number; Event Hubs: its id)
    where: Where
    # the message's offset (Kafka) or sequence number (Event Hubs) in its partition
    position: int
    # the assignment of the partition the message was received under (PartitionTracker)
    generation: int
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A message to publish: a task, or the copy of a released one."""

    body: bytes
    key: str | bytes | None = None
    # the partition a released copy goes back to (its original's); None: the key decides
    partition: Hashable | None = None
    # a released copy's delivery count and not-before time (partitions.retry_marks)
    marks: dict[str, str] | None = None


class Gate:
    """Lets several threads use a consumer at once, and close() wait until none does."""

    def __init__(self) -> None:
        self._users = 0
        self.closing = False
        self._changed = threading.Condition()

    def enter(self) -> bool:
        with self._changed:
            if self.closing:
                return False
            self._users += 1
            return True

    def leave(self) -> None:
        with self._changed:
            self._users -= 1
            self._changed.notify_all()

    def close(self, timeout: float) -> bool:
        with self._changed:
            self.closing = True
            return self._changed.wait_for(lambda: self._users == 0, timeout)


class PartitionedQueue(TaskQueue, Generic[Where, Token]):
    """A task queue on a partitioned log. ``Where`` names a partition; ``Token`` is what the
    backend needs, besides the position, to commit a received message (nothing for Kafka, the
    SDK's partition context and event for Event Hubs)."""

    # the backend's name at the start of its log lines and errors
    label: ClassVar[str] = "partitioned log"
    # the backend's receipts (a subclass names the partition in the backend's own words)
    receipt_type: ClassVar[type[Receipt[Any]]] = Receipt

    def __init__(self, *, poll_interval: timedelta, clock: Clock) -> None:
        self._poll_s = poll_interval.total_seconds()
        self._clock = clock
        self._lock = threading.Lock()  # creating and closing clients
        self._commit_lock = threading.Lock()  # commits in order, so committed positions never go back
        self._closed = threading.Event()
        self._stopped = threading.Event()  # stop_receiving(): no more messages handed out
        self._gate = Gate()
        self._tracker: PartitionTracker[Token] = PartitionTracker()
        self._held = HoldBack()
        # per partition, the end of its acknowledged prefix (position and token) not yet committed
        self._uncommitted: dict[Where, tuple[int, Token]] = {}

    # -- what a backend implements -----------------------------------------------------

    @abstractmethod
    def _send(self, records: Sequence[Record]) -> None:
        """Publish every record, returning once the service has them all."""

    @abstractmethod
    def _start(self) -> bool:
        """Join the consumer group if not yet done; False once the queue is closed."""

    @abstractmethod
    def _poll(self, limit: int, timeout: float) -> list[tuple[Message, datetime | None]]:
        """Up to ``limit`` records, waiting at most ``timeout`` for the first (``_received``
        makes them messages)."""

    @abstractmethod
    def _commit(self, positions: Mapping[Where, tuple[int, Token]]) -> dict[Where, str]:
        """Commit these partitions past these messages (the commit lock is held); return why
        each partition that was not committed was not. Raise only when retrying cannot help."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Close the clients (no receive or acknowledgement is running any more)."""

    # -- publishing --------------------------------------------------------------------

    def publish(self, bodies: Sequence[bytes], keys: Sequence[str] | None = None) -> None:
        if keys is not None and len(keys) != len(bodies):
            raise ValueError(f"{len(bodies)} bodies but {len(keys)} keys")
        if not bodies:
            return
        self._send([Record(body, None if keys is None else keys[index]) for index, body in enumerate(bodies)])

    # -- receiving ---------------------------------------------------------------------

    def receive(self, max_messages: int, wait: timedelta) -> list[Message]:
        deadline = monotonic() + wait.total_seconds()
        if max_messages <= 0 or self._stopped.is_set() or not self._start() or not self._gate.enter():
            return []
        try:
            while True:
                ready = self._held.due(self._clock(), max_messages, self._alive)
                if len(ready) < max_messages:
                    slice_s = 0.0 if ready else self._slice(deadline)
                    ready += self._admit(self._poll(max_messages - len(ready), slice_s))
                if ready or monotonic() >= deadline or self._stopped.is_set() or self._gate.closing:
                    return ready
        finally:
            self._gate.leave()

    def stop_receiving(self) -> None:
        """Hand out no more messages (a waiting receive() returns within ``poll_interval``);
        the messages in hand can still be acknowledged or released, and their positions
        committed, until close(). The first step of a graceful shutdown."""
        self._stopped.set()

    def _slice(self, deadline: float) -> float:
        """How long one poll may block: until the deadline, the next held message is due, or
        ``poll_interval`` (so close() never waits long for this thread)."""
        seconds = min(deadline - monotonic(), self._poll_s)
        due = self._held.next_due()
        if due is not None:
            seconds = min(seconds, (due - self._clock()).total_seconds())
        return max(0.0, seconds)

    def _received(
        self, where: Where, position: int, token: Token, body: bytes, marks: Any, key: bytes | None = None
    ) -> tuple[Message, datetime | None] | None:
        """A record as a message and its not-before time, or None if its partition is not
        (or no longer) ours. ``marks`` are its headers or properties (partitions.read_marks)."""
        generation = self._tracker.received(where, position, token)
        if generation is None:
            return None
        deliveries, not_before = read_marks(marks)
        receipt = self.receipt_type(where, position, generation, key)
        return Message(body=body, deliveries=deliveries, receipt=receipt), not_before

    def _admit(self, received: Iterable[tuple[Message, datetime | None]]) -> list[Message]:
        """The messages that may be handed out now; those not yet due are held back."""
        ready = []
        now = self._clock()
        for message, not_before in received:
            if self._alive(message) and self._held.admit(message, not_before, now):
                ready.append(message)
        return ready

    def _alive(self, message: Message) -> bool:
        return self._tracker.current(message.receipt.where, message.receipt.generation)

    # -- acknowledging -----------------------------------------------------------------

    def ack(self, message: Message) -> None:
        receipt: Receipt[Where] = message.receipt
        if not self._gate.enter():  # closed: the message is delivered again
            return
        try:
            with self._commit_lock:
                last = self._tracker.done(receipt.where, receipt.generation, receipt.position)
                if last is not None:
                    self._uncommitted[receipt.where] = last
                    self._commit_pending([receipt.where])
        finally:
            self._gate.leave()

    def release(self, message: Message, delay: timedelta = timedelta(0)) -> None:
        receipt: Receipt[Where] = message.receipt
        if not self._alive(message):
            log.debug("released a message of a partition no longer ours: its new owner delivers it again")
            return
        marks = retry_marks(message.deliveries + 1, self._clock() + delay)
        self._send([Record(message.body, receipt.key, receipt.where, marks)])
        self.ack(message)

    def _commit_pending(self, partitions: Iterable[Where]) -> None:
        """Commit what is acknowledged in these partitions (the commit lock is held). A failed
        commit is logged, not raised: the acknowledgement is kept and committed with the next
        one (or when the partition is revoked); until then, at worst, a message is delivered
        again."""
        positions = {where: self._uncommitted[where] for where in partitions if where in self._uncommitted}
        if not positions:
            return
        failed = self._commit(positions)
        for where in positions:
            if where in failed:
                log.warning(
                    "%s: commit of partition %s failed, retried with the next one: %s", self.label, where, failed[where]
                )
            else:
                del self._uncommitted[where]

    def _commit_all(self) -> None:
        """Commit every acknowledgement still uncommitted."""
        with self._commit_lock:
            self._commit_pending(list(self._uncommitted))

    # -- group membership --------------------------------------------------------------

    def _assigned(self, where: Where) -> None:
        self._tracker.assign(where)

    def _revoked(self, partitions: Sequence[Where], *, commit: bool) -> None:
        """The group took these partitions away: with ``commit``, commit what is acknowledged
        first (not when they were lost: another consumer may own them already); forget the
        rest, which the new owner delivers again."""
        with self._commit_lock:
            if commit:
                try:
                    self._commit_pending(partitions)
                except LatigoError as error:  # never raise inside the client's callback
                    log.warning("%s", error)
            for where in partitions:
                self._tracker.revoke(where)
                self._uncommitted.pop(where, None)

    # -- shutdown ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop receiving and acknowledging (waiting for those running), close the clients."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        if not self._gate.close(CLOSE_TIMEOUT_S):
            log.warning(
                "%s: a receive or commit still running after %.0fs; closing anyway", self.label, CLOSE_TIMEOUT_S
            )
        self._disconnect()
