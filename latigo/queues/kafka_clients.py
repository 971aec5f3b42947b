"""What the ``kafka`` queue's librdkafka clients are given and what their errors mean.

Settings: the servers (or Azure Event Hubs' Kafka endpoint, from its connection string),
then ``queue.options`` as they are, then per kind of client what the queue's semantics
require. Errors: one table from librdkafka's error codes to the executor's error classes
(``ERRORS``), applied in one place (``broker_errors``). No client is made here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from confluent_kafka import KafkaError, KafkaException

from latigo.config import KafkaQueueConfig
from latigo.errors import LatigoError, PermanentError, TransientError

# Azure Event Hubs' Kafka endpoint listens on this port of the namespace's host
EVENT_HUBS_KAFKA_PORT = 9093
# Microsoft's recommended client settings for Event Hubs (it closes idle connections after 240 s)
EVENT_HUBS_RECOMMENDED = {
    "socket.keepalive.enable": "true",
    "metadata.max.age.ms": "180000",
    "connections.max.idle.ms": "180000",
}
# broker and client error codes -> the executor's error class. A code not here is transient
# (librdkafka retries by itself what it can); a fatal client error is permanent whatever its code
ERRORS: dict[int, type[LatigoError]] = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: PermanentError,
    KafkaError.GROUP_AUTHORIZATION_FAILED: PermanentError,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: PermanentError,
    KafkaError.SASL_AUTHENTICATION_FAILED: PermanentError,
    KafkaError._AUTHENTICATION: PermanentError,
    KafkaError.MSG_SIZE_TOO_LARGE: PermanentError,
    KafkaError.RECORD_LIST_TOO_LARGE: PermanentError,
    KafkaError.INVALID_CONFIG: PermanentError,
    KafkaError._INVALID_ARG: PermanentError,
    KafkaError.INVALID_PARTITIONS: PermanentError,
    KafkaError.INVALID_REPLICATION_FACTOR: PermanentError,
    KafkaError.POLICY_VIOLATION: PermanentError,
    KafkaError.TOPIC_EXCEPTION: PermanentError,
    KafkaError._UNSUPPORTED_FEATURE: PermanentError,
}
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


def for_client(
    kind: str, defaults: dict[str, Any], common: dict[str, Any], required: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Settings for a ``producer``, ``consumer`` or ``admin`` client: our defaults, then the
    shared settings (``queue.options`` win over the defaults), then what the queue's
    semantics require; settings meant for the other kind of client are left out (librdkafka
    warns about them)."""
    foreign = {"producer": CONSUMER_ONLY, "consumer": PRODUCER_ONLY}.get(kind, CONSUMER_ONLY | PRODUCER_ONLY)
    merged = {**defaults, **common, **(required or {})}
    return {name: value for name, value in merged.items() if name not in foreign}


def translate(error: KafkaError, what: str) -> LatigoError:
    """A broker error as the executor's error class, by ERRORS."""
    kind = PermanentError if error.fatal() else ERRORS.get(error.code(), TransientError)
    return kind(f"kafka: {what}: {error.name()}: {error.str()}")


def kafka_error(exception: KafkaException) -> KafkaError:
    error = exception.args[0] if exception.args else None
    return error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL, str(exception))


@contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """The one place a librdkafka exception becomes a Latigo error (``what`` was being done).
    Not ``errors.translated``: librdkafka raises one exception class for every failure, and
    the error code it carries decides."""
    try:
        yield
    except KafkaException as exception:
        raise translate(kafka_error(exception), what) from None
