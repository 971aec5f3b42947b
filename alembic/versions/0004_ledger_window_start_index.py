"""ledger index on window_start

Revision ID: 0004
Revises: 0003
The ledger keeps every window forever; the queries that look at recent windows across all
models (status, lags, the status page, the scheduler's watermarks) need this index.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_window_start", ["window_start"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_window_start")
