"""The configuration schema: defaults, the file, LATIGO_* overrides, and clear errors."""

from datetime import timedelta

import pytest

from latigo.config import CONFIG_PATH_VARIABLE, ConfigError, InfluxSensorsConfig, default_document, load_config

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
        ("schedule:\n  interval: 0s\n", "schedule.interval: must be at least 1s"),
        ("schedule:\n  intreval: 10m\n", "schedule.intreval: unknown key; schedule takes interval, anchor"),
        ("sensors:\n  type: cassandra\n", "sensors.type: 'cassandra' is not one of sql, influx"),
        ("predictions:\n  type: csv\n", "predictions.type: 'csv' is not one of sql, influx"),
        ("models:\n  type: mlflow\n", "models.type"),
        ("models:\n  read_timeout: -1\n", "models.read_timeout"),
        ("executor:\n  concurrency: 0\n", "executor.concurrency"),
        ("queue:\n  lease: 1m\n", "queue.lease"),
        ("models:\n  read_timeout: 900\n", "must be shorter than executor.task_deadline"),
        ("queue:\n  type: eventhub\n", "connection_string is required"),
        ("queue:\n  type: kafka\n  options: {max.poll.interval.ms: '10000'}\n", "max.poll.interval.ms"),
        ("storage: {}\n", "'storage': not a section; the sections are database, schedule"),
        ("- a list\n", "top level must be a mapping"),
        ("schedule: [unclosed\n", "not valid YAML"),
        ("predictions:\n  outputs: [total-anomaly]\n", "predictions.outputs: .*unknown output group 'total-anomaly'"),
        ("predictions:\n  outputs: []\n", "predictions.outputs: .*an empty list would store nothing"),
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


# a distinctive secret: it must never appear in a message
SECRET = "Hush-7rT2-never-printed"


