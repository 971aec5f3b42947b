"""The Latigo database's tables, as SQLAlchemy Core metadata.

alembic/versions/ holds the migrations that create them; tests check that the two agree.
Times are stored as naive UTC and handed back aware, so no zone is ever guessed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator

# length of project, model and sensor tag names
NAME = 200
# length of an output column group such as "tag-anomaly-scaled"
OUTPUT = 64
# length of a Gordo revision (digits)
REVISION = 40


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in Python; in the database naive UTC (``sa.DateTime`` in
    migrations), or with ``timezone=True`` a zone-aware column on PostgreSQL
    (``timestamptz``: a time written with an offset by another writer means what it says)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the database: use UTC")
        value = value.astimezone(UTC)
        zoned = getattr(self.impl_instance, "timezone", False)
        return value if zoned and dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


# SQLite keeps times as text and compares them as text: only SQLAlchemy's fixed-width UTC
# form ("2026-03-02 10:20:00.000000") sorts as time does, so sensor data written by a
# feeder in any other form (an offset, a "T", no microseconds) is refused, not misread
SQLITE_UTC_TEXT = (
    "time GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] "
    "[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'"
)


# an auto-incrementing id that is a 64-bit integer on PostgreSQL and a rowid on SQLite
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

ledger = Table(
    "ledger",
    metadata,
    Column("project", String(NAME), primary_key=True),
    Column("model", String(NAME), primary_key=True),
    Column("window_start", UTCDateTime(), primary_key=True),
    Column("window_end", UTCDateTime(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("revision", String(REVISION)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("task_id", String(36)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # the outcome of the window's last run: why some or all of its rows are missing
    Column("note", Text),
    # prediction rows (times) stored for the window by its last run, and how many it has
    # (one per resolution step): fewer stored than expected is a partial window
    Column("stored_rows", Integer),
    Column("expected_rows", Integer),
    # windows by state and end: the planned ones ending after a moment, the compaction's
    # old finished ones, the done ones of the lags, each a range (migration 0016)
    Index("ix_ledger_state_window_end", "state", "window_end"),
    # recent windows across models: status, lags, the status page, the scheduler's watermarks
    Index("ix_ledger_window_start", "window_start"),
    # the windows that hold an error (failed or dead), newest last: each model's last error
    # without reading the rest of the ledger
    Index(
        "ix_ledger_last_error",
        "updated_at",
        postgresql_where=text("last_error IS NOT NULL"),
        sqlite_where=text("last_error IS NOT NULL"),
    ),
)

# the ledger's old done, no-data and dead windows as runs (latigo.history): consecutive windows of
# one model, one length, state, partialness and revision; run_end is the last window's end
ledger_history = Table(
    "ledger_history",
    metadata,
    Column("project", String(NAME), primary_key=True),
    Column("model", String(NAME), primary_key=True),
    Column("run_start", UTCDateTime(), primary_key=True),
    Column("run_end", UTCDateTime(), nullable=False),
    Column("windows", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("partial", Integer, nullable=False),
    Column("revision", String(REVISION)),
    # runs reaching past a moment: what planning and the range views look up
    Index("ix_ledger_history_run_end", "run_end"),
    # the run a model's next compacted run continues (migration 0017)
    Index("ix_ledger_history_model_run_end", "project", "model", "run_end", unique=True),
)

# the ledger's history summed per model, state and partialness, kept with its runs by
# latigo.history: a whole history's counts in a row or four per model, where the runs are
# hundreds a year per model once its partial and dead windows are scattered (migration 0017)
ledger_history_totals = Table(
    "ledger_history_totals",
    metadata,
    Column("project", String(NAME), primary_key=True),
    Column("model", String(NAME), primary_key=True),
    Column("state", String(16), primary_key=True),
    Column("partial", Integer, primary_key=True, autoincrement=False),
    Column("windows", Integer, nullable=False),
    # the first window's start, the last window's start and end, of the runs summed
    Column("first_start", UTCDateTime(), nullable=False),
    Column("last_start", UTCDateTime(), nullable=False),
    Column("last_end", UTCDateTime(), nullable=False),
)

task_queue = Table(
    "task_queue",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("body", LargeBinary, nullable=False),
    Column("available_at", UTCDateTime(), nullable=False),
    Column("lease_token", String(36)),
    Column("deliveries", Integer, nullable=False, default=0),
    Column("enqueued_at", UTCDateTime(), nullable=False),
    Index("ix_task_queue_available_at", "available_at", "id"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", String(36)),
    Column("project", String(NAME)),
    Column("model", String(NAME)),
    Column("body", LargeBinary, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # a task is dead-lettered once, however many executors held it
    Index(
        "ux_dead_letters_task_id",
        "task_id",
        unique=True,
        sqlite_where=text("task_id IS NOT NULL"),
        postgresql_where=text("task_id IS NOT NULL"),
    ),
)

sensor_data = Table(
    "sensor_data",
    metadata,
    Column("tag", String(NAME), primary_key=True),
    Column("time", UTCDateTime(timezone=True), primary_key=True),
    Column("value", Float),
    CheckConstraint(SQLITE_UTC_TEXT, name="ck_sensor_data_utc_text").ddl_if(dialect="sqlite"),
)

# Gordo's predictions, one row per (project, model, time, output group): the group's values
# at that time, in the order of its tags in prediction_tags. A 20-tag model's window is 24
# rows, where one row per value made 309 (bench/README.md, "The prediction store's layout").
# On PostgreSQL the table is partitioned by time (latigo.providers.predictions.partitions):
# retention drops whole partitions.
predictions = Table(
    "predictions",
    metadata,
    Column("project", String(NAME), primary_key=True),
    Column("model", String(NAME), primary_key=True),
    Column("time", UTCDateTime(), primary_key=True),
    # the output group's code in prediction_outputs: two bytes, in the row and in both indexes
    Column("output", SmallInteger, primary_key=True, autoincrement=False),
    Column("revision", String(REVISION), nullable=False),
    # float64, little-endian, one per tag; NaN where Gordo gave none
    Column("tag_values", LargeBinary, nullable=False),
    # one output group since a moment, over every model: `latigo predictions`
    Index("ix_predictions_output_time", "output", "time"),
    # SQLite keeps the rows in the key's order, once, instead of a rowid table beside a key index
    sqlite_with_rowid=False,
    postgresql_partition_by="RANGE (time)",
)

# the output groups by code, as predictions.output holds them: a new group (a newer Gordo's)
# gets the next code when first stored; codes are never renumbered or reused
prediction_outputs = Table(
    "prediction_outputs",
    metadata,
    Column("code", Integer, primary_key=True, autoincrement=True),
    Column("name", String(OUTPUT), nullable=False, unique=True),
)

# the tags of each output group of a model at a revision, in the order of the values in
# predictions.tag_values: written once, by the first store of that revision
prediction_tags = Table(
    "prediction_tags",
    metadata,
    Column("project", String(NAME), primary_key=True),
    Column("model", String(NAME), primary_key=True),
    Column("revision", String(REVISION), primary_key=True),
    Column("output", String(OUTPUT), primary_key=True),
    # a JSON list of tag names; a total's one tag is the group's name, as in gordo-client
    Column("tags", Text, nullable=False),
)

# executors paused for a dependency that is down (latigo.outages), while the database answers
dependency_outages = Table(
    "dependency_outages",
    metadata,
    Column("executor", String(NAME), primary_key=True),
    Column("dependency", String(32), primary_key=True),
    Column("since", UTCDateTime(), nullable=False),
    Column("checked_at", UTCDateTime(), nullable=False),
    Column("error", Text, nullable=False),
)

# each model's metadata at a revision, asked of Gordo once for every process (latigo.catalogue):
# a row with no entry is a fetch under way, claimed until claimed_until
model_catalogue = Table(
    "model_catalogue",
    metadata,
    Column("project", String(NAME), primary_key=True),
    Column("model", String(NAME), primary_key=True),
    Column("revision", String(REVISION), primary_key=True),
    # the metadata as latigo.catalogue.encode writes it (JSON)
    Column("entry", Text),
    Column("claimed_until", UTCDateTime()),
    Column("fetched_at", UTCDateTime()),
)

scheduler_leader = Table(
    "scheduler_leader",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    # the leader's term, one more at every take of the row (latigo.leader): what fences a
    # deposed leader's publishing
    Column("epoch", Integer, nullable=False, server_default=text("0")),
)

# length of an Event Hubs namespace's host name (a DNS name)
NAMESPACE = 255
# length of an Event Hubs partition id and an event offset (digits)
PARTITION_ID = 64
# length of a partition owner's id (a UUID, or "" once released) and of an ownership etag
OWNER = 64

# which Latigo executor (EventHubQueue) receives which partition of an event hub, claimed
# with optimistic concurrency: a claim succeeds only with the etag it last read
eventhub_ownership = Table(
    "eventhub_ownership",
    metadata,
    Column("namespace", String(NAMESPACE), primary_key=True),
    Column("eventhub", String(NAME), primary_key=True),
    Column("consumer_group", String(NAME), primary_key=True),
    Column("partition_id", String(PARTITION_ID), primary_key=True),
    Column("owner_id", String(OWNER), nullable=False),
    Column("etag", String(OWNER), nullable=False),
    Column("last_modified", UTCDateTime(), nullable=False),
)

# per partition, the last event whose task (and every earlier one's) is handled
eventhub_checkpoints = Table(
    "eventhub_checkpoints",
    metadata,
    Column("namespace", String(NAMESPACE), primary_key=True),
    Column("eventhub", String(NAME), primary_key=True),
    Column("consumer_group", String(NAME), primary_key=True),
    Column("partition_id", String(PARTITION_ID), primary_key=True),
    Column("event_offset", String(PARTITION_ID)),
    Column("sequence_number", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)
