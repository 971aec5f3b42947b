"""One contract for every task queue backend, and the executor's retry and dead-letter policy
on each of them.

Every test runs on four backends:

- ``sql-sqlite`` and ``sql-postgresql``: the SQL queue on a real database, with a 2 s lease;
- ``kafka``: the Kafka queue against a real Kafka-protocol broker (Tansu, tests/kafka_fixture.py),
  a topic and consumer group of its own per test;
- ``eventhub``: the Event Hubs queue at the SDK's client boundary. No Event Hubs can run
  here, so the network is replaced by the stand-ins of tests/test_eventhub.py; the SDK's own
  consumer client, load balancing and our SQL checkpoint store run for real.

"A consumer" below is one queue object, as one executor process holds one. The clocks are
real: delays are short (0.5 s) and the tests assert "not before", never "exactly at".
Where a backend is allowed to differ, the test says so: a partitioned log (Kafka, Event
Hubs) commits one position per partition, so after a restart it may deliver again an
acknowledged message that lies behind an unacknowledged one of the same partition.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from time import monotonic
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine, select

from latigo import db
from latigo.clock import system_clock
from latigo.components import Components
from latigo.config import Config
from latigo.errors import PermanentError, TransientError
from latigo.executor import Executor
from latigo.ledger import Ledger, State
from latigo.queues import Message, TaskQueue
from latigo.queues.kafka import KafkaQueue
from latigo.queues.sql import SqlQueue
from latigo.schema import dead_letters
from latigo.task import Task
from tests.test_eventhub import FakeEventHub, fake_queue

BACKENDS = ["sql-sqlite", "sql-postgresql", "kafka", "eventhub"]
# the SQL queue's lease: how long a message received by a consumer that died stays hidden
LEASE = timedelta(seconds=2)
# consumer-group settings for the contract tests: joins and take-overs in 1-2 s on Tansu
KAFKA_GROUP = {"session.timeout.ms": "2000", "heartbeat.interval.ms": "300", "max.poll.interval.ms": "10000"}
# a release's delay, on the real clock
DELAY = timedelta(seconds=0.5)
# the not-before time travels as whole milliseconds: a copy may be due up to 1 ms early
MS_ROUNDING = 0.002
# how long a test waits for messages it expects (group joins, take-overs, leases included)
PATIENCE_S = 30.0
# how long a test listens to make sure nothing more comes
QUIET_S = 1.0
# receive(wait) may overrun its wait by this much (a poll in progress, a first connection)
WAIT_SLACK_S = 1.5


@dataclass
class Backend:
    name: str
    engine: Engine  # the Latigo database (the ledger; the queue too for sql)
    factory: Callable[[], TaskQueue]
    # a message's partition, for backends that have partitions
    partition_of: Callable[[Message], Any] | None = None
    # depth() counts exactly (Tansu misreports high watermarks of batched messages, see kafka.py)
    exact_depth: bool = True
    made: list[TaskQueue] = field(default_factory=list)

    def consumer(self) -> TaskQueue:
        """A new consumer of the same queue, as another executor process would hold."""
        queue = self.factory()
        self.made.append(queue)
        return queue


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = request.param
    url = (
        request.getfixturevalue("postgres_url")
        if name == "sql-postgresql"
        else f"sqlite:///{tmp_path / 'latigo.db'}"
    )
    engine = db.create_engine(url)
    db.upgrade(engine)
    if name.startswith("sql"):
        made = Backend(
            name, engine, lambda: SqlQueue(engine, lease=LEASE, poll_interval=timedelta(milliseconds=20))
        )
    elif name == "kafka":
        settings = request.getfixturevalue("kafka_broker").queue_settings(options=KAFKA_GROUP)
        made = Backend(
            name, engine, lambda: KafkaQueue(settings), lambda message: message.receipt.partition, False
        )
    else:
        hub = FakeEventHub()
        made = Backend(
            name, engine, lambda: fake_queue(hub, engine), lambda message: message.receipt.partition_id
        )
    try:
        yield made
    finally:
        for queue in made.made:
            queue.close()
        engine.dispose()


def receive_all(queue: TaskQueue, count: int, timeout: float = PATIENCE_S) -> list[Message]:
    """Receive until ``count`` messages came (or the patience ran out)."""
    got: list[Message] = []
    deadline = monotonic() + timeout
    while len(got) < count and monotonic() < deadline:
        got += queue.receive(count - len(got), timedelta(seconds=0.2))
    return got


def receive_for(queue: TaskQueue, seconds: float = QUIET_S) -> list[Message]:
    """Everything that arrives within ``seconds``."""
    got: list[Message] = []
    deadline = monotonic() + seconds
    while monotonic() < deadline:
        got += queue.receive(100, timedelta(seconds=min(0.2, max(0.0, deadline - monotonic()))))
    return got


def bodies(messages: list[Message]) -> list[bytes]:
    return [message.body for message in messages]


def numbered(count: int, prefix: str = "task") -> list[bytes]:
    return [f"{prefix}-{index:03d}".encode() for index in range(count)]


# --- the queue contract -----------------------------------------------------------------


def test_published_messages_are_received_once_each(backend: Backend) -> None:
    queue = backend.consumer()
    queue.publish(numbered(20), [f"demo/model-{index % 4}" for index in range(20)])

    got = receive_all(queue, 20)
    for message in got:
        queue.ack(message)

    assert sorted(bodies(got)) == numbered(20)
    assert {message.deliveries for message in got} == {1}
    assert receive_for(queue) == []


def test_a_keys_messages_stay_together_and_in_order(backend: Backend) -> None:
    queue = backend.consumer()
    keys = [f"demo/model-{index % 4}" for index in range(24)]
    queue.publish(numbered(24), keys)

    got = receive_all(queue, 24)

    assert sorted(bodies(got)) == numbered(24)
    key_of = dict(zip(numbered(24), keys))
    for key in set(keys):
        mine = [message for message in got if key_of[message.body] == key]
        assert bodies(mine) == sorted(bodies(mine)), f"{key}: not in publish order"
        if backend.partition_of is not None:
            assert len({backend.partition_of(message) for message in mine}) == 1, (
                f"{key}: spread over partitions"
            )


def test_acknowledged_never_again_unacknowledged_go_to_the_next_consumer(backend: Backend) -> None:
    first = backend.consumer()
    first.publish([b"done", b"pending"], ["demo/pump-1", "demo/pump-1"])
    got = receive_all(first, 2)
    assert bodies(got) == [b"done", b"pending"]

    first.ack(got[0])
    first.close()  # without acknowledging "pending" (sql: its lease runs out)
    second = backend.consumer()
    again = receive_all(second, 1)

    assert bodies(again) == [b"pending"]
    second.ack(again[0])
    assert receive_for(second) == [], "an acknowledged message came back"


def test_release_without_delay_delivers_again_with_one_more_delivery(backend: Backend) -> None:
    queue = backend.consumer()
    queue.publish([b"retry-me"], ["demo/pump-1"])
    [first] = receive_all(queue, 1)

    queue.release(first)
    [second] = receive_all(queue, 1)
    queue.release(second, timedelta(0))
    [third] = receive_all(queue, 1)
    queue.ack(third)

    assert [(m.body, m.deliveries) for m in (first, second, third)] == [(b"retry-me", d) for d in (1, 2, 3)]
    assert receive_for(queue) == []


def test_release_with_a_delay_is_not_delivered_before_it(backend: Backend) -> None:
    queue = backend.consumer()
    queue.publish([b"later", b"now"], ["demo/pump-1", "demo/compressor-1"])
    got = receive_all(queue, 2)
    later = next(message for message in got if message.body == b"later")
    queue.ack(next(message for message in got if message.body == b"now"))

    released_at = monotonic()
    queue.release(later, DELAY)
    [again] = receive_all(queue, 1)
    waited = monotonic() - released_at
    queue.ack(again)

    assert (again.body, again.deliveries) == (b"later", 2)
    assert waited >= DELAY.total_seconds() - MS_ROUNDING, f"delivered {waited:.3f}s after a {DELAY} delay"
    assert waited < DELAY.total_seconds() + PATIENCE_S


def test_messages_acknowledged_out_of_order_are_not_delivered_after_a_restart(backend: Backend) -> None:
    first = backend.consumer()
    first.publish(numbered(12), [f"demo/model-{index % 3}" for index in range(12)])
    got = receive_all(first, 12)
    assert sorted(bodies(got)) == numbered(12)
    random.Random(7).shuffle(got)
    with ThreadPoolExecutor(4) as pool:  # as an executor's task threads do
        list(pool.map(first.ack, got))
    first.close()

    second = backend.consumer()
    second.publish([b"after-restart"], ["demo/model-0"])
    again = receive_all(second, 1)
    second.ack(again[0])

    assert bodies(again) == [b"after-restart"], "an acknowledged message came back, or the new one was lost"
    assert receive_for(second) == []


def test_an_unacknowledged_message_among_acknowledged_ones_survives_a_restart(backend: Backend) -> None:
    first = backend.consumer()
    first.publish(numbered(12), [f"demo/model-{index % 3}" for index in range(12)])
    got = receive_all(first, 12)
    pending = next(message for message in got if message.body == b"task-004")
    acknowledged = [message for message in got if message is not pending]
    random.Random(11).shuffle(acknowledged)
    for message in acknowledged:
        first.ack(message)
    first.close()

    second = backend.consumer()
    again = receive_all(second, 1)
    again += receive_for(second)

    assert b"task-004" in bodies(again), "the unacknowledged message was lost"
    # a partitioned log may only repeat acknowledged messages behind it in its partition
    behind = set()
    if backend.partition_of is not None:
        position = got.index(pending)
        behind = {m.body for m in got[position:] if backend.partition_of(m) == backend.partition_of(pending)}
    assert set(bodies(again)) <= {b"task-004"} | behind
    assert len(bodies(again)) == len(set(bodies(again))), "delivered twice to one consumer"


def test_messages_in_hand_are_acknowledged_after_receiving_stopped(backend: Backend) -> None:
    first = backend.consumer()
    first.publish(numbered(3), ["demo/pump-1"] * 3)
    got = receive_all(first, 3)

    first.stop_receiving()
    assert first.receive(10, timedelta(seconds=0.3)) == []
    for message in reversed(got):  # the tasks in hand finish, in any order
        first.ack(message)
    first.close()

    second = backend.consumer()
    second.publish([b"after-shutdown"], ["demo/pump-1"])
    again = receive_all(second, 1)
    second.ack(again[0])
    assert bodies(again) == [b"after-shutdown"], "a message acknowledged during the shutdown came back"
    assert receive_for(second) == []


def test_receive_returns_nothing_within_its_wait_when_empty(backend: Backend) -> None:
    queue = backend.consumer()
    queue.receive(1, timedelta(0))  # connects (and for kafka starts joining the group)

    for wait in (0.0, 0.3):
        started = monotonic()
        assert queue.receive(10, timedelta(seconds=wait)) == []
        assert monotonic() - started < wait + WAIT_SLACK_S


def test_depth_falls_to_zero_when_every_message_is_acknowledged(backend: Backend) -> None:
    queue = backend.consumer()
    assert queue.depth() == 0
    queue.publish(numbered(5), [f"demo/model-{index}" for index in range(5)])
    waiting = queue.depth()
    got = receive_all(queue, 5)
    in_flight = queue.depth()
    for message in got:
        queue.ack(message)

    assert waiting >= 1 and in_flight >= 1, (waiting, in_flight)
    if backend.exact_depth:
        assert (waiting, in_flight) == (5, 5)
    assert queue.depth() == 0


# --- the executor's retry and dead-letter policy on each backend ------------------------


class FailingModels:
    """Stands in for the Gordo providers: raises the error a test wants (the Gordo errors
    themselves are tested for real against Gordo elsewhere)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def metadata(self, project: str, model: str, revision: str) -> Any:
        raise self.error

    def probe(self) -> None:
        """Up: the errors these tests raise are the task's own."""

    def close(self) -> None:
        pass


