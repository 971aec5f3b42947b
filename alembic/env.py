"""alembic environment: migrations run on the engine Latigo hands over (see latigo.db.upgrade)."""

from alembic import context

from latigo.config import load_config
from latigo.db import create_engine
from latigo.schema import metadata

config = context.config
engine = config.attributes.get("engine") or create_engine(load_config().database.url)

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
