"""sensor_data.time unambiguous: timestamptz on PostgreSQL, canonical UTC text on SQLite

Revision ID: 0006
Revises: 0005
Sensor data is written by feeders Latigo does not control. On PostgreSQL a naive column
silently dropped a written offset ('...00:40+05:00' was stored as 00:40): the column becomes
``timestamptz`` (existing values were naive UTC). SQLite compares times as text, so a row
written in another form (an offset, a 'T', no microseconds) was invisible to one range and
returned for another: existing rows in another form that SQLite can read are rewritten in
UTC, to the millisecond (SQLite's own time functions go no finer; a rewritten row replaces a
row already stored at its time), and a CHECK constraint refuses such writes from now on.
"""

import sqlalchemy as sa
from alembic import op

from latigo.schema import SQLITE_UTC_TEXT

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# SQLite's own reading of a time text, in UTC, in SQLAlchemy's form (milliseconds + "000")
_NORMALISED = "strftime('%Y-%m-%d %H:%M:%f', time) || '000'"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE sensor_data ALTER COLUMN time TYPE TIMESTAMP WITH TIME ZONE USING time AT TIME ZONE 'UTC'")
        return
    op.execute(
        f"UPDATE OR REPLACE sensor_data SET time = {_NORMALISED} "
        f"WHERE NOT ({SQLITE_UTC_TEXT}) AND strftime('%s', time) IS NOT NULL"
    )
    unreadable = bind.execute(sa.text(f"SELECT tag, time FROM sensor_data WHERE NOT ({SQLITE_UTC_TEXT}) LIMIT 5")).all()
    if unreadable:
        raise RuntimeError(
            f"sensor_data has times that are not times, e.g. {[tuple(row) for row in unreadable]!r}: fix or delete them"
        )
    with op.batch_alter_table("sensor_data", recreate="always") as batch_op:
        batch_op.create_check_constraint("ck_sensor_data_utc_text", sa.text(SQLITE_UTC_TEXT))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE sensor_data ALTER COLUMN time TYPE TIMESTAMP WITHOUT TIME ZONE USING time AT TIME ZONE 'UTC'")
        return
    with op.batch_alter_table("sensor_data", recreate="always") as batch_op:
        batch_op.drop_constraint("ck_sensor_data_utc_text", type_="check")
