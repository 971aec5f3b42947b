"""dead letters: at most one per task id

Revision ID: 0007
Revises: 0006
Two executors could hold one task at once (a delivery again after its lease while the first
still ran), and both dead-letter it: a replay then published it twice. A unique index on the
task id (for letters that have one; malformed messages have none) makes a second dead letter
of a task a no-op. Existing duplicates keep their newest letter.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM dead_letters WHERE task_id IS NOT NULL AND id NOT IN "
        "(SELECT MAX(id) FROM dead_letters WHERE task_id IS NOT NULL GROUP BY task_id)"
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(
            "ux_dead_letters_task_id",
            ["task_id"],
            unique=True,
            sqlite_where=sa.text("task_id IS NOT NULL"),
            postgresql_where=sa.text("task_id IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index("ux_dead_letters_task_id")
