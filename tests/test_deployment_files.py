"""The deployment files, checked without a Docker engine or a cluster: the Dockerfiles pass
hadolint, docker-compose.yml passes docker-compose's own validation and configures Latigo
with keys Latigo accepts, .dockerignore lets through what the Dockerfiles copy and nothing
private, supervisord.conf is read by supervisor's own parser as intended, the Grafana
dashboard's queries name what Latigo writes and run against real InfluxDB and PostgreSQL
servers, and the Kubernetes manifests (deploy/k8s) form a consistent set that kustomize
renders, Kubernetes' own schemas accept, and whose Latigo config Latigo loads.

hadolint, docker-compose, kubectl (its built-in kustomize) and kubernetes-validate (PyPI;
Kubernetes' OpenAPI schemas bundled, no network) are required, not optional: a missing one
fails its test instead of skipping it, because CI installs them (see the Makefile's
test-deps) and a skipped lint is an unchecked file. Each is taken from its variable
($HADOLINT, $KUBECTL, $KUBERNETES_VALIDATE), else from PATH.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa
import yaml
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ClientOptions, ServerOptions

from latigo.config import ConfigError, ExecutorConfig, InfluxPredictionsConfig, load_config
from latigo.db import create_engine, upgrade
from latigo.providers.predictions.influx import MACHINE_TAG, VALUE_FIELD, InfluxPredictions
from latigo.schema import dead_letters, ledger, metadata
from latigo.window import Window
from tests.influx_fixture import InfluxServer
from tests.postgres_fixture import PostgresServer, free_port

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = ("Dockerfile", "docker/gordo.Dockerfile")
COMPOSE_FILE = REPO / "docker-compose.yml"
SUPERVISORD_CONF = REPO / "supervisord.conf"
# the environment variables supervisord.conf expands, with values for a parse here
SUPERVISOR_VARIABLES = ("SUPERVISOR_RUN_DIR", "SUPERVISOR_LATIGO_BIN", "SUPERVISOR_LATIGO_DIR")
# limit for one run of a linter or validator, seconds
TOOL_TIMEOUT = 60

# the port of /healthz, /readyz and /metrics in every Latigo container (metrics.port)
METRICS_PORT = 9100
# every service docker-compose.yml must describe
COMPOSE_SERVICES = {
    "postgres", "influxdb", "gordo", "latigo-migrate", "latigo-scheduler", "latigo-executor",
    "grafana", "adminer",
}
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "latigo-predictions.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "latigo.yaml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "latigo.yaml"
GRAFANA_READER_SCRIPT = REPO / "deploy" / "postgres" / "initdb" / "10-grafana-reader.sh"
K8S_DIR = REPO / "deploy" / "k8s"
K8S_BASE = K8S_DIR / "base"
# every kustomization a site can apply (kubectl kustomize renders each)
K8S_BUILDS = ("base", "overlays/production")
# Kubernetes versions the rendered manifests must be valid for: an old one still in
# service and the newest whose schemas kubernetes-validate bundles
K8S_VERSIONS = ("1.29.0", "1.37.0")
# the Gordo output groups Latigo stores, one InfluxDB measurement each (gordo-client's
# layout): what Gordo's anomaly endpoint answers, as tests/test_pipeline.py checks
# against a real Gordo
ANOMALY_GROUPS = {
    "model-input", "model-output", "tag-anomaly-scaled", "tag-anomaly-unscaled", "total-anomaly-scaled",
    "total-anomaly-unscaled", "anomaly-confidence", "total-anomaly-confidence",
}
# what every value of the placeholder Secret must contain, so none can pass for a real one
SECRET_PLACEHOLDER = "CHANGE-ME"


def _tool(name: str, variable: str | None = None) -> str:
    path = (os.environ.get(variable) if variable else None) or shutil.which(name)
    if not path:
        where = f"${variable} or PATH" if variable else "PATH"
        pytest.fail(f"{name} is not on {where}: install it (make test-deps) - this check is not optional")
    return path


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT)


# ---------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    result = _run([_tool("hadolint", "HADOLINT"), "--no-color", dockerfile])
    assert result.returncode == 0, f"hadolint {dockerfile}:\n{result.stdout}{result.stderr}"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern matching
    the path or one of its parent folders decides; ``!`` patterns re-include."""

    def matches(pattern: str, candidate: str) -> bool:
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
        return re.fullmatch(regex.replace(".*/", "(.*/)?"), candidate) is not None

    parts = path.split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = os.path.normpath(raw.lstrip("!"))
        if any(matches(pattern, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_sends_what_the_dockerfiles_copy_and_nothing_private() -> None:
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    needed = []
    for dockerfile in DOCKERFILES:
        for instruction, arguments in _instructions(REPO / dockerfile):
            if instruction == "COPY":
                sources = [word for word in arguments.split() if not word.startswith("--")][:-1]
                for source in sources:
                    if (REPO / source).is_dir():
                        needed += [
                            str(file.relative_to(REPO)) for file in (REPO / source).rglob("*")
                            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".db"
                        ]
                    else:
                        needed.append(source)
    assert needed
    left_out = [path for path in needed if _dockerignore_excludes(path, patterns)]
    assert not left_out, f".dockerignore leaves out files the Dockerfiles copy: {left_out}"
    for private in (
        ".git/config", ".venv/bin/python", ".gordo/models/x", ".tools/bin/hadolint", "local_config.yaml",
        "latigo.db", "latigo/__pycache__/cli.cpython-311.pyc", "tests/test_config.py", ".pytest_cache/x",
    ):
        assert _dockerignore_excludes(private, patterns), f".dockerignore lets {private} into the image"


def test_image_provides_every_variable_supervisord_conf_needs() -> None:
    settings = [line for line in SUPERVISORD_CONF.read_text().splitlines() if not line.startswith(";")]
    needed = set(re.findall(r"%\(ENV_(\w+)\)s", "\n".join(settings)))
    assert needed == set(SUPERVISOR_VARIABLES)
    instructions = _instructions(REPO / "Dockerfile")
    provided = {
        match.group(1)
        for instruction, arguments in instructions if instruction == "ENV"
        for match in re.finditer(r"(\w+)=", arguments)
    }
    assert needed <= provided, f"Dockerfile sets no ENV for {sorted(needed - provided)}"
    # the Latigo processes inherit them, and Latigo rejects LATIGO_* names it does not know
    assert not [name for name in needed if name.startswith("LATIGO_")]
    assert ("CMD", '["supervisord", "-c", "/app/supervisord.conf"]') in instructions


# ---------------------------------------------------------------- docker-compose.yml


def _compose_env() -> dict[str, str]:
    # the file's defaults, not whatever the caller's shell sets
    return {key: value for key, value in os.environ.items() if key != "POSTGRES_PASSWORD"}


def test_compose_file_is_valid() -> None:
    result = _run([_tool("docker-compose"), "-f", str(COMPOSE_FILE), "config", "-q"], _compose_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stderr, result.stderr


def test_compose_file_configures_latigo_with_keys_latigo_accepts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = _run([_tool("docker-compose"), "-f", str(COMPOSE_FILE), "config"], _compose_env())
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == COMPOSE_SERVICES
    assert services["latigo-scheduler"]["command"] == ["latigo", "scheduler"]
    assert services["latigo-executor"]["command"] == ["latigo", "executor"]
    assert services["latigo-executor"]["deploy"]["replicas"] == 2
    assert services["latigo-migrate"]["command"] == ["latigo", "db", "upgrade"]
    for name in ("latigo-scheduler", "latigo-executor"):
        assert services[name]["depends_on"]["latigo-migrate"]["condition"] == "service_completed_successfully"

    for name in ("latigo-migrate", "latigo-scheduler", "latigo-executor"):
        environment = services[name]["environment"]
        for variable in [key for key in os.environ if key.startswith("LATIGO_")]:
            monkeypatch.delenv(variable)
        monkeypatch.setenv("LATIGO_CONFIG", str(tmp_path / "absent.yaml"))
        for variable, value in environment.items():
            monkeypatch.setenv(variable, str(value))
        try:
            config = load_config()
        except ConfigError as error:
            pytest.fail(f"{name}: Latigo rejects the compose environment: {error}")
        assert config.database.url.startswith("postgresql+psycopg://latigo:")
        assert config.database.url.endswith("@postgres:5432/latigo")
        assert config.models.base_url == "http://gordo:5555"
        assert (config.sensors.type, config.sensors.url) == ("influx", "http://influxdb:8086")
        assert (config.predictions.type, config.predictions.url) == ("influx", "http://influxdb:8086")
        assert config.metrics.port == METRICS_PORT


# ---------------------------------------------------------------- supervisord.conf


def _server_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ServerOptions:
    monkeypatch.setenv("SUPERVISOR_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("SUPERVISOR_LATIGO_BIN", "/opt/latigo/bin/latigo")
    monkeypatch.setenv("SUPERVISOR_LATIGO_DIR", str(tmp_path))
    options = ServerOptions()
    options.realize(args=["-c", str(SUPERVISORD_CONF)])
    return options


def test_supervisord_conf_runs_a_scheduler_and_two_executors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = _server_options(monkeypatch, tmp_path)
    assert options.nodaemon
    assert options.pidfile == str(tmp_path / "supervisord.pid")
    [server] = options.server_configs
    assert server["section"] == "unix_http_server" and server["file"] == str(tmp_path / "supervisor.sock")

    groups = {group.name: group for group in options.process_group_configs}
    assert set(groups) == {"scheduler", "executor"}
    assert [p.name for p in groups["scheduler"].process_configs] == ["scheduler"]
    assert [p.name for p in groups["executor"].process_configs] == ["executor-0", "executor-1"]
    assert groups["scheduler"].priority < groups["executor"].priority

    # executors get this long for their tasks in hand after SIGTERM
    executor_grace = ExecutorConfig().shutdown_grace.total_seconds()
    for group in groups.values():
        for process in group.process_configs:
            assert process.command == f"/opt/latigo/bin/latigo {group.name}"
            assert process.directory == str(tmp_path)
            assert process.autorestart is RestartUnconditionally
            assert process.stopsignal.name == "SIGTERM"
            assert process.stopwaitsecs > executor_grace
            assert process.redirect_stderr
            assert (process.stdout_logfile, process.stdout_logfile_maxbytes) == ("/dev/stdout", 0)

    client = ClientOptions()
    client.realize(args=["-c", str(SUPERVISORD_CONF)])
    assert client.serverurl == f"unix://{tmp_path / 'supervisor.sock'}"


def test_supervisord_conf_refuses_to_start_without_its_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for variable in SUPERVISOR_VARIABLES:
        monkeypatch.setenv(variable, str(tmp_path))
    monkeypatch.delenv("SUPERVISOR_LATIGO_BIN")
    options = ServerOptions()
    options.stderr = io.StringIO()  # where supervisor writes its usage errors
    with pytest.raises(SystemExit):
        options.realize(args=["-c", str(SUPERVISORD_CONF)])
    assert "('ENV_SUPERVISOR_LATIGO_BIN') which cannot be expanded" in options.stderr.getvalue()


# ---------------------------------------------------------------- docker-compose.yml: the stack around Latigo


@functools.cache
def _compose_config() -> str:
    result = _run([_tool("docker-compose"), "-f", str(COMPOSE_FILE), "config"], _compose_env())
    assert result.returncode == 0, result.stderr
    return result.stdout


def _compose_services() -> dict[str, Any]:
    """docker-compose's own view of the file: anchors merged, defaults filled in."""
    return yaml.safe_load(_compose_config())["services"]


def test_compose_publishes_ports_on_this_machine_only_and_pins_images() -> None:
    services = _compose_services()
    assert COMPOSE_SERVICES <= set(services)
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            # docker-compose 1.29 writes published ports as "host_ip:host_port:container_port/proto"
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name} publishes {port!r}"
            published[name] = port
        image = service["image"]
        if "build" not in service:  # pulled, so its tag must be pinned
            repository, _, tag = image.rpartition(":")
            assert repository and tag and tag != "latest", f"{name}: image {image} has no pinned tag"
    assert published["grafana"] == "127.0.0.1:3000:3000/tcp"
    assert published["adminer"] == "127.0.0.1:8080:8080/tcp"


class _Health(BaseHTTPRequestHandler):
    """Answers GET /healthz with the server's ``status``."""

    def do_GET(self) -> None:
        status = self.server.status  # type: ignore[attr-defined]
        self.send_response(status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_compose_healthchecks_call_healthz_and_fail_when_it_does(health_server: ThreadingHTTPServer) -> None:
    services = _compose_services()
    for name in ("latigo-scheduler", "latigo-executor"):
        service = services[name]
        assert service["environment"]["LATIGO_METRICS__PORT"] == str(METRICS_PORT)
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], f"{name}: the image has python, not curl"
        assert f"http://127.0.0.1:{METRICS_PORT}/healthz" in test[3]
    # the one-shot migration has no process to check
    assert "healthcheck" not in services["latigo-migrate"]

    # the check itself, run as Docker runs it, against a /healthz on a free port
    code = services["latigo-executor"]["healthcheck"]["test"][3]

    def check(port: int) -> int:
        probe = code.replace(f":{METRICS_PORT}/", f":{port}/")
        command = [sys.executable, "-c", probe]
        return subprocess.run(command, capture_output=True, timeout=TOOL_TIMEOUT, check=False).returncode

    port = health_server.server_address[1]
    health_server.status = 200  # type: ignore[attr-defined]
    assert check(port) == 0
    health_server.status = 503  # type: ignore[attr-defined]
    assert check(port) != 0
    assert check(free_port()) != 0  # nothing listening


# ---------------------------------------------------------------- Grafana


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _datasources() -> dict[str, dict[str, Any]]:
    """The provisioned data sources by uid."""
    declared = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    by_uid = {source["uid"]: source for source in declared}
    assert len(by_uid) == len(declared), "two provisioned data sources share a uid"
    return by_uid


def _queries(kind: str) -> list[tuple[str, str]]:
    """(where, query) for every query of the dashboard against a data source of ``kind``
    ("influxdb" or "grafana-postgresql-datasource"): panel targets and variables."""
    sources = _datasources()
    dashboard = _dashboard()
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            source = target.get("datasource") or panel["datasource"]
            if sources[source["uid"]]["type"] == kind:
                query = target.get("query") or target["rawSql"]
                found.append((f"panel {panel['title']!r} {target['refId']}", query))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query" and sources[variable["datasource"]["uid"]]["type"] == kind:
            found.append((f"variable {variable['name']}", variable["query"]))
    return found


def test_grafana_provisioning_matches_the_compose_stack() -> None:
    services = _compose_services()
    grafana = services["grafana"]
    mounts = {volume.split(":")[1]: volume for volume in grafana["volumes"]}
    provisioning, dashboards = mounts["/etc/grafana/provisioning"], mounts["/etc/grafana/dashboards"]
    assert provisioning == f"{GRAFANA_DIR / 'provisioning'}:/etc/grafana/provisioning:ro"
    assert dashboards == f"{GRAFANA_DIR / 'dashboards'}:/etc/grafana/dashboards:ro"
    # the dashboard provider reads the mounted folder; the home dashboard is in it
    [provider] = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA_DIR / "dashboards" / Path(home).relative_to("/etc/grafana/dashboards")).is_file()

    # the data sources point at the stack's InfluxDB database and PostgreSQL database
    sources = {source["type"]: source for source in _datasources().values()}
    assert set(sources) == {"influxdb", "grafana-postgresql-datasource"}
    latigo_environment = services["latigo-executor"]["environment"]
    influx = sources["influxdb"]
    assert influx["url"] == latigo_environment["LATIGO_PREDICTIONS__URL"]
    assert influx["jsonData"]["dbName"] == latigo_environment["LATIGO_PREDICTIONS__DATABASE"]
    assert influx["jsonData"]["version"] == "InfluxQL"
    postgres = sources["grafana-postgresql-datasource"]
    assert postgres["url"] == "postgres:5432"
    assert postgres["jsonData"]["database"] == services["postgres"]["environment"]["POSTGRES_DB"]
    # Grafana logs in as the read-only role the init script creates, with the password
    # both containers get from the same variable
    assert re.search(rf"CREATE ROLE {postgres['user']} LOGIN", GRAFANA_READER_SCRIPT.read_text())
    assert postgres["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD"
    password = grafana["environment"]["GRAFANA_DB_PASSWORD"]
    assert password == services["postgres"]["environment"]["GRAFANA_DB_PASSWORD"]
    initdb = [volume for volume in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in volume]
    assert initdb == [f"{GRAFANA_READER_SCRIPT.parent}:/docker-entrypoint-initdb.d:ro"]
    assert os.access(GRAFANA_READER_SCRIPT, os.X_OK)


def test_dashboard_uses_only_provisioned_datasources() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] == "Latigo predictions"
    sources = _datasources()
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(panel_ids)) == len(panel_ids)
    references = [variable["datasource"] for variable in dashboard["templating"]["list"]]
    for panel in dashboard["panels"]:
        references.append(panel["datasource"])
        references += [target["datasource"] for target in panel["targets"] if "datasource" in target]
    assert references
    for reference in references:
        assert reference["uid"] in sources, f"the dashboard uses {reference['uid']}, not a provisioned source"
        assert reference["type"] == sources[reference["uid"]]["type"]


def test_dashboard_influxql_reads_what_latigo_writes() -> None:
    queries = _queries("influxdb")
    measurements = set()
    for where, query in queries:
        named = re.findall(r'FROM\s+"([^"]+)"', query)
        assert named, f"{where}: no measurement in {query}"
        unknown = set(named) - ANOMALY_GROUPS
        assert not unknown, f"{where}: measurements {unknown} are none Latigo writes"
        measurements |= set(named)
        # gordo-client's layout, as latigo.providers.predictions.influx writes it
        assert f'"{MACHINE_TAG}"' in query, f"{where}: not per {MACHINE_TAG}"
        if query.startswith("SELECT"):
            assert f'("{VALUE_FIELD}")' in query, f"{where}: reads no {VALUE_FIELD} field"
    assert {"total-anomaly-scaled", "total-anomaly-confidence"} <= measurements


def test_dashboard_sql_reads_tables_of_the_latigo_schema() -> None:
    queries = _queries("grafana-postgresql-datasource")
    tables = set()
    for where, query in queries:
        named = re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)", query, flags=re.IGNORECASE)
        assert named, f"{where}: no table in {query}"
        unknown = set(named) - set(metadata.tables)
        assert not unknown, f"{where}: tables {unknown} are not in latigo.schema"
        tables |= set(named)
    assert {"ledger", "dead_letters"} <= tables


