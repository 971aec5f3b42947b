"""predictions: one row per output group and time, partitioned by day on PostgreSQL

Revision ID: 0013
Revises: 0012
One row per (time, output, tag) made a 20-tag model's window 309 rows. Now a row holds an
output group's values at one time (latigo.providers.predictions.layout) and
prediction_tags names them once per revision: 24 rows a window, about a tenth of the bytes
(bench/README.md, "The prediction store's layout"). On PostgreSQL the new table is
partitioned by day (latigo.providers.predictions.partitions), so retention drops days.

The old rows are converted model by model, each model's in one read. On a large
PostgreSQL store this is long and holds the executors' stores off until it is done: stop
the executors for it, or expire old predictions first.
"""

import json
from collections import defaultdict

import numpy as np
import sqlalchemy as sa

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# the new table is built beside the old one, then takes its name
BUILDING = "predictions_building"
# one partition per UTC day, named as latigo.providers.predictions.partitions names them
DAY = np.timedelta64(1, "D")


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    op.create_table(
        "prediction_tags",
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("revision", sa.String(length=40), nullable=False),
        sa.Column("output", sa.String(length=64), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("project", "model", "revision", "output"),
    )
    building = op.create_table(
        BUILDING,
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("output", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.String(length=40), nullable=False),
        sa.Column("tag_values", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("project", "model", "time", "output", name=f"{BUILDING}_pkey"),
        sqlite_with_rowid=False,
        postgresql_partition_by="RANGE (time)",
    )
    _convert(bind, building, postgres)
    op.drop_table("predictions")
    op.rename_table(BUILDING, "predictions")
    if postgres:
        op.execute(f"ALTER TABLE predictions RENAME CONSTRAINT {BUILDING}_pkey TO predictions_pkey")
    op.create_index("ix_predictions_output_time", "predictions", ["output", "time"])


def _convert(bind, building: sa.Table, postgres: bool) -> None:
    old = sa.table(
        "predictions",
        *(sa.column(name) for name in ("project", "model", "output", "tag", "revision")),
        sa.column("time", sa.DateTime()),
        sa.column("value", sa.Float()),
    )
    tags_table = sa.table(
        "prediction_tags", *(sa.column(name) for name in ("project", "model", "revision", "output", "tags"))
    )
    days: set[str] = set()
    models = bind.execute(sa.select(old.c.project, old.c.model).distinct()).all()
    for project, model in models:
        query = sa.select(old.c.time, old.c.output, old.c.tag, old.c.value, old.c.revision).where(
            old.c.project == project, old.c.model == model
        )
        # (revision, output) -> time -> tag -> value
        values: dict = defaultdict(lambda: defaultdict(dict))
        for time, output, tag, value, revision_ in bind.execute(query):
            values[(revision_, output)][time][tag] = np.nan if value is None else value
        rows, catalogue = [], []
        for (revision_, output), by_time in values.items():
            tags = sorted({tag for at in by_time.values() for tag in at})
            catalogue.append(
                dict(project=project, model=model, revision=revision_, output=output, tags=json.dumps(tags))
            )
            for time, at in by_time.items():
                packed = np.array([at.get(tag, np.nan) for tag in tags], dtype="<f8").tobytes()
                rows.append(
                    dict(project=project, model=model, time=time, output=output, revision=revision_, tag_values=packed)
                )
        if postgres:
            for time in {row["time"] for row in rows}:
                day = time.strftime("%Y-%m-%d")
                if day not in days:
                    _create_partition(bind, day)
                    days.add(day)
        bind.execute(sa.insert(tags_table), catalogue)
        bind.execute(sa.insert(building), rows)


def _create_partition(bind, day: str) -> None:
    start = np.datetime64(day, "D")
    bind.execute(
        sa.text(
            f'CREATE TABLE "predictions_p{day.replace("-", "")}" PARTITION OF "{BUILDING}" '
            f"FOR VALUES FROM ('{start} 00:00:00') TO ('{start + DAY} 00:00:00')"
        )
    )


def downgrade() -> None:
    bind = op.get_bind()
    old = op.create_table(
        "predictions_unpacked",
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("output", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("revision", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("project", "model", "time", "output", "tag", name="predictions_unpacked_pkey"),
    )
    tags = {
        (project, model, revision_, output): json.loads(text)
        for project, model, revision_, output, text in bind.execute(
            sa.text("SELECT project, model, revision, output, tags FROM prediction_tags")
        )
    }
    for project, model, time, output, revision_, blob in bind.execute(
        sa.text("SELECT project, model, time, output, revision, tag_values FROM predictions")
    ):
        unpacked = np.frombuffer(blob, dtype="<f8")
        names = tags[(project, model, revision_, output)]
        bind.execute(
            sa.insert(old),
            [
                dict(
                    project=project,
                    model=model,
                    time=time,
                    output=output,
                    tag=tag,
                    value=None if np.isnan(value) else float(value),
                    revision=revision_,
                )
                for tag, value in zip(names, unpacked)
            ],
        )
    op.drop_table("predictions")
    op.drop_table("prediction_tags")
    op.rename_table("predictions_unpacked", "predictions")
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE predictions RENAME CONSTRAINT predictions_unpacked_pkey TO predictions_pkey")
    op.create_index("ix_predictions_output_time", "predictions", ["output", "time"])