@pytest.mark.parametrize(
    "text, expected",
    [
        # database URLs: readable by SQLAlchemy, of a supported backend and installed driver
        ("database: {url: 'not a url'}\n", "database.url: not a URL SQLAlchemy can read"),
        ("database: {url: 'mysql://u:p@h/db'}\n", "database.url: Latigo runs on sqlite and postgresql+psycopg, not 'mysql'"),
        ("database: {url: 'postgresql+psycopg2://h/db'}\n", "database.url: Latigo uses the psycopg driver"),
        ("database: {url: 'nosuch://h/db'}\n", "database.url: Latigo runs on sqlite and postgresql+psycopg"),
        ("database: {url: 'sqlite://host/x.db'}\n", "database.url: not a sqlite URL SQLAlchemy can connect with"),
        ("database: {url: 'postgresql+psycopg://h:99999/db'}\n", "database.url: not a postgresql URL"),
        # durations that overflow, are not finite, or are too long to be useful
        ("schedule: {tick: 99999999999999w}\n", "schedule.tick: longer than 3653d (10 years)"),
        ("schedule: {catch_up: 1e9d}\n", "schedule.catch_up: longer than 3653d"),
        ("schedule: {delay: infm}\n", "schedule.delay: not a finite duration"),
        ("schedule: {delay: .inf}\n", "schedule.delay: not a finite duration"),
        ("schedule: {delay: .nan}\n", "schedule.delay: not a finite duration"),
        ("schedule: {delay: nan}\n", "schedule.delay: not a finite duration"),
        ("schedule: {leader_ttl: 2e12}\n", "schedule.leader_ttl: longer than 3653d"),
        ("schedule: {delay: P9999999999D}\n", "schedule.delay: not a duration: write 30s, 30m, 6h, 7d, 1w, seconds, or ISO 8601"),
        ("schedule: {delay: banana}\n", "schedule.delay: not a duration: write 30s, 30m, 6h, 7d, 1w, seconds, or ISO 8601"),
        ("schedule: {delay: true}\n", "schedule.delay: not a duration"),
        # zero or negative where that makes no sense
        ("queue: {poll_interval: 0s}\n", "queue.poll_interval: must be longer than 0s"),
        ("queue: {type: kafka, poll_interval: -1s}\n", "queue.poll_interval: must be longer than 0s"),
        ("queue: {type: eventhub, connection_string: x, poll_interval: 0}\n", "queue.poll_interval: must be longer than 0s"),
        ("schedule: {tick: 0s}\n", "schedule.tick: must be longer than 0s"),
        ("schedule: {discovery_ttl: 0s}\n", "schedule.discovery_ttl: must be longer than 0s"),
        ("schedule: {leader_ttl: -1m}\n", "schedule.leader_ttl: must be longer than 0s"),
        ("models: {metadata_ttl: -1s}\n", "models.metadata_ttl: must be longer than 0s"),
        ("queue: {lease: 0s}\n", "queue.lease: must be longer than 0s"),
        ("executor: {retry_base: -1s}\n", "executor.retry_base: must not be negative"),
        ("executor: {retry_max: -1s}\n", "executor.retry_max: must not be negative"),
        ("executor: {shutdown_grace: -1s}\n", "executor.shutdown_grace: must not be negative"),
        ("schedule: {delay: -1s}\n", "schedule.delay: must not be negative"),
        ("schedule: {catch_up: -1s}\n", "schedule.catch_up: must not be negative"),
        ("schedule: {initial_backfill: -1d}\n", "schedule.initial_backfill: must not be negative"),
        ("executor: {retry_base: 1m, retry_max: 10s}\n", "executor.retry_max (10s) must not be below executor.retry_base (1m)"),
        ("schedule: {tick: 5m, leader_ttl: 1m}\n", "schedule.leader_ttl (1m) must be longer than schedule.tick (5m)"),
        # timeouts: finite, positive, bounded
        ("models: {read_timeout: .inf}\n", "models.read_timeout: Input should be a finite number"),
        ("models: {connect_timeout: .nan}\n", "models.connect_timeout: Input should be a finite number"),
        ("models: {read_timeout: 0}\n", "models.read_timeout: Input should be greater than 0"),
        ("sensors: {type: influx, read_timeout: 1e9}\n", "sensors.read_timeout: Input should be less than or equal to 3600"),
        # URLs of HTTP servers
        ("models: {base_url: not a url}\n", "models.base_url: must be an http:// or https:// URL with a host"),
        ("models: {base_url: 'ftp://gordo'}\n", "models.base_url: must be an http:// or https:// URL with a host"),
        ("models: {base_url: 'http://'}\n", "models.base_url: must be an http:// or https:// URL with a host"),
        ("models: {base_url: 'http://gordo:99999'}\n", "models.base_url: not a URL"),
        ("predictions: {type: influx, url: influx:8086}\n", "predictions.url: must be an http:// or https:// URL"),
        # messages that name the key
        ("queue: {type: kafka, options: {max.poll.interval.ms: soon}}\n", "queue.options: max.poll.interval.ms must be a whole number"),
        ("queue: {type: kafka, lease: 20m}\n", "queue.lease: a key of queue.type sql, not of kafka"),
        ("sensors: {type: [influx]}\n", "sensors.type: must be one of sql, influx"),
        ("sensors: 5\n", "sensors: must be a mapping of keys (a section), not a number"),
        ("schedule: [a, b]\n", "schedule: must be a mapping of keys (a section), not a list"),
        ("executor: {max_message_size: 1 zork}\n", "executor.max_message_size: not a size"),
        ("executor: {concurrency: 100000}\n", "executor.concurrency: Input should be less than or equal to 1024"),
        ("schedule: {anchor: 0001-01-01T00:00:00+01:00}\n", "schedule.anchor: must lie between the years 1900 and 2200"),
        ("_env_prefix: OTHER_\n", "'_env_prefix': not a section"),  # not a pydantic-settings option either
        ("1: 2\n", "'1': not a section"),
        # YAML that cannot be read
        ("schedule:\n  tick: 30s\nschedule:\n  tick: 1m\n", "line 3, column 1: not valid YAML: schedule appears twice (first on line 1)"),
        ("schedule:\n  tick: 30s\n  delay: 1m\n  tick: 1m\n", "line 4, column 3: not valid YAML: schedule.tick appears twice (first on line 2)"),
        ("models: {projects: [a], auth: {client_id: a, client_id: b}}\n", "models.auth.client_id appears twice"),
        ("schedule: {anchor: 2020-13-45}\n", "line 1, column 20: not valid YAML: this value cannot be read as timestamp"),
        ("schedule: " + "[" * 500 + "]" * 500 + "\n", "not valid YAML: nested deeper than 20 levels"),
        ("schedule: &a {x: *a}\n", "nested deeper than 20 levels (through aliases)"),
        ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
            f"{x}: &{x} [{', '.join([f'*{p}'] * 10)}]\n" for p, x in zip("abcdefgh", "bcdefghi")
        ), "expands to more than 10000 values"),
    ],
)
def test_values_that_would_fail_later_are_refused_naming_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert expected in str(raised.value)


