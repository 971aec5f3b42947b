"""dependency outages: which executor waits for which dependency

Revision ID: 0008
Revises: 0007
An executor that finds a dependency down for everyone pauses (latigo.outages); it records
so here while the Latigo database answers, for `latigo status` and the status page. A row
is refreshed at every probe and removed when the dependency answers again; one not
refreshed for a while belongs to an executor that is gone.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dependency_outages",
        sa.Column("executor", sa.String(length=200), nullable=False),
        sa.Column("dependency", sa.String(length=32), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("executor", "dependency"),
    )


def downgrade() -> None:
    op.drop_table("dependency_outages")
