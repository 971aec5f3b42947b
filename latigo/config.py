"""One validated configuration schema, shared by every Latigo process.

The scheduler, the executors and the operator commands all read the same YAML file
(``LATIGO_CONFIG``, default ``local_config.yaml``), overridden key by key by ``LATIGO_*``
environment variables (``LATIGO_DATABASE__URL``, ``LATIGO_SCHEDULE__INTERVAL``, ...).
Every key has a default; an unknown key, a bad value or an unknown provider ``type`` stops
start-up with a message naming the key, because a typo that silently falls back to a
default is how a production service quietly stops predicting.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    SecretStr,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# environment variable naming the YAML file to read
CONFIG_PATH_VARIABLE = "LATIGO_CONFIG"
# file read when LATIGO_CONFIG is not set
DEFAULT_CONFIG_PATH = "local_config.yaml"
# prefix of the environment variables that override single keys
ENV_PREFIX = "LATIGO_"
# separator between nesting levels in those variables
ENV_NESTING = "__"

# max.poll.interval.ms the kafka queue uses unless queue.options says otherwise (15 minutes)
KAFKA_MAX_POLL_MS = 900_000
# units accepted in compact durations such as "30m" or "7d"
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(Exception):
    """The configuration cannot be used; the message names every offending key."""


def parse_duration(value: Any) -> Any:
    """Accept "90s", "30m", "2h", "7d", "1w", a number of seconds, or anything pydantic reads
    as a timedelta (ISO 8601 "PT30M", "00:30:00")."""
    if isinstance(value, str):
        text = value.strip().lower()
        number, unit = text[:-1], text[-1:]
        if unit in _DURATION_UNITS:
            try:
                return timedelta(seconds=float(number) * _DURATION_UNITS[unit])
            except ValueError:
                pass
    return value


def _format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in sorted(_DURATION_UNITS.items(), key=lambda item: -item[1]):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{value.total_seconds():g}s"


# a duration in config: "30m", "7d", seconds, or ISO 8601; written back in the compact form
Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(_format_duration, when_used="json")
]


def _non_negative(value: timedelta, name: str) -> None:
    if value < timedelta(0):
        raise ValueError(f"{name} must not be negative")


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(Section):
    """The Latigo database: ledger, SQL queue, SQL sensor and prediction stores."""

    url: str = "sqlite:///latigo.db"
    echo: bool = False


class ScheduleConfig(Section):
    """Where windows lie and when they become due."""

    interval: Duration = timedelta(minutes=30)
    anchor: AwareDatetime = datetime(1970, 1, 1, tzinfo=timezone.utc)
    delay: Duration = timedelta(minutes=5)
    tick: Duration = timedelta(seconds=30)
    catch_up: Duration = timedelta(days=7)
    initial_backfill: Duration = timedelta(days=1)
    # a week of history per Gordo call: Gordo's cost is mostly per call, a week of one model is
    # a few MB in an executor (bench/README.md: 7-day against 1-day tasks)
    max_task_span: Duration = timedelta(days=7)
    discovery_ttl: Duration = timedelta(minutes=5)
    leader_ttl: Duration = timedelta(minutes=2)
    backlog_limit: int = Field(2000, ge=1)
    history_order: Literal["newest_first", "oldest_first"] = "newest_first"

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.interval <= timedelta(0):
            raise ValueError("interval must be positive")
        if self.tick <= timedelta(0):
            raise ValueError("tick must be positive")
        for name in ("delay", "catch_up", "initial_backfill", "discovery_ttl"):
            _non_negative(getattr(self, name), name)
        if self.leader_ttl <= self.tick:
            raise ValueError("leader_ttl must be longer than tick, or the leader loses its lease between ticks")
        if self.max_task_span < self.interval:
            raise ValueError("max_task_span must be at least one interval")
        return self


class HttpConfig(Section):
    """Timeouts for one HTTP server; every call has both, so no call can block forever."""

    connect_timeout: float = Field(3.05, gt=0)
    read_timeout: float = Field(60.0, gt=0)


class AzureAdConfig(Section):
    """Client credentials for a Gordo behind Azure AD."""

    authority: str = Field(pattern=r"^https://", description="https://login.microsoftonline.com/<tenant id>")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scope: str = Field(min_length=1, description="the Gordo application's scope, e.g. api://<app id>/.default")
    # false for an authority msal cannot look up at Microsoft (Azure Stack, private clouds)
    instance_discovery: bool = True


class GordoConfig(HttpConfig):
    """Gordo as ModelInformationProvider and ModelExecutionProvider."""

    type: Literal["gordo"] = "gordo"
    base_url: str = "http://127.0.0.1:5555"
    projects: list[str] = Field(default_factory=lambda: ["demo"], min_length=1)
    metadata_ttl: Duration = timedelta(minutes=10)
    max_concurrency: int = Field(4, ge=1)
    data_margin: int = Field(2, ge=0)
    # Azure AD client credentials, when Gordo sits behind Azure AD
    auth: AzureAdConfig | None = None


class SqlSensorsConfig(Section):
    """Sensor data in the Latigo database's ``sensor_data`` table (the embedded default)."""

    type: Literal["sql"] = "sql"


