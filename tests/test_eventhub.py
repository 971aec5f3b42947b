"""The ``eventhub`` queue: its checkpoint store for real, the queue at the SDK's client boundary.

No Azure Event Hubs can run here: the azure-eventhub SDK needs the ``$cbs`` and
``$management`` AMQP nodes that only the service (or its Docker-only emulator) provides, and
neither is reachable from this machine (see the reference's services.md, in
``../shared/reference/`` beside the checkout). So:

- ``SqlCheckpointStore`` is tested for real, on SQLite and PostgreSQL: ownership claims with
  etags, claim races between threads, checkpoints.
- ``EventHubQueue`` is tested with stand-ins for the network only. ``FakeProducerClient``
  replaces EventHubProducerClient; ``FakeConsumerClient`` *is* the SDK's
  EventHubConsumerClient, with only the AMQP links replaced (``_create_consumer``, partition
  ids and properties): the SDK's own event processor, load balancing and partition contexts
  run for real against our checkpoint store. ``FakeEventHub`` plays the service: partitions
  of events with sequence numbers and offsets, and epoch receivers (a newer receiver of a
  partition takes it from the older one, as an ``owner_level`` receiver does).

The shared queue contract (tests/test_queue_contract.py) runs on these stand-ins too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from time import monotonic
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.eventhub import EventData, EventDataBatch, EventHubConsumerClient, EventHubProducerClient
from azure.eventhub._constants import PROP_OFFSET, PROP_SEQ_NUMBER, PROP_TIMESTAMP
from azure.eventhub.exceptions import AuthenticationError, ConnectionLostError, EventDataError, EventHubError
from pydantic import ValidationError
from sqlalchemy import Engine, select

from latigo import db
from latigo.config import EventHubQueueConfig
from latigo.errors import PermanentError, TransientError
from latigo.queues import Message, eventhub
from latigo.queues.eventhub import EventHubQueue, partition_for
from latigo.queues.eventhub_checkpoints import SqlCheckpointStore
from latigo.queues.partitions import DELIVERIES, NOT_BEFORE
from latigo.schema import eventhub_checkpoints, eventhub_ownership

# the stand-in service's namespace, and a connection string naming it (its key is not a secret)
NAMESPACE = "latigo-test.servicebus.windows.net"
CONNECTION_STRING = f"Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName=test;SharedAccessKey=c2VjcmV0LWtleQ=="
# how long a stand-in partition receiver waits for an event per call (the SDK loops over them)
RECEIVE_WAIT_S = 0.02
# load balancing of the SDK in these tests: claims every 0.2 s, a silent owner expires after 1.5 s
LOAD_BALANCING_S = 0.2
OWNERSHIP_EXPIRY_S = 1.5
# longest any test here waits for something to happen
PATIENCE_S = 20.0
# threads racing for one partition
RACERS = 8
NOW = timedelta(0)


# --- the stand-in service ---------------------------------------------------------------


class FakeEventHub:
    """One event hub: partitions of events in order, each with a sequence number and an
    offset, and the current (newest) receiver of each partition per consumer group."""

    def __init__(self, name: str = "tasks", partitions: int = 4) -> None:
        self.name = name
        self.partition_ids = [str(number) for number in range(partitions)]
        self._events: dict[str, list[dict[str, Any]]] = {pid: [] for pid in self.partition_ids}
        self._receivers: dict[tuple[str, str], object] = {}
        self.changed = threading.Condition()
        self.sends: list[tuple[str, int]] = []  # (partition, events) per send call

    def append(self, partition_id: str, events: list[EventData]) -> None:
        with self.changed:
            stored = self._events[partition_id]
            for event in events:
                sequence = len(stored)
                stored.append(
                    {
                        "body": b"".join(event.body) if not isinstance(event.body, bytes) else event.body,
                        "properties": dict(event.properties or {}),
                        "sequence_number": sequence,
                        "offset": str(1000 + 10 * sequence),  # offsets are not sequence numbers
                    }
                )
            self.sends.append((partition_id, len(events)))
            self.changed.notify_all()

    def start_index(self, partition_id: str, position: Any, inclusive: bool) -> int:
        """Where a receiver starts: "-1" the beginning, "@latest" the end, else after the offset."""
        events = self._events[partition_id]
        if position in ("-1", -1):
            return 0
        if position == "@latest":
            return len(events)
        for index, event in enumerate(events):
            if event["offset"] == str(position):
                return index if inclusive else index + 1
        raise AssertionError(f"no event at offset {position!r} in partition {partition_id}")

    def take_over(self, consumer_group: str, partition_id: str, receiver: object) -> None:
        with self.changed:
            self._receivers[(consumer_group, partition_id)] = receiver

    def next_event(self, receiver: FakePartitionReceiver, timeout: float) -> EventData | None:
        with self.changed:
            if self._receivers.get((receiver.consumer_group, receiver.partition_id)) is not receiver:
                raise ConnectionLostError(
                    "link stolen: a receiver with a higher owner level took the partition"
                )
            events = self._events[receiver.partition_id]
            if not self.changed.wait_for(lambda: receiver.position < len(events) or receiver.closed, timeout):
                return None
            if receiver.closed:
                return None
            return self._received(events[receiver.position])

    @staticmethod
    def _received(stored: dict[str, Any]) -> EventData:
        """The event as the SDK hands it over: AMQP annotations, and string properties as
        bytes (pyamqp decodes AMQP strings to bytes)."""
        event = EventData(stored["body"])
        event._raw_amqp_message.annotations = {
            PROP_SEQ_NUMBER: stored["sequence_number"],
            PROP_OFFSET: stored["offset"].encode(),
            PROP_TIMESTAMP: 0,
        }
        event._raw_amqp_message.application_properties = {
            key.encode(): value.encode() if isinstance(value, str) else value
            for key, value in stored["properties"].items()
        }
        return event

    def properties(self, partition_id: str) -> dict[str, Any]:
        with self.changed:
            events = self._events[partition_id]
            return {
                "eventhub_name": self.name,
                "id": partition_id,
                "beginning_sequence_number": 0,
                "last_enqueued_sequence_number": len(events) - 1,
                "last_enqueued_offset": events[-1]["offset"] if events else "-1",
                "is_empty": not events,
            }

    def bodies(self, partition_id: str) -> list[bytes]:
        with self.changed:
            return [event["body"] for event in self._events[partition_id]]

    def stored(self, partition_id: str) -> list[dict[str, Any]]:
        with self.changed:
            return list(self._events[partition_id])


class FakeProducerClient:
    """Stands in for EventHubProducerClient: real EventDataBatch objects (their size limit
    is the real one's logic), sends appended to the stand-in hub."""

    def __init__(self, hub: FakeEventHub, max_batch_bytes: int = 1024 * 1024) -> None:
        self.hub = hub
        self.max_batch_bytes = max_batch_bytes
        self.failure: Exception | None = None
        self.closed = False

    def get_partition_ids(self) -> list[str]:
        return list(self.hub.partition_ids)

    def get_partition_properties(self, partition_id: str) -> dict[str, Any]:
        return self.hub.properties(partition_id)

    def create_batch(
        self, *, partition_id: str | None = None, partition_key: str | None = None
    ) -> EventDataBatch:
        return EventDataBatch(
            max_size_in_bytes=self.max_batch_bytes, partition_id=partition_id, partition_key=partition_key
        )

    def send_batch(self, batch: EventDataBatch, *, timeout: float | None = None) -> None:
        assert timeout is not None, "every send must have a timeout"
        if self.failure is not None:
            raise self.failure
        assert batch._partition_id is not None, "batches go to a partition"
        self.hub.append(batch._partition_id, list(batch._internal_events))

    def close(self) -> None:
        self.closed = True


class FakePartitionReceiver:
    """Stands in for the SDK's per-partition EventHubConsumer (an AMQP receiving link)."""

    def __init__(
        self,
        hub: FakeEventHub,
        consumer_group: str,
        partition_id: str,
        position: Any,
        inclusive: bool,
        on_event_received,
    ) -> None:
        self.hub = hub
        self.consumer_group = consumer_group
        self.partition_id = partition_id
        self.position = hub.start_index(partition_id, position, inclusive)
        self.on_event_received = on_event_received
        self.stop = False  # set by the SDK's event processor when the partition is lost
        self.closed = False
        hub.take_over(consumer_group, partition_id, self)

    def receive(
        self, batch: bool = False, max_batch_size: int = 300, max_wait_time: float | None = None
    ) -> None:
        event = self.hub.next_event(self, RECEIVE_WAIT_S)
        if event is not None:
            self.position += 1
            self.on_event_received(event)

    def close(self) -> None:
        with self.hub.changed:
            self.closed = True
            self.hub.changed.notify_all()


class FakeConsumerClient(EventHubConsumerClient):
    """The SDK's own consumer client, with only its AMQP links replaced."""

    def __init__(
        self,
        hub: FakeEventHub,
        checkpoint_store,
        *,
        consumer_group: str = "$Default",
        load_balancing_interval: float = LOAD_BALANCING_S,
        ownership_expiry: float = OWNERSHIP_EXPIRY_S,
    ) -> None:
        super().__init__(
            NAMESPACE, hub.name, consumer_group, AzureNamedKeyCredential("test", "not-a-secret"),
            checkpoint_store=checkpoint_store, load_balancing_interval=load_balancing_interval,
            partition_ownership_expiration_interval=ownership_expiry,
        )  # fmt: skip
        self.hub = hub

    def get_partition_ids(self) -> list[str]:
        return list(self.hub.partition_ids)

    def get_partition_properties(self, partition_id: str) -> dict[str, Any]:
        return self.hub.properties(partition_id)

    def _create_consumer(self, consumer_group, partition_id, event_position, on_event_received, **kwargs):
        inclusive = kwargs.get("event_position_inclusive", False)
        return FakePartitionReceiver(
            self.hub, consumer_group, partition_id, event_position, inclusive, on_event_received
        )


def fake_queue(hub: FakeEventHub, engine: Engine, **settings: Any) -> EventHubQueue:
    """An EventHubQueue whose clients meet the stand-in hub instead of the network."""
    config = EventHubQueueConfig(
        type="eventhub", connection_string=CONNECTION_STRING, eventhub_name=hub.name,
        poll_interval=settings.pop("poll_interval", "0.05s"), **settings,
    )  # fmt: skip
    producer = FakeProducerClient(hub)
    return EventHubQueue(
        config, engine,
        producer_factory=lambda: producer,
        consumer_factory=lambda store: FakeConsumerClient(hub, store, consumer_group=config.consumer_group),
    )  # fmt: skip


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'latigo.db'}")
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def hub() -> FakeEventHub:
    return FakeEventHub()


