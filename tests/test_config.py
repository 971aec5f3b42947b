"""The configuration schema: defaults, the file, LATIGO_* overrides, and clear errors."""

from datetime import timedelta

import pytest

from latigo.config import ConfigError, InfluxSensorsConfig, default_document, load_config

EXAMPLE = """
database:
  url: sqlite:///example.db
schedule:
  interval: 10m
  delay: 90s
models:
  base_url: http://gordo:5555
  projects: [p1, p2]
sensors:
  type: influx
  url: http://influx:8086
  database: plant
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("LATIGO_"):
            monkeypatch.delenv(name)


def write(tmp_path, text):
    path = tmp_path / "latigo.yaml"
    path.write_text(text)
    return path


def test_every_key_has_a_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local_config.yaml here
    config = load_config()
    assert config.schedule.interval == timedelta(minutes=30)
    assert config.sensors.type == "sql" and config.predictions.type == "sql" and config.queue.type == "sql"
    assert config.database.url.startswith("sqlite")


def test_the_file_is_read_and_durations_parsed(tmp_path):
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.schedule.interval == timedelta(minutes=10)
    assert config.schedule.delay == timedelta(seconds=90)
    assert config.models.projects == ["p1", "p2"]
    assert isinstance(config.sensors, InfluxSensorsConfig) and config.sensors.database == "plant"


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LATIGO_SCHEDULE__INTERVAL", "1h")
    monkeypatch.setenv("LATIGO_MODELS__PROJECTS", '["only"]')
    monkeypatch.setenv("LATIGO_SENSORS__DATABASE", "other")
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.schedule.interval == timedelta(hours=1)
    assert config.schedule.delay == timedelta(seconds=90)  # untouched keys keep the file's value
    assert config.models.projects == ["only"]
    assert config.sensors.database == "other" and config.sensors.url == "http://influx:8086"


@pytest.mark.parametrize(
    "text, key",
    [
        ("schedule:\n  interval: banana\n", "schedule.interval"),
        ("schedule:\n  interval: 0s\n", "interval must be positive"),
        ("schedule:\n  intreval: 10m\n", "schedule.intreval: Extra inputs are not permitted"),
        ("sensors:\n  type: cassandra\n", "sensors: Input tag 'cassandra'"),
        ("predictions:\n  type: csv\n", "predictions: Input tag 'csv'"),
        ("models:\n  type: mlflow\n", "models.type"),
        ("models:\n  read_timeout: -1\n", "models.read_timeout"),
        ("executor:\n  concurrency: 0\n", "executor.concurrency"),
        ("queue:\n  lease: 1m\n", "queue.lease"),
        ("models:\n  read_timeout: 900\n", "must be shorter than executor.task_deadline"),
        ("queue:\n  type: eventhub\n", "connection_string is required"),
        ("queue:\n  type: kafka\n  options: {max.poll.interval.ms: '10000'}\n", "max.poll.interval.ms"),
        ("storage: {}\n", "storage: Extra inputs are not permitted"),
        ("- a list\n", "top level must be a mapping"),
        ("schedule: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_stop_with_the_key_named(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(")", r"\)")):
        load_config(write(tmp_path, text))


def test_a_misspelt_environment_variable_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LATIGO_DATABSE__URL", "postgresql://x")
    with pytest.raises(ConfigError, match="LATIGO_DATABSE__URL"):
        load_config(write(tmp_path, ""))
    monkeypatch.delenv("LATIGO_DATABSE__URL")
    monkeypatch.setenv("LATIGO_DATABASE__URLL", "postgresql://x")
    with pytest.raises(ConfigError, match="database.urll"):
        load_config(write(tmp_path, ""))


def test_a_named_file_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.yaml")


def test_the_defaults_document_loads_back(tmp_path):
    import yaml

    assert load_config(write(tmp_path, yaml.safe_dump(default_document()))) == load_config(write(tmp_path, ""))