def _expand_influxql(query: str, machines: list[str]) -> str:
    """What Grafana sends for the dashboard's InfluxQL: its macros and variables filled in."""
    expanded = (
        query.replace("$timeFilter", "time > now() - 24h")
        .replace("$__interval", "1m")
        .replace("/^$machine$/", "/^(" + "|".join(re.escape(machine) for machine in machines) + ")$/")
    )
    assert not re.search(r"\$[\w{]", expanded), f"a Grafana macro the test does not know: {expanded}"
    return expanded


def _expand_sql(query: str, start: datetime, end: datetime) -> str:
    """What Grafana sends for the dashboard's PostgreSQL queries (its macros, for PostgreSQL)."""
    expanded = re.sub(
        r"\$__timeGroupAlias\((\w+),\s*\$__interval\)",
        r'floor(extract(epoch from \1) / 60) * 60 AS "time"',
        query,
    )
    expanded = re.sub(
        r"\$__timeFilter\((\w+)\)",
        rf"\1 BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'",
        expanded,
    )
    assert "$" not in expanded, f"a Grafana macro the test does not know: {expanded}"
    return expanded


@pytest.mark.integration
def test_dashboard_influxql_finds_predictions_latigo_stored(
    influx_server: InfluxServer, influx_database: str
) -> None:
    """Predictions stored by Latigo's own InfluxDB backend, read by every InfluxQL query of
    the dashboard, as Grafana would send it, on a real InfluxDB 1.x."""
    machines = ["pump-1", "compressor-1"]
    end = pd.Timestamp.now(tz="UTC").floor("min")
    index = pd.date_range(end - pd.Timedelta(hours=2), end, freq="10min", tz="UTC")
    config = InfluxPredictionsConfig(type="influx", url=influx_server.url, database=influx_database)
    storage = InfluxPredictions(config)
    try:
        for number, machine in enumerate(machines):
            frame = pd.DataFrame(
                {
                    ("total-anomaly-scaled", ""): [0.5 + number] * len(index),
                    ("total-anomaly-confidence", ""): [0.2 * (number + 1)] * len(index),
                    ("tag-anomaly-scaled", "TAG-1"): [0.1] * len(index),
                },
                index=index,
            )
            frame.columns = pd.MultiIndex.from_tuples(frame.columns)
            storage.store("demo", machine, "1", Window(index[0], index[-1] + timedelta(minutes=10)), frame)
    finally:
        storage.close()

    for where, query in _queries("influxdb"):
        results = influx_server.query(_expand_influxql(query, machines), influx_database)
        series = [item for result in results for item in result.get("series", [])]
        if query.startswith("SHOW TAG VALUES"):
            assert sorted(row[1] for item in series for row in item["values"]) == sorted(machines), where
            continue
        assert sorted(item["tags"][MACHINE_TAG] for item in series) == sorted(machines), where
        for item in series:
            values = [value for row in item["values"] for value in row[1:]]
            assert any(value is not None for value in values), f"{where}: no values"


