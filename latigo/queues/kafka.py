"""Tasks on a Kafka topic, through confluent-kafka (librdkafka): Apache Kafka, or Azure Event
Hubs' Kafka endpoint.

(Just over 400 lines, most of them this docstring and the comments on librdkafka's
delivery and rebalance rules, which belong next to the code that relies on them.)

Publishing: one idempotent producer (``acks=all``). Every task is keyed by its
``project/model``, so a model's tasks share a partition. ``publish`` produces the whole batch,
then waits once, bounded, until the broker has confirmed every message; what it could not
confirm is a TransientError (the scheduler publishes again; a task delivered twice is
harmless, storage is idempotent).

Receiving: the executors share one consumer group, and Kafka splits the topic's partitions
among them (cooperative-sticky, so a newcomer does not stop everyone's work); a consumer
that leaves or dies has its partitions handed to the others, from the last committed
offset. Offsets are committed by hand, only after a task is handled, up to the first
message still in flight. Receiving, holding back, acknowledging and releasing are
latigo.queues.partitioned's, with the trade-offs of a log that it lists; a released copy
keeps its original's key, so it lands on the same partition. Besides those:

- ``close`` leaves the group, committing what is acknowledged.
- ``depth`` is the group's lag: high watermark minus committed offset, summed over the
  partitions, so it counts messages waiting, in flight and held back. Best effort: Tansu
  (the broker the tests use) reports a partition's high watermark as the first offset of
  its last record batch plus one, so there it under-counts batched messages.
- A consumer that does not poll for ``max.poll.interval.ms`` is put out of the group, and an
  executor whose slots are all busy does not poll: it is 15 minutes here, longer than the
  default ``executor.task_deadline``; keep it so (``queue.options``) if you raise the deadline.

Azure Event Hubs: set ``queue.connection_string`` to the namespace's connection string and
the servers and SASL_SSL settings follow from it (latigo.queues.kafka_clients); the topic
is an event hub of that namespace (created with ``queue.partitions`` if the policy allows).

Every call that waits has a timeout: publishing (``message.timeout.ms`` plus a margin),
polling (``queue.poll_interval`` at a time), metadata, offsets and topic creation
(OPERATION_TIMEOUT_S); commits are bounded by librdkafka's request and session timeouts.
Broker errors become TransientError, or PermanentError when retrying cannot help
(authorisation, oversized messages, invalid settings, fatal client errors): the table
``kafka_clients.ERRORS``, applied by ``kafka_clients.broker_errors``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from time import monotonic
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from latigo.clock import Clock, system_clock
from latigo.config import KafkaQueueConfig
from latigo.errors import PermanentError, TransientError
from latigo.queues import Message
from latigo.queues.kafka_clients import broker_errors, client_settings, for_client, kafka_error, translate
from latigo.queues.partitioned import PartitionedQueue, Receipt, Record

log = logging.getLogger(__name__)
# librdkafka's own log lines, routed through Python logging
client_log = logging.getLogger(f"{__name__}.librdkafka")

# seconds any metadata, offsets or admin call may take
OPERATION_TIMEOUT_S = 10.0
# how long the broker has to confirm a published message (librdkafka message.timeout.ms)
PUBLISH_TIMEOUT_MS = 30_000
# seconds publish waits beyond message.timeout.ms for librdkafka's own timeout to report
PUBLISH_MARGIN_S = 5.0
# seconds one flush call may block while publish waits for confirmations
FLUSH_SLICE_S = 1.0
# milliseconds the producer waits to fill a batch
LINGER_MS = 5
# seconds close() waits for the producer to flush
CLOSE_TIMEOUT_S = 10.0
# how long a consumer may go without polling before the group puts it out (see the docstring)
MAX_POLL_INTERVAL_MS = 15 * 60 * 1000
# what topic creation may answer when it cannot create (the topic may exist nevertheless)
_CANNOT_CREATE = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.POLICY_VIOLATION,
    }
)


class _Receipt(Receipt[tuple[str, int]]):
    """A record's place, in Kafka's words."""

    @property
    def topic(self) -> str:
        return self.where[0]

    @property
    def partition(self) -> int:
        return self.where[1]

    @property
    def offset(self) -> int:
        return self.position


class _Deliveries:
    """The broker's confirmations of one publish call."""

    def __init__(self, expected: int) -> None:
        self.pending = expected
        self.errors: list[KafkaError] = []
        self.complete = threading.Event()
        self._lock = threading.Lock()
        if expected == 0:
            self.complete.set()

    def __call__(self, error: KafkaError | None, _record: Any) -> None:
        with self._lock:
            if error is not None:
                self.errors.append(error)
            self.pending -= 1
            if self.pending == 0:
                self.complete.set()