class InfluxConfig(HttpConfig):
    """An InfluxDB 1.x server."""

    url: str = "http://127.0.0.1:8086"
    database: str = "latigo"
    username: str = ""
    password: SecretStr = SecretStr("")


class InfluxSensorsConfig(InfluxConfig):
    """Sensor data in InfluxDB 1.x: one measurement, the tag name in a tag key, one value field."""

    type: Literal["influx"]
    measurement: str = "sensors"
    tag_key: str = "tag"
    field: str = "value"


class SqlPredictionsConfig(Section):
    """Predictions in the Latigo database's ``predictions`` table."""

    type: Literal["sql"] = "sql"


class InfluxPredictionsConfig(InfluxConfig):
    """Predictions in InfluxDB 1.x, laid out like gordo-client's forwarder."""

    type: Literal["influx"]
    extra_tags: dict[str, str] = Field(default_factory=dict)
    batch_size: int = Field(10000, ge=1)
    # a tag key for the project (none in gordo-client's layout): needed when two projects
    # share the database and a model name, or their points would be one series
    project_tag: str = ""


class SqlQueueConfig(Section):
    """The task queue as a table in the Latigo database, with leases."""

    type: Literal["sql"] = "sql"
    lease: Duration = timedelta(minutes=15)
    poll_interval: Duration = timedelta(seconds=1)


class KafkaQueueConfig(Section):
    """Tasks on a Kafka topic (Apache Kafka, or Azure Event Hubs' Kafka endpoint), one
    consumer group shared by the executors, offsets committed only after a task is handled."""

    type: Literal["kafka"]
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "latigo-tasks"
    group_id: str = "latigo-executors"
    # partitions of the topic when Latigo creates it
    partitions: int = Field(8, ge=1)
    # an Azure Event Hubs connection string: implies SASL_SSL/PLAIN on port 9093
    connection_string: SecretStr = SecretStr("")
    # further librdkafka settings, passed as they are
    options: dict[str, str] = Field(default_factory=dict)
    poll_interval: Duration = timedelta(seconds=1)


class EventHubQueueConfig(Section):
    """Tasks on Azure Event Hubs through the azure-eventhub SDK; partition ownership and
    checkpoints kept in the Latigo database."""

    type: Literal["eventhub"]
    connection_string: SecretStr = SecretStr("")
    eventhub_name: str = "latigo-tasks"
    consumer_group: str = "$Default"
    poll_interval: Duration = timedelta(seconds=1)

    @model_validator(mode="after")
    def _connected(self) -> EventHubQueueConfig:
        if not self.connection_string.get_secret_value():
            raise ValueError("connection_string is required for the eventhub queue")
        return self


class ExecutorConfig(Section):
    """How executors work through tasks."""

    concurrency: int = Field(2, ge=1)
    max_attempts: int = Field(5, ge=1)
    # deliveries without any outcome (the executor died each time) before a task is dead-lettered
    max_deliveries: int = Field(20, ge=1)
    retry_base: Duration = timedelta(seconds=2)
    retry_max: Duration = timedelta(minutes=5)
    task_deadline: Duration = timedelta(minutes=10)
    missing_tags: Literal["no_data", "retry", "dead"] = "no_data"
    shutdown_grace: Duration = timedelta(seconds=30)
    # a bigger queue message is dead-lettered unread: a task is a few hundred bytes
    max_message_size: ByteSize = Field(ByteSize(1 << 20), gt=0)


