"""Fixtures shared by the test modules: real servers started for the session, bound to
127.0.0.1 and stopped at the end (Gordo, PostgreSQL, InfluxDB, the Kafka broker).

Two tiers: a test that starts a service carries the ``integration`` marker, and
``make test-fast`` (``-m "not integration"``) runs the rest in under a minute. Modules whose
tests start services themselves (a latigo subprocess with its database, supervisord, the
fault proxy in front of a real server) say so in their ``pytestmark``; a test that asks for
one of the service fixtures below is marked here as well, so a new test cannot start a
server inside the fast tier by forgetting the marker.
"""

import pytest

from tests.gordo_fixture import gordo_server  # noqa: F401
from tests.influx_fixture import influx_database, influx_server  # noqa: F401
from tests.kafka_fixture import kafka_broker  # noqa: F401
from tests.postgres_fixture import database_url, postgres_server, postgres_url, sqlite_url  # noqa: F401
from tests.windowed_fixture import windowed_gordo  # noqa: F401

# the fixtures that start a real server (database_url marks its PostgreSQL case itself)
SERVICE_FIXTURES = frozenset(
    {
        "gordo_server",
        "influx_server",
        "influx_database",
        "kafka_broker",
        "postgres_server",
        "postgres_url",
        "windowed_gordo",
    }
)

# parametrised cases whose fixture starts a server through request.getfixturevalue, which
# no fixture closure shows (the queue contract's PostgreSQL and Kafka backends)
SERVICE_CASES = frozenset({"sql-postgresql", "kafka"})


def _starts_a_service(item: pytest.Item) -> bool:
    if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and bool(SERVICE_CASES.intersection(map(str, callspec.params.values())))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _starts_a_service(item):
            item.add_marker(pytest.mark.integration)
