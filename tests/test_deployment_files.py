"""The deployment files, checked without a Docker engine: the Dockerfiles pass hadolint,
docker-compose.yml passes docker-compose's own validation and configures Latigo with keys
Latigo accepts, .dockerignore lets through what the Dockerfiles copy and nothing private,
and supervisord.conf is read by supervisor's own parser as intended.

hadolint and docker-compose are required, not optional: a missing one fails its test
instead of skipping it, because CI installs both (see the Makefile's test-deps) and a
skipped lint is an unchecked file. hadolint is taken from $HADOLINT, else from PATH.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ClientOptions, ServerOptions

from latigo.config import ConfigError, ExecutorConfig, load_config

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = ("Dockerfile", "docker/gordo.Dockerfile")
COMPOSE_FILE = REPO / "docker-compose.yml"
SUPERVISORD_CONF = REPO / "supervisord.conf"
# the environment variables supervisord.conf expands, with values for a parse here
SUPERVISOR_VARIABLES = ("SUPERVISOR_RUN_DIR", "SUPERVISOR_LATIGO_BIN", "SUPERVISOR_LATIGO_DIR")
# limit for one run of a linter or validator, seconds
TOOL_TIMEOUT = 60


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
    assert set(services) == {
        "postgres", "influxdb", "gordo", "latigo-migrate", "latigo-scheduler", "latigo-executor",
    }
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
