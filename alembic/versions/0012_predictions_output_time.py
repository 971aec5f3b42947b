"""predictions by output and time: the recent values of one output group

Revision ID: 0012
Revises: 0011
`latigo predictions` asks for one output group's values since a moment, over every model.
Without an index that leads with output and time it read the whole table, which grows
with every window stored.

Migrations run in one transaction under the migration lock, so the index cannot be built
CONCURRENTLY here, and on PostgreSQL building it holds off the executors' stores until it
is done. On a large table, build it beforehand, while Latigo runs:
``CREATE INDEX CONCURRENTLY ix_predictions_output_time ON predictions (output, time)``;
this migration then finds it and leaves it.
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# the index this revision adds
INDEX = "ix_predictions_output_time"


def upgrade() -> None:
    op.create_index(INDEX, "predictions", ["output", "time"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="predictions")
