"""A real PostgreSQL 15 for the tests.

The SQL backends are tested against the real server, not SQLite pretending to be it,
because what matters is what PostgreSQL does: ``FOR UPDATE SKIP LOCKED``, ``ON CONFLICT``,
types, and how a stopped server looks to the client.

``postgres_server`` starts one server per test session, as the reference's services.md
(``../shared/reference/`` beside the checkout) describes: initdb (as the ``postgres`` user
when the tests run as root, since initdb refuses root) in a temporary directory, listening
on 127.0.0.1 on a free port, ``fsync=off``; ``pg_ctl -w`` waits until it accepts
connections, and ``pg_ctl stop -m fast`` stops it at the end. ``postgres_url`` gives every
test a fresh database, dropped afterwards; ``database_url`` runs a test on SQLite and on
PostgreSQL (that case is marked ``integration``; the SQLite one runs in the fast tier).
``PostgresServer.stopped()`` takes the server down for outage tests and always brings it
back on the same port.

The server itself is ``latigo.demo.servers.PostgresServer``, which the benchmarks use too;
its ``ServerError`` (say, missing PostgreSQL binaries) fails the tests instead of skipping
them: CI installs them, and a silently skipped backend is an untested one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from latigo.demo.servers import PostgresServer, ServerError, free_port

# the server class and the port helper, re-exported for the test modules that import them from here
__all__ = ["PostgresServer", "free_port"]


def _started(server: PostgresServer) -> PostgresServer:
    try:
        return server.start()
    except ServerError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL 15 for the whole session, stopped and removed at its end."""
    try:
        server = PostgresServer.create()
    except ServerError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield _started(server)
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The SQLAlchemy URL of a database created empty for one test, dropped after it."""
    postgres_server.ensure_running()
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.ensure_running()
        postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty Latigo database URL: a SQLite file in tmp_path, or a new PostgreSQL
    database (the server starts only when a PostgreSQL case runs)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'latigo.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite Latigo database in tmp_path, for tests where the dialect adds nothing."""
    return f"sqlite:///{tmp_path / 'latigo.db'}"
