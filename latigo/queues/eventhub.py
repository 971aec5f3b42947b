"""Tasks on Azure Event Hubs through the azure-eventhub SDK (AMQP), with partition ownership
and checkpoints kept in the Latigo database.

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
The consumer starts at the first ``receive``, so a scheduler that only publishes never
takes partitions. Run at most as many executors as the hub has partitions: the SDK's
synchronous processor (azure-eventhub 5.15) loops without pause, a CPU core busy, while it
owns no partition.

A checkpoint is written only when a task is acknowledged, and only up to the first event of
its partition still in flight, because a checkpoint covers every earlier event (see
latigo.queues.partitions). ``release`` sends a copy to the same partition marked with its
delivery count and a not-before time, then acknowledges the original; the copy is held in
memory until due. The trade-offs are the Kafka backend's (latigo.queues.kafka): held and
crashed-handler messages stop their partition's checkpoint, ``deliveries`` counts releases,
``close`` is final (``stop_receiving`` first, for a graceful shutdown), and ``depth`` (last
enqueued sequence number minus checkpoint, summed) is best effort. Events older than the
hub's retention are gone, whatever the checkpoint.

No Event Hubs can run on a developer machine (the Docker-only emulator aside), so the tests
meet the SDK at its client boundary: ``producer_factory`` and ``consumer_factory`` build the
SDK's clients and tests pass stand-ins for the network.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import monotonic
from typing import Any

from azure.eventhub import (
    CheckpointStore,
    EventData,
    EventHubConsumerClient,
    EventHubProducerClient,
    parse_connection_string,
)
from azure.eventhub.exceptions import AuthenticationError, EventDataError, EventHubError
from sqlalchemy import Engine, and_, select, update

from latigo import db
from latigo.clock import Clock, system_clock
from latigo.config import EventHubQueueConfig
from latigo.errors import LatigoError, PermanentError, TransientError
from latigo.queues import Message, TaskQueue
from latigo.queues.partitions import HoldBack, PartitionTracker, read_marks, retry_marks
from latigo.schema import eventhub_checkpoints, eventhub_ownership

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
# errors that retrying cannot cure
PERMANENT_ERRORS = (AuthenticationError, EventDataError)

ProducerFactory = Callable[[], Any]
ConsumerFactory = Callable[[CheckpointStore], Any]


def translate(error: Exception, what: str) -> LatigoError:
    """An SDK error as the executor's error class."""
    text = f"event hubs: {what}: {error.__class__.__name__}: {error}"[:1000]
    if isinstance(error, PERMANENT_ERRORS):
        return PermanentError(text)
    return TransientError(text)


def partition_for(key: str, partition_ids: Sequence[str]) -> str:
    """The partition a key's tasks go to: stable across processes and releases."""
    return partition_ids[zlib.crc32(key.encode()) % len(partition_ids)]


def _timestamp(moment: datetime) -> float:
    return moment.timestamp()


# --- the checkpoint store ---------------------------------------------------------------


