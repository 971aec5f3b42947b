"""Local PostgreSQL 15 and InfluxDB 1.x servers, for the benchmarks and the tests.

Both measure Latigo against the real stores rather than stand-ins, so both need a real
server they can start and throw away: one cluster or influxd in a temporary directory,
listening on 127.0.0.1 on free ports, stopped by ``pg_ctl stop`` or its own PID. The
benchmarks (``bench/``) and the test fixtures (``tests/postgres_fixture.py``,
``tests/influx_fixture.py``) import these classes from here, so neither reaches into the
other's private modules. How the servers are run follows the reference's services.md
(``../shared/reference/`` beside the checkout).

A server that cannot be had (binaries missing, a start that fails) raises
:class:`ServerError` with the server's log tail; the test fixtures turn it into a failure,
never a skip: a silently skipped backend is an untested one.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic
from typing import Any

import psycopg
import requests

from latigo.demo.gordo import free_port

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


# how long influxd may take to answer /ping (it usually takes 0.1 s)
INFLUX_START_TIMEOUT = 30.0
# how long influxd may take to exit after SIGTERM before it is killed
INFLUX_STOP_TIMEOUT = 10.0
# how long each wait for influxd's exit lasts between two /ping attempts while it starts
INFLUX_PING_INTERVAL = 0.02
# (connect, read) timeouts of the fixture's own HTTP calls
INFLUX_HTTP_TIMEOUT = (2.0, 30.0)

# influxd's configuration: everything in one temp dir, every listener on 127.0.0.1
INFLUX_CONFIG_TEMPLATE = """\
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
[ifql]
  enabled = false
[monitor]
  store-enabled = false
"""


class ServerError(RuntimeError):
    """A local server could not be set up, started or stopped; the message ends with its log."""


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
            raise ServerError(
                f"PostgreSQL 15 not found ({', '.join(missing)} missing in {PG_BIN}): install it "
                "(Debian: apt-get install -y postgresql); the SQL backend tests need the real server",
            )
        as_root = os.geteuid() == 0
        if as_root:
            try:
                import pwd

                pwd.getpwnam(PG_OS_USER)
            except KeyError:
                raise ServerError(
                    f"running as root but there is no '{PG_OS_USER}' user to run initdb as "
                    "(the Debian postgresql package creates it)",
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
        raise ServerError(f"PostgreSQL did not start:\n{self.log_tail()}")

    def restart(self) -> None:
        """Start again on the same port (clients keep their URLs)."""
        if not self._pg_ctl_start(check=False):
            raise ServerError(f"PostgreSQL did not start again on port {self.port}:\n{self.log_tail()}")

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
            raise ServerError(f"{what} took more than {COMMAND_TIMEOUT} s:\n{self.log_tail()}")
        if check and result.returncode != 0:
            raise ServerError(
                f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n{self.log_tail()}",
            )
        return result

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no server log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class InfluxServer:
    """One influxd process living in ``root``; ``start`` waits until it answers /ping."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._log = root / "influxd.log"

    def start(self) -> InfluxServer:
        binary = shutil.which("influxd")
        if binary is None:
            raise ServerError(
                "influxd not found: install InfluxDB 1.x (Debian: apt-get install -y influxdb); "
                "the Influx tests need the real server",
            )
        for _attempt in range(START_ATTEMPTS):
            http_port, rpc_port = free_port(), free_port()
            config = self.root / "influxdb.conf"
            config.write_text(INFLUX_CONFIG_TEMPLATE.format(root=self.root, http_port=http_port, rpc_port=rpc_port))
            # influxd reads INFLUXDB_* variables over its file: keep the test's config the only one
            environment = {key: value for key, value in os.environ.items() if not key.startswith("INFLUXDB_")}
            with self._log.open("ab") as log:
                self.process = subprocess.Popen(
                    [binary, "-config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=environment
                )
            self.url = f"http://127.0.0.1:{http_port}"
            if self._await_ping():
                return self
        raise ServerError(f"influxd did not start:\n{self.log_tail()}")

    def _await_ping(self) -> bool:
        """True once /ping answers; False if influxd exited (say, a port was taken)."""
        assert self.process is not None
        deadline = monotonic() + INFLUX_START_TIMEOUT
        while monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/ping", timeout=INFLUX_HTTP_TIMEOUT).status_code == 204:
                    return True
            except requests.ConnectionError:
                pass
            try:
                # wait for the process to exit, briefly: an early exit ends the wait at once
                self.process.wait(timeout=INFLUX_PING_INTERVAL)
                return False
            except subprocess.TimeoutExpired:
                continue
        self.stop()
        raise ServerError(f"influxd did not answer /ping within {INFLUX_START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop influxd by its PID: SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=INFLUX_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=INFLUX_STOP_TIMEOUT)

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.exists():
            return "(no log)"
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL (POST, so it may change things); return the statements' results, raise
        on any error. Times come back as integer nanoseconds."""
        params = {"epoch": "ns"}
        if db is not None:
            params["db"] = db
        response = requests.post(f"{self.url}/query", params=params, data={"q": q}, timeout=INFLUX_HTTP_TIMEOUT)
        response.raise_for_status()
        results = response.json()["results"]
        errors = [result["error"] for result in results if "error" in result]
        if errors:
            raise RuntimeError(f"{q}: {'; '.join(errors)}")
        return results

    def points(self, q: str, db: str) -> list[dict[str, Any]]:
        """The rows of a SELECT as dicts (column → value, plus the series' name and tags)."""
        rows = []
        for result in self.query(q, db):
            for series in result.get("series", []):
                for values in series["values"]:
                    row = {"_measurement": series.get("name"), **(series.get("tags") or {})}
                    row.update(zip(series["columns"], values))
                    rows.append(row)
        return rows

    def write(self, lines: str, db: str) -> None:
        """Write raw line protocol (nanosecond times)."""
        params = {"db": db, "precision": "ns"}
        url = f"{self.url}/write"
        response = requests.post(url, params=params, data=lines.encode(), timeout=INFLUX_HTTP_TIMEOUT)
        response.raise_for_status()
