"""event hubs partition ownership and checkpoints

Revision ID: 0003
Revises: 0002
Times are naive UTC (latigo.schema.UTCDateTime).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eventhub_ownership",
        sa.Column("namespace", sa.String(length=255), nullable=False),
        sa.Column("eventhub", sa.String(length=200), nullable=False),
        sa.Column("consumer_group", sa.String(length=200), nullable=False),
        sa.Column("partition_id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("last_modified", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "eventhub", "consumer_group", "partition_id"),
    )
    op.create_table(
        "eventhub_checkpoints",
        sa.Column("namespace", sa.String(length=255), nullable=False),
        sa.Column("eventhub", sa.String(length=200), nullable=False),
        sa.Column("consumer_group", sa.String(length=200), nullable=False),
        sa.Column("partition_id", sa.String(length=64), nullable=False),
        sa.Column("event_offset", sa.String(length=64), nullable=True),
        sa.Column("sequence_number", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "eventhub", "consumer_group", "partition_id"),
    )


def downgrade() -> None:
    op.drop_table("eventhub_checkpoints")
    op.drop_table("eventhub_ownership")
