"""model catalogue: each model's metadata per revision, fetched once for every process

Revision ID: 0010
Revises: 0009
A model's metadata never changes within a revision; latigo.catalogue asks Gordo for it
once, under a claim, and every executor reads it here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_catalogue",
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("revision", sa.String(length=40), nullable=False),
        sa.Column("entry", sa.Text(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("fetched_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("project", "model", "revision"),
    )


def downgrade() -> None:
    op.drop_table("model_catalogue")
