"""One validated configuration schema, shared by every Latigo process.

The scheduler, the executors and the operator commands all read the same YAML file
(``LATIGO_CONFIG``, default ``local_config.yaml``), overridden key by key by ``LATIGO_*``
environment variables (``LATIGO_DATABASE__URL``, ``LATIGO_SCHEDULE__INTERVAL``, ...).
Every key has a default; an unknown key, a bad value or an unknown provider ``type`` stops
start-up with a message naming the key, because a typo that silently falls back to a
default is how a production service quietly stops predicting.

The check is meant to be the last place a configuration can fail: whatever passes it must
not fail or misbehave at start (a database URL nobody can connect with, a duration that
overflows date arithmetic, an idle loop that spins because its poll interval is 0). Whatever
fails it ends as a :class:`ConfigError` whose message names the key and says what is
expected, and never quotes a secret: values of secret keys and passwords in URLs are masked
in every message, YAML snippets included.
"""

from __future__ import annotations

import json
import math
import os
import re
import types
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
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
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

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
# what a duration looks like, for error messages
DURATION_FORMS = "30s, 30m, 6h, 7d, 1w, seconds, or ISO 8601 (PT30M)"
# the longest duration any key takes: ten years. Nothing in Latigo is usefully longer, and
# longer ones break date arithmetic (now + leader_ttl overflows a datetime at 2e12 seconds)
MAX_DURATION = timedelta(days=3653)
# the shortest window: Gordo's data has a resolution of seconds at best, and a shorter
# window makes the scheduler plan millions of windows per day of catch-up
MIN_INTERVAL = timedelta(seconds=1)
# the longest HTTP connect or read timeout, seconds: an hour of silence is an outage
MAX_TIMEOUT_S = 3600.0
# most threads, processes or calls in flight one setting may ask for
MAX_PARALLEL = 1024
# largest count (attempts, backlog, batch, partitions...): fits any SQL integer column
MAX_COUNT = 1_000_000_000
# largest queue message an executor reads (a task is a few hundred bytes)
MAX_MESSAGE_BYTES = 1 << 30
# the window grid's anchor lies in these years: far enough for any plant, near enough
# that converting it to UTC and stepping from it to now never overflows
ANCHOR_YEARS = (1900, 2200)
# SQLAlchemy backends and drivers Latigo runs on (latigo.db tunes each of them)
SUPPORTED_DATABASES = {"sqlite": ("pysqlite",), "postgresql": ("psycopg",)}
# what a supported database URL looks like, for error messages
DATABASE_URL_FORMS = "sqlite:///<file> or postgresql+psycopg://<user>:<password>@<host>:<port>/<database>"
# largest configuration file read, bytes: a real one is a few KiB
MAX_FILE_BYTES = 1 << 20
# deepest nesting of mappings and lists in the file (Latigo's own keys go 3 deep); deeper
# documents are refused before they exhaust the parser's stack
MAX_YAML_DEPTH = 20
# most values the file may expand to, an alias counted at each use ("billion laughs")
MAX_YAML_NODES = 10_000
# what masked secrets are printed as
MASK = "***"
# longest value quoted back in a message (a mistyped type:, say)
MAX_QUOTED = 40
# words that make a key secret wherever it is (queue.options' sasl.password, say), besides
# the schema's SecretStr keys
SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "connection_string", "sharedaccesskey")


class ConfigError(Exception):
    """The configuration cannot be used; the message names every offending key."""


# ---------------------------------------------------------------- durations


def _seconds(amount: float, unit: int) -> timedelta:
    if not math.isfinite(amount):
        raise ValueError(f"not a finite duration: write {DURATION_FORMS}")
    seconds = amount * unit
    if abs(seconds) > MAX_DURATION.total_seconds():
        raise ValueError(_TOO_LONG)
    return timedelta(seconds=seconds)


# pydantic's own reading of ISO 8601 ("PT30M") and "HH:MM:SS" durations
_ISO_DURATION = TypeAdapter(timedelta)
# the message for a duration longer than MAX_DURATION
_TOO_LONG = f"longer than {MAX_DURATION.days}d (10 years), the longest duration accepted"


