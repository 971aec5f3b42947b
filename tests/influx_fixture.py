"""A real InfluxDB 1.x (``influxd``, Debian package ``influxdb``) for the tests.

The Influx backends are tested against the real server, not a mock, because what matters
is what InfluxDB does with our queries and lines: quoting, escaping, overwrites, errors.
``influx_server`` starts one influxd per test session in a temporary directory, on free
ports bound to 127.0.0.1, and stops it by its PID at the end; ``influx_database`` gives
every test its own fresh database and drops it afterwards.

A missing ``influxd`` fails the tests instead of skipping them: CI installs it, and a
silently skipped storage backend is an untested one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from time import monotonic
from typing import Any, Iterator

import pytest
import requests

# how long influxd may take to answer /ping (it usually takes 0.1 s)
START_TIMEOUT = 30.0
# how long influxd may take to exit after SIGTERM before it is killed
STOP_TIMEOUT = 10.0
# how long each wait for influxd's exit lasts between two /ping attempts while it starts
PING_INTERVAL = 0.02
# (connect, read) timeouts of the fixture's own HTTP calls
HTTP_TIMEOUT = (2.0, 30.0)
# starts tried before giving up, in case another process takes a free port first
START_ATTEMPTS = 3

# influxd's configuration: everything in one temp dir, every listener on 127.0.0.1
CONFIG_TEMPLATE = """\
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
            pytest.fail(
                "influxd not found: install InfluxDB 1.x (Debian: apt-get install -y influxdb); "
                "the Influx tests need the real server",
                pytrace=False,
            )
        for _attempt in range(START_ATTEMPTS):
            http_port, rpc_port = free_port(), free_port()
            config = self.root / "influxdb.conf"
            config.write_text(CONFIG_TEMPLATE.format(root=self.root, http_port=http_port, rpc_port=rpc_port))
            # influxd reads INFLUXDB_* variables over its file: keep the test's config the only one
            environment = {key: value for key, value in os.environ.items() if not key.startswith("INFLUXDB_")}
            with self._log.open("ab") as log:
                self.process = subprocess.Popen(
                    [binary, "-config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=environment
                )
            self.url = f"http://127.0.0.1:{http_port}"
            if self._await_ping():
                return self
        pytest.fail(f"influxd did not start:\n{self.log_tail()}", pytrace=False)

    def _await_ping(self) -> bool:
        """True once /ping answers; False if influxd exited (say, a port was taken)."""
        assert self.process is not None
        deadline = monotonic() + START_TIMEOUT
        while monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/ping", timeout=HTTP_TIMEOUT).status_code == 204:
                    return True
            except requests.ConnectionError:
                pass
            try:
                # wait for the process to exit, briefly: an early exit ends the wait at once
                self.process.wait(timeout=PING_INTERVAL)
                return False
            except subprocess.TimeoutExpired:
                continue
        self.stop()
        pytest.fail(
            f"influxd did not answer /ping within {START_TIMEOUT} s:\n{self.log_tail()}", pytrace=False
        )

    def stop(self) -> None:
        """Stop influxd by its PID: SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

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
        response = requests.post(f"{self.url}/query", params=params, data={"q": q}, timeout=HTTP_TIMEOUT)
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
        response = requests.post(url, params=params, data=lines.encode(), timeout=HTTP_TIMEOUT)
        response.raise_for_status()


@pytest.fixture(scope="session")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """A running InfluxDB 1.x for the whole session, stopped at its end."""
    server = InfluxServer(tmp_path_factory.mktemp("influxd"))
    try:
        yield server.start()
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