def test_a_merge_key_may_repeat_keys_it_merges(tmp_path):
    config = load_config(write(tmp_path, "schedule:\n  <<: {tick: 10s, delay: 1m}\n  tick: 20s\n"))
    assert config.schedule.tick == timedelta(seconds=20) and config.schedule.delay == timedelta(minutes=1)


def test_an_empty_section_is_its_defaults(tmp_path):
    assert load_config(write(tmp_path, "schedule:\n  # tick: 30s\nqueue:\n")) == load_config(write(tmp_path, ""))


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latigo.yaml"
    path.write_bytes(b"schedule:\n  tick: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"latigo.yaml: not UTF-8 text"):
        load_config(path)


@pytest.mark.parametrize("value, seconds", [("30", 30), ("2.5", 2.5), ("90s", 90), (" 1 m ", 60), ("PT1M", 60)])
def test_bare_seconds_in_variables_as_in_yaml(tmp_path, monkeypatch, value, seconds):
    monkeypatch.setenv("LATIGO_SCHEDULE__TICK", value)
    assert load_config(write(tmp_path, "")).schedule.tick == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("LATIGO_SCHEDULE__TICK", "1h30", "schedule.tick: not a duration: write 30s, 30m, 6h, 7d, 1w, seconds, or ISO 8601"),
        ("LATIGO_SCHEDULE__TICK", "1e9d", "schedule.tick: longer than 3653d (10 years), the longest duration accepted (set by LATIGO_SCHEDULE__TICK)"),
        ("LATIGO_MODELS__PROJECTS", "[a, b", "LATIGO_MODELS__PROJECTS: not JSON"),
        ("LATIGO_QUEUE", "kafka", "LATIGO_QUEUE: not JSON"),
        ("LATIGO_MODELS__AUTH", "{", "LATIGO_MODELS__AUTH: not JSON"),
        ("LATIGO_SENSORS__TYPE", "influxx", "sensors.type: 'influxx' is not one of sql, influx (set by LATIGO_SENSORS__TYPE)"),
        ("latigo_databse__url", "sqlite://", "unknown configuration variables: latigo_databse__url"),
    ],
)
def test_bad_variables_are_named(tmp_path, monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, ""))
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        # the snippet PyYAML would quote holds the secret
        f"models:\n  auth:\n    authority: https://login.example\n    client_secret: {SECRET}: x\n",
        f"models:\n  auth: {{authority: https://login.example, client_secret: '{SECRET}, client_id: c}}\n",
        f"models:\n  auth:\n    client_secret: >\n      {SECRET}\n      x: [\n",
        f"database:\n  url: postgresql+psycopg://latigo:{SECRET}@db/latigo\n  url: again\n",
        f"sensors:\n  type: influx\n  url: http://reader:{SECRET}@influx:8086 : x\n",
        f"queue:\n  type: kafka\n  options: {{sasl.password: {SECRET}}}\n  lease: 1m\n",
        # the secret where a secret does not go, with the secret where it does
        f"sensors: {{type: '{SECRET}', password: '{SECRET}'}}\n",
        f"database: {{url: 'mysql://u:{SECRET}@h/db'}}\n",
        f"database: {{url: 'junk{SECRET}'}}\nmodels: {{auth: {{client_secret: '{SECRET}'}}}}\n",
    ],
)
def test_no_message_quotes_a_secret(tmp_path, text):
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert SECRET not in str(raised.value) and "Hush" not in str(raised.value)