def duration(value: Any) -> timedelta:
    """Read a duration: "90s", "30m", "2h", "7d", "1w", a number of seconds (also as text,
    as environment variables give it), or ISO 8601 ("PT30M", "00:30:00"). A ValueError says
    what a duration looks like; one that overflows or is longer than MAX_DURATION is refused
    here, before any arithmetic can overflow."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a duration: write {DURATION_FORMS}")
    elif isinstance(value, (int, float)):
        result = _seconds(value, 1)
    else:
        text = value.strip()
        number, unit = text, 1
        if text[-1:].lower() in _DURATION_UNITS:
            number, unit = text[:-1].strip(), _DURATION_UNITS[text[-1].lower()]
        try:
            amount = float(number) if number else None
        except ValueError:
            amount = None
        if amount is not None:
            result = _seconds(amount, unit)
        else:
            try:
                result = _ISO_DURATION.validate_python(text)
            except ValidationError:
                raise ValueError(f"not a duration: write {DURATION_FORMS}") from None
    if abs(result) > MAX_DURATION:
        raise ValueError(_TOO_LONG)
    return result


def parse_duration(value: Any) -> Any:
    """A duration as :func:`duration` reads it, or ``value`` unchanged when it is none (for
    callers that report the failure themselves, such as command-line options)."""
    try:
        return duration(value)
    except ValueError:
        return value


def _format_duration(value: timedelta) -> str:
    """The compact form ("30m", "1w", "1.5s"), exact: it reads back to the same duration."""
    micro = value // timedelta(microseconds=1)
    if micro % 1_000_000:
        return f"{Decimal(micro) / 1_000_000}s"
    seconds = micro // 1_000_000
    for unit, size in sorted(_DURATION_UNITS.items(), key=lambda item: -item[1]):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return "0s"


# a duration in config: "30m", "7d", seconds, or ISO 8601; written back in the compact form
Duration = Annotated[timedelta, BeforeValidator(duration), PlainSerializer(_format_duration, when_used="json")]


def _at_least(shortest: timedelta, *, zero: bool = True):
    """An AfterValidator: the duration is at least ``shortest`` (and not zero, unless
    ``zero``), in words an operator reads (pydantic's own bound reads "greater than
    datetime.timedelta(0)")."""
    if not zero:
        problem = "must be longer than 0s"
    elif shortest:
        problem = f"must be at least {_format_duration(shortest)}"
    else:
        problem = "must not be negative"

    def check(value: timedelta) -> timedelta:
        if value < shortest or (not zero and not value):
            raise ValueError(problem)
        return value

    return AfterValidator(check)


# a duration that must be longer than zero (a tick, a TTL, a poll interval)
PositiveDuration = Annotated[Duration, _at_least(timedelta(0), zero=False)]
# a duration that may be zero but not negative (a delay, a grace, a backoff)
NonNegativeDuration = Annotated[Duration, _at_least(timedelta(0))]
# an HTTP timeout in seconds: finite, positive, at most MAX_TIMEOUT_S
Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]
# how many threads, processes or calls in flight
Parallel = Annotated[int, Field(ge=1, le=MAX_PARALLEL)]
# a positive count
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
# a name that cannot be empty (a database, a topic, a measurement)
Name = Annotated[str, Field(min_length=1)]


# ---------------------------------------------------------------- URLs


