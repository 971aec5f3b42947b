"""Tasks on a Kafka topic, through confluent-kafka (librdkafka): Apache Kafka, or Azure Event
Hubs' Kafka endpoint.

Publishing: one idempotent producer (``acks=all``). Every task is keyed by its
``project/model``, so a model's tasks share a partition. ``publish`` produces the whole batch,
then waits once, bounded, until the broker has confirmed every message; what it could not
confirm is a TransientError (the scheduler publishes again; a task delivered twice is
harmless, storage is idempotent).

Receiving: the executors share one consumer group, and Kafka splits the topic's partitions
among them (cooperative-sticky, so a newcomer does not stop everyone's work); a consumer
that leaves or dies has its partitions handed to the others, from the last committed
offset. Offsets are committed by hand, only after a task is handled, and because a commit
covers every earlier offset of its partition while an executor works on several tasks at
once, only up to the first message still in flight (see latigo.queues.partitions). The
consumer joins the group at its first ``receive``: a scheduler that only publishes never
takes partitions.

Trade-offs, because a log is not a queue:

- ``release`` publishes a copy (same key, so same partition) marked with its delivery count
  and a not-before time, then acknowledges the original. The consumer that reads the copy
  holds it in memory, uncommitted, until it is due: commits of that partition stop there
  for the delay (at most ``executor.retry_max``), and if that consumer dies meanwhile,
  everything after it is delivered again (harmless). The not-before time is wall-clock.
- ``Message.deliveries`` counts releases: a message delivered again because its consumer
  died keeps its count (the ledger counts attempts as well).
- A message received and neither acknowledged nor released (its handler crashed) stays in
  flight until this consumer leaves the group; its partition's commits stop there.
- ``close`` is final: it leaves the group, and acknowledgements that arrive after it
  commit nothing (their messages are delivered again). For a graceful shutdown call
  ``stop_receiving`` first, let the tasks in hand finish and acknowledge, then ``close``.
- ``depth`` is the group's lag: high watermark minus committed offset, summed over the
  partitions, so it counts messages waiting, in flight and held back. Best effort: Tansu
  (the broker the tests use) reports a partition's high watermark as the first offset of
  its last record batch plus one, so there it under-counts batched messages.
- A consumer that does not poll for ``max.poll.interval.ms`` is put out of the group, and an
  executor whose slots are all busy does not poll: it is 15 minutes here, longer than the
  default ``executor.task_deadline``; keep it so (``queue.options``) if you raise the deadline.

Azure Event Hubs: set ``queue.connection_string`` to the namespace's connection string and
the servers and SASL_SSL settings follow from it (``event_hubs_settings``); the topic is an
event hub of that namespace (created with ``queue.partitions`` if the policy allows).

Every call that waits has a timeout: publishing (``message.timeout.ms`` plus a margin),
polling (``queue.poll_interval`` at a time), metadata, offsets and topic creation
(OPERATION_TIMEOUT_S); commits are bounded by librdkafka's request and session timeouts.
Broker errors become TransientError, or PermanentError when retrying cannot help
(authorisation, oversized messages, invalid settings, fatal client errors).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import timedelta
from time import monotonic
from typing import Any
from urllib.parse import urlparse

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from latigo.clock import Clock, system_clock
from latigo.config import KafkaQueueConfig
from latigo.errors import LatigoError, PermanentError, TransientError
from latigo.queues import Message, TaskQueue
from latigo.queues.partitions import HoldBack, PartitionTracker, read_marks, retry_marks

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
# seconds close() waits for a poll or commit in another thread, and for the producer to flush
CLOSE_TIMEOUT_S = 10.0
# how long a consumer may go without polling before the group puts it out (see the docstring)
MAX_POLL_INTERVAL_MS = 15 * 60 * 1000
# Azure Event Hubs' Kafka endpoint listens on this port of the namespace's host
EVENT_HUBS_KAFKA_PORT = 9093
# Microsoft's recommended client settings for Event Hubs (it closes idle connections after 240 s)
EVENT_HUBS_RECOMMENDED = {
    "socket.keepalive.enable": "true",
    "metadata.max.age.ms": "180000",
    "connections.max.idle.ms": "180000",
}
# broker errors that retrying cannot cure
PERMANENT_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_CONFIG,
        KafkaError._INVALID_ARG,
        KafkaError.INVALID_PARTITIONS,
        KafkaError.INVALID_REPLICATION_FACTOR,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError._UNSUPPORTED_FEATURE,
    }
)
# librdkafka settings only consumers take (librdkafka warns when a producer is given one)
CONSUMER_ONLY = frozenset(
    {
        "group.id", "group.instance.id", "group.protocol", "group.remote.assignor", "session.timeout.ms",
        "heartbeat.interval.ms", "max.poll.interval.ms", "partition.assignment.strategy", "auto.offset.reset",
        "enable.auto.commit", "auto.commit.interval.ms", "enable.auto.offset.store", "enable.partition.eof",
        "coordinator.query.interval.ms", "fetch.wait.max.ms", "fetch.min.bytes", "fetch.max.bytes",
        "fetch.message.max.bytes", "max.partition.fetch.bytes", "queued.min.messages",
        "queued.max.messages.kbytes", "isolation.level", "check.crcs",
    }
)  # fmt: skip
# librdkafka settings only producers take
PRODUCER_ONLY = frozenset(
    {
        "acks", "request.required.acks", "enable.idempotence", "enable.gapless.guarantee", "linger.ms",
        "queue.buffering.max.ms", "queue.buffering.max.messages", "queue.buffering.max.kbytes",
        "message.timeout.ms", "delivery.timeout.ms", "request.timeout.ms", "partitioner", "compression.type",
        "compression.codec", "compression.level", "batch.size", "batch.num.messages", "retries",
        "message.send.max.retries", "transactional.id", "transaction.timeout.ms",
        "sticky.partitioning.linger.ms",
    }
)  # fmt: skip
# what topic creation may answer when it cannot create (the topic may exist nevertheless)
_CANNOT_CREATE = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.POLICY_VIOLATION,
    }
)


def event_hubs_settings(connection_string: str) -> dict[str, str]:
    """librdkafka settings for Azure Event Hubs' Kafka endpoint, from an Event Hubs
    connection string (``Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=…;
    SharedAccessKey=…``): SASL_SSL with PLAIN, user ``$ConnectionString``, the connection
    string as password. Errors never quote the string: it holds the key."""
    fields = {}
    for part in connection_string.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            fields[name.lower()] = value.strip()
    endpoint = urlparse(fields.get("endpoint", ""))
    if endpoint.scheme != "sb" or not endpoint.hostname:
        raise PermanentError(
            "queue.connection_string is not an Event Hubs connection string: "
            "it needs Endpoint=sb://<namespace>.servicebus.windows.net/"
        )
    return {
        "bootstrap.servers": f"{endpoint.hostname}:{EVENT_HUBS_KAFKA_PORT}",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "$ConnectionString",
        "sasl.password": connection_string,
        **EVENT_HUBS_RECOMMENDED,
    }


def client_settings(settings: KafkaQueueConfig) -> dict[str, Any]:
    """The settings every client of this queue shares: the servers (or the Event Hubs
    endpoint), then ``queue.options`` as they are."""
    common: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"latigo-{socket.gethostname()}-{os.getpid()}",
    }
    secret = settings.connection_string.get_secret_value()
    if secret:
        common.update(event_hubs_settings(secret))
    common.update(settings.options)
    return common


def translate(error: KafkaError, what: str) -> LatigoError:
    """A broker error as the executor's error class."""
    text = f"kafka: {what}: {error.name()}: {error.str()}"
    if error.fatal() or error.code() in PERMANENT_CODES:
        return PermanentError(text)
    return TransientError(text)


