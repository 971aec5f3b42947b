"""A real InfluxDB 1.x (``influxd``, Debian package ``influxdb``) for the tests.

The Influx backends are tested against the real server, not a mock, because what matters
is what InfluxDB does with our queries and lines: quoting, escaping, overwrites, errors.
``influx_server`` starts one influxd per test session in a temporary directory, on free
ports bound to 127.0.0.1, and stops it by its PID at the end; ``influx_database`` gives
every test its own fresh database and drops it afterwards.

The server itself is ``latigo.demo.servers.InfluxServer``, which the benchmarks use too; its
``ServerError`` (say, a missing ``influxd``) fails the tests instead of skipping them: CI
installs it, and a silently skipped storage backend is an untested one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from latigo.demo.servers import InfluxServer, ServerError

# the server class, re-exported for the test modules that import it from here
__all__ = ["InfluxServer"]


@pytest.fixture(scope="session")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """A running InfluxDB 1.x for the whole session, stopped at its end."""
    server = InfluxServer(tmp_path_factory.mktemp("influxd"))
    try:
        started = server.start()
    except ServerError as error:
        server.stop()
        pytest.fail(str(error), pytrace=False)
    try:
        yield started
    finally:
        server.stop()


@pytest.fixture
def influx_database(influx_server: InfluxServer) -> Iterator[str]:
    """The name of a database created fresh for one test, dropped after it."""
    name = f"test_{uuid.uuid4().hex}"
    influx_server.query(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        influx_server.query(f'DROP DATABASE "{name}"')