def _http_url(*schemes: str):
    """An AfterValidator: the text is a URL of one of ``schemes`` with a host (and a valid
    port, if any). The text itself is kept: providers join paths to it as they are."""
    example = f"{schemes[0]}://<host>:<port>"

    def check(value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        except ValueError:
            raise ValueError(f"not a URL: write {example}") from None
        if parts.scheme.lower() not in schemes or not parts.hostname or any(c.isspace() for c in value):
            names = " or ".join(f"{scheme}://" for scheme in schemes)
            raise ValueError(f"must be an {names} URL with a host, e.g. {example}")
        return value

    return AfterValidator(check)


# the URL of an HTTP server (Gordo, InfluxDB)
HttpUrlText = Annotated[str, _http_url("http", "https")]
# the URL of a server reached only over TLS (the Azure AD authority)
HttpsUrlText = Annotated[str, _http_url("https")]


def _database_url(value: str) -> str:
    """The URL is one SQLAlchemy reads, of a supported backend and driver, whose DBAPI module
    is installed; checked without connecting. Messages never quote the URL: it may hold a
    password."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(value)
        backend = url.get_backend_name()
    except Exception:  # ArgumentError, or ValueError for a port that is not a number
        raise ValueError(f"not a URL SQLAlchemy can read: write {DATABASE_URL_FORMS}") from None
    if backend not in SUPPORTED_DATABASES:
        raise ValueError(
            f"Latigo runs on sqlite and postgresql+psycopg, not {_quote(backend)}: write {DATABASE_URL_FORMS}"
        )
    try:
        dialect = url.get_dialect()
    except Exception:
        raise ValueError(f"no SQLAlchemy dialect for {_quote(url.drivername)}: write {DATABASE_URL_FORMS}") from None
    drivers = SUPPORTED_DATABASES[backend]
    if dialect.driver not in drivers:
        raise ValueError(
            f"Latigo uses the {' or '.join(drivers)} driver for {backend}, not {_quote(dialect.driver)}: "
            f"write {DATABASE_URL_FORMS}"
        )
    try:
        dbapi = dialect.import_dbapi()
    except ImportError:
        raise ValueError(f"the {dialect.driver} driver for {backend} is not installed") from None
    try:
        if url.port is not None and not 0 < url.port < 65536:
            raise ValueError
        dialect(dbapi=dbapi).create_connect_args(url)
    except Exception:  # ArgumentError: a sqlite URL with a host, say
        raise ValueError(f"not a {backend} URL SQLAlchemy can connect with: write {DATABASE_URL_FORMS}") from None
    return value


# ---------------------------------------------------------------- sections


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(Section):
    """The Latigo database: ledger, SQL queue, SQL sensor and prediction stores."""

    url: Annotated[str, AfterValidator(_database_url)] = "sqlite:///latigo.db"
    echo: bool = False


def _anchor(value: datetime) -> datetime:
    if not ANCHOR_YEARS[0] <= value.year <= ANCHOR_YEARS[1]:
        raise ValueError(f"must lie between the years {ANCHOR_YEARS[0]} and {ANCHOR_YEARS[1]}")
    return value


class ScheduleConfig(Section):
    """Where windows lie and when they become due."""

    interval: Annotated[Duration, _at_least(MIN_INTERVAL)] = timedelta(minutes=30)
    anchor: Annotated[AwareDatetime, AfterValidator(_anchor)] = datetime(1970, 1, 1, tzinfo=UTC)
    delay: NonNegativeDuration = timedelta(minutes=5)
    tick: PositiveDuration = timedelta(seconds=30)
    catch_up: NonNegativeDuration = timedelta(days=7)
    initial_backfill: NonNegativeDuration = timedelta(days=1)
    # a week of history per Gordo call: Gordo's cost is mostly per call, a week of one model is
    # a few MB in an executor (bench/README.md: 7-day against 1-day tasks)
    max_task_span: PositiveDuration = timedelta(days=7)
    discovery_ttl: PositiveDuration = timedelta(minutes=5)
    leader_ttl: PositiveDuration = timedelta(minutes=2)
    backlog_limit: Count = 2000
    history_order: Literal["newest_first", "oldest_first"] = "newest_first"

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.leader_ttl <= self.tick:
            raise ValueError(
                f"schedule.leader_ttl ({_format_duration(self.leader_ttl)}) must be longer than "
                f"schedule.tick ({_format_duration(self.tick)}), or the leader loses its lease between ticks"
            )
        if self.max_task_span < self.interval:
            raise ValueError(
                f"schedule.max_task_span ({_format_duration(self.max_task_span)}) must be at least one "
                f"schedule.interval ({_format_duration(self.interval)})"
            )
        return self


class HttpConfig(Section):
    """Timeouts for one HTTP server; every call has both, so no call can block forever."""

    connect_timeout: Timeout = 3.05
    read_timeout: Timeout = 60.0


class AzureAdConfig(Section):
    """Client credentials for a Gordo behind Azure AD."""

    authority: HttpsUrlText = Field(description="https://login.microsoftonline.com/<tenant id>")
    client_id: Name
    client_secret: SecretStr
    scope: Name = Field(description="the Gordo application's scope, e.g. api://<app id>/.default")
    # false for an authority msal cannot look up at Microsoft (Azure Stack, private clouds)
    instance_discovery: bool = True


class GordoConfig(HttpConfig):
    """Gordo as ModelInformationProvider and ModelExecutionProvider."""

    type: Literal["gordo"] = "gordo"
    base_url: HttpUrlText = "http://127.0.0.1:5555"
    projects: list[Name] = Field(default_factory=lambda: ["demo"], min_length=1)
    metadata_ttl: PositiveDuration = timedelta(minutes=10)
    max_concurrency: Parallel = 4
    data_margin: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 2
    # Azure AD client credentials, when Gordo sits behind Azure AD
    auth: AzureAdConfig | None = None


class SqlSensorsConfig(Section):
    """Sensor data in the Latigo database's ``sensor_data`` table (the embedded default)."""

    type: Literal["sql"] = "sql"


class InfluxConfig(HttpConfig):
    """An InfluxDB 1.x server."""

    url: HttpUrlText = "http://127.0.0.1:8086"
    database: Name = "latigo"
    username: str = ""
    password: SecretStr = SecretStr("")


class InfluxSensorsConfig(InfluxConfig):
    """Sensor data in InfluxDB 1.x: one measurement, the tag name in a tag key, one value field."""

    type: Literal["influx"]
    measurement: Name = "sensors"
    tag_key: Name = "tag"
    field: Name = "value"


class SqlPredictionsConfig(Section):
    """Predictions in the Latigo database's ``predictions`` table."""

    type: Literal["sql"] = "sql"


class InfluxPredictionsConfig(InfluxConfig):
    """Predictions in InfluxDB 1.x, laid out like gordo-client's forwarder."""

    type: Literal["influx"]
    extra_tags: dict[str, str] = Field(default_factory=dict)
    batch_size: Count = 10000
    # a tag key for the project (none in gordo-client's layout): needed when two projects
    # share the database and a model name, or their points would be one series
    project_tag: str = ""


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


class ExecutorConfig(Section):
    """How executors work through tasks."""

    concurrency: Parallel = 2
    max_attempts: Count = 5
    # deliveries without any outcome (the executor died each time) before a task is dead-lettered
    max_deliveries: Count = 20
    retry_base: NonNegativeDuration = timedelta(seconds=2)
    retry_max: NonNegativeDuration = timedelta(minutes=5)
    task_deadline: PositiveDuration = timedelta(minutes=10)
    missing_tags: Literal["no_data", "retry", "dead"] = "no_data"
    shutdown_grace: NonNegativeDuration = timedelta(seconds=30)
    # a bigger queue message is dead-lettered unread: a task is a few hundred bytes
    max_message_size: ByteSize = Field(ByteSize(1 << 20), gt=0, le=MAX_MESSAGE_BYTES)

    @model_validator(mode="after")
    def _backoff_grows(self) -> ExecutorConfig:
        if self.retry_max < self.retry_base:
            raise ValueError(
                f"executor.retry_max ({_format_duration(self.retry_max)}) must not be below "
                f"executor.retry_base ({_format_duration(self.retry_base)}): "
                "it caps the backoff that starts there"
            )
        return self


class RunConfig(Section):
    """``latigo run``: the whole service on one machine."""

    executors: Parallel = 2


class MetricsConfig(Section):
    """The metrics and probe endpoint of each process (``latigo run`` numbers its children's
    ports upwards from this one)."""

    host: str = "127.0.0.1"
    port: int | None = Field(9100, ge=0, le=65535)


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = False


def _backend_type(value: Any) -> str:
    """The ``type`` of a backend section; a section without one is the embedded ``sql``. A
    type that is not text is no tag at all ("")."""
    kind = value.get("type", "sql") if isinstance(value, dict) else getattr(value, "type", "sql")
    return kind if isinstance(kind, str) else ""


def _backends(*sections: type[BaseModel]) -> Any:
    """A section that is one of several backends, chosen by its ``type`` key."""
    tagged = tuple(Annotated[section, Tag(_tag(section))] for section in sections)
    return Annotated[Union[tagged], Discriminator(_backend_type)]  # noqa: UP007 (a union built at run time)


def _tag(section: type[BaseModel]) -> str:
    return section.model_fields["type"].annotation.__args__[0]


# the sections that are one of several backends, chosen by ``type:``; the first is the default
BACKENDS: dict[str, tuple[type[Section], ...]] = {
    "sensors": (SqlSensorsConfig, InfluxSensorsConfig),
    "predictions": (SqlPredictionsConfig, InfluxPredictionsConfig),
    "queue": (SqlQueueConfig, KafkaQueueConfig, EventHubQueueConfig),
}

SensorsConfig = _backends(*BACKENDS["sensors"])
PredictionsConfig = _backends(*BACKENDS["predictions"])
QueueConfig = _backends(*BACKENDS["queue"])


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
        deadline = _format_duration(self.executor.task_deadline)
        if isinstance(self.queue, SqlQueueConfig) and self.queue.lease <= self.executor.task_deadline:
            raise ValueError(
                f"queue.lease ({_format_duration(self.queue.lease)}) must be longer than "
                f"executor.task_deadline ({deadline}), or tasks still running are delivered twice"
            )
        if isinstance(self.queue, KafkaQueueConfig):
            limit = self.queue.options.get("max.poll.interval.ms", KAFKA_MAX_POLL_MS)
            poll = timedelta(milliseconds=int(limit))
            if poll <= self.executor.task_deadline:
                raise ValueError(
                    f"queue.options max.poll.interval.ms ({_format_duration(poll)}) must be longer than "
                    f"executor.task_deadline ({deadline}): an executor whose slots are all busy does not poll"
                )
        call = timedelta(seconds=self.models.connect_timeout + self.models.read_timeout)
        if call >= self.executor.task_deadline:
            raise ValueError(
                f"models.connect_timeout + models.read_timeout ({_format_duration(call)}) must be shorter "
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


# ---------------------------------------------------------------- the schema, walked


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's annotation may hold, through Optional, unions and Annotated."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _models_in(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [model for member in get_args(annotation) for model in _models_in(member)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _secret_fields() -> frozenset[str]:
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Config, *(model for models in BACKENDS.values() for model in models)]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if field.annotation is SecretStr:
                names.add(name)
            todo.extend(_models_in(field.annotation))
    return frozenset(names)


# the schema's secret keys (SecretStr): masked in every message and in `latigo config show`
SECRET_KEYS = _secret_fields()
# a key whose value is secret: a schema secret, or a name with a secret word in it
_SECRET_KEY = re.compile("|".join(re.escape(word) for word in sorted(SECRET_KEYS | set(SECRET_WORDS))), re.I)
# a URL's password: scheme://user:PASSWORD@ (greedy up to the last @ before white space)
# ("<password>@" is the placeholder of the messages' own examples)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:)(?!<password>@)(?P<password>\S*)@")
# a secret key and its value on one line of YAML, block or flow style
_SECRET_IN_LINE = re.compile(
    r"""(?P<key>["']?[\w.$-]*(?:""" + _SECRET_KEY.pattern + r""")[\w.$-]*["']?\s*:(?=\s|$)\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"?|'(?:[^']|'')*'?|[^,}\]#]*)""",
    re.I,
)


# the parts of a connection string (Event Hubs, Azure Storage) that are secrets
_CONNECTION_STRING_SECRET = re.compile(r"SharedAccessKey|SharedAccessSignature|AccountKey|Password|Pwd", re.I)


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


# ---------------------------------------------------------------- secrets kept out of messages


class _Secrets:
    """The secret values of one load (values of secret keys, passwords in URLs), gathered
    from the file's text, the parsed document and the environment, so that no message
    quotes one of them: not a pydantic message, not a YAML snippet, not a quoted value."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, value: Any) -> None:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            for text in (str(value).strip(), str(value).strip().strip("'\"")):
                if text:
                    self.values.add(text)
            # a connection string's key (SharedAccessKey=...) is a secret on its own too
            for part in str(value).split(";"):
                name, equals, secret = part.partition("=")
                if equals and secret.strip() and _CONNECTION_STRING_SECRET.fullmatch(name.strip()):
                    self.values.add(secret.strip())

    def add_urls(self, text: str) -> None:
        for match in _URL_PASSWORD.finditer(text):
            self.add(match["password"])
        try:
            password = urlsplit(text.strip()).password
        except ValueError:
            password = None
        self.add(password)

    def add_value(self, value: Any, secret: bool = False, depth: int = 0) -> None:
        """Everything under a secret key; URL passwords everywhere."""
        if depth > MAX_YAML_DEPTH * 2:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                self.add_value(item, secret or _is_secret_key(key), depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self.add_value(item, secret, depth + 1)
        else:
            if secret:
                self.add(value)
            if isinstance(value, str):
                self.add_urls(value)

    def add_environment(self, environ: dict[str, str]) -> None:
        for name, value in environ.items():
            if not name.upper().startswith(ENV_PREFIX):
                continue
            secret = _is_secret_key(name[len(ENV_PREFIX) :].split(ENV_NESTING)[-1])
            if secret:
                self.add(value)
            self.add_urls(value)
            try:
                self.add_value(json.loads(value), secret)
            except (ValueError, RecursionError):
                pass

    def add_text(self, lines: list[str]) -> set[int]:
        """Secret values written in the file's text, found line by line (the file may not
        parse); returns the lines that hold one, continuation lines included."""
        for line in lines:
            self.add_urls(line)
        marked: set[int] = set()
        for number, line in enumerate(lines):
            match = _SECRET_IN_LINE.search(line)
            if not match:
                continue
            marked.add(number)
            value = match["value"].strip()
            self.add(value)
            self.add(value.rstrip(",}] "))
            quote = value[:1] if value[:1] in "'\"" else ""
            still_quoted = bool(quote) and (len(value) < 2 or not value.endswith(quote))
            indent = len(line) - len(line.lstrip())
            for following in range(number + 1, len(lines)):
                text = lines[following]
                if still_quoted:
                    marked.add(following)
                    self.add(text)
                    if quote in text:
                        break
                    continue
                if text.strip() and len(text) - len(text.lstrip()) <= indent:
                    break
                marked.add(following)
                self.add(text)
        return marked

    def redact(self, text: str) -> str:
        for secret in sorted(self.values, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, MASK)
            else:  # a short one only where it stands alone, or every "a" of the message goes
                text = re.sub(rf"(?<![\w*]){re.escape(secret)}(?![\w*])", MASK, text)
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
        # a message must print on any terminal: text from a non-UTF-8 environment is escaped
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _quote(value: Any) -> str:
    """A value quoted in a message, shortened and printable (then redacted with the rest)."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    if len(text) > MAX_QUOTED:
        text = text[: MAX_QUOTED - 3] + "..."
    return f"'{text}'"