@pytest.fixture
def make_queue(hub: FakeEventHub, sqlite_engine: Engine) -> Iterator:
    """Queues (executors) on the stand-in hub, sharing one checkpoint store; closed after the test."""
    made: list[EventHubQueue] = []

    def make(**settings: Any) -> EventHubQueue:
        queue = fake_queue(hub, sqlite_engine, **settings)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


def receive_until(queue, count: int, timeout: float = PATIENCE_S) -> list[Message]:
    got: list[Message] = []
    deadline = monotonic() + timeout
    while len(got) < count and monotonic() < deadline:
        got += queue.receive(count - len(got), timedelta(seconds=0.2))
    return got


def ownership(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(
            connection.execute(select(eventhub_ownership.c.partition_id, eventhub_ownership.c.owner_id)).all()
        )


def checkpoints(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(eventhub_checkpoints.c.partition_id, eventhub_checkpoints.c.sequence_number)
        )
        return dict(rows.all())


def ownership_claim(partition: str, owner: str, etag: str | None = None, **scope: str) -> dict[str, Any]:
    claim = {
        "fully_qualified_namespace": scope.get("namespace", NAMESPACE),
        "eventhub_name": scope.get("eventhub", "tasks"),
        "consumer_group": scope.get("group", "$Default"),
        "partition_id": partition,
        "owner_id": owner,
    }
    if etag is not None:
        claim["etag"] = etag
    return claim


# --- SqlCheckpointStore, for real -------------------------------------------------------


def test_new_partitions_are_claimed_once(engine: Engine) -> None:
    store = SqlCheckpointStore(engine)

    first = store.claim_ownership([ownership_claim("0", "a"), ownership_claim("1", "a")])
    second = store.claim_ownership([ownership_claim("0", "b")])  # no etag: "I saw it unowned"

    assert [(claim["partition_id"], claim["owner_id"]) for claim in first] == [("0", "a"), ("1", "a")]
    assert all(claim["etag"] and isinstance(claim["last_modified_time"], float) for claim in first)
    assert second == []
    listed = {row["partition_id"]: row for row in store.list_ownership(NAMESPACE, "tasks", "$Default")}
    assert {pid: row["owner_id"] for pid, row in listed.items()} == {"0": "a", "1": "a"}
    assert listed["0"]["etag"] == first[0]["etag"]
    assert abs(listed["0"]["last_modified_time"] - first[0]["last_modified_time"]) < 1e-3


def test_a_claim_with_a_stale_etag_is_refused(engine: Engine) -> None:
    store = SqlCheckpointStore(engine)
    [mine] = store.claim_ownership([ownership_claim("0", "a")])
    [renewed] = store.claim_ownership([{**mine}])  # the owner renews with the etag it holds

    stale = store.claim_ownership([ownership_claim("0", "b", etag=mine["etag"])])
    current = store.claim_ownership([ownership_claim("0", "b", etag=renewed["etag"])])

    assert renewed["etag"] != mine["etag"]
    assert stale == []
    assert [claim["owner_id"] for claim in current] == ["b"]
    assert [row["owner_id"] for row in store.list_ownership(NAMESPACE, "tasks", "$Default")] == ["b"]


def test_released_ownership_is_claimable_by_its_etag(engine: Engine) -> None:
    store = SqlCheckpointStore(engine)
    [mine] = store.claim_ownership([ownership_claim("0", "a")])
    [released] = store.claim_ownership([{**mine, "owner_id": ""}])  # what the SDK does on shutdown

    [taken] = store.claim_ownership([ownership_claim("0", "b", etag=released["etag"])])

    assert released["owner_id"] == "" and taken["owner_id"] == "b"


@pytest.mark.parametrize("with_etag", [False, True], ids=["unowned", "expired"])
def test_racing_claims_for_one_partition_have_one_winner(engine: Engine, with_etag: bool) -> None:
    store = SqlCheckpointStore(engine)
    etag = store.claim_ownership([ownership_claim("0", "old")])[0]["etag"] if with_etag else None
    start = threading.Barrier(RACERS)
    results: list[list[dict[str, Any]]] = [[] for _ in range(RACERS)]

    def claim(index: int) -> None:
        start.wait()
        results[index] = store.claim_ownership([ownership_claim("0", f"racer-{index}", etag=etag)])

    threads = [threading.Thread(target=claim, args=(index,)) for index in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE_S)

    winners = [claims[0]["owner_id"] for claims in results if claims]
    assert len(winners) == 1, winners
    assert [row["owner_id"] for row in store.list_ownership(NAMESPACE, "tasks", "$Default")] == winners


def test_checkpoints_round_trip_per_scope(engine: Engine) -> None:
    store = SqlCheckpointStore(engine)

    def checkpoint(partition: str, sequence: int, group: str = "$Default") -> dict[str, Any]:
        return {
            "fully_qualified_namespace": NAMESPACE,
            "eventhub_name": "tasks",
            "consumer_group": group,
            "partition_id": partition,
            "offset": str(1000 + sequence),
            "sequence_number": sequence,
        }

    store.update_checkpoint(checkpoint("0", 5))
    store.update_checkpoint(checkpoint("1", 7))
    store.update_checkpoint(checkpoint("0", 9))  # moves on
    store.update_checkpoint(checkpoint("0", 2, group="other"))

    listed = sorted(
        store.list_checkpoints(NAMESPACE, "tasks", "$Default"), key=lambda row: row["partition_id"]
    )
    assert listed == [checkpoint("0", 9), checkpoint("1", 7)]
    assert store.list_checkpoints(NAMESPACE, "tasks", "other") == [checkpoint("0", 2, group="other")]
    assert store.list_checkpoints(NAMESPACE, "other-hub", "$Default") == []
    assert store.list_ownership(NAMESPACE, "tasks", "$Default") == []


# --- EventHubQueue at the client boundary -----------------------------------------------


def test_publish_sends_one_batch_per_partition_and_splits_full_ones(
    hub: FakeEventHub, make_queue, sqlite_engine
) -> None:
    keys = [f"demo/model-{index % 40}" for index in range(400)]
    make_queue().publish([f"task-{index}".encode() for index in range(400)], keys)

    used = {partition_for(key, hub.partition_ids) for key in keys}
    assert len(used) > 1
    assert sorted(partition for partition, _ in hub.sends) == sorted(used), (
        "one send per partition, not per model"
    )
    for partition in hub.partition_ids:  # a model's tasks in one partition, in publish order
        wanted = [
            f"task-{i}".encode()
            for i, key in enumerate(keys)
            if partition_for(key, hub.partition_ids) == partition
        ]
        assert hub.bodies(partition) == wanted

    small = FakeProducerClient(hub, max_batch_bytes=600)
    config = EventHubQueueConfig(type="eventhub", connection_string=CONNECTION_STRING, eventhub_name=hub.name)
    splitting = EventHubQueue(config, sqlite_engine, producer_factory=lambda: small, consumer_factory=None)
    hub.sends.clear()
    splitting.publish([b"x" * 100] * 12, ["demo/one-model"] * 12)
    assert sum(count for _, count in hub.sends) == 12
    assert len(hub.sends) >= 3 and max(count for _, count in hub.sends) < 12, hub.sends
    assert len({partition for partition, _ in hub.sends}) == 1
    splitting.close()


def test_checkpoints_follow_the_first_unacknowledged_event(
    hub: FakeEventHub, make_queue, sqlite_engine
) -> None:
    queue = make_queue()
    queue.publish([f"task-{index}".encode() for index in range(5)], ["demo/pump-1"] * 5)
    [partition] = {partition for partition, _ in hub.sends}

    messages = receive_until(queue, 5)
    assert [message.body for message in messages] == [f"task-{index}".encode() for index in range(5)]

    for index in (3, 4):
        queue.ack(messages[index])
    assert checkpoints(sqlite_engine) == {}, "events 0-2 are in flight: no checkpoint may cover them"
    queue.ack(messages[0])
    assert checkpoints(sqlite_engine) == {partition: 0}
    queue.ack(messages[2])
    assert checkpoints(sqlite_engine) == {partition: 0}
    queue.ack(messages[1])
    assert checkpoints(sqlite_engine) == {partition: 4}
    with sqlite_engine.connect() as connection:
        offset = connection.execute(select(eventhub_checkpoints.c.event_offset)).scalar_one()
    assert offset == hub.stored(partition)[4]["offset"]


def test_a_checkpoint_that_cannot_be_written_is_written_with_the_next_acknowledgement(
    hub: FakeEventHub, make_queue, sqlite_engine, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue()
    queue.publish([b"task-0", b"task-1"], ["demo/pump-1"] * 2)
    [partition] = {partition for partition, _ in hub.sends}
    messages = receive_until(queue, 2)

    with sqlite_engine.begin() as connection:  # the checkpoint store's table is gone for a while
        connection.exec_driver_sql("ALTER TABLE eventhub_checkpoints RENAME TO checkpoints_away")
    queue.ack(messages[0])  # logged, not raised
    with sqlite_engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE checkpoints_away RENAME TO eventhub_checkpoints")

    assert checkpoints(sqlite_engine) == {}
    assert f"commit of partition {partition} failed, retried with the next one" in caplog.text
    queue.ack(messages[1])
    assert checkpoints(sqlite_engine) == {partition: 1}


def test_executors_share_the_partitions_through_the_store(
    hub: FakeEventHub, make_queue, sqlite_engine
) -> None:
    first, second = make_queue(), make_queue()
    deadline = monotonic() + PATIENCE_S
    while len(set(ownership(sqlite_engine).values())) < 2 or len(ownership(sqlite_engine)) < 4:
        assert monotonic() < deadline, f"the partitions were never shared: {ownership(sqlite_engine)}"
        first.receive(1, timedelta(seconds=0.05))
        second.receive(1, timedelta(seconds=0.05))
    # the SDK balances to two partitions each
    deadline = monotonic() + PATIENCE_S
    while sorted(
        list(ownership(sqlite_engine).values()).count(owner)
        for owner in set(ownership(sqlite_engine).values())
    ) != [2, 2]:
        assert monotonic() < deadline, f"never balanced: {ownership(sqlite_engine)}"
        first.receive(1, timedelta(seconds=0.05))
        second.receive(1, timedelta(seconds=0.05))

    keys = [f"demo/model-{index % 16}" for index in range(48)]
    queue_bodies = [f"task-{index}".encode() for index in range(48)]
    first.publish(queue_bodies, keys)
    got: dict[str, list[bytes]] = {"first": [], "second": []}
    deadline = monotonic() + PATIENCE_S
    while len(got["first"]) + len(got["second"]) < 48 and monotonic() < deadline:
        for name, queue in (("first", first), ("second", second)):
            for message in queue.receive(10, timedelta(seconds=0.05)):
                got[name].append(message.body)
                queue.ack(message)

    assert sorted(got["first"] + got["second"]) == sorted(queue_bodies)
    assert got["first"] and got["second"], "both executors must have had partitions with work"
    assert sum(checkpoints(sqlite_engine).values()) + len(checkpoints(sqlite_engine)) == 48


def test_a_closed_executors_partition_resumes_from_its_checkpoint(hub: FakeEventHub, make_queue) -> None:
    first = make_queue()
    first.publish([f"task-{index}".encode() for index in range(6)], ["demo/pump-1"] * 6)
    messages = receive_until(first, 6)
    for message in messages[:4]:
        first.ack(message)
    first.close()  # the SDK gives the partitions up

    second = make_queue()
    again = receive_until(second, 2)

    assert [message.body for message in again] == [b"task-4", b"task-5"]
    assert all(message.deliveries == 1 for message in again)
    assert second.receive(10, timedelta(seconds=0.3)) == [], "acknowledged events must not come back"


def test_release_sends_a_marked_copy_to_the_same_partition(
    hub: FakeEventHub, make_queue, sqlite_engine
) -> None:
    queue = make_queue()
    queue.publish([b"retry-me"], ["demo/pump-1"])
    [partition] = {partition for partition, _ in hub.sends}
    [message] = receive_until(queue, 1)

    queue.release(message, timedelta(0))

    copy = hub.stored(partition)[1]
    assert copy["body"] == b"retry-me" and copy["properties"][DELIVERIES] == "2"
    assert copy["properties"][NOT_BEFORE].isdigit()
    [again] = receive_until(queue, 1)
    assert (again.body, again.deliveries) == (b"retry-me", 2)
    assert checkpoints(sqlite_engine) == {partition: 0}, "the original is acknowledged once its copy is sent"
    queue.ack(again)
    assert checkpoints(sqlite_engine) == {partition: 1}


def test_sdk_errors_become_transient_or_permanent(hub: FakeEventHub, sqlite_engine) -> None:
    producer = FakeProducerClient(hub, max_batch_bytes=300)
    queue = EventHubQueue(
        EventHubQueueConfig(type="eventhub", connection_string=CONNECTION_STRING, eventhub_name=hub.name),
        sqlite_engine, producer_factory=lambda: producer, consumer_factory=None,
    )  # fmt: skip
    try:
        producer.failure = ConnectionLostError("connection reset")
        with pytest.raises(TransientError, match="ConnectionLostError"):
            queue.publish([b"task"], ["demo/pump-1"])
        producer.failure = EventHubError("service busy")
        with pytest.raises(TransientError):
            queue.publish([b"task"], ["demo/pump-1"])
        producer.failure = AuthenticationError("unauthorized")
        with pytest.raises(PermanentError, match="AuthenticationError"):
            queue.publish([b"task"], ["demo/pump-1"])
        producer.failure = EventDataError("the event is malformed")
        with pytest.raises(PermanentError, match="EventDataError: the event is malformed"):
            queue.publish([b"task"], ["demo/pump-1"])
        producer.failure = None
        with pytest.raises(PermanentError, match="does not fit in a batch"):
            queue.publish([b"x" * 1000], ["demo/pump-1"])
    finally:
        queue.close()
    assert producer.closed


def test_depth_counts_events_after_the_checkpoints(hub: FakeEventHub, make_queue) -> None:
    queue = make_queue()
    assert queue.depth() == 0
    queue.publish(
        [f"task-{index}".encode() for index in range(7)], [f"demo/model-{index}" for index in range(7)]
    )
    assert queue.depth() == 7
    messages = receive_until(queue, 7)
    assert queue.depth() == 7, "received but not acknowledged: still counted"
    for message in messages:
        queue.ack(message)
    assert queue.depth() == 0


def test_the_connection_string_is_required_and_never_shown(hub: FakeEventHub, sqlite_engine) -> None:
    queue = EventHubQueue(
        EventHubQueueConfig(type="eventhub", connection_string=CONNECTION_STRING, eventhub_name=hub.name),
        sqlite_engine,
    )  # the real SDK clients: made here, but never connected (no network)
    assert "c2VjcmV0LWtleQ" not in repr(queue) and NAMESPACE in repr(queue)
    consumer = queue._consumer_factory(queue.checkpoints)
    producer = queue._producer_factory()
    try:
        assert isinstance(consumer, EventHubConsumerClient) and isinstance(producer, EventHubProducerClient)
        assert consumer._checkpoint_store is queue.checkpoints and consumer.eventhub_name == hub.name
        assert consumer._load_balancing_interval == eventhub.LOAD_BALANCING_S
        assert consumer._partition_ownership_expiration_interval == eventhub.OWNERSHIP_EXPIRY_S
    finally:
        consumer.close()
        producer.close()
        queue.close()
    with pytest.raises(ValidationError, match="connection_string is required"):  # refused by the config
        EventHubQueueConfig(type="eventhub")
    with pytest.raises(PermanentError, match="not an Event Hubs connection string") as raised:
        EventHubQueue(
            EventHubQueueConfig(type="eventhub", connection_string="SharedAccessKey=s3cr3t"), sqlite_engine
        )
    assert "s3cr3t" not in str(raised.value)


class BrokenConsumerClient:
    """A consumer client whose receiving fails at once, as after exhausted retries."""

    def __init__(self) -> None:
        self.closed = False

    def receive(self, **kwargs: Any) -> None:
        raise ConnectionLostError("the service went away")

    def close(self) -> None:
        self.closed = True


def test_a_receiver_that_failed_is_started_again(hub: FakeEventHub, sqlite_engine) -> None:
    broken = BrokenConsumerClient()
    made: list[Any] = []

    def consumers(store):
        made.append(broken if not made else FakeConsumerClient(hub, store))
        return made[-1]

    config = EventHubQueueConfig(type="eventhub", connection_string=CONNECTION_STRING, eventhub_name=hub.name)
    queue = EventHubQueue(
        config, sqlite_engine, producer_factory=lambda: FakeProducerClient(hub), consumer_factory=consumers
    )
    try:
        queue.publish([b"task"], ["demo/pump-1"])
        assert queue.receive(1, timedelta(seconds=0.1)) == []  # the first receiver fails
        queue._receiver.join(PATIENCE_S)
        got = receive_until(queue, 1)
    finally:
        queue.close()
    assert [message.body for message in got] == [b"task"]
    assert len(made) == 2 and broken.closed, "the failed client is closed and replaced"
