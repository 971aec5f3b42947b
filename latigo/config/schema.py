"""The whole configuration: the sections put together, the checks that span sections, and
the order in which the sources win (``LATIGO_*`` variables over the YAML file over defaults).

The cross-section checks are the ones a single section cannot see: a queue lease or a Kafka
poll limit against the executor's task deadline, a Gordo call's timeouts against it too. A
configuration that fails one would start and then deliver tasks twice or outlive them.
"""

from __future__ import annotations

import types
from datetime import timedelta
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from latigo.config.backends import PredictionsConfig, QueueConfig, SensorsConfig
from latigo.config.providers import GordoConfig, SqlPredictionsConfig, SqlSensorsConfig
from latigo.config.queue import KAFKA_MAX_POLL_MS, KafkaQueueConfig, SqlQueueConfig
from latigo.config.sections import (
    DatabaseConfig,
    ExecutorConfig,
    LoggingConfig,
    MetricsConfig,
    RetentionConfig,
    RunConfig,
    ScheduleConfig,
)
from latigo.config.values import format_duration

# prefix of the environment variables that override single keys
ENV_PREFIX = "LATIGO_"
# separator between nesting levels in those variables
ENV_NESTING = "__"


class Config(BaseSettings):
    """The whole configuration. Precedence: LATIGO_* variables, then the YAML file, then defaults."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTING, extra="forbid", frozen=True
    )

    database: DatabaseConfig = DatabaseConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    models: GordoConfig = GordoConfig()
    sensors: SensorsConfig = SqlSensorsConfig()
    predictions: PredictionsConfig = SqlPredictionsConfig()
    queue: QueueConfig = SqlQueueConfig()
    executor: ExecutorConfig = ExecutorConfig()
    retention: RetentionConfig = RetentionConfig()
    run: RunConfig = RunConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _deadlines_nest(self) -> Config:
        deadline = format_duration(self.executor.task_deadline)
        if isinstance(self.queue, SqlQueueConfig) and self.queue.lease <= self.executor.task_deadline:
            raise ValueError(
                f"queue.lease ({format_duration(self.queue.lease)}) must be longer than "
                f"executor.task_deadline ({deadline}), or tasks still running are delivered twice"
            )
        if isinstance(self.queue, KafkaQueueConfig):
            limit = self.queue.options.get("max.poll.interval.ms", KAFKA_MAX_POLL_MS)
            poll = timedelta(milliseconds=int(limit))
            if poll <= self.executor.task_deadline:
                raise ValueError(
                    f"queue.options max.poll.interval.ms ({format_duration(poll)}) must be longer than "
                    f"executor.task_deadline ({deadline}): an executor whose slots are all busy does not poll"
                )
        call = timedelta(seconds=self.models.connect_timeout + self.models.read_timeout)
        if call >= self.executor.task_deadline:
            raise ValueError(
                f"models.connect_timeout + models.read_timeout ({format_duration(call)}) must be shorter "
                f"than executor.task_deadline ({deadline}), or one Gordo call outlives its task"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the YAML file arrives as init arguments; environment variables win over it
        return env_settings, init_settings


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's annotation may hold, through Optional, unions and Annotated: how
    the environment, the error messages and the secret search walk the schema."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return models_in(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [model for member in get_args(annotation) for model in models_in(member)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def default_document() -> dict[str, Any]:
    """The defaults as a YAML-ready mapping, for ``set_env.py`` and the docs."""
    return Config.model_construct().model_dump(mode="json")