# ---------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter. A key written twice in one mapping is an error that
    names the key and both lines: PyYAML keeps the last one silently, so a section written
    twice loses the first. Nesting deeper than MAX_YAML_DEPTH and documents that expand to
    more than MAX_YAML_NODES values (aliases of aliases) are refused before they exhaust the
    stack or the memory. A scalar no constructor can read (a 13th month, an int of 5000
    digits) is a YAML error with its line, not a bare ValueError."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        self._check(node)
        return super().construct_document(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError, ArithmeticError):
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"this value cannot be read as {kind}", node.start_mark
            ) from None

    def _check(self, root: yaml.Node) -> None:
        visited = 0
        todo: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
        while todo:
            node, path = todo.pop()
            visited += 1
            if visited > MAX_YAML_NODES:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the document expands to more than {MAX_YAML_NODES} values (an alias counts at each use)",
                    root.start_mark,
                )
            if len(path) > MAX_YAML_DEPTH:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"nested deeper than {MAX_YAML_DEPTH} levels (through aliases)",
                    node.start_mark,
                )
            if isinstance(node, yaml.SequenceNode):
                todo.extend((item, (*path, f"[{index}]")) for index, item in enumerate(node.value))
            elif isinstance(node, yaml.MappingNode):
                first_lines: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        # merged mappings may repeat keys (that is what they are for)
                        todo.append((value_node, path))
                        todo.append((key_node, path))
                        continue
                    key = self.construct_object(key_node)
                    todo.append((value_node, (*path, str(key))))
                    identity = (type(key).__name__, key) if _hashable(key) else (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if identity in first_lines:
                        name = ".".join((*path, str(key))).replace(".[", "[")
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"{name} appears twice (first on line {first_lines[identity]}): a key may appear "
                            "once in a mapping, or the last one would silently win",
                            key_node.start_mark,
                        )
                    first_lines[identity] = line


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _yaml_problem(
    file: Path, error: yaml.YAMLError, lines: list[str], secrets: _Secrets, secret_lines: set[int]
) -> str:
    """A YAML error as one message: where, what, and the line quoted with its secrets masked."""
    if isinstance(error, yaml.reader.ReaderError):
        if error.encoding == "unicode":
            return (
                f"{file}: not valid YAML: character #x{error.character:04x} at position {error.position} "
                f"cannot appear in YAML ({error.reason})"
            )
        return f"{file}: not UTF-8 text (byte {error.position}: {error.reason}): a configuration file is UTF-8"
    if not isinstance(error, yaml.MarkedYAMLError):
        return f"{file}: not valid YAML"
    mark = error.problem_mark or error.context_mark
    what = error.problem or "not valid YAML"
    if error.context:
        elsewhere = error.context_mark and error.context_mark is not mark
        where = f" on line {error.context_mark.line + 1}" if elsewhere else ""
        what += f" ({error.context}{where})"
    if mark is None:
        return f"{file}: not valid YAML: {what}"
    message = f"{file}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {what}"
    if 0 <= mark.line < len(lines):
        line = lines[mark.line].replace("\t", " ")
        if mark.line in secret_lines:
            match = _SECRET_IN_LINE.search(line)
            kept = match.end("key") if match else len(line) - len(line.lstrip())
            shown = line[:kept] + MASK
        else:
            shown = line
        shown = secrets.redact("".join(c if c.isprintable() else "?" for c in shown))
        column = mark.column
        if len(shown) > 120:
            start = max(0, min(column - 60, len(shown) - 120))
            shown, column = shown[start : start + 120], column - start
        message += f"\n    {shown}"
        if shown == line and 0 <= column <= len(shown):
            message += f"\n    {' ' * column}^"
    return message