def executor_on(backend: Backend, error: Exception) -> tuple[Executor, TaskQueue]:
    config = Config(
        database={"url": str(backend.engine.url)},
        executor={"max_attempts": 3, "retry_base": "0.05s", "retry_max": "0.2s"},
    )
    queue = backend.consumer()
    models = FailingModels(error)
    parts = Components(
        config=config, engine=backend.engine, ledger=Ledger(backend.engine), queue=queue,
        model_info=models, model_execution=models, sensors=models, predictions=models,
        clock=system_clock,
    )  # fmt: skip
    return Executor.from_components(parts), queue


def a_task() -> Task:
    start = datetime(2026, 3, 2, 10, tzinfo=timezone.utc)
    return Task(project="demo", model="pump-1", revision="1", start=start, end=start + timedelta(minutes=30))


def letters(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as connection:
        return [
            tuple(row) for row in connection.execute(select(dead_letters.c.reason, dead_letters.c.attempts))
        ]


def test_a_malformed_message_is_dead_lettered_and_acknowledged(backend: Backend) -> None:
    executor, queue = executor_on(backend, AssertionError("never called"))
    queue.publish([b"{not a task"], ["demo/pump-1"])
    [message] = receive_all(queue, 1)

    assert executor.handle(message) == State.DEAD
    assert letters(backend.engine) == [("malformed", 1)]
    assert receive_for(queue) == []


def test_a_permanent_failure_is_dead_lettered_at_once(backend: Backend) -> None:
    executor, queue = executor_on(backend, PermanentError("unknown model"))
    task = a_task()
    queue.publish([task.to_json()], [task.key])
    [message] = receive_all(queue, 1)

    assert executor.handle(message) == State.DEAD
    assert letters(backend.engine) == [("permanent", 1)]
    assert receive_for(queue) == []


def test_a_transient_failure_is_retried_until_the_attempts_are_exhausted(backend: Backend) -> None:
    executor, queue = executor_on(backend, TransientError("Gordo answered 503"))
    task = a_task()
    queue.publish([task.to_json()], [task.key])

    outcomes = []
    for _attempt in range(3):
        [message] = receive_all(queue, 1)
        outcomes.append((message.deliveries, executor.handle(message)))

    assert outcomes == [(1, State.FAILED), (2, State.FAILED), (3, State.DEAD)]
    assert letters(backend.engine) == [("exhausted", 3)]
    assert receive_for(queue) == []
