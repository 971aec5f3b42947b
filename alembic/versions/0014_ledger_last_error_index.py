"""ledger: a partial index of the windows that hold an error

Revision ID: 0014
Revises: 0013
``latigo status`` shows each model's last error. Without this index it read every row of
the hot ledger to find the few that hold one (failed and dead windows; a done window's
error is cleared), a cost that grew with the ledger instead of with the failures.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# the index this revision adds, and the rows it holds
INDEX, HOLDS = "ix_ledger_last_error", "last_error IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        INDEX,
        "ledger",
        ["updated_at"],
        if_not_exists=True,
        postgresql_where=sa.text(HOLDS),
        sqlite_where=sa.text(HOLDS),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="ledger")
