"""The ``kafka`` queue: its settings, the bookkeeping it shares with the ``eventhub`` queue, and
two real executor processes sharing a topic on a real Kafka-protocol broker (Tansu), one of
them killed in the middle of a task.

The queue contract itself (delivery, acknowledgement, release, redelivery, depth, the
executor's retries and dead letters) is in tests/test_queue_contract.py, for every backend.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient, NewTopic
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from latigo.components import build
from latigo.config import Config, KafkaQueueConfig
from latigo.demo.feeder import feed
from latigo.demo.models import model_names, tags_of
from latigo.errors import PermanentError, TransientError
from latigo.ledger import State
from latigo.providers.predictions.sql import read as read_predictions
from latigo.queues import kafka
from latigo.queues.kafka import KafkaQueue
from latigo.queues.kafka_clients import client_settings, event_hubs_settings, translate
from latigo.queues.partitions import DELIVERIES, NOT_BEFORE, PartitionTracker, read_marks, retry_marks
from latigo.schema import dead_letters, ledger
from latigo.window import Grid
from tests.kafka_fixture import FAST_GROUP
from tests.postgres_fixture import free_port

# a connection string as the Azure portal shows it (the key is made up)
EVENT_HUBS = (
    "Endpoint=sb://latigo-prod.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=bm90LWEtcmVhbC1rZXk9PQ=="
)
KEY = "bm90LWEtcmVhbC1rZXk9PQ=="


# --- settings -----------------------------------------------------------------------------


def test_event_hubs_settings_come_from_the_connection_string() -> None:
    assert event_hubs_settings(EVENT_HUBS) == {
        "bootstrap.servers": "latigo-prod.servicebus.windows.net:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "$ConnectionString",
        "sasl.password": EVENT_HUBS,
        "socket.keepalive.enable": "true",
        "metadata.max.age.ms": "180000",
        "connections.max.idle.ms": "180000",
    }
    # a hub-level string (EntityPath) and loose spacing work the same
    hub_level = f" endpoint=sb://latigo-prod.servicebus.windows.net/ ; SharedAccessKey={KEY};EntityPath=tasks"
    assert event_hubs_settings(hub_level)["bootstrap.servers"] == "latigo-prod.servicebus.windows.net:9093"


@pytest.mark.parametrize(
    "bad", ["", f"SharedAccessKey={KEY}", f"Endpoint=https://example.com/;SharedAccessKey={KEY}"]
)
def test_a_bad_connection_string_is_refused_without_quoting_it(bad: str) -> None:
    with pytest.raises(PermanentError, match="Endpoint=sb://") as raised:
        event_hubs_settings(bad)
    assert KEY not in str(raised.value)


def test_client_settings_layer_event_hubs_then_options() -> None:
    plain = client_settings(KafkaQueueConfig(type="kafka", bootstrap_servers="10.0.0.5:9092"))
    assert plain["bootstrap.servers"] == "10.0.0.5:9092" and "sasl.password" not in plain

    azure = client_settings(
        KafkaQueueConfig(type="kafka", connection_string=EVENT_HUBS, options={"session.timeout.ms": "30000"})
    )
    assert azure["bootstrap.servers"] == "latigo-prod.servicebus.windows.net:9093"
    assert azure["security.protocol"] == "SASL_SSL" and azure["session.timeout.ms"] == "30000"


def test_the_connection_string_is_never_shown_or_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    queue = KafkaQueue(KafkaQueueConfig(type="kafka", connection_string=EVENT_HUBS))  # no client made yet
    try:
        assert KEY not in repr(queue) and KEY not in str(vars(queue).get("_topic"))
    finally:
        queue.close()
    assert KEY not in caplog.text


def test_each_kind_of_client_gets_only_its_settings() -> None:
    queue = KafkaQueue(KafkaQueueConfig(type="kafka", options={**FAST_GROUP, "linger.ms": "50"}))
    try:
        producer = queue._client_config("producer", {"acks": "all"})
        consumer = queue._client_config("consumer", {}, {"group.id": "g"})
        admin = queue._client_config("admin", {})
    finally:
        queue.close()
    assert (
        producer["linger.ms"] == "50" and producer["acks"] == "all" and "session.timeout.ms" not in producer
    )
    assert (
        consumer["session.timeout.ms"] == "6000"
        and "linger.ms" not in consumer
        and consumer["group.id"] == "g"
    )
    assert "linger.ms" not in admin and "session.timeout.ms" not in admin


@pytest.mark.parametrize(
    ("code", "fatal", "kind"),
    [
        (KafkaError._TRANSPORT, False, TransientError),
        (KafkaError._MSG_TIMED_OUT, False, TransientError),
        (KafkaError.NOT_COORDINATOR, False, TransientError),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False, PermanentError),
        (KafkaError.MSG_SIZE_TOO_LARGE, False, PermanentError),
        (KafkaError._FENCED, True, PermanentError),
    ],
)
def test_broker_errors_become_transient_or_permanent(code: int, fatal: bool, kind: type) -> None:
    error = translate(KafkaError(code, "from the broker", fatal=fatal), "publishing")
    assert type(error) is kind
    assert "publishing" in str(error) and "from the broker" in str(error)


# --- the bookkeeping the partitioned backends share -------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 30).flatmap(lambda n: st.tuples(st.just(n), st.permutations(range(n)), st.integers(0, n)))
)
def test_the_committed_position_never_passes_a_message_in_flight(case: tuple[int, list[int], int]) -> None:
    """Messages 0..n-1 received, acknowledged in any order, some never: the position only
    moves, only over acknowledged messages, and reaches the end when all are acknowledged."""
    count, order, acknowledged = case
    tracker: PartitionTracker[str] = PartitionTracker()
    generation = tracker.assign("p")
    for position in range(count):
        assert tracker.received("p", position, f"token-{position}") == generation
    committed = -1
    for position in order[:acknowledged]:
        moved = tracker.done("p", generation, position)
        if moved is not None:
            assert moved[0] > committed and moved[1] == f"token-{moved[0]}"
            committed = moved[0]
        done = set(order[: order.index(position) + 1])
        assert all(earlier in done for earlier in range(committed + 1))
    first_missing = min(set(range(count)) - set(order[:acknowledged]), default=count)
    assert committed == first_missing - 1


def test_an_acknowledgement_from_before_a_revocation_moves_nothing() -> None:
    tracker: PartitionTracker[None] = PartitionTracker()
    old = tracker.assign("p")
    tracker.received("p", 0, None)
    tracker.revoke("p")
    new = tracker.assign("p")  # given back: a new generation, the message is delivered again
    tracker.received("p", 0, None)

    assert tracker.done("p", old, 0) is None and not tracker.current("p", old)
    assert tracker.done("p", new, 0) == (0, None)


def test_retry_marks_survive_any_encoding_and_bad_ones_are_ignored() -> None:
    when = datetime(2026, 3, 2, 12, 0, 0, 123000, tzinfo=UTC)
    marks = retry_marks(3, when)
    as_kafka = [(name, value.encode()) for name, value in marks.items()]
    as_amqp = {name.encode(): value.encode() for name, value in marks.items()}

    assert read_marks(as_kafka) == (3, when)
    assert read_marks(as_amqp.items()) == (3, when)
    assert read_marks(None) == (1, None)
    assert read_marks([(DELIVERIES, b"many"), (NOT_BEFORE, b"\xff"), ("other", b"1")]) == (1, None)


# --- against the broker -----------------------------------------------------------------


def test_the_topic_is_created_with_the_configured_partitions(kafka_broker) -> None:
    settings = kafka_broker.queue_settings(partitions=6)
    queue = KafkaQueue(settings)
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    existing = kafka_broker.queue_settings(partitions=6)
    admin.create_topics([NewTopic(existing.topic, num_partitions=2, replication_factor=1)])[
        existing.topic
    ].result(10)
    other = KafkaQueue(existing)
    try:
        queue.publish([b"task"], ["demo/pump-1"])
        other.publish([b"task"], ["demo/pump-1"])
        topics = admin.list_topics(timeout=10).topics
    finally:
        queue.close()
        other.close()
    assert len(topics[settings.topic].partitions) == 6
    assert len(topics[existing.topic].partitions) == 2, "an existing topic is used as it is"


def test_an_unreachable_broker_is_a_transient_error_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "OPERATION_TIMEOUT_S", 1.0)
    queue = KafkaQueue(KafkaQueueConfig(type="kafka", bootstrap_servers=f"127.0.0.1:{free_port()}"))
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match="kafka"):
            queue.publish([b"task"], ["demo/pump-1"])
        with pytest.raises(TransientError, match="kafka"):
            queue.depth()
    finally:
        queue.close()
    assert time.monotonic() - started < 10


# --- two executor processes in one consumer group, one killed mid-task ------------------

# the demo models' resolution: one prediction per 10 minutes
STEP = timedelta(minutes=10)
INTERVAL = timedelta(minutes=30)
# initial backfill: 16 windows per model (+ the newest due one), one window per task
BACKFILL = timedelta(hours=8)
# two partitions: the demo models' keys fall on both (murmur2), so each executor gets work
PARTITIONS = 2
# the anomaly endpoint's per-tag output groups, and its totals (one column each)
PER_TAG_GROUPS = (
    "model-input",
    "model-output",
    "tag-anomaly-scaled",
    "tag-anomaly-unscaled",
    "anomaly-confidence",
)
TOTAL_GROUPS = ("total-anomaly-scaled", "total-anomaly-unscaled", "total-anomaly-confidence")
# how long processes may take to start, join the group, finish the work, stop
START_S = 60.0
WORK_S = 60.0
STOP_S = 30.0
# how often the test looks at log files and the ledger while waiting on another process
POLL_S = 0.05
# an executor's log line saying it was given partitions (cooperative rebalances may give none)
ASSIGNED = re.compile(r"assigned partitions \[\d")


class HoldingProxy:
    """A TCP relay to Gordo for one executor. Once armed, it holds the next prediction
    request it sees: the executor is then in the middle of a task, waiting for Gordo's
    answer, and ``caught`` is set (with the request line, naming the model)."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.armed = threading.Event()
        self.caught = threading.Event()
        self.request_line = ""
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if (
                    requests
                    and self.armed.is_set()
                    and not self.caught.is_set()
                    and b"/anomaly/prediction" in chunk
                ):
                    self.request_line = chunk.split(b"\r\n", 1)[0].decode(errors="replace")
                    self.caught.set()
                    self._closing.wait()  # never forwarded: no answer comes
                    return
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closing.set()
        self._server.close()
        for sock in self._sockets:
            sock.close()


