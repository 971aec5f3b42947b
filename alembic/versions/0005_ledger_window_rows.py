"""ledger: each window's note and its stored and expected rows

Revision ID: 0005
Revises: 0004
A task's windows can end differently (done, partial, no data): each window records its own
note and how many of its rows were stored out of how many it has. Notes of done and no_data
windows used to be kept in last_error; they move to note, and last_error keeps failures.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("stored_rows", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("expected_rows", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE ledger SET note = last_error, last_error = NULL "
        "WHERE state IN ('done', 'no_data') AND last_error IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("UPDATE ledger SET last_error = note WHERE state IN ('done', 'no_data') AND note IS NOT NULL")
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_column("expected_rows")
        batch_op.drop_column("stored_rows")
        batch_op.drop_column("note")
