"""The sections of the task queue's backends: a table in the Latigo database (``sql``, the
default), a Kafka topic, or Azure Event Hubs through its SDK. Each section holds what its
backend needs to deliver a task to one executor at a time and redeliver it when that
executor dies; how long a task may run against these limits is checked on
:class:`latigo.config.schema.Config`, which sees the executor's deadline too.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from latigo.config.sections import Section
from latigo.config.values import MAX_DURATION, Name, PositiveDuration

# max.poll.interval.ms the kafka queue uses unless queue.options says otherwise (15 minutes)
KAFKA_MAX_POLL_MS = 900_000


class SqlQueueConfig(Section):
    """The task queue as a table in the Latigo database, with leases."""

    type: Literal["sql"] = "sql"
    lease: PositiveDuration = timedelta(minutes=15)
    poll_interval: PositiveDuration = timedelta(seconds=1)


def _option_text(value: Any) -> Any:
    """librdkafka takes every setting as text; YAML gives numbers and booleans as such."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


class KafkaQueueConfig(Section):
    """Tasks on a Kafka topic (Apache Kafka, or Azure Event Hubs' Kafka endpoint), one
    consumer group shared by the executors, offsets committed only after a task is handled."""

    type: Literal["kafka"]
    bootstrap_servers: Name = "127.0.0.1:9092"
    topic: Name = "latigo-tasks"
    group_id: Name = "latigo-executors"
    # partitions of the topic when Latigo creates it
    partitions: Annotated[int, Field(ge=1, le=100_000)] = 8
    # an Azure Event Hubs connection string: implies SASL_SSL/PLAIN on port 9093
    connection_string: SecretStr = SecretStr("")
    # further librdkafka settings, passed as they are
    options: dict[str, Annotated[str, BeforeValidator(_option_text)]] = Field(default_factory=dict)
    poll_interval: PositiveDuration = timedelta(seconds=1)

    @field_validator("options")
    @classmethod
    def _poll_limit_is_milliseconds(cls, options: dict[str, str]) -> dict[str, str]:
        text = options.get("max.poll.interval.ms")
        if text is not None:
            limit = MAX_DURATION // timedelta(milliseconds=1)
            if not re.fullmatch(r"\s*\d{1,15}\s*", text) or not 0 < int(text) <= limit:
                raise ValueError(
                    f"max.poll.interval.ms must be a whole number of milliseconds, e.g. '{KAFKA_MAX_POLL_MS}'"
                )
        return options


class EventHubQueueConfig(Section):
    """Tasks on Azure Event Hubs through the azure-eventhub SDK; partition ownership and
    checkpoints kept in the Latigo database."""

    type: Literal["eventhub"]
    connection_string: SecretStr = SecretStr("")
    eventhub_name: Name = "latigo-tasks"
    consumer_group: Name = "$Default"
    poll_interval: PositiveDuration = timedelta(seconds=1)

    @model_validator(mode="after")
    def _connected(self) -> EventHubQueueConfig:
        if not self.connection_string.get_secret_value():
            raise ValueError("queue.connection_string is required for the eventhub queue")
        return self
