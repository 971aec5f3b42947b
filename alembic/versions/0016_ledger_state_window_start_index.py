"""ledger: the state index also orders by window_start

Revision ID: 0016
Revises: 0015
The compaction's candidate scan each tick (old done, no-data and dead windows) went through
ix_ledger_state, which holds nearly every row of the hot ledger under those states, and
sorted them all: its cost grew with the hot ledger, not with the windows old enough to
move. On (state, window_start) it is a range of the old rows. Queries by state alone
(the planned windows, the done ones) use its first column as they used the old index.
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# the index replaced, and the one replacing it
OLD, NEW = "ix_ledger_state", "ix_ledger_state_window_start"


def upgrade() -> None:
    op.create_index(NEW, "ledger", ["state", "window_start"], if_not_exists=True)
    op.drop_index(OLD, table_name="ledger", if_exists=True)


def downgrade() -> None:
    op.create_index(OLD, "ledger", ["state"], if_not_exists=True)
    op.drop_index(NEW, table_name="ledger", if_exists=True)
