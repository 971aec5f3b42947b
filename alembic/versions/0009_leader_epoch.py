"""scheduler leader: an epoch per term

Revision ID: 0009
Revises: 0008
Leadership is the lease row on SQLite and PostgreSQL alike (PostgreSQL used a session
advisory lock, which a hung leader keeps while its connection lives). The epoch grows by
one at every take of the row; the scheduler checks holder and epoch in the transaction that
marks windows queued, so a leader deposed while it hung cannot publish (latigo.leader).
A lease row from before starts at epoch 0.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scheduler_leader", schema=None) as batch_op:
        batch_op.add_column(sa.Column("epoch", sa.Integer(), nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_leader", schema=None) as batch_op:
        batch_op.drop_column("epoch")