class KafkaQueue(PartitionedQueue[tuple[str, int], None]):
    label = "kafka"
    receipt_type = _Receipt

    def __init__(self, settings: KafkaQueueConfig, *, clock: Clock = system_clock) -> None:
        super().__init__(poll_interval=settings.poll_interval, clock=clock)
        self._topic = settings.topic
        self._group = settings.group_id
        self._partitions = settings.partitions
        # raises PermanentError on a bad connection string before any client exists
        self._common = client_settings(settings)
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._probe: Consumer | None = None  # offsets for depth(), never in the group
        self._topic_ready = False
        self._fatal: KafkaError | None = None

    def __repr__(self) -> str:  # never the settings: they may hold the connection string
        return f"KafkaQueue(topic={self._topic!r}, group={self._group!r})"

    # -- clients ---------------------------------------------------------------------

    def _client_config(
        self, kind: str, defaults: dict[str, Any], required: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A client's settings (kafka_clients.for_client) and our callbacks."""
        config = for_client(kind, defaults, self._common, required)
        return {**config, "error_cb": self._on_client_error, "logger": client_log}

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
            log.error("kafka client failed for good: %s", error.str())
        else:  # librdkafka retries by itself (brokers down, connections reset)
            log.warning("kafka: %s", error.str())

    def _check_fatal(self) -> None:
        if self._fatal is not None:
            raise translate(self._fatal, "the client failed earlier")

    def _ensure_topic(self) -> None:
        """Create the topic with ``queue.partitions`` partitions if it does not exist. The
        list of all topics is read first: asking for one topic's metadata makes brokers with
        automatic topic creation create it with their default partition count."""
        if self._topic_ready:
            return
        admin = self._new(AdminClient, self._client_config("admin", {}))
        try:
            with broker_errors(f"checking topic {self._topic}"):
                topics = admin.list_topics(timeout=OPERATION_TIMEOUT_S).topics
                found = topics.get(self._topic)
                if found is None or found.error is not None:
                    self._create_topic(admin)
        except FutureTimeout:
            raise TransientError(
                f"kafka: creating topic {self._topic} took more than {OPERATION_TIMEOUT_S * 2:.0f}s"
            ) from None
        self._topic_ready = True

    @staticmethod
    def _new(kind: type, config: dict[str, Any]) -> Any:
        """A librdkafka client; bad settings (``queue.options``) are a PermanentError."""
        with broker_errors(f"creating a {kind.__name__}"):
            return kind(config)

    def _create_topic(self, admin: AdminClient) -> None:
        topic = NewTopic(self._topic, num_partitions=self._partitions, replication_factor=-1)
        future = admin.create_topics(
            [topic], operation_timeout=OPERATION_TIMEOUT_S, request_timeout=OPERATION_TIMEOUT_S
        )[self._topic]
        try:
            future.result(timeout=OPERATION_TIMEOUT_S * 2)
            log.info("created topic %s with %d partitions", self._topic, self._partitions)
        except KafkaException as exception:
            error = kafka_error(exception)
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # another process was first
                return
            if error.code() in _CANNOT_CREATE:
                raise PermanentError(
                    f"kafka: topic {self._topic} does not exist and may not be created here "
                    f"({error.name()}): create it with {self._partitions} partitions"
                ) from None
            raise

    def _producer_ready(self) -> Producer:
        with self._lock:
            self._check_fatal()
            if self._closed.is_set():
                raise TransientError("kafka: the queue is closed")
            if self._producer is None:
                self._ensure_topic()
                self._producer = self._new(
                    Producer,
                    self._client_config(
                        "producer",
                        {
                            "acks": "all",
                            "enable.idempotence": True,
                            "linger.ms": LINGER_MS,
                            "message.timeout.ms": PUBLISH_TIMEOUT_MS,
                            # the partition of a key, as Java clients (and Kafka Streams) compute it
                            "partitioner": "murmur2_random",
                        },
                    ),
                )
            return self._producer

    def _subscribed(self) -> Consumer | None:
        with self._lock:
            self._check_fatal()
            if self._closed.is_set():
                return None
            if self._consumer is None:
                self._ensure_topic()
                consumer = self._new(
                    Consumer,
                    self._client_config(
                        "consumer",
                        {
                            "auto.offset.reset": "earliest",
                            "partition.assignment.strategy": "cooperative-sticky",
                            "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
                        },
                        {
                            "group.id": self._group,
                            "enable.auto.commit": False,
                            "enable.auto.offset.store": False,
                        },
                    ),
                )
                consumer.subscribe(
                    [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
                )
                self._consumer = consumer
            return self._consumer

    def _probe_consumer(self) -> Consumer:
        with self._lock:
            if self._closed.is_set():
                raise TransientError("kafka: the queue is closed")
            if self._probe is None:
                required = {"group.id": self._group, "enable.auto.commit": False}
                self._probe = self._new(Consumer, self._client_config("consumer", {}, required))
            return self._probe

    # -- publishing --------------------------------------------------------------------

    def _send(self, records: Sequence[Record]) -> None:
        """Produce every record (its key picks the partition), then wait (bounded) until the
        broker confirmed them all."""
        producer = self._producer_ready()
        deliveries = _Deliveries(len(records))
        timeout_s = float(self._common.get("message.timeout.ms", PUBLISH_TIMEOUT_MS)) / 1000 + PUBLISH_MARGIN_S
        deadline = monotonic() + timeout_s
        for record in records:
            headers = None if record.marks is None else [(name, value.encode()) for name, value in record.marks.items()]
            self._produce(producer, record.body, record.key, headers, deliveries, deadline)
        while not deliveries.complete.is_set() and monotonic() < deadline:
            producer.flush(max(0.0, min(FLUSH_SLICE_S, deadline - monotonic())))  # serves the confirmations
            deliveries.complete.wait(0.01)  # another thread's flush may be running our callbacks
        if not deliveries.complete.is_set():
            raise TransientError(
                f"kafka: {deliveries.pending} of {len(records)} messages not confirmed within {timeout_s:.0f}s"
            )
        if deliveries.errors:
            raise translate(deliveries.errors[0], f"{len(deliveries.errors)} of {len(records)} messages not published")

    def _produce(self, producer: Producer, body: bytes, key, headers, deliveries: _Deliveries, deadline: float) -> None:
        while True:
            try:
                with broker_errors("producing"):
                    producer.produce(self._topic, value=body, key=key, headers=headers, on_delivery=deliveries)
                return
            except BufferError:  # the local queue is full: let the broker drain it
                if monotonic() > deadline:
                    raise TransientError("kafka: the producer's queue stayed full") from None
                producer.poll(0.1)

    # -- receiving ---------------------------------------------------------------------

    def _start(self) -> bool:
        return self._subscribed() is not None

    def _poll(self, limit: int, timeout: float) -> list[tuple[Message, datetime | None]]:
        """Poll for the first record (returns as soon as one arrives), take what else is
        there at once."""
        consumer = self._consumer
        if consumer is None:  # closed meanwhile
            return []
        with broker_errors("receiving"):
            first = consumer.poll(timeout)
            if first is None:
                return []
            records = [first] + (consumer.consume(limit - 1, 0) if limit > 1 else [])
        received = []
        for record in records:
            error = record.error()
            if error is not None:
                self._record_error(error)
                continue
            topic, partition, offset = record.topic(), record.partition(), record.offset()
            if topic is None or partition is None or offset is None:  # only a produced record lacks them
                continue
            where = (topic, partition)
            item = self._received(where, offset, None, record.value() or b"", record.headers(), record.key())
            if item is None:  # librdkafka drops a revoked partition's records; be safe anyway
                log.debug("record of unassigned partition %s skipped", where)
                continue
            received.append(item)
        return received

    def _record_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        translated = translate(error, "receiving")
        if isinstance(translated, PermanentError):
            raise translated
        log.warning("kafka: receiving: %s", error.str())

    # -- committing --------------------------------------------------------------------

    def _commit(self, positions: Mapping[tuple[str, int], tuple[int, None]]) -> dict[tuple[str, int], str]:
        """Commit the offsets after these messages; only a fatal client error raises."""
        consumer = self._consumer
        if consumer is None:
            return dict.fromkeys(positions, "the consumer is closed")
        offsets = [TopicPartition(topic, partition, last + 1) for (topic, partition), (last, _) in positions.items()]
        try:
            results = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exception:
            error = kafka_error(exception)
            if error.fatal():
                raise translate(error, "committing") from None
            return dict.fromkeys(positions, error.str())
        return {
            (result.topic, result.partition): result.error.str()
            for result in results or offsets
            if result.error is not None
        }

    # -- group membership (called by librdkafka inside poll and close) ------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for partition in partitions:
            self._assigned((partition.topic, partition.partition))
        if partitions:  # a cooperative rebalance may assign nothing new
            log.info("kafka: assigned partitions %s of %s", sorted(p.partition for p in partitions), self._topic)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is acknowledged before another consumer takes over."""
        self._revoked([(partition.topic, partition.partition) for partition in partitions], commit=True)
        log.info("kafka: revoked partitions %s of %s", sorted(p.partition for p in partitions), self._topic)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost (session timed out): another consumer may own them already; commit nothing."""
        self._revoked([(partition.topic, partition.partition) for partition in partitions], commit=False)
        log.warning("kafka: lost partitions %s of %s", sorted(p.partition for p in partitions), self._topic)

    # -- status and shutdown -----------------------------------------------------------

    def depth(self) -> int:
        """The group's lag over all partitions (see the module docstring)."""
        probe = self._probe_consumer()
        with broker_errors("measuring the queue depth"):
            topic = probe.list_topics(timeout=OPERATION_TIMEOUT_S).topics.get(self._topic)
            if topic is None or topic.error is not None:
                return 0
            partitions = [TopicPartition(self._topic, number) for number in topic.partitions]
            committed = probe.committed(partitions, timeout=OPERATION_TIMEOUT_S)
            lag = 0
            for partition in committed:
                low, high = probe.get_watermark_offsets(
                    TopicPartition(self._topic, partition.partition), timeout=OPERATION_TIMEOUT_S
                )
                start = partition.offset if partition.offset >= 0 else low
                lag += max(0, high - start)
            return lag

    def _disconnect(self) -> None:
        """Leave the group (committing what is acknowledged), flush the producer."""
        for name, client in (("consumer", self._consumer), ("probe", self._probe)):
            if client is not None:
                try:
                    client.close()
                except (KafkaException, RuntimeError) as error:
                    log.warning("kafka: closing the %s: %s", name, error)
        if self._producer is not None:
            left = self._producer.flush(CLOSE_TIMEOUT_S)
            if left:
                log.warning("kafka: %d published messages unconfirmed at close", left)
        # librdkafka closes a producer's connections only when the object is destroyed
        self._producer = self._consumer = self._probe = None
