"""Tasks on Azure Event Hubs through the azure-eventhub SDK (AMQP), with partition ownership
and checkpoints kept in the Latigo database (latigo.queues.eventhub_checkpoints).

Publishing: a task goes to the partition its key (``project/model``) picks, so a model's
tasks stay together and in order. Event Hubs batches share one partition key, so keying
batches by model would cost one send per model every tick; instead the key picks the
partition (a stable hash over the hub's partitions, ``partition_for``) and the batches go
per partition, split when full: a send per partition, whatever the number of models.

Receiving: every executor runs the SDK's EventHubConsumerClient, which balances the hub's
partitions among the executors of the consumer group through a checkpoint store; ours,
``SqlCheckpointStore``, keeps ownership (claimed with optimistic concurrency on an etag)
and checkpoints in the Latigo database, so no Azure storage account is needed. A partition
whose owner stops renewing its claim is taken over after OWNERSHIP_EXPIRY_S, from its last
checkpoint. The SDK calls back with each event from its own thread; a bounded in-memory
inbox bridges that to ``receive`` (when it is full, the SDK's thread waits: back-pressure).
Run at most as many executors as the hub has partitions: the SDK's synchronous processor
(azure-eventhub 5.15) loops without pause, a CPU core busy, while it owns no partition.

A checkpoint is written only when a task is acknowledged, and only up to the first event of
its partition still in flight. Receiving, holding back, acknowledging and releasing (a
marked copy sent to the same partition) are latigo.queues.partitioned's, with the trade-offs
of a log that it lists. Besides those: ``close`` writes the checkpoints still unwritten and
gives the partitions up; ``depth`` (last enqueued sequence number minus checkpoint, summed)
is best effort; events older than the hub's retention are gone, whatever the checkpoint.
SDK errors become TransientError, or PermanentError when retrying cannot help: the table
ERRORS, applied by ``errors.translated`` around every call to the service.

No Event Hubs can run on a developer machine (the Docker-only emulator aside), so the tests
meet the SDK at its client boundary: ``producer_factory`` and ``consumer_factory`` build the
SDK's clients and tests pass stand-ins for the network.
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from azure.eventhub import (
    CheckpointStore,
    EventData,
    EventHubConsumerClient,
    EventHubProducerClient,
    parse_connection_string,
)
from azure.eventhub.exceptions import AuthenticationError, EventDataError, EventHubError
from sqlalchemy import Engine

from latigo.clock import Clock, system_clock
from latigo.config import EventHubQueueConfig
from latigo.errors import Caught, LatigoError, PermanentError, TransientError, translated
from latigo.queues import Message
from latigo.queues.eventhub_checkpoints import SqlCheckpointStore
from latigo.queues.partitioned import PartitionedQueue, Receipt, Record

log = logging.getLogger(__name__)

# seconds between the SDK's ownership claims (it renews its own and takes free partitions)
LOAD_BALANCING_S = 10.0
# seconds after its last claim that a silent owner's partitions may be taken over
OWNERSHIP_EXPIRY_S = 60.0
# events the SDK fetches ahead per partition, and events the inbox holds for receive()
PREFETCH = 300
# seconds one send may take (the SDK retries within it)
SEND_TIMEOUT_S = 30.0
# retries the SDK makes on its own for a failed operation; management calls (partition ids
# and properties) have no timeout of their own and are bounded by these and AUTH_TIMEOUT_S
RETRIES = 3
# seconds the SDK may take to authenticate a connection
AUTH_TIMEOUT_S = 30.0
# seconds the SDK's thread waits at a time for room in a full inbox
INBOX_PUT_S = 0.5
# seconds close() waits for the SDK's receiving thread to end
CLOSE_TIMEOUT_S = 30.0
# what an SDK exception becomes, the first matching row deciding (EventHubError is the base of
# all the SDK's errors: whatever else it raises is worth retrying)
ERRORS = (
    Caught((AuthenticationError, EventDataError), PermanentError, "event hubs: {what}: {name}: {error!s:.900}"),
    Caught(EventHubError, TransientError, "event hubs: {what}: {name}: {error!s:.900}"),
)

ProducerFactory = Callable[[], Any]
ConsumerFactory = Callable[[CheckpointStore], Any]


def partition_for(key: str, partition_ids: Sequence[str]) -> str:
    """The partition a key's tasks go to: stable across processes and releases."""
    return partition_ids[zlib.crc32(key.encode()) % len(partition_ids)]


class _Receipt(Receipt[str]):
    """An event's place, in Event Hubs' words."""

    @property
    def partition_id(self) -> str:
        return self.where

    @property
    def sequence_number(self) -> int:
        return self.position