def _read_yaml(file: Path, secrets: _Secrets) -> dict[str, Any]:
    try:
        with open(file, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{file}: cannot be read: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{file}: longer than {MAX_FILE_BYTES} bytes: not a configuration file")
    lines = data.decode("utf-8", "replace").splitlines()
    secret_lines = secrets.add_text(lines)
    try:
        document = yaml.load(data, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_problem(file, error, lines, secrets, secret_lines)) from None
    except RecursionError:
        raise ConfigError(f"{file}: not valid YAML: nested too deeply") from None
    if document is None:
        return {}
    secrets.add_value(document)
    if not isinstance(document, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections ({', '.join(Config.model_fields)})")
    unknown = [key for key in document if not isinstance(key, str) or key not in Config.model_fields]
    if unknown:
        raise ConfigError(
            f"{file}: "
            + ", ".join(_quote(key) for key in unknown)
            + f": not a section; the sections are {', '.join(Config.model_fields)}"
        )
    # an empty section (every key commented out) is YAML's null: the section's defaults
    return {key: {} if value is None else value for key, value in document.items()}


# ---------------------------------------------------------------- environment


def _env_path(name: str) -> tuple[str, ...]:
    return tuple(name[len(ENV_PREFIX) :].lower().split(ENV_NESTING))


def _latigo_variables(environ: dict[str, str]) -> dict[str, str]:
    """The variables pydantic-settings reads (their names are case-insensitive)."""
    return {
        name: value
        for name, value in environ.items()
        if name.upper().startswith(ENV_PREFIX) and name.upper() != CONFIG_PATH_VARIABLE
    }


def _unknown_env_keys(environ: dict[str, str]) -> list[str]:
    return [name for name in _latigo_variables(environ) if _env_path(name)[0] not in Config.model_fields]


def _expects_json(path: tuple[str, ...]) -> bool:
    """Whether the key a variable sets is a list, a mapping or a section: pydantic-settings
    reads those as JSON."""
    annotations: list[Any] = [Config.model_fields[path[0]].annotation]
    for part in path[1:]:
        found = [
            field.annotation
            for annotation in annotations
            for model in _models_in(annotation)
            for name, field in model.model_fields.items()
            if name.lower() == part
        ]
        if not found:
            return False
        annotations = found
    return any(
        _models_in(annotation) or get_origin(annotation) in (list, dict) or annotation in (list, dict)
        for annotation in annotations
    )


def _check_json_variables(environ: dict[str, str]) -> None:
    problems = []
    for name, value in sorted(_latigo_variables(environ).items()):
        if not value or not _expects_json(_env_path(name)):
            continue
        try:
            json.loads(value)
        except ValueError:
            problems.append(
                f"  {name}: not JSON: a list or a section in a variable is JSON, e.g. "
                f"""{ENV_PREFIX}MODELS__PROJECTS='["p1", "p2"]' or {ENV_PREFIX}QUEUE='{{"type": "kafka"}}'"""
            )
        except RecursionError:
            problems.append(f"  {name}: nested too deeply")
    if problems:
        raise ConfigError("invalid configuration variables:\n" + "\n".join(problems))


# ---------------------------------------------------------------- pydantic's errors, explained


def _key_path(loc: tuple[Any, ...]) -> tuple[tuple[str, ...], str | None]:
    """An error's location as key names, without the backend tag pydantic inserts after a
    backend section (``queue.kafka.lease`` is the key ``queue.lease``); and that tag."""
    parts = [str(part) for part in loc]
    tag = None
    if len(parts) > 1 and parts[0] in BACKENDS and parts[1] in {_tag(model) for model in BACKENDS[parts[0]]}:
        tag = parts.pop(1)
    return tuple(parts), tag


def _format_path(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _model_at(path: tuple[str, ...], tag: str | None) -> type[BaseModel] | None:
    """The section (or nested model) a path of keys leads to."""
    model: type[BaseModel] | None = Config
    for index, part in enumerate(path):
        if model is None or part not in model.model_fields:
            return None
        if index == 0 and part in BACKENDS:
            model = next((m for m in BACKENDS[part] if _tag(m) == (tag or "sql")), None)
        else:
            models = _models_in(model.model_fields[part].annotation)
            model = models[0] if models else None
    return model


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "a value"


def _explain(item: Any) -> tuple[tuple[str, ...], str]:
    """One pydantic error as (key path, message naming the key and saying what is expected)."""
    path, tag = _key_path(item["loc"])
    key = _format_path(path)
    kind = item["type"]
    message = item["msg"]
    if kind == "union_tag_invalid":
        section = path[0] if path else ""
        expected = ", ".join(_tag(model) for model in BACKENDS.get(section, ()))
        found = item.get("ctx", {}).get("tag", "")
        shown = f"{_quote(found)} is not one of {expected}" if found else f"must be one of {expected}"
        return (*path, "type"), f"{key}.type: {shown}"
    if kind == "extra_forbidden" and path:
        name, parent = path[-1], path[:-1]
        if len(parent) == 1 and parent[0] in BACKENDS:
            owners = [
                _tag(model)
                for model in BACKENDS[parent[0]]
                if name in model.model_fields and _tag(model) != (tag or "sql")
            ]
            if owners:
                return path, (
                    f"{key}: a key of {parent[0]}.type {' or '.join(owners)}, not of {tag or 'sql'}: "
                    f"remove it (or comment it out) when {parent[0]}.type is {tag or 'sql'}"
                )
        model = _model_at(parent, tag)
        known = f"; {_format_path(parent)} takes {', '.join(model.model_fields)}" if model and parent else ""
        return path, f"{key}: unknown key{known}"
    if kind == "missing":
        return path, f"{key}: required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"{key}: must be a mapping of keys (a section), not {_kind(item.get('input'))}"
    if kind.startswith("byte_size"):
        return path, f"{key}: not a size: write bytes, or 64KiB, 2MB"
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    if kind in ("timedelta_type", "timedelta_parsing"):
        message = f"not a duration: write {DURATION_FORMS}"
    if not path or message.startswith(f"{key}.") or message.startswith(f"{key} "):
        return path, message  # a check across keys, whose message names them
    return path, f"{key}: {message}"


def _describe(error: ValidationError, source: str, environ: dict[str, str]) -> str:
    variables = {_env_path(name): name for name in _latigo_variables(environ)}
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors(include_url=False):
        path, message = _explain(item)
        lowered = tuple(part.lower() for part in path)
        setters = [name for where, name in variables.items() if where == lowered[: len(where)]]
        if setters:
            message += f" (set by {', '.join(sorted(setters))})"
        lines.append(f"  {message}")
    return "\n".join(lines)


# ---------------------------------------------------------------- loading


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(CONFIG_PATH_VARIABLE) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str] | None = None, *, require_file: bool = False) -> Config:
    """Read the YAML file (if present) and the environment; raise ConfigError naming bad keys.
    Nothing else escapes: whatever the file or the variables hold, the caller gets a
    ConfigError whose message has every secret masked."""
    file = config_path(path)
    environ = dict(os.environ)
    secrets = _Secrets()
    try:
        secrets.add_environment(environ)
        return _load(file, environ, secrets, require_file or path is not None)
    except ConfigError as error:
        raise ConfigError(secrets.redact(str(error))) from None
    except RecursionError:
        raise ConfigError(f"{file} and {ENV_PREFIX}* variables: nested too deeply") from None
    except Exception as error:  # a bug in these checks: still a message, never a traceback quoting a secret
        raise ConfigError(
            f"{file} and {ENV_PREFIX}* variables: the configuration could not be checked "
            f"({type(error).__name__}): a bug in Latigo's configuration checks, please report it"
        ) from None


def _load(file: Path, environ: dict[str, str], secrets: _Secrets, must_exist: bool) -> Config:
    try:
        exists = file.exists()
    except (OSError, ValueError):
        exists = False
    document: dict[str, Any] = {}
    if exists:
        document = _read_yaml(file, secrets)
    elif must_exist:
        raise ConfigError(f"{file}: no such configuration file")
    unknown = _unknown_env_keys(environ)
    if unknown:
        raise ConfigError(
            "unknown configuration variables: "
            + ", ".join(sorted(unknown))
            + f" (sections: {', '.join(Config.model_fields)})"
        )
    _check_json_variables(environ)
    source = f"{file} and {ENV_PREFIX}* variables"
    try:
        return Config(**document)
    except ValidationError as error:
        raise ConfigError(_describe(error, source, environ)) from None
    except SettingsError as error:
        found = re.search(r'field "(\w+)"', str(error))
        section = f"{ENV_PREFIX}{found[1].upper()}{ENV_NESTING}*" if found else f"{ENV_PREFIX}*"
        raise ConfigError(
            f"invalid configuration variables: {section}: cannot be read (lists and sections are JSON)"
        ) from None


def default_document() -> dict[str, Any]:
    """The defaults as a YAML-ready mapping, for ``set_env.py`` and the docs."""
    return Config.model_construct().model_dump(mode="json")


def _mask_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    if not password:
        return text
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def _secrets_of(value: Any, secrets: _Secrets) -> None:
    """The secret values a loaded configuration holds: its SecretStr values, values of keys
    named like secrets, passwords of URLs."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _secrets_of(getattr(value, name), secrets)
    elif isinstance(value, SecretStr):
        secrets.add(value.get_secret_value())
    else:
        secrets.add_value(value)


def _masked(value: Any, secrets: _Secrets, secret: bool = False) -> Any:
    if isinstance(value, dict):
        return {
            (secrets.redact(key) if isinstance(key, str) else key): _masked(
                item, secrets, secret or _is_secret_key(key)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_masked(item, secrets, secret) for item in value]
    if secret and value not in ("", None):
        return str(SecretStr(str(value)))
    # a secret's value found where no secret goes (a password pasted as a user name) is masked too
    return secrets.redact(_mask_url(value)) if isinstance(value, str) else value


def dump_config(config: Config) -> str:
    """The effective configuration as YAML, with secrets masked: the schema's secret keys,
    any other key named like a secret (queue.options' sasl.password), the password of every
    URL (database.url's included), and any of those values wherever else it appears."""
    secrets = _Secrets()
    _secrets_of(config, secrets)
    return yaml.safe_dump(_masked(config.model_dump(mode="json"), secrets), sort_keys=False)
