"""A real PostgreSQL 15 for the tests.

The SQL backends are tested against the real server, not SQLite pretending to be it,
because what matters is what PostgreSQL does: ``FOR UPDATE SKIP LOCKED``, ``ON CONFLICT``,
types, and how a stopped server looks to the client.

``postgres_server`` starts one server per test session, as
/work/shared/reference/services.md describes: initdb (as the ``postgres`` user when the
tests run as root, since initdb refuses root) in a temporary directory, listening on
127.0.0.1 on a free port, ``fsync=off``; ``pg_ctl -w`` waits until it accepts
connections, and ``pg_ctl stop -m fast`` stops it at the end. ``postgres_url`` gives every
test a fresh database, dropped afterwards; ``database_url`` runs a test on SQLite and on
PostgreSQL. ``PostgresServer.stopped()`` takes the server down for outage tests and always
brings it back on the same port.

Missing PostgreSQL binaries fail the tests instead of skipping them: CI installs them, and
a silently skipped backend is an untested one.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

# where Debian's postgresql-15 package puts the server binaries
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# the OS user that owns the cluster when the tests run as root (initdb refuses root)
PG_OS_USER = "postgres"
# the database superuser (trust authentication, 127.0.0.1 only)
PG_SUPERUSER = "postgres"
# seconds pg_ctl may wait for the server to start or stop (it usually takes well under 1 s)
PG_CTL_TIMEOUT = 30
# seconds any one pg_ctl / initdb command may take before the fixture gives up on it
COMMAND_TIMEOUT = 120
# seconds the fixture's own connections wait to connect
CONNECT_TIMEOUT = 10
# starts tried on fresh ports, in case another process takes the free port first
START_ATTEMPTS = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster living in ``root``, served on 127.0.0.1:``port``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "pg.log"
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    def create(cls) -> PostgresServer:
        """initdb a new cluster in a fresh temporary directory."""
        missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / name).exists()]
        if missing:
            pytest.fail(
                f"PostgreSQL 15 not found ({', '.join(missing)} missing in {PG_BIN}): install it "
                "(Debian: apt-get install -y postgresql); the SQL backend tests need the real server",
                pytrace=False,
            )
        as_root = os.geteuid() == 0
        if as_root:
            try:
                import pwd

                pwd.getpwnam(PG_OS_USER)
            except KeyError:
                pytest.fail(
                    f"running as root but there is no '{PG_OS_USER}' user to run initdb as "
                    "(the Debian postgresql package creates it)",
                    pytrace=False,
                )
        # not under pytest's tmp_path: as root that lives in a 0700 directory postgres cannot enter
        root = Path(tempfile.mkdtemp(prefix="latigo-pg-"))
        if as_root:
            shutil.chown(root, PG_OS_USER, PG_OS_USER)
        server = cls(root)
        server._run(
            [
                str(PG_BIN / "initdb"),
                "-D", str(server.data),
                "-U", PG_SUPERUSER,
                "-A", "trust",
                "--no-sync",
                "-E", "UTF8",
                "--locale=C.UTF-8",
            ],
            what="initdb",
        )  # fmt: skip
        return server

    def start(self) -> PostgresServer:
        """Start on a free port; ``pg_ctl -w`` returns once the server accepts connections."""
        for _attempt in range(START_ATTEMPTS):
            self.port = free_port()
            if self._pg_ctl_start(check=False):
                return self
        pytest.fail(f"PostgreSQL did not start:\n{self.log_tail()}", pytrace=False)

    def restart(self) -> None:
        """Start again on the same port (clients keep their URLs)."""
        if not self._pg_ctl_start(check=False):
            pytest.fail(f"PostgreSQL did not start again on port {self.port}:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: disconnect clients, shut down cleanly, wait for the exit."""
        if not self.is_running():
            return
        self._run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", str(PG_CTL_TIMEOUT), "stop"],
            what="pg_ctl stop",
        )

    def is_running(self) -> bool:
        # pg_ctl status: 0 when the server runs, 3 when it does not, 4 when there is no cluster
        result = self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"], what="pg_ctl status", check=False)
        return result.returncode == 0

    def ensure_running(self) -> None:
        """Bring the server back if an earlier test left it stopped."""
        if not self.is_running():
            self.restart()

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The server is down inside the block and running again after it, whatever happens."""
        self.stop()
        try:
            yield
        finally:
            self.restart()

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- databases -------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of a database on this server."""
        return f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """Create an empty database with a unique name; return the name."""
        name = f"latigo_test_{uuid.uuid4().hex}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        # FORCE ends connections a test's engine may still hold
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=PG_SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
        ) as connection:
            connection.execute(statement)

    # --- commands --------------------------------------------------------------------

    def _pg_ctl_start(self, *, check: bool) -> bool:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        result = self._run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D", str(self.data),
                "-l", str(self.log),
                "-w", "-t", str(PG_CTL_TIMEOUT),
                "-o", options,
                "start",
            ],
            what="pg_ctl start",
            check=check,
        )  # fmt: skip
        return result.returncode == 0

    def _run(self, argv: list[str], *, what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL command, as the postgres user when we are root (like services.md:
        ``su postgres -c "..."``). The server pg_ctl starts writes to its own log file, so no
        pipe of ours stays open in it."""
        command = ["su", PG_OS_USER, "-c", shlex.join(argv)] if os.geteuid() == 0 else argv
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                cwd=self.root,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{what} took more than {COMMAND_TIMEOUT} s:\n{self.log_tail()}", pytrace=False)
        if check and result.returncode != 0:
            pytest.fail(
                f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n{self.log_tail()}",
                pytrace=False,
            )
        return result

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no server log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL 15 for the whole session, stopped and removed at its end."""
    server = PostgresServer.create()
    try:
        yield server.start()
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


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
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