def _clean_env() -> dict[str, str]:
    """The environment without LATIGO_* overrides: the test's config files are the only ones."""
    return {key: value for key, value in os.environ.items() if not key.startswith("LATIGO_")}


def _wait_for(condition, timeout: float, what: str, diagnostics=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{diagnostics()}", pytrace=False)
        time.sleep(POLL_S)


def _write_config(path: Path, database: str, gordo_url: str, queue: KafkaQueueConfig) -> Path:
    options = ", ".join(f"'{name}': '{value}'" for name, value in queue.options.items())
    path.write_text(
        f"database: {{url: '{database}'}}\n"
        f"models: {{base_url: '{gordo_url}', projects: [demo], read_timeout: 5}}\n"
        f"schedule: {{initial_backfill: {int(BACKFILL.total_seconds())}s, max_task_span: 30m}}\n"
        f"queue: {{type: kafka, bootstrap_servers: '{queue.bootstrap_servers}', topic: {queue.topic}, "
        f"group_id: {queue.group_id}, partitions: {queue.partitions}, poll_interval: 0.2s, "
        f"options: {{{options}}}}}\n"
        "executor: {concurrency: 2, retry_base: 0.2s, retry_max: 1s, task_deadline: 9s}\n"
        "metrics: {port: 0}\n"
    )
    return path


def test_executors_share_partitions_and_one_killed_mid_task_loses_and_duplicates_nothing(
    tmp_path, postgres_url, gordo_server, kafka_broker
):
    queue_settings = kafka_broker.queue_settings(partitions=PARTITIONS, options=FAST_GROUP)
    proxy = HoldingProxy(gordo_server.port)
    config_a = _write_config(
        tmp_path / "a.yaml", postgres_url, f"http://127.0.0.1:{proxy.port}", queue_settings
    )
    config_b = _write_config(tmp_path / "b.yaml", postgres_url, gordo_server.base_url, queue_settings)
    parts = build(Config(database={"url": postgres_url}))
    engine = parts.engine
    logs = {name: tmp_path / f"executor-{name}.log" for name in "ab"}
    processes: dict[str, subprocess.Popen] = {}

    def text(name: str) -> str:
        return logs[name].read_text(errors="replace") if logs[name].exists() else ""

    def done_tasks(name: str) -> int:
        return sum(1 for line in text(name).splitlines() if " done in " in line)

    def assignments(name: str) -> list[int]:
        """Where the executor's log says it was given partitions (a non-empty list)."""
        return [match.start() for match in ASSIGNED.finditer(text(name))]

    def states() -> Counter:
        with engine.connect() as connection:
            return Counter(
                dict(connection.execute(select(ledger.c.state, func.count()).group_by(ledger.c.state)).all())
            )

    def diagnostics() -> str:
        tails = "\n".join(
            f"--- executor {name}:\n" + "\n".join(text(name).splitlines()[-25:]) for name in "ab"
        )
        tansu = kafka_broker.log_tail(10)
        return f"ledger: {dict(states())}\ncaught: {proxy.request_line!r}\n{tails}\n--- tansu:\n{tansu}"

    def start(name: str, config: Path) -> None:
        with logs[name].open("wb") as out:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "latigo", "--config", str(config), "executor"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(),
            )  # fmt: skip

    try:
        now = datetime.now(UTC)
        feed(parts.sensors, now - BACKFILL - timedelta(hours=3), Grid(timedelta(minutes=1)).floor(now))

        # both executors join the group (and create the topic) before there is any work
        began = time.monotonic()
        start("a", config_a)
        start("b", config_b)
        _wait_for(
            lambda: assignments("a") and assignments("b"),
            START_S,
            "both executors to be given partitions",
            diagnostics,
        )

        scheduler = subprocess.run(
            [sys.executable, "-m", "latigo", "--config", str(config_b), "scheduler", "--once"],
            capture_output=True, text=True, timeout=120, env=_clean_env(),
        )  # fmt: skip
        assert scheduler.returncode == 0, scheduler.stderr[-3000:]
        with engine.connect() as connection:
            planned = set(connection.execute(select(ledger.c.model, ledger.c.window_start)).all())
        assert len(planned) >= 3 * (BACKFILL // INTERVAL), len(planned)

        # once executor a has finished a task, catch it in the middle of its next one and kill it
        _wait_for(lambda: done_tasks("a") >= 1, WORK_S, "executor a to finish a task", diagnostics)
        proxy.armed.set()
        assert proxy.caught.wait(WORK_S), f"executor a never asked Gordo again\n{diagnostics()}"
        processes["a"].send_signal(signal.SIGKILL)
        assert processes["a"].wait(STOP_S) == -signal.SIGKILL
        done_by_a = done_tasks("a")

        # b takes a's partitions over (after the session timeout) and finishes everything
        _wait_for(
            lambda: states() == Counter({State.DONE: len(planned)}), WORK_S, "every window done", diagnostics
        )
        processes["b"].send_signal(signal.SIGTERM)
        assert processes["b"].wait(STOP_S) == 0, diagnostics()

        caught_model = next(model for model in model_names() if f"/{model}/" in proxy.request_line)
        print(
            f"\n{len(planned)} windows: executor a did {done_by_a} tasks and was killed waiting for Gordo "
            f"({caught_model}); b did {done_tasks('b')} after {time.monotonic() - began:.1f}s"
        )
        assert done_by_a >= 1 and done_tasks("b") >= 1, "both executors must have had work"
        assert len(assignments("b")) >= 2, "b never took a's partitions over"
        after_take_over = text("b")[assignments("b")[1] :]
        assert re.search(rf"demo/{caught_model} .* done in ", after_take_over), (
            f"b did not finish {caught_model}'s tasks after taking a's partitions over"
        )

        # every window done exactly once, every prediction stored once, nothing left behind
        with engine.connect() as connection:
            rows = connection.execute(select(ledger.c.model, ledger.c.window_start, ledger.c.state)).all()
            letters = connection.execute(select(func.count()).select_from(dead_letters)).scalar_one()
        found = read_predictions(engine).groupby(["model", "time"]).size().reset_index().itertuples(index=False)
        per_step = {(model, moment.astimezone(UTC)): count for model, moment, count in found}
        assert len(rows) == len(planned) and {(model, start) for model, start, _ in rows} == planned
        assert {state for _, _, state in rows} == {State.DONE}
        assert letters == 0
        wanted = {
            (model, start + k * STEP): len(PER_TAG_GROUPS) * len(tags_of(model)) + len(TOTAL_GROUPS)
            for model, start in planned
            for k in range(INTERVAL // STEP)
        }
        assert per_step == wanted, "a prediction step missing, outside its window, or stored twice"
        probe = KafkaQueue(queue_settings)
        try:
            assert probe.depth() == 0, "every message must be committed"
        finally:
            probe.close()
    except BaseException:
        print(diagnostics())
        raise
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(STOP_S)
        proxy.close()
        parts.close()
