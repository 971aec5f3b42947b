"""The sections that shape Latigo's own processes: the database, the window schedule, the
executors, ``latigo run``, metrics and logging; and ``Section``, the base of every section.

A section refuses unknown keys (a typo must not fall back to a default) and is frozen once
loaded. Checks that tie keys of one section together live on the section, with messages that
name both keys; checks across sections live on :class:`latigo.config.schema.Config`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ByteSize, ConfigDict, Field, model_validator

from latigo.config.urls import DatabaseUrlText
from latigo.config.values import (
    Count,
    Duration,
    NonNegativeDuration,
    Parallel,
    PositiveDuration,
    at_least,
    format_duration,
)

# the shortest window: Gordo's data has a resolution of seconds at best, and a shorter
# window makes the scheduler plan millions of windows per day of catch-up
MIN_INTERVAL = timedelta(seconds=1)
# the window grid's anchor lies in these years: far enough for any plant, near enough
# that converting it to UTC and stepping from it to now never overflows
ANCHOR_YEARS = (1900, 2200)
# largest queue message an executor reads (a task is a few hundred bytes)
MAX_MESSAGE_BYTES = 1 << 30


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(Section):
    """The Latigo database: ledger, SQL queue, SQL sensor and prediction stores."""

    url: DatabaseUrlText = "sqlite:///latigo.db"
    echo: bool = False


def _anchor(value: datetime) -> datetime:
    if not ANCHOR_YEARS[0] <= value.year <= ANCHOR_YEARS[1]:
        raise ValueError(f"must lie between the years {ANCHOR_YEARS[0]} and {ANCHOR_YEARS[1]}")
    return value


class ScheduleConfig(Section):
    """Where windows lie and when they become due."""

    interval: Annotated[Duration, at_least(MIN_INTERVAL)] = timedelta(minutes=30)
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
                f"schedule.leader_ttl ({format_duration(self.leader_ttl)}) must be longer than "
                f"schedule.tick ({format_duration(self.tick)}), or the leader loses its lease between ticks"
            )
        if self.max_task_span < self.interval:
            raise ValueError(
                f"schedule.max_task_span ({format_duration(self.max_task_span)}) must be at least one "
                f"schedule.interval ({format_duration(self.interval)})"
            )
        return self


# the status page's longest view: compacted windows must lie beyond it (latigo.history)
PAGE_VIEW = timedelta(days=7)


class RetentionConfig(Section):
    """How long the Latigo database keeps what it no longer needs row by row."""

    # done, no-data and dead windows that ended this long ago are kept as runs (latigo.history)
    compact_after: Annotated[Duration, at_least(PAGE_VIEW + timedelta(days=1))] = timedelta(days=8)
    # dead letters older than this are deleted; their windows stay dead in the ledger or its history
    dead_letters: Annotated[Duration, at_least(timedelta(days=1))] = timedelta(days=90)


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
    max_message_size: ByteSize = Field(default=ByteSize(1 << 20), gt=0, le=MAX_MESSAGE_BYTES)

    @model_validator(mode="after")
    def _backoff_grows(self) -> ExecutorConfig:
        if self.retry_max < self.retry_base:
            raise ValueError(
                f"executor.retry_max ({format_duration(self.retry_max)}) must not be below "
                f"executor.retry_base ({format_duration(self.retry_base)}): "
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
    port: int | None = Field(default=9100, ge=0, le=65535)


class LoggingConfig(Section):
    """How every process logs: JSON lines are for a collector that parses them."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = False
