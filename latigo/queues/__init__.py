"""Task queues: the scheduler publishes tasks, executors receive and acknowledge them.

Every backend gives at-least-once delivery: a received message stays owned by its
receiver until ``ack`` (done: never delivered again) or ``release`` (delivered again after
``delay``); a receiver that dies without either has its messages delivered again. Retry
and dead-letter policy live in the executor, so every backend behaves the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any


@dataclass(frozen=True)
class Message:
    body: bytes
    # how many times this message has been handed out, this time included
    deliveries: int
    # the backend's own handle (row id and lease token, partition and offset, ...)
    receipt: Any = field(repr=False, compare=False)


class TaskQueue(ABC):
    @abstractmethod
    def publish(self, bodies: Sequence[bytes], keys: Sequence[str] | None = None) -> None:
        """Enqueue many messages in one batched operation. ``keys`` (one per body, the
        task's ``project/model``) let partitioned backends keep a model's tasks together."""

    @abstractmethod
    def receive(self, max_messages: int, wait: timedelta) -> list[Message]:
        """Up to ``max_messages`` messages, waiting at most ``wait`` for the first one."""

    @abstractmethod
    def ack(self, message: Message) -> None:
        """The message is handled: never deliver it again."""

    @abstractmethod
    def release(self, message: Message, delay: timedelta = timedelta(0)) -> None:
        """Give the message back, to be delivered again after ``delay``."""

    @abstractmethod
    def depth(self) -> int:
        """Messages waiting or in flight (for status and metrics)."""

    def stop_receiving(self) -> None:
        """Hand out no more messages (a waiting ``receive`` returns soon); messages in hand
        can still be acknowledged or released until ``close``. For queues whose ``close``
        does just that, it is ``close``."""
        self.close()

    def close(self) -> None:
        """Release connections."""