class SqlCheckpointStore(CheckpointStore):
    """The SDK's CheckpointStore in the Latigo database (SQLite or PostgreSQL).

    Ownership is claimed with optimistic concurrency: a claim without an etag inserts a row
    and fails if one exists; a claim with an etag updates the row only if its etag is still
    that one, and gives it a new etag. Whoever loses a race is simply not given the
    partition, which is what the SDK's load balancing expects."""

    def __init__(self, engine: Engine, clock: Clock = system_clock) -> None:
        self._engine = engine
        self._clock = clock

    @staticmethod
    def _scope(table, namespace: str, eventhub: str, consumer_group: str):
        return and_(
            table.c.namespace == namespace,
            table.c.eventhub == eventhub,
            table.c.consumer_group == consumer_group,
        )

    def list_ownership(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> list[dict[str, Any]]:
        query = select(eventhub_ownership).where(
            self._scope(eventhub_ownership, fully_qualified_namespace, eventhub_name, consumer_group)
        )
        with db.translate_outage("the checkpoint store"), self._engine.connect() as connection:
            return [self._ownership(row) for row in connection.execute(query)]

    def claim_ownership(self, ownership_list: Iterable[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
        claimed = []
        with db.translate_outage("the checkpoint store"), self._engine.begin() as connection:
            for wanted in ownership_list:
                now = self._clock()
                etag = str(uuid.uuid4())
                values = {"owner_id": wanted.get("owner_id") or "", "etag": etag, "last_modified": now}
                key = {
                    "namespace": wanted["fully_qualified_namespace"],
                    "eventhub": wanted["eventhub_name"],
                    "consumer_group": wanted["consumer_group"],
                    "partition_id": wanted["partition_id"],
                }
                if wanted.get("etag") is None:
                    won = bool(db.insert_new(connection, eventhub_ownership, [{**key, **values}]))
                else:
                    won = self._update_if_unchanged(connection, key, wanted["etag"], values)
                if won:
                    claimed.append(
                        {
                            **wanted,
                            "owner_id": values["owner_id"],
                            "etag": etag,
                            "last_modified_time": _timestamp(now),
                        }
                    )
        return claimed

    @staticmethod
    def _update_if_unchanged(connection, key: dict[str, str], etag: str, values: dict[str, Any]) -> bool:
        statement = (
            update(eventhub_ownership)
            .where(*(eventhub_ownership.c[name] == value for name, value in key.items()))
            .where(eventhub_ownership.c.etag == etag)
            .values(**values)
        )
        return connection.execute(statement).rowcount == 1

    def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        row = {
            "namespace": checkpoint["fully_qualified_namespace"],
            "eventhub": checkpoint["eventhub_name"],
            "consumer_group": checkpoint["consumer_group"],
            "partition_id": checkpoint["partition_id"],
            "event_offset": None if checkpoint.get("offset") is None else str(checkpoint["offset"]),
            "sequence_number": int(checkpoint["sequence_number"]),
            "updated_at": self._clock(),
        }
        with db.translate_outage("the checkpoint store"), self._engine.begin() as connection:
            db.upsert(connection, eventhub_checkpoints, [row])

    def list_checkpoints(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> list[dict[str, Any]]:
        query = select(eventhub_checkpoints).where(
            self._scope(eventhub_checkpoints, fully_qualified_namespace, eventhub_name, consumer_group)
        )
        with db.translate_outage("the checkpoint store"), self._engine.connect() as connection:
            return [
                {
                    "fully_qualified_namespace": row.namespace,
                    "eventhub_name": row.eventhub,
                    "consumer_group": row.consumer_group,
                    "partition_id": row.partition_id,
                    "offset": row.event_offset,
                    "sequence_number": row.sequence_number,
                }
                for row in connection.execute(query)
            ]

    @staticmethod
    def _ownership(row) -> dict[str, Any]:
        return {
            "fully_qualified_namespace": row.namespace,
            "eventhub_name": row.eventhub,
            "consumer_group": row.consumer_group,
            "partition_id": row.partition_id,
            "owner_id": row.owner_id,
            "etag": row.etag,
            "last_modified_time": _timestamp(row.last_modified),
        }


# --- the queue --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Receipt:
    partition_id: str
    sequence_number: int
    generation: int


def _body(event: EventData) -> bytes:
    body = event.body
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    try:
        return b"".join(bytes(section) for section in body)
    except TypeError:
        return str(body).encode()


class EventHubQueue(TaskQueue):
    def __init__(
        self,
        settings: EventHubQueueConfig,
        engine: Engine,
        *,
        producer_factory: ProducerFactory | None = None,
        consumer_factory: ConsumerFactory | None = None,
        clock: Clock = system_clock,
    ) -> None:
        secret = settings.connection_string.get_secret_value()
        if not secret:
            raise PermanentError("queue.connection_string is required for the eventhub queue")
        try:
            namespace = parse_connection_string(secret).fully_qualified_namespace
        except ValueError:
            raise PermanentError("queue.connection_string is not an Event Hubs connection string") from None
        self._scope = (namespace, settings.eventhub_name, settings.consumer_group)
        self._poll_s = settings.poll_interval.total_seconds()
        self._clock = clock
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
        self._lock = threading.Lock()  # creating and closing clients
        self._checkpoint_lock = threading.Lock()  # checkpoints in order, so they never go back
        self._producer: Any = None
        self._partition_ids: list[str] | None = None
        self._consumer: Any = None
        self._receiver: threading.Thread | None = None
        self._receiver_error: BaseException | None = None
        self._closed = threading.Event()
        self._stopped = threading.Event()  # stop_receiving(): no more messages handed out
        self._inbox: queue.Queue[tuple[Message, datetime | None]] = queue.Queue(maxsize=PREFETCH)
        # token per received event: the SDK's partition context and the event, to checkpoint it
        self._tracker: PartitionTracker[tuple[Any, EventData]] = PartitionTracker()
        self._held = HoldBack()
        # checkpoints acknowledged but not yet written (a write failed), per partition
        self._unwritten: dict[str, tuple[Any, EventData]] = {}

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
                try:
                    self._partition_ids = list(self._producer.get_partition_ids())
                except EventHubError as error:
                    raise translate(error, "listing partitions") from None
            return self._producer

    def publish(self, bodies: Sequence[bytes], keys: Sequence[str] | None = None) -> None:
        if keys is not None and len(keys) != len(bodies):
            raise ValueError(f"{len(bodies)} bodies but {len(keys)} keys")
        if not bodies:
            return
        self._producer_ready()
        ids = self._partition_ids or []
        by_partition: dict[str, list[EventData]] = {}
        for index, body in enumerate(bodies):
            partition = partition_for(keys[index], ids) if keys is not None else ids[index % len(ids)]
            by_partition.setdefault(partition, []).append(EventData(body))
        self._send(by_partition)

    def _send(self, by_partition: dict[str, list[EventData]]) -> None:
        """One batch per partition, split when full; the events of a partition keep their order."""
        producer = self._producer_ready()
        try:
            for partition, events in by_partition.items():
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
        except EventHubError as error:
            raise translate(error, "publishing") from None

    # -- receiving ---------------------------------------------------------------------

    def _receiving(self) -> bool:
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
        self._tracker.assign(context.partition_id)
        log.info("event hubs: receiving partition %s", context.partition_id)

    def _on_partition_close(self, context: Any, reason: Any) -> None:
        """Another executor takes the partition over (or we stop): what is in flight here is
        delivered again there, from the last checkpoint."""
        with self._checkpoint_lock:
            self._tracker.revoke(context.partition_id)
            self._unwritten.pop(context.partition_id, None)
        log.info("event hubs: stopped receiving partition %s (%s)", context.partition_id, reason)

    def _on_error(self, context: Any, error: Exception) -> None:
        where = f"partition {context.partition_id}" if context is not None else "load balancing"
        log.warning("event hubs: %s: %s", where, error)

    def _on_event(self, context: Any, event: EventData | None) -> None:
        if event is None:
            return
        generation = self._tracker.received(context.partition_id, event.sequence_number, (context, event))
        if generation is None:
            return
        deliveries, not_before = read_marks(event.properties.items() if event.properties else ())
        receipt = _Receipt(context.partition_id, event.sequence_number, generation)
        item = (Message(body=_body(event), deliveries=deliveries, receipt=receipt), not_before)
        while not self._closed.is_set():  # back-pressure: the SDK's thread waits for room
            try:
                self._inbox.put(item, timeout=INBOX_PUT_S)
                return
            except queue.Full:
                continue

    def receive(self, max_messages: int, wait: timedelta) -> list[Message]:
        deadline = monotonic() + wait.total_seconds()
        if max_messages <= 0 or self._stopped.is_set() or not self._receiving():
            return []
        while True:
            ready = self._held.due(self._clock(), max_messages, self._alive)
            if len(ready) < max_messages:
                ready += self._take(max_messages - len(ready), 0.0 if ready else self._slice(deadline))
            if ready or monotonic() >= deadline or self._stopped.is_set() or self._closed.is_set():
                return ready

    def stop_receiving(self) -> None:
        """Hand out no more messages (a waiting receive() returns within ``poll_interval``);
        the messages in hand can still be acknowledged or released until close(). The first
        step of a graceful shutdown."""
        self._stopped.set()

    def _slice(self, deadline: float) -> float:
        seconds = min(deadline - monotonic(), self._poll_s)
        due = self._held.next_due()
        if due is not None:
            seconds = min(seconds, (due - self._clock()).total_seconds())
        return max(0.0, seconds)

    def _take(self, limit: int, timeout: float) -> list[Message]:
        """The first event from the inbox (waiting up to ``timeout``) and what else is there."""
        items = []
        try:
            items.append(self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait())
            while len(items) < limit:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        ready = []
        now = self._clock()
        for message, not_before in items:
            if not self._alive(message):
                continue
            if self._held.admit(message, not_before, now):
                ready.append(message)
        return ready

    def _alive(self, message: Message) -> bool:
        return self._tracker.current(message.receipt.partition_id, message.receipt.generation)

    # -- acknowledging -----------------------------------------------------------------

    def ack(self, message: Message) -> None:
        receipt: _Receipt = message.receipt
        with self._checkpoint_lock:
            last = self._tracker.done(receipt.partition_id, receipt.generation, receipt.sequence_number)
            if last is not None:
                self._unwritten[receipt.partition_id] = last[1]
                self._write_checkpoint(receipt.partition_id)

    def _write_checkpoint(self, partition_id: str) -> None:
        """Checkpoint the partition's last acknowledged prefix (the checkpoint lock is held).
        A failed write is logged, not raised: it is written with the next acknowledgement; until
        then, at worst, a message is delivered again."""
        context, event = self._unwritten[partition_id]
        try:
            context.update_checkpoint(event)
        except LatigoError as error:
            log.warning(
                "event hubs: checkpoint of partition %s not written, retried with the next: %s",
                partition_id,
                error,
            )
            return
        del self._unwritten[partition_id]

    def release(self, message: Message, delay: timedelta = timedelta(0)) -> None:
        receipt: _Receipt = message.receipt
        if not self._alive(message):
            log.debug("released a message of a partition no longer ours: its new owner delivers it again")
            return
        copy = EventData(message.body)
        copy.properties = retry_marks(message.deliveries + 1, self._clock() + delay)
        self._send({receipt.partition_id: [copy]})
        self.ack(message)

    # -- status and shutdown -----------------------------------------------------------

    def depth(self) -> int:
        """Events after each partition's checkpoint, summed (events not yet retained excluded)."""
        producer = self._producer_ready()
        checkpoints = {
            row["partition_id"]: row["sequence_number"] for row in self.checkpoints.list_checkpoints(*self._scope)
        }
        total = 0
        try:
            for partition in self._partition_ids or []:
                properties = producer.get_partition_properties(partition)
                if properties["is_empty"]:
                    continue
                done = max(checkpoints.get(partition, -1), properties["beginning_sequence_number"] - 1)
                total += max(0, properties["last_enqueued_sequence_number"] - done)
        except EventHubError as error:
            raise translate(error, "measuring the queue depth") from None
        return total

    def close(self) -> None:
        """Stop receiving (the SDK gives up its partitions), close the clients."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        with self._checkpoint_lock:
            for partition_id in list(self._unwritten):
                self._write_checkpoint(partition_id)
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