@pytest.fixture
def grafana_database(postgres_server: PostgresServer) -> Iterator[tuple[str, str]]:
    """A Latigo database prepared as the compose stack prepares it: the database owned by
    a superuser role (the PostgreSQL image's POSTGRES_USER), deploy/postgres/initdb run as
    that role, then Latigo's migrations. Yields (Latigo's URL, grafana_reader's URL)."""
    postgres_server.ensure_running()
    owner, name = f"latigo_{uuid.uuid4().hex[:12]}", f"latigo_grafana_{uuid.uuid4().hex}"
    admin = {"host": "127.0.0.1", "port": postgres_server.port, "user": "postgres", "dbname": "postgres"}
    with psycopg.connect(**admin, autocommit=True) as connection:
        connection.execute(f'CREATE ROLE "{owner}" LOGIN SUPERUSER')
        connection.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    try:
        environment = {
            **os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(postgres_server.port),
            "POSTGRES_USER": owner, "POSTGRES_DB": name, "GRAFANA_DB_PASSWORD": "x'; DROP TABLE x; --",
        }
        result = subprocess.run(
            ["sh", str(GRAFANA_READER_SCRIPT)],
            env=environment, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        base = f"postgresql+psycopg://{{}}@127.0.0.1:{postgres_server.port}/{name}"
        yield base.format(owner), base.format("grafana_reader")
    finally:
        with psycopg.connect(**admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute("DROP ROLE IF EXISTS grafana_reader")
            connection.execute(f'DROP ROLE IF EXISTS "{owner}"')


@pytest.mark.integration
def test_dashboard_sql_runs_as_the_read_only_grafana_role(grafana_database: tuple[str, str]) -> None:
    """The init script's role can run every SQL query of the dashboard on the tables
    Latigo's migrations create after it, and can change nothing."""
    latigo_url, reader_url = grafana_database
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    engine = create_engine(latigo_url)
    try:
        upgrade(engine)  # as Latigo does at start, after the init script
        with engine.begin() as connection:
            connection.execute(ledger.insert(), [
                {"project": "demo", "model": model, "window_start": now - timedelta(hours=hours),
                 "window_end": now - timedelta(hours=hours) + timedelta(minutes=30), "state": state,
                 "revision": "1", "attempts": 1, "created_at": now, "updated_at": now}
                for model, hours, state in (
                    ("pump-1", 2, "done"), ("pump-1", 3, "no_data"), ("compressor-1", 2, "dead")
                )
            ])  # fmt: skip
            connection.execute(dead_letters.insert(), [
                {"task_id": "t", "project": "demo", "model": "compressor-1", "body": b"{}",
                 "reason": "exhausted", "error": "timeout", "attempts": 5, "created_at": now}
            ])  # fmt: skip
    finally:
        engine.dispose()

    reader = sa.create_engine(reader_url)
    try:
        with reader.connect() as connection:
            for where, query in _queries("grafana-postgresql-datasource"):
                statement = sa.text(_expand_sql(query, now - timedelta(days=1), now))
                rows = connection.execute(statement).mappings().all()
                assert rows, f"{where}: no rows"
                if "FROM ledger" in query and "project, model" in query:
                    counts = {r["model"]: (r["done"], r["no_data"], r["dead"], r["windows"]) for r in rows}
                    assert counts == {"pump-1": (1, 1, 0, 2), "compressor-1": (0, 0, 1, 1)}, where
                if query.startswith("SELECT count(*)") and "dead_letters" in query:
                    assert rows[0]["dead letters"] == 1
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                connection.execute(sa.text("DELETE FROM ledger"))
    finally:
        reader.dispose()


# ---------------------------------------------------------------- Kubernetes (deploy/k8s)


def _kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _generator_files(kustomization: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Generated ConfigMap/Secret name -> [(key, file)] of its ``files`` ("key=path" or "path")."""
    generated = {}
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
        entries = []
        for entry in generator.get("files", []):
            key, _, path = entry.rpartition("=")
            entries.append((key or Path(path).name, path))
        generated[generator["name"]] = entries
    return generated


def _listed_files(directory: Path) -> list[str]:
    """Every path a kustomization names: resources, generator files, patch files."""
    kustomization = _kustomization(directory)
    listed = list(kustomization.get("resources", []))
    listed += [path for entries in _generator_files(kustomization).values() for _, path in entries]
    listed += [patch["path"] for patch in kustomization.get("patches", []) if "path" in patch]
    return listed


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def _base_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object of the base, read from its files (no kustomize): its resources,
    and its generated ConfigMaps under their generator names."""
    kustomization = _kustomization(K8S_BASE)
    objects = {}
    for resource in kustomization["resources"]:
        for document in _documents(K8S_BASE / resource):
            objects[(document["kind"], document["metadata"]["name"])] = document
    for name, entries in _generator_files(kustomization).items():
        data = {key: (K8S_BASE / path).read_text() for key, path in entries}
        objects[("ConfigMap", name)] = {"kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    return objects


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod(deployment)
    return pod.get("initContainers", []) + pod["containers"]


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for unit, size in units.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * size)
    return int(quantity)


def _image_user() -> tuple[int, int]:
    instructions = _instructions(REPO / "Dockerfile")
    [user] = [arguments for instruction, arguments in instructions if instruction == "USER"]
    uid, gid = user.split(":")
    return int(uid), int(gid)


def test_every_k8s_file_is_yaml_and_listed_by_its_kustomization() -> None:
    directories = sorted(path.parent for path in K8S_DIR.rglob("kustomization.yaml"))
    assert [directory.relative_to(K8S_DIR).as_posix() for directory in directories] == sorted(K8S_BUILDS)
    for directory in directories:
        listed = _listed_files(directory)
        for entry in listed:
            target = (directory / entry).resolve()
            assert target.exists(), f"{directory / 'kustomization.yaml'} lists {entry}, which does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").is_file(), f"{entry}: no kustomization.yaml"
        # and no file lies there unused (a manifest forgotten in the list is never applied)
        present = {path.name for path in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert present == {entry for entry in listed if (directory / entry).is_file()}, directory
        generated = _generator_files(_kustomization(directory))
        config_files = {path for entries in generated.values() for _, path in entries}
        for name in present:
            documents = _documents(directory / name)
            assert documents, f"{directory / name} is empty"
            if name in config_files:
                continue
            for document in documents:
                where = directory / name
                assert {"apiVersion", "kind", "metadata"} <= set(document), f"{where}: not a manifest"
                assert document["metadata"].get("name"), f"{where}: a {document['kind']} without a name"


def test_k8s_base_objects_refer_to_each_other() -> None:
    objects = _base_objects()
    deployments = {name: item for (kind, name), item in objects.items() if kind == "Deployment"}
    assert set(deployments) == {"latigo-scheduler", "latigo-executor"}
    secret = objects[("Secret", "latigo")]
    for name, deployment in deployments.items():
        pod = _pod(deployment)
        # the selector selects the pod template
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert ("ServiceAccount", pod["serviceAccountName"]) in objects, name
        for volume in pod["volumes"]:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in objects, f"{name}: no ConfigMap {volume}"
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in objects, f"{name}: no Secret {volume}"
        for container in _containers(deployment):
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    where = f"{name}: {variable['name']}"
                    assert ("Secret", reference["name"]) in objects, f"{where}: no such Secret"
                    assert reference["key"] in secret["stringData"], f"{where}: no such key"
                reference = variable.get("valueFrom", {}).get("configMapKeyRef")
                if reference:
                    assert reference["key"] in objects[("ConfigMap", reference["name"])]["data"], name

    executor_labels = deployments["latigo-executor"]["spec"]["template"]["metadata"]["labels"]
    hpa = objects[("HorizontalPodAutoscaler", "latigo-executor")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "latigo-executor"}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    pdb = objects[("PodDisruptionBudget", "latigo-executor")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= executor_labels.items()

    # the metrics Service selects both kinds of pod, on their metrics port, for Prometheus
    service = objects[("Service", "latigo-metrics")]
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (METRICS_PORT, "metrics")
    assert service["spec"]["publishNotReadyAddresses"] is True  # scraped when it matters most
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_deployments_run_one_latigo_role_each_with_probes() -> None:
    objects = _base_objects()
    scheduler = objects[("Deployment", "latigo-scheduler")]
    executor = objects[("Deployment", "latigo-executor")]
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"]["type"] == "Recreate"
    assert executor["spec"]["replicas"] == 2
    # Kubernetes waits longer than the executor gives its tasks in hand after SIGTERM
    grace = ExecutorConfig().shutdown_grace.total_seconds()
    assert _pod(executor)["terminationGracePeriodSeconds"] > grace

    environments = []
    for deployment, role in ((scheduler, "scheduler"), (executor, "executor")):
        pod = _pod(deployment)
        [init] = pod["initContainers"]
        assert init["command"] == ["latigo", "db", "upgrade"]
        [container] = pod["containers"]
        # one process per container, not the image's supervisord
        assert container["command"] == ["latigo", role]
        [port] = container["ports"]
        assert (port["name"], port["containerPort"]) == ("metrics", METRICS_PORT)
        probes = (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"))
        for probe, path in probes:
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{role} {probe}"
            assert get["port"] in ("metrics", METRICS_PORT), f"{role} {probe}"
        for one in _containers(deployment):
            assert one["image"] == "latigo"  # the kustomization's images: entry sets the tag
            environment = {variable["name"]: variable for variable in one["env"]}
            assert environment["LATIGO_METRICS__PORT"]["value"] == str(METRICS_PORT)
            # LATIGO_CONFIG names the config file in the mounted ConfigMap
            config_path = Path(environment["LATIGO_CONFIG"]["value"])
            [mount] = [item for item in one["volumeMounts"] if item["mountPath"] == str(config_path.parent)]
            [volume] = [volume for volume in pod["volumes"] if volume["name"] == mount["name"]]
            assert config_path.name in objects[("ConfigMap", volume["configMap"]["name"])]["data"]
            environments.append(one["env"])
    # every container of both Deployments is configured alike
    assert all(environment == environments[0] for environment in environments)


def test_k8s_pods_run_unprivileged_within_limits() -> None:
    objects = _base_objects()
    uid, gid = _image_user()
    for name in ("latigo-scheduler", "latigo-executor"):
        deployment = objects[("Deployment", name)]
        pod = _pod(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
        assert pod["automountServiceAccountToken"] is False
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in _containers(deployment):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, f"{name}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, f"{name}/{container['name']}"
            assert context["capabilities"]["drop"] == ["ALL"], f"{name}/{container['name']}"
            # the one writable place: /tmp, an emptyDir
            [tmp] = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]]
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
            assert _bytes(resources["requests"]["memory"]) <= _bytes(resources["limits"]["memory"])
    # the two pods are set up alike (scheduler.yaml and executor.yaml repeat each other)
    scheduler = _pod(objects[("Deployment", "latigo-scheduler")])
    executor = _pod(objects[("Deployment", "latigo-executor")])
    for key in ("securityContext", "volumes", "serviceAccountName"):
        assert scheduler[key] == executor[key], key
    # the executor's steady state is about 300 MB: requested, and limited not far above
    [container] = executor["containers"]
    assert 300 * 10**6 <= _bytes(container["resources"]["requests"]["memory"])
    assert _bytes(container["resources"]["limits"]["memory"]) <= 512 * 2**20


def test_k8s_secret_holds_placeholders_only() -> None:
    secret = _base_objects()[("Secret", "latigo")]
    assert "data" not in secret, "base64 data hides what a value is: use stringData placeholders"
    for key, value in secret["stringData"].items():
        assert SECRET_PLACEHOLDER in value, f"Secret key {key}: {value!r} is not a placeholder"
    # and no secret sits in a config file (they come from the Secret, as variables)
    for directory in (K8S_DIR / build for build in K8S_BUILDS):
        for entries in _generator_files(_kustomization(directory)).values():
            for _, path in entries:
                document = yaml.safe_load((directory / path).read_text())
                assert "database" not in document, f"{directory / path}: database.url belongs in the Secret"
                text = json.dumps(document)
                for key in ("password", "client_secret", "connection_string"):
                    assert f'"{key}"' not in text, f"{directory / path}: {key} belongs in the Secret"


@functools.cache
def _kustomized(build: str) -> str:
    result = _run([_tool("kubectl", "KUBECTL"), "kustomize", str(K8S_DIR / build)])
    assert result.returncode == 0, f"kubectl kustomize {build}:\n{result.stderr}"
    return result.stdout


def _kustomize(build: str) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` renders for a kustomization under deploy/k8s."""
    return [document for document in yaml.safe_load_all(_kustomized(build)) if document]


@pytest.mark.parametrize("build", K8S_BUILDS)
def test_k8s_build_renders_and_passes_kubernetes_schemas(build: str, tmp_path: Path) -> None:
    documents = _kustomize(build)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(documents))
    validator = _tool("kubernetes-validate", "KUBERNETES_VALIDATE")
    for version in K8S_VERSIONS:
        # --strict: an unknown field (a typo) is an error, not ignored
        result = _run([validator, "--strict", "--quiet", "--kubernetes-version", version, str(rendered)])
        assert result.returncode == 0, f"{build}, Kubernetes {version}:\n{result.stdout}{result.stderr}"

    objects = {(document["kind"], document["metadata"]["name"]): document for document in documents}
    # the generated ConfigMap's hashed name is the one the Deployments mount
    config_maps = {name for kind, name in objects if kind == "ConfigMap"}
    for (kind, name), item in objects.items():
        if kind == "Deployment":
            for volume in _pod(item)["volumes"]:
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps, f"{build}: {name}: no such ConfigMap"
            for container in _containers(item):
                image = container["image"]
                assert re.fullmatch(r"[^:@]+:[\w.-]+", image), f"{build}: {name}: unpinned {image}"
    if build == "overlays/production":
        assert ("Secret", "latigo") not in objects, "the real Secret comes from the secret manager"
        namespaced = [document for document in documents if document["kind"] != "Namespace"]
        assert {document["metadata"].get("namespace") for document in namespaced} == {"latigo"}
        hpa = objects[("HorizontalPodAutoscaler", "latigo-executor")]
        assert hpa["spec"]["minReplicas"] <= objects[("Deployment", "latigo-executor")]["spec"]["replicas"]
        assert objects[("Deployment", "latigo-scheduler")]["spec"]["replicas"] == 1


@pytest.mark.parametrize("build", K8S_BUILDS)
def test_k8s_latigo_config_loads_with_the_deployments_variables(
    build: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The config file of the rendered ConfigMap, with the variables the Deployments set
    (secret references given the base Secret's placeholders), is a configuration Latigo
    accepts, and the variables land where they should."""
    documents = _kustomize(build)
    placeholders = _base_objects()[("Secret", "latigo")]["stringData"]
    config_maps = {item["metadata"]["name"]: item for item in documents if item["kind"] == "ConfigMap"}
    for deployment in [document for document in documents if document["kind"] == "Deployment"]:
        name = deployment["metadata"]["name"]
        pod = _pod(deployment)
        for container in _containers(deployment):
            for variable in [key for key in os.environ if key.startswith("LATIGO_")]:
                monkeypatch.delenv(variable)
            environment = {}
            for variable in container["env"]:
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                value = placeholders[reference["key"]] if reference else variable["value"]
                environment[variable["name"]] = value
            # the file where the container finds it: LATIGO_CONFIG inside the mounted ConfigMap
            config_path = Path(environment["LATIGO_CONFIG"])
            mounts = container["volumeMounts"]
            [mount] = [item for item in mounts if item["mountPath"] == str(config_path.parent)]
            [volume] = [volume for volume in pod["volumes"] if volume["name"] == mount["name"]]
            config_file = tmp_path / config_path.name
            config_file.write_text(config_maps[volume["configMap"]["name"]]["data"][config_path.name])
            environment["LATIGO_CONFIG"] = str(config_file)
            for variable, value in environment.items():
                monkeypatch.setenv(variable, value)
            try:
                config = load_config(require_file=True)
            except ConfigError as error:
                pytest.fail(f"{build}: {name}/{container['name']}: Latigo rejects its configuration: {error}")
            assert config.database.url == placeholders["database-url"]
            assert config.database.url.startswith("postgresql+psycopg://")
            assert config.models.auth is not None
            client_secret = config.models.auth.client_secret.get_secret_value()
            assert client_secret == placeholders["models-auth-client-secret"]
            assert config.sensors.password.get_secret_value() == placeholders["sensors-password"]
            assert config.predictions.password.get_secret_value() == placeholders["predictions-password"]
            assert config.metrics.port == METRICS_PORT
            # the kubelet's probes and Prometheus reach the pod at its IP, not at 127.0.0.1
            assert config.metrics.host == "0.0.0.0"
            # several pods share the database: the SQL queue must be PostgreSQL's, never SQLite
            assert config.queue.type != "sql" or config.database.url.startswith("postgresql")
            if name == "latigo-executor":
                assert pod["terminationGracePeriodSeconds"] > config.executor.shutdown_grace.total_seconds()
