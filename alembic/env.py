"""alembic environment: migrations run on the engine Latigo hands over (see latigo.db.upgrade).

Every Latigo process migrates at start-up, so several may start migrating at once. On
PostgreSQL they queue on an advisory lock held for the migration's transaction, so only
the first one changes the schema and the others find it current; SQLite's
``BEGIN IMMEDIATE`` (see latigo.db) serialises them already.
"""

from alembic import context
from sqlalchemy import text

from latigo.config import load_config
from latigo.db import create_engine
from latigo.schema import metadata

# the advisory lock key that serialises migrations on PostgreSQL ("latigo" in ASCII)
MIGRATION_LOCK = 0x6C617469676F

config = context.config
engine = config.attributes.get("engine") or create_engine(load_config().database.url)

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