def _body(event: EventData) -> bytes:
    body: Any = event.body  # bytes, or the sections of a data body: the SDK's annotation is wider
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    try:
        return b"".join(bytes(section) for section in body)
    except TypeError:
        return str(body).encode()


# what a received event needs to be checkpointed: the SDK's partition context, and the event
_Checkpoint = tuple[Any, EventData]


class EventHubQueue(PartitionedQueue[str, _Checkpoint]):
    label = "event hubs"
    receipt_type = _Receipt

    def __init__(
        self,
        settings: EventHubQueueConfig,
        engine: Engine,
        *,
        producer_factory: ProducerFactory | None = None,
        consumer_factory: ConsumerFactory | None = None,
        clock: Clock = system_clock,
    ) -> None:
        super().__init__(poll_interval=settings.poll_interval, clock=clock)
        secret = settings.connection_string.get_secret_value()
        if not secret:
            raise PermanentError("queue.connection_string is required for the eventhub queue")
        try:
            namespace = parse_connection_string(secret).fully_qualified_namespace
        except ValueError:
            raise PermanentError("queue.connection_string is not an Event Hubs connection string") from None
        self._scope = (namespace, settings.eventhub_name, settings.consumer_group)
        self.checkpoints = SqlCheckpointStore(engine, clock)
        self._producer_factory = producer_factory or (
            lambda: EventHubProducerClient.from_connection_string(
                secret, eventhub_name=settings.eventhub_name, retry_total=RETRIES, auth_timeout=AUTH_TIMEOUT_S
            )
        )
        self._consumer_factory = consumer_factory or (
            lambda store: EventHubConsumerClient.from_connection_string(
                secret,
                settings.consumer_group,
                eventhub_name=settings.eventhub_name,
                checkpoint_store=store,
                load_balancing_interval=LOAD_BALANCING_S,
                partition_ownership_expiration_interval=OWNERSHIP_EXPIRY_S,
                retry_total=RETRIES,
                auth_timeout=AUTH_TIMEOUT_S,
            )
        )
        self._producer: Any = None
        self._partition_ids: list[str] | None = None
        self._consumer: Any = None
        self._receiver: threading.Thread | None = None
        self._receiver_error: BaseException | None = None
        self._inbox: queue.Queue[tuple[Message, datetime | None]] = queue.Queue(maxsize=PREFETCH)

    def __repr__(self) -> str:  # never the settings: they hold the connection string
        return "EventHubQueue(namespace={!r}, eventhub={!r}, consumer_group={!r})".format(*self._scope)

    # -- publishing --------------------------------------------------------------------

    def _producer_ready(self) -> Any:
        with self._lock:
            if self._closed.is_set():
                raise TransientError("event hubs: the queue is closed")
            if self._producer is None:
                self._producer = self._producer_factory()
            if self._partition_ids is None:
                with translated(ERRORS, what="listing partitions"):
                    self._partition_ids = list(self._producer.get_partition_ids())
            return self._producer

    def _send(self, records: Sequence[Record]) -> None:
        """One batch per partition, split when full; the events of a partition keep their
        order. A record goes to the partition it names, else its key's, else round robin."""
        producer = self._producer_ready()
        ids = self._partition_ids or []
        by_partition: dict[str, list[EventData]] = {}
        for index, record in enumerate(records):
            if record.partition is not None:
                partition = str(record.partition)
            elif record.key is not None:
                key = record.key.decode() if isinstance(record.key, bytes) else record.key
                partition = partition_for(key, ids)
            else:
                partition = ids[index % len(ids)]
            event = EventData(record.body)
            if record.marks is not None:
                properties: dict[str | bytes, Any] = {key: value for key, value in record.marks.items()}
                event.properties = properties
            by_partition.setdefault(partition, []).append(event)
        with translated(ERRORS, what="publishing"):
            for partition, events in by_partition.items():
                self._send_partition(producer, partition, events)

    @staticmethod
    def _send_partition(producer: Any, partition: str, events: list[EventData]) -> None:
        batch = producer.create_batch(partition_id=partition)
        for event in events:
            try:
                batch.add(event)
            except ValueError as error:  # full: send it, start the next
                if len(batch) == 0:
                    raise PermanentError(
                        f"event hubs: a message of {len(_body(event))} bytes does not fit in a batch: {error}"
                    ) from None
                producer.send_batch(batch, timeout=SEND_TIMEOUT_S)
                batch = producer.create_batch(partition_id=partition)
                batch.add(event)
        if len(batch):
            producer.send_batch(batch, timeout=SEND_TIMEOUT_S)

    # -- receiving ---------------------------------------------------------------------

    def _start(self) -> bool:
        """Start (or restart, after it failed) the SDK's receiving thread; False once closed."""
        with self._lock:
            if self._closed.is_set():
                return False
            if self._receiver is not None and self._receiver.is_alive():
                return True
            if self._receiver is not None:
                log.warning("event hubs: the receiver stopped (%r); starting it again", self._receiver_error)
                self._close_quietly("consumer", self._consumer)
            self._consumer = self._consumer_factory(self.checkpoints)
            self._receiver = threading.Thread(
                target=self._receive_events, args=(self._consumer,), name="eventhub-receiver", daemon=True
            )
            self._receiver.start()
            return True

    def _receive_events(self, consumer: Any) -> None:
        try:
            consumer.receive(
                on_event=self._on_event,
                on_partition_initialize=self._on_partition_initialize,
                on_partition_close=self._on_partition_close,
                on_error=self._on_error,
                starting_position="-1",  # no checkpoint yet: from the oldest event retained
                prefetch=PREFETCH,
            )
        except Exception as error:  # receive() again restarts it
            self._receiver_error = error
            log.error("event hubs: receiving failed: %s", error)

    def _on_partition_initialize(self, context: Any) -> None:
        self._assigned(context.partition_id)
        log.info("event hubs: receiving partition %s", context.partition_id)

    def _on_partition_close(self, context: Any, reason: Any) -> None:
        """Another executor takes the partition over (or we stop): what is in flight here is
        delivered again there, from the last checkpoint."""
        self._revoked([context.partition_id], commit=False)
        log.info("event hubs: stopped receiving partition %s (%s)", context.partition_id, reason)

    def _on_error(self, context: Any, error: Exception) -> None:
        where = f"partition {context.partition_id}" if context is not None else "load balancing"
        log.warning("event hubs: %s: %s", where, error)

    def _on_event(self, context: Any, event: EventData | None) -> None:
        if event is None:
            return
        properties = event.properties.items() if event.properties else ()
        if event.sequence_number is None:  # only events not yet sent have none
            return
        item = self._received(context.partition_id, event.sequence_number, (context, event), _body(event), properties)
        if item is None:
            return
        while not self._closed.is_set():  # back-pressure: the SDK's thread waits for room
            try:
                self._inbox.put(item, timeout=INBOX_PUT_S)
                return
            except queue.Full:
                continue

    def _poll(self, limit: int, timeout: float) -> list[tuple[Message, datetime | None]]:
        """The first event from the inbox (waiting up to ``timeout``) and what else is there."""
        items = []
        try:
            items.append(self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait())
            while len(items) < limit:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return items

    # -- committing --------------------------------------------------------------------

    def _commit(self, positions: Mapping[str, tuple[int, _Checkpoint]]) -> dict[str, str]:
        """Checkpoint each partition at its last acknowledged event."""
        failed = {}
        for partition_id, (_, (context, event)) in positions.items():
            try:
                context.update_checkpoint(event)
            except LatigoError as error:  # the checkpoint store's database is down
                failed[partition_id] = str(error)
        return failed

    # -- status and shutdown -----------------------------------------------------------

    def depth(self) -> int:
        """Events after each partition's checkpoint, summed (events not yet retained excluded)."""
        producer = self._producer_ready()
        checkpoints = {
            row["partition_id"]: row["sequence_number"] for row in self.checkpoints.list_checkpoints(*self._scope)
        }
        total = 0
        with translated(ERRORS, what="measuring the queue depth"):
            for partition in self._partition_ids or []:
                properties = producer.get_partition_properties(partition)
                if properties["is_empty"]:
                    continue
                done = max(checkpoints.get(partition, -1), properties["beginning_sequence_number"] - 1)
                total += max(0, properties["last_enqueued_sequence_number"] - done)
        return total

    def _disconnect(self) -> None:
        """Write the checkpoints still unwritten, stop receiving (the SDK gives up its
        partitions), close the clients."""
        self._commit_all()
        self._close_quietly("consumer", self._consumer)
        self._close_quietly("producer", self._producer)
        if self._receiver is not None:
            self._receiver.join(CLOSE_TIMEOUT_S)
            if self._receiver.is_alive():
                log.warning("event hubs: the receiving thread did not stop within %.0fs", CLOSE_TIMEOUT_S)

    @staticmethod
    def _close_quietly(name: str, client: Any) -> None:
        if client is None:
            return
        try:
            client.close()
        except Exception as error:  # closing must not fail the shutdown
            log.warning("event hubs: closing the %s: %s", name, error)
