"""predictions: each output group stored as a small code, named in prediction_outputs

Revision ID: 0015
Revises: 0014
A prediction row named its output group in full ("smooth-total-anomaly-unscaled"), in
the row and again in both of its indexes: about a sixth of a row's bytes. Now the row holds
a two-byte code and ``prediction_outputs`` names each code once. Gordo's twelve groups
get the codes 1 to 12 here; a group a newer Gordo adds gets the next code when it is first
stored. Codes are never renumbered or reused.

On PostgreSQL the column changes type in place (every partition and both indexes are
rewritten); SQLite's table is rebuilt beside the old one. Either holds the executors' stores
off until it is done.
"""

import sqlalchemy as sa

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Gordo's output groups in code order, as this revision numbered them (frozen here: the
# codes are in the stored rows)
GROUPS = (
    "model-input",
    "model-output",
    "tag-anomaly-scaled",
    "tag-anomaly-unscaled",
    "total-anomaly-scaled",
    "total-anomaly-unscaled",
    "anomaly-confidence",
    "total-anomaly-confidence",
    "smooth-tag-anomaly-scaled",
    "smooth-tag-anomaly-unscaled",
    "smooth-total-anomaly-scaled",
    "smooth-total-anomaly-unscaled",
)
# SQLite's table is rebuilt under this name, then takes the old one's
BUILDING = "predictions_building"
INDEX = "ix_predictions_output_time"


def _case(codes: dict, column: str) -> str:
    """SQL mapping ``column`` from one side of ``codes`` to the other."""
    arms = " ".join(f"WHEN {_literal(old)} THEN {_literal(new)}" for old, new in codes.items())
    return f"CASE {column} {arms} END" if arms else "NULL"


def _literal(value) -> str:
    return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


def upgrade() -> None:
    bind = op.get_bind()
    outputs = op.create_table(
        "prediction_outputs",
        sa.Column("code", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(length=64), nullable=False, unique=True),
    )
    found = [name for (name,) in bind.execute(sa.text("SELECT DISTINCT output FROM predictions"))]
    names = list(GROUPS) + sorted(set(found) - set(GROUPS))
    op.bulk_insert(outputs, [{"code": code, "name": name} for code, name in enumerate(names, 1)])
    if bind.dialect.name == "postgresql":
        # the identity's next code follows the seeded ones
        op.execute(f"SELECT setval(pg_get_serial_sequence('prediction_outputs', 'code'), {len(names)})")
    codes = {name: code for code, name in enumerate(names, 1)}
    _retype(bind, sa.SmallInteger(), _case(codes, "output"))


def downgrade() -> None:
    bind = op.get_bind()
    names = dict(bind.execute(sa.text("SELECT code, name FROM prediction_outputs")).all())
    _retype(bind, sa.String(length=64), _case(names, "output"))
    op.drop_table("prediction_outputs")


def _retype(bind, output_type: sa.types.TypeEngine, conversion: str) -> None:
    """predictions.output as ``output_type``, each value converted by the SQL ``conversion``."""
    if bind.dialect.name == "postgresql":
        type_sql = output_type.compile(dialect=bind.dialect)
        op.execute(f"ALTER TABLE predictions ALTER COLUMN output TYPE {type_sql} USING {conversion}")
        return
    op.create_table(
        BUILDING,
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("output", output_type, nullable=False, autoincrement=False),
        sa.Column("revision", sa.String(length=40), nullable=False),
        sa.Column("tag_values", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("project", "model", "time", "output"),
        sqlite_with_rowid=False,
    )
    op.execute(
        f"INSERT INTO {BUILDING} (project, model, time, output, revision, tag_values) "
        f"SELECT project, model, time, {conversion}, revision, tag_values FROM predictions"
    )
    op.drop_table("predictions")
    op.rename_table(BUILDING, "predictions")
    op.create_index(INDEX, "predictions", ["output", "time"])
