"""ledger history: its totals per model, and the run a new run continues found by index

Revision ID: 0017
Revises: 0016
A fleet's partial and dead windows come scattered through its history, and each one cuts
a run: a year of 1,000 models is some 380,000 runs. ``latigo status`` read them all to
count a whole history (13 s), and each tick's compaction scanned them to find the runs
its windows continue. ``ledger_history_totals`` keeps the sums per model, state and
partialness, next to the runs (latigo.history), and (project, model, run_end) finds the
run a new one continues.
"""

from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# the index this revision adds
INDEX = "ix_ledger_history_model_run_end"
# runs read per step while summing the existing history
BATCH = 50_000


def upgrade() -> None:
    op.create_index(INDEX, "ledger_history", ["project", "model", "run_end"], unique=True)
    totals = op.create_table(
        "ledger_history_totals",
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("partial", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("first_start", sa.DateTime(), nullable=False),
        sa.Column("last_start", sa.DateTime(), nullable=False),
        sa.Column("last_end", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("project", "model", "state", "partial"),
    )
    # the history so far, summed as latigo.history.sums does (a run's last window starts
    # one step, its length over its windows, before its end)
    runs = sa.table(
        "ledger_history",
        *(sa.column(name) for name in ("project", "model", "run_start", "run_end", "windows", "state", "partial")),
    )
    found: dict[tuple, list] = defaultdict(lambda: [0, datetime.max, datetime.min, datetime.min])
    result = op.get_bind().execute(sa.select(runs).execution_options(yield_per=BATCH))
    for row in result:
        start, end = _naive(row.run_start), _naive(row.run_end)
        last_start = end - (end - start) / row.windows
        sums = found[(row.project, row.model, row.state, int(row.partial))]
        sums[0] += row.windows
        sums[1], sums[2], sums[3] = min(sums[1], start), max(sums[2], last_start), max(sums[3], end)
    rows = [
        {"project": key[0], "model": key[1], "state": key[2], "partial": key[3], "windows": sums[0],
         "first_start": sums[1], "last_start": sums[2], "last_end": sums[3]}
        for key, sums in found.items()
    ]  # fmt: skip
    for offset in range(0, len(rows), BATCH):
        op.bulk_insert(totals, rows[offset : offset + BATCH])


def _naive(value) -> datetime:
    """A stored time as a naive UTC datetime (SQLite hands back text)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def downgrade() -> None:
    op.drop_table("ledger_history_totals")
    op.drop_index(INDEX, table_name="ledger_history")