class RunConfig(Section):
    """``latigo run``: the whole service on one machine."""

    executors: int = Field(2, ge=1)


class MetricsConfig(Section):
    """The metrics and probe endpoint of each process (``latigo run`` numbers its children's
    ports upwards from this one)."""

    host: str = "127.0.0.1"
    port: int | None = Field(9100, ge=0, le=65535)


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = False


def _backend_type(value: Any) -> str:
    """The ``type`` of a backend section; a section without one is the embedded ``sql``."""
    if isinstance(value, dict):
        return value.get("type", "sql")
    return getattr(value, "type", "sql")


def _backends(*sections: type[BaseModel]) -> Any:
    """A section that is one of several backends, chosen by its ``type`` key."""
    tagged = tuple(Annotated[section, Tag(section.model_fields["type"].annotation.__args__[0])] for section in sections)
    return Annotated[Union[tagged], Discriminator(_backend_type)]


SensorsConfig = _backends(SqlSensorsConfig, InfluxSensorsConfig)
PredictionsConfig = _backends(SqlPredictionsConfig, InfluxPredictionsConfig)
QueueConfig = _backends(SqlQueueConfig, KafkaQueueConfig, EventHubQueueConfig)


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
    run: RunConfig = RunConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _deadlines_nest(self) -> Config:
        if isinstance(self.queue, SqlQueueConfig) and self.queue.lease <= self.executor.task_deadline:
            raise ValueError(
                f"queue.lease ({self.queue.lease}) must be longer than executor.task_deadline "
                f"({self.executor.task_deadline}), or tasks still running are delivered twice"
            )
        if isinstance(self.queue, KafkaQueueConfig):
            poll = timedelta(milliseconds=int(self.queue.options.get("max.poll.interval.ms", KAFKA_MAX_POLL_MS)))
            if poll <= self.executor.task_deadline:
                raise ValueError(
                    f"queue.options max.poll.interval.ms ({poll}) must be longer than executor.task_deadline "
                    f"({self.executor.task_deadline}): an executor whose slots are all busy does not poll"
                )
        call = timedelta(seconds=self.models.connect_timeout + self.models.read_timeout)
        if call >= self.executor.task_deadline:
            raise ValueError(
                f"models.connect_timeout + models.read_timeout ({call}) must be shorter than "
                f"executor.task_deadline ({self.executor.task_deadline}), or one Gordo call outlives its task"
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


def _unknown_env_keys(environ: dict[str, str]) -> list[str]:
    known = {name.upper() for name in Config.model_fields}
    unknown = []
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_VARIABLE:
            continue
        section = name[len(ENV_PREFIX) :].split(ENV_NESTING, 1)[0]
        if section not in known:
            unknown.append(name)
    return unknown


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(CONFIG_PATH_VARIABLE) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str] | None = None, *, require_file: bool = False) -> Config:
    """Read the YAML file (if present) and the environment; raise ConfigError naming bad keys."""
    file = config_path(path)
    document: dict[str, Any] = {}
    if file.exists():
        try:
            document = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{file}: not valid YAML: {error}") from error
        if not isinstance(document, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections")
    elif require_file or path is not None:
        raise ConfigError(f"{file}: no such configuration file")
    unknown = _unknown_env_keys(dict(os.environ))
    if unknown:
        raise ConfigError(
            "unknown configuration variables: " + ", ".join(sorted(unknown))
            + f" (sections: {', '.join(Config.model_fields)})"
        )
    try:
        return Config(**document)
    except ValidationError as error:
        raise ConfigError(_describe(error, f"{file} and {ENV_PREFIX}* variables")) from None


def default_document() -> dict[str, Any]:
    """The defaults as a YAML-ready mapping, for ``set_env.py`` and the docs."""
    return Config.model_construct().model_dump(mode="json")


def dump_config(config: Config) -> str:
    """The effective configuration as YAML, with secrets masked."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
