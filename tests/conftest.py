"""Fixtures shared by the test modules: real servers started for the session, bound to
127.0.0.1 and stopped at the end (Gordo, PostgreSQL, InfluxDB)."""

from tests.gordo_fixture import gordo_server  # noqa: F401
from tests.influx_fixture import influx_database, influx_server  # noqa: F401
from tests.postgres_fixture import database_url, postgres_server, postgres_url, sqlite_url  # noqa: F401
from tests.kafka_fixture import kafka_broker  # noqa: F401
from tests.windowed_fixture import windowed_gordo  # noqa: F401
