"""ledger history: old done and no-data windows kept as runs

Revision ID: 0011
Revises: 0010
A year of one ledger row per model and window made every read grow with time. Windows
that ended before retention.compact_after move into runs here (latigo.history), one row
per stretch of windows with the same state; the scheduler compacts a batch every tick.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_history",
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("run_start", sa.DateTime(), nullable=False),
        sa.Column("run_end", sa.DateTime(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("partial", sa.Integer(), nullable=False),
        sa.Column("revision", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("project", "model", "run_start"),
    )
    op.create_index("ix_ledger_history_run_end", "ledger_history", ["run_end"])


def downgrade() -> None:
    op.drop_index("ix_ledger_history_run_end", table_name="ledger_history")
    op.drop_table("ledger_history")