def test_no_message_quotes_a_secret_from_a_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LATIGO_QUEUE__CONNECTION_STRING", SECRET)
    monkeypatch.setenv("LATIGO_QUEUE__TYPE", SECRET)
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, ""))
    assert SECRET not in str(raised.value) and "queue.type: '***' is not one of" in str(raised.value)


def test_config_show_masks_every_secret(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from latigo.cli import main

    path = write(tmp_path, f"""
database: {{url: 'postgresql+psycopg://latigo:{SECRET}@db:5432/latigo'}}
models:
  base_url: https://gordo:{SECRET}@gordo.example
  auth: {{authority: https://login.example/t, client_id: c, client_secret: {SECRET}, scope: s}}
sensors: {{type: influx, url: 'http://reader:{SECRET}@influx:8086', password: {SECRET}}}
queue: {{type: kafka, connection_string: {SECRET}, options: {{sasl.password: {SECRET}}}}}
""")
    result = CliRunner().invoke(main, ["--config", str(path), "config", "show"], env={CONFIG_PATH_VARIABLE: None})
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    shown = __import__("yaml").safe_load(result.stdout)
    assert shown["database"]["url"] == "postgresql+psycopg://latigo:***@db:5432/latigo"
    assert shown["sensors"]["url"] == "http://reader:***@influx:8086"
    assert shown["queue"]["options"]["sasl.password"] == "**********"


def test_config_check_exits_2_with_the_message(tmp_path):
    from click.testing import CliRunner

    from latigo.cli import main

    path = write(tmp_path, "schedule: {tick: 99999999999999w}\n")
    result = CliRunner().invoke(main, ["--config", str(path), "config", "check"], env={CONFIG_PATH_VARIABLE: None})
    assert result.exit_code == 2
    assert "schedule.tick: longer than 3653d" in result.stderr and "Traceback" not in result.output


def test_durations_are_written_back_exactly(tmp_path):
    import yaml

    from latigo.config import dump_config

    config = load_config(write(tmp_path, "queue: {poll_interval: 1.5s}\nschedule: {delay: 90s, catch_up: 14d}\n"))
    shown = yaml.safe_load(dump_config(config))
    assert (shown["queue"]["poll_interval"], shown["schedule"]["delay"], shown["schedule"]["catch_up"]) == (
        "1.5s", "90s", "2w"
    )
    assert load_config(write(tmp_path, dump_config(config))) == config


def test_the_config_commands_leave_no_variable_behind(tmp_path):
    """`--config` exports LATIGO_CONFIG for the children of `latigo run`; in a test process it
    must not outlive the command, or every later subprocess reads that file."""
    import os

    from click.testing import CliRunner

    from latigo.cli import main

    before = os.environ.get(CONFIG_PATH_VARIABLE)
    path = tmp_path / "c.yaml"
    path.write_text("schedule: {tick: 30s}\n")
    CliRunner().invoke(main, ["--config", str(path), "config", "check"], env={CONFIG_PATH_VARIABLE: None})
    assert os.environ.get(CONFIG_PATH_VARIABLE) == before
