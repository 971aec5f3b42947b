"""The bookkeeping of the partitioned backends (``kafka``, ``eventhub``; their shared queue
logic is latigo.queues.partitioned): acknowledging messages out of order on a log that only
remembers one position per partition, and retries with a delay on a log that cannot hide a
message.

A log's consumer commits (Kafka) or checkpoints (Event Hubs) one position per partition,
and that position covers every earlier message of the partition. An executor works on
several messages at once and finishes them in any order, so a position may only move past
a message once that message and every earlier one received are done:
``PartitionTracker`` keeps, per partition, the messages received and not yet covered, and
says how far the position may move after each acknowledgement (the contiguous prefix of
done messages).

A log cannot un-deliver one message. A release is a copy of the message published again
(same key, so same partition) carrying its delivery count and the wall-clock time before
which it must not be handed out; the original is then acknowledged. ``HoldBack`` keeps
received copies that are not yet due in memory, uncommitted, until they are.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from latigo.queues import Message

# header (Kafka) or application property (Event Hubs): how many times the message was handed out before
DELIVERIES = "latigo-deliveries"
# header or property: the message must not be handed out before this time (UTC epoch milliseconds)
NOT_BEFORE = "latigo-not-before"

# what a backend needs, besides the position, to commit a received message
Token = TypeVar("Token")


def retry_marks(deliveries: int, not_before: datetime) -> dict[str, str]:
    """The marks a released message's copy carries: its next delivery number and not-before
    time, as decimal strings (Kafka headers are bytes; an AMQP int has only 32 bits)."""
    return {DELIVERIES: str(deliveries), NOT_BEFORE: str(int(not_before.timestamp() * 1000))}


def read_marks(pairs: Iterable[tuple[Any, Any]] | None) -> tuple[int, datetime | None]:
    """The delivery number (1 for a fresh message) and not-before time read from headers or
    properties; keys and values may be str, bytes or int. Unreadable marks are ignored: a
    message is never lost over a bad header."""
    deliveries, not_before = 1, None
    for key, value in pairs or ():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if name not in (DELIVERIES, NOT_BEFORE):
            continue
        try:
            number = int(value.decode() if isinstance(value, bytes) else value)
        except (TypeError, ValueError, UnicodeDecodeError):
            continue
        if name == DELIVERIES:
            deliveries = max(1, number)
        else:
            not_before = datetime.fromtimestamp(number / 1000, UTC)
    return deliveries, not_before


@dataclass
class _Partition(Generic[Token]):
    generation: int
    # position -> [done, token], in the order received (positions only grow within a partition)
    pending: OrderedDict[int, list[Any]] = field(default_factory=OrderedDict)


class PartitionTracker(Generic[Token]):
    """Per owned partition, the messages received and not yet covered by the committed
    position. A partition gets a new generation each time it is assigned, so an
    acknowledgement that arrives after the partition was taken away (and maybe given back)
    moves nothing: the new owner delivers that message again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[Hashable, _Partition[Token]] = {}
        self._generations = itertools.count(1)

    def assign(self, partition: Hashable) -> int:
        with self._lock:
            generation = next(self._generations)
            self._partitions[partition] = _Partition(generation)
            return generation

    def revoke(self, partition: Hashable) -> None:
        with self._lock:
            self._partitions.pop(partition, None)

    def current(self, partition: Hashable, generation: int) -> bool:
        """Whether a message received under ``generation`` still belongs to this owner."""
        with self._lock:
            state = self._partitions.get(partition)
            return state is not None and state.generation == generation

    def received(self, partition: Hashable, position: int, token: Token) -> int | None:
        """Record a received message; return the generation its receipt must carry, or None
        if the partition is not (or no longer) ours."""
        with self._lock:
            state = self._partitions.get(partition)
            if state is None:
                return None
            state.pending[position] = [False, token]
            return state.generation

    def done(self, partition: Hashable, generation: int, position: int) -> tuple[int, Token] | None:
        """Mark a message done; return the last message of the done prefix that can now be
        committed (its position and token), or None if the position cannot move."""
        with self._lock:
            state = self._partitions.get(partition)
            if state is None or state.generation != generation or position not in state.pending:
                return None
            state.pending[position][0] = True
            last = None
            while state.pending:
                first, (finished, token) = next(iter(state.pending.items()))
                if not finished:
                    break
                state.pending.popitem(last=False)
                last = (first, token)
            return last


class HoldBack:
    """Received messages whose not-before time lies in the future, kept in memory (and
    uncommitted) until they are due."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[datetime, int, Message]] = []
        self._order = itertools.count()

    def add(self, message: Message, not_before: datetime) -> None:
        with self._lock:
            heapq.heappush(self._heap, (not_before, next(self._order), message))

    def admit(self, message: Message, not_before: datetime | None, now: datetime) -> bool:
        """True when ``message`` may be handed out now; otherwise it is kept until it is due."""
        if not_before is not None and not_before > now:
            self.add(message, not_before)
            return False
        return True

    def due(self, now: datetime, limit: int, alive: Callable[[Message], bool]) -> list[Message]:
        """Up to ``limit`` messages due at ``now``, oldest first; messages that are no longer
        ``alive`` (their partition went to another consumer) are dropped on the way."""
        ready: list[Message] = []
        with self._lock:
            while self._heap and len(ready) < limit and self._heap[0][0] <= now:
                message = heapq.heappop(self._heap)[2]
                if alive(message):
                    ready.append(message)
        return ready

    def next_due(self) -> datetime | None:
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)