def _kafka_error(exception: KafkaException) -> KafkaError:
    error = exception.args[0] if exception.args else None
    return error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL, str(exception))


@dataclass(frozen=True)
class _Receipt:
    topic: str
    partition: int
    offset: int
    generation: int
    key: bytes | None

    @property
    def where(self) -> tuple[str, int]:
        return self.topic, self.partition


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


class _Gate:
    """Lets several threads use the consumer at once, and close() wait until none does."""

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


class KafkaQueue(TaskQueue):
    def __init__(self, settings: KafkaQueueConfig, *, clock: Clock = system_clock) -> None:
        self._topic = settings.topic
        self._group = settings.group_id
        self._partitions = settings.partitions
        self._poll_s = settings.poll_interval.total_seconds()
        self._clock = clock
        # raises PermanentError on a bad connection string before any client exists
        self._common = client_settings(settings)
        self._lock = threading.Lock()  # creating and closing clients
        self._commit_lock = threading.Lock()  # commits in order, so committed offsets never go back
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._probe: Consumer | None = None  # offsets for depth(), never in the group
        self._topic_ready = False
        self._closed = False
        self._stopped = threading.Event()  # stop_receiving(): no more messages handed out
        self._fatal: KafkaError | None = None
        self._tracker: PartitionTracker[None] = PartitionTracker()
        self._held = HoldBack()
        self._gate = _Gate()
        # offsets acknowledged but not yet committed (a commit failed), per partition
        self._uncommitted: dict[tuple[str, int], int] = {}

    def __repr__(self) -> str:  # never the settings: they may hold the connection string
        return f"KafkaQueue(topic={self._topic!r}, group={self._group!r})"

    # -- clients ---------------------------------------------------------------------

    def _client_config(
        self, kind: str, defaults: dict[str, Any], required: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Settings for a ``producer``, ``consumer`` or ``admin`` client: our defaults, then the
        shared settings (``queue.options`` win over the defaults), then what the queue's
        semantics require; settings meant for the other kind of client are left out."""
        foreign = {"producer": CONSUMER_ONLY, "consumer": PRODUCER_ONLY}.get(kind, CONSUMER_ONLY | PRODUCER_ONLY)
        merged = {**defaults, **self._common, **(required or {})}
        config = {name: value for name, value in merged.items() if name not in foreign}
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
            topics = admin.list_topics(timeout=OPERATION_TIMEOUT_S).topics
            found = topics.get(self._topic)
            if found is None or found.error is not None:
                self._create_topic(admin)
        except KafkaException as error:
            raise translate(_kafka_error(error), f"checking topic {self._topic}") from None
        except FutureTimeout:
            raise TransientError(
                f"kafka: creating topic {self._topic} took more than {OPERATION_TIMEOUT_S * 2:.0f}s"
            ) from None
        self._topic_ready = True

    @staticmethod
    def _new(kind: type, config: dict[str, Any]) -> Any:
        """A librdkafka client; bad settings (``queue.options``) are a PermanentError."""
        try:
            return kind(config)
        except KafkaException as error:
            raise translate(_kafka_error(error), f"creating a {kind.__name__}") from None

    def _create_topic(self, admin: AdminClient) -> None:
        topic = NewTopic(self._topic, num_partitions=self._partitions, replication_factor=-1)
        future = admin.create_topics(
            [topic], operation_timeout=OPERATION_TIMEOUT_S, request_timeout=OPERATION_TIMEOUT_S
        )[self._topic]
        try:
            future.result(timeout=OPERATION_TIMEOUT_S * 2)
            log.info("created topic %s with %d partitions", self._topic, self._partitions)
        except KafkaException as exception:
            error = _kafka_error(exception)
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
            if self._closed:
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
            if self._closed:
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
            if self._closed:
                raise TransientError("kafka: the queue is closed")
            if self._probe is None:
                required = {"group.id": self._group, "enable.auto.commit": False}
                self._probe = self._new(Consumer, self._client_config("consumer", {}, required))
            return self._probe

    # -- publishing --------------------------------------------------------------------

    def publish(self, bodies: Sequence[bytes], keys: Sequence[str] | None = None) -> None:
        if keys is not None and len(keys) != len(bodies):
            raise ValueError(f"{len(bodies)} bodies but {len(keys)} keys")
        if not bodies:
            return
        self._send([(body, None if keys is None else keys[i], None) for i, body in enumerate(bodies)])

    def _send(self, records: Sequence[tuple[bytes, str | bytes | None, dict[str, str] | None]]) -> None:
        """Produce every record, then wait (bounded) until the broker confirmed them all."""
        producer = self._producer_ready()
        deliveries = _Deliveries(len(records))
        timeout_s = float(self._common.get("message.timeout.ms", PUBLISH_TIMEOUT_MS)) / 1000 + PUBLISH_MARGIN_S
        deadline = monotonic() + timeout_s
        for body, key, marks in records:
            headers = None if marks is None else [(name, value.encode()) for name, value in marks.items()]
            self._produce(producer, body, key, headers, deliveries, deadline)
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
                producer.produce(self._topic, value=body, key=key, headers=headers, on_delivery=deliveries)
                return
            except BufferError:  # the local queue is full: let the broker drain it
                if monotonic() > deadline:
                    raise TransientError("kafka: the producer's queue stayed full") from None
                producer.poll(0.1)
            except KafkaException as error:
                raise translate(_kafka_error(error), "producing") from None

    # -- receiving ---------------------------------------------------------------------

    def receive(self, max_messages: int, wait: timedelta) -> list[Message]:
        deadline = monotonic() + wait.total_seconds()
        if max_messages <= 0 or self._stopped.is_set():
            return []
        consumer = self._subscribed()
        if consumer is None or not self._gate.enter():
            return []
        try:
            while True:
                ready = self._held.due(self._clock(), max_messages, self._alive)
                if len(ready) < max_messages:
                    slice_s = 0.0 if ready else self._slice(deadline)
                    ready += self._fetch(consumer, max_messages - len(ready), slice_s)
                if ready or monotonic() >= deadline or self._stopped.is_set() or self._gate.closing:
                    return ready
        finally:
            self._gate.leave()

    def stop_receiving(self) -> None:
        """Hand out no more messages (a waiting receive() returns within ``poll_interval``);
        the messages in hand can still be acknowledged or released, and their offsets
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

    def _fetch(self, consumer: Consumer, limit: int, timeout: float) -> list[Message]:
        """Poll for the first record (returns as soon as one arrives), take what else is
        there at once; hold back the records not yet due."""
        try:
            first = consumer.poll(timeout)
            if first is None:
                return []
            records = [first] + (consumer.consume(limit - 1, 0) if limit > 1 else [])
        except KafkaException as error:
            raise translate(_kafka_error(error), "receiving") from None
        ready = []
        now = self._clock()
        for record in records:
            if record.error() is not None:
                self._record_error(record.error())
                continue
            message, not_before = self._track(record)
            if message is None:
                continue
            if self._held.admit(message, not_before, now):
                ready.append(message)
        return ready

    def _record_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal() or error.code() in PERMANENT_CODES:
            raise translate(error, "receiving")
        log.warning("kafka: receiving: %s", error.str())

    def _track(self, record) -> tuple[Message | None, Any]:
        where = (record.topic(), record.partition())
        generation = self._tracker.received(where, record.offset(), None)
        if generation is None:  # librdkafka drops a revoked partition's records; be safe anyway
            log.debug("record of unassigned partition %s skipped", where)
            return None, None
        deliveries, not_before = read_marks(record.headers())
        receipt = _Receipt(record.topic(), record.partition(), record.offset(), generation, record.key())
        return Message(body=record.value() or b"", deliveries=deliveries, receipt=receipt), not_before

    def _alive(self, message: Message) -> bool:
        return self._tracker.current(message.receipt.where, message.receipt.generation)

    # -- acknowledging -----------------------------------------------------------------

    def ack(self, message: Message) -> None:
        receipt: _Receipt = message.receipt
        if not self._gate.enter():  # closed: the message goes back to the group
            return
        try:
            with self._commit_lock:
                last = self._tracker.done(receipt.where, receipt.generation, receipt.offset)
                if last is not None:
                    self._uncommitted[receipt.where] = last[0] + 1
                    self._commit([receipt.where])
        finally:
            self._gate.leave()

    def release(self, message: Message, delay: timedelta = timedelta(0)) -> None:
        receipt: _Receipt = message.receipt
        if not self._alive(message):
            log.debug("released a message of a partition no longer ours: its new owner delivers it again")
            return
        marks = retry_marks(message.deliveries + 1, self._clock() + delay)
        self._send([(message.body, receipt.key, marks)])
        self.ack(message)

    def _commit(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Commit the pending offsets of these partitions (the commit lock is held). A failed
        commit is logged, not raised: the acknowledgement is kept and committed with the next
        one or when the partition is revoked; until then, at worst, a message is delivered
        again."""
        offsets = [
            TopicPartition(topic, partition, self._uncommitted[(topic, partition)])
            for topic, partition in partitions
            if (topic, partition) in self._uncommitted
        ]
        if not offsets or self._consumer is None:
            return
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exception:
            error = _kafka_error(exception)
            if error.fatal():
                raise translate(error, "committing") from None
            log.warning("kafka: commit failed, retried with the next one: %s", error.str())
            return
        for result in results or offsets:
            where = (result.topic, result.partition)
            if result.error is not None:
                log.warning("kafka: commit of %s failed, retried with the next one: %s", where, result.error.str())
            elif self._uncommitted.get(where) == result.offset:
                del self._uncommitted[where]

    # -- group membership (called by librdkafka inside poll and close) ------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for partition in partitions:
            self._tracker.assign((partition.topic, partition.partition))
        if partitions:  # a cooperative rebalance may assign nothing new
            log.info("kafka: assigned partitions %s of %s", sorted(p.partition for p in partitions), self._topic)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is acknowledged before another consumer takes over; forget the rest
        (the new owner delivers it again)."""
        revoked = [(partition.topic, partition.partition) for partition in partitions]
        try:
            with self._commit_lock:
                self._commit(revoked)
        except LatigoError as error:  # never raise inside librdkafka's callback
            log.warning("%s", error)
        self._forget(revoked)
        log.info("kafka: revoked partitions %s of %s", sorted(p.partition for p in partitions), self._topic)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost (session timed out): another consumer may own them already; commit nothing."""
        self._forget([(partition.topic, partition.partition) for partition in partitions])
        log.warning("kafka: lost partitions %s of %s", sorted(p.partition for p in partitions), self._topic)

    def _forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        with self._commit_lock:
            for where in partitions:
                self._tracker.revoke(where)
                self._uncommitted.pop(where, None)

    # -- status and shutdown -----------------------------------------------------------

    def depth(self) -> int:
        """The group's lag over all partitions (see the module docstring)."""
        probe = self._probe_consumer()
        try:
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
        except KafkaException as error:
            raise translate(_kafka_error(error), "measuring the queue depth") from None

    def close(self) -> None:
        """Leave the group (committing what is acknowledged), flush the producer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self._gate.close(CLOSE_TIMEOUT_S):
            log.warning("kafka: a poll or commit still running after %.0fs; closing anyway", CLOSE_TIMEOUT_S)
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
