"""The configuration check's contract, fuzzed: whatever the YAML file and the LATIGO_*
variables hold, `latigo config check` exits 0 or 2; on 2 it prints a message naming a key,
a variable or the file, never a traceback; and no output ever holds a secret.

Hypothesis mutates valid configurations (every queue type, secrets in every secret key,
in URL passwords and in variables): values of the wrong type, huge, negative and
non-finite numbers and durations, unknown keys and sections, bad backend types, secrets
where secrets do not go, broken YAML, duplicate keys, deep nesting, alias bombs, bytes that
are not UTF-8, and variables with junk. Each case runs in-process through the same code
path as the command (click's runner, `latigo config check`, then `config show` when it
passed); a sample also runs as the real `latigo config check` process.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latigo.cli import main
from latigo.config import BACKENDS, Config
from latigo.config.schema import models_in

# the secret put in every secret place of the base configurations: no output may hold it
SECRET = "Fz8-q0uiet-S3CRET-w4lrus"
# a piece of it that no message has any other reason to print
SECRET_CORE = "q0uiet-S3CRET"
# mutated configurations checked in-process (at least 500)
EXAMPLES = 600
# of those, how many are checked again by a real `latigo config check` process
SUBPROCESS_SAMPLE = 20
# limit for one such process, seconds
PROCESS_TIMEOUT = 60
# the sections, one of which (or a variable, or the file) a refusal must name
SECTIONS = tuple(Config.model_fields)

AUTH = {
    "authority": "https://login.microsoftonline.com/tenant",
    "client_id": "latigo",
    "client_secret": SECRET,
    "scope": "api://gordo/.default",
}
BASE = {
    "database": {"url": f"postgresql+psycopg://latigo:{SECRET}@db.example:5432/latigo"},
    "schedule": {"interval": "30m", "delay": "5m", "tick": "30s", "leader_ttl": "2m", "catch_up": "7d"},
    "models": {"base_url": "https://gordo.example", "projects": ["p1", "p2"], "auth": AUTH},
    "sensors": {
        "type": "influx", "url": f"http://reader:{SECRET}@influx.example:8086", "database": "plant",
        "username": "reader", "password": SECRET,
    },
    "predictions": {"type": "influx", "url": "http://influx.example:8086", "username": "writer", "password": SECRET},
    "executor": {"concurrency": 2, "retry_base": "2s", "retry_max": "5m", "task_deadline": "10m"},
    "metrics": {"port": 0},
    "logging": {"level": "INFO"},
}
CONNECTION_STRING = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=latigo;SharedAccessKey={SECRET}"
QUEUES = [
    {"type": "sql", "lease": "15m", "poll_interval": "1s"},
    {"type": "kafka", "connection_string": CONNECTION_STRING, "options": {"sasl.password": SECRET, "linger.ms": "5"}},
    {"type": "eventhub", "connection_string": CONNECTION_STRING, "eventhub_name": "tasks"},
]
# secrets given by variables in some cases, as a deployment's secret references would
SECRET_VARIABLES = {"LATIGO_PREDICTIONS__PASSWORD": SECRET, "LATIGO_MODELS__AUTH__CLIENT_SECRET": SECRET}


def _key_paths() -> list[tuple[str, ...]]:
    """Every key of the schema, backend types' keys included, as paths."""
    paths = []
    for section, field in Config.model_fields.items():
        models = list(BACKENDS.get(section, ())) or models_in(field.annotation)
        for model in models:
            for name, inner in model.model_fields.items():
                paths.append((section, name))
                for nested in models_in(inner.annotation):
                    paths.extend((section, name, key) for key in nested.model_fields)
    paths += [("queue", "options", "max.poll.interval.ms"), ("predictions", "extra_tags", "site")]
    return sorted(set(paths))


KEY_PATHS = _key_paths()
UNKNOWN_PATHS = [("storage",), ("schedule", "intreval"), ("models", "auth", "tenant"), ("_env_prefix",),
                 ("_secrets_dir",), ("queue", "lease2"), ("models", "client_secret")]

WEIRD_TEXT = [
    "99999999999999w", "1e9d", "infm", ".inf", "-.inf", "nan", ".nan", "-5s", "0s", "0", "-1", "1e400", "2e12",
    "PT30M", "P99999999999D", "00:30:00", "30", "2.5", "1.5h", "banana", "", " ", "10y", "1h30", "30 s",
    "mysql://u:p@h/db", "postgresql://x", "postgresql+psycopg2://h/db", "sqlite://host/db", "sqlite:///x.db",
    "not a url", "http://", "ftp://gordo", "http://gordo:99999", "influxx", "kafka", "eventhub", "sql", "rabbitmq",
    "true", "null", "[a, b", "{", "[]", "{}", '["a"]', '{"type": "kafka"}', "1 zork", "64KiB", "9" * 5000,
    SECRET, f"http://u:{SECRET}@h", f"junk{SECRET}", "ab\udcffcd", "\u202e\u0301", "0001-01-01T00:00:00+01:00",
]
ENV_TEXT = [text for text in WEIRD_TEXT if "\x00" not in text]

JUNK = st.one_of(
    st.sampled_from(WEIRD_TEXT).filter(lambda text: "\udcff" not in text),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.lists(st.integers(max_value=10), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
    st.datetimes(timezones=st.just(timezone.utc)),
    st.binary(max_size=4),
)
VARIABLE_NAMES = st.one_of(
    st.sampled_from([
        "LATIGO_" + "__".join(part.upper() for part in path) for path in KEY_PATHS if "." not in path[-1]
    ]),
    st.sampled_from(["LATIGO_QUEUE", "LATIGO_SCHEDULE", "LATIGO_MODELS__AUTH", "LATIGO_NOPE", "latigo_schedule__tick",
                     "LATIGO_SCHEDULE__NOPE", "LATIGO_", "LATIGO___X", "LATIGO_SCHEDULE__TICK__X"]),
)
VARIABLE_VALUES = st.one_of(
    st.sampled_from(ENV_TEXT),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),
    st.builds(lambda value: yaml.safe_dump(value, default_flow_style=True).strip(), st.lists(st.integers(), max_size=3)),
)


def _set(document: dict, path: tuple[str, ...], value: Any) -> None:
    where = document
    for part in path[:-1]:
        if not isinstance(where.get(part), dict):
            where[part] = {}
        where = where[part]
    where[path[-1]] = value


def _delete(document: dict, path: tuple[str, ...]) -> None:
    where = document
    for part in path[:-1]:
        where = where.get(part)
        if not isinstance(where, dict):
            return
    where.pop(path[-1], None)


@st.composite
def document_mutation(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "unknown", "type", "section", "secret"]))
    if kind == "set":
        return kind, (draw(st.sampled_from(KEY_PATHS)), draw(JUNK))
    if kind == "delete":
        return kind, draw(st.sampled_from(KEY_PATHS))
    if kind == "unknown":
        return kind, (draw(st.sampled_from(UNKNOWN_PATHS)), draw(JUNK))
    if kind == "type":
        section = draw(st.sampled_from(["sensors", "predictions", "queue", "models"]))
        return kind, ((section, "type"), draw(st.sampled_from(["sql", "influx", "kafka", "eventhub", "influxx", "", 5])))
    if kind == "section":
        return kind, ((draw(st.sampled_from(SECTIONS)),), draw(JUNK))
    # a secret where a secret does not go
    return kind, (draw(st.sampled_from(KEY_PATHS)), draw(st.sampled_from([SECRET, f"x{SECRET}", [SECRET], {SECRET: 1}])))


@st.composite
def raw_mutation(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from([
        "insert", "insert", "truncate", "duplicate_line", "duplicate_section", "deep", "alias_bomb", "recursive",
        "bytes", "tab", "documents",
    ]))
    where = draw(st.floats(min_value=0, max_value=1))
    if kind == "insert":
        return kind, (where, draw(st.text(st.sampled_from(list(":-[]{}'\"\t&*!%@`|>#\n ,?") + ["\\"]), min_size=1, max_size=3)))
    if kind == "bytes":
        return kind, (where, draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x00", b"\xfe\xff", b"\x1b"])))
    if kind == "deep":
        return kind, draw(st.integers(min_value=15, max_value=3000))
    return kind, where


@st.composite
def cases(draw: st.DrawFn) -> tuple[bytes, dict[str, str], list]:
    document = copy.deepcopy(BASE)
    document["queue"] = copy.deepcopy(draw(st.sampled_from(QUEUES)))
    env: dict[str, str] = dict(SECRET_VARIABLES) if draw(st.booleans()) else {}
    applied: list = []
    for kind, argument in draw(st.lists(document_mutation(), max_size=3)):
        applied.append((kind, argument))
        if kind == "delete":
            _delete(document, argument)
        else:
            _set(document, *argument)
    for name, value in draw(st.lists(st.tuples(VARIABLE_NAMES, VARIABLE_VALUES), max_size=2)):
        applied.append(("env", name, value))
        env[name] = value
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode()
    if draw(st.integers(min_value=0, max_value=2)) == 0:
        kind, argument = draw(raw_mutation())
        applied.append((kind, argument))
        text = _mutate_text(text, kind, argument)
    return text, env, applied


def _mutate_text(text: bytes, kind: str, argument: Any) -> bytes:
    lines = text.split(b"\n")
    if kind in ("insert", "bytes"):
        where, extra = argument
        at = int(where * len(text))
        return text[:at] + (extra.encode() if isinstance(extra, str) else extra) + text[at:]
    if kind == "truncate":
        return text[: int(argument * len(text))]
    if kind == "duplicate_line":
        at = int(argument * (len(lines) - 1))
        return b"\n".join(lines[: at + 1] + lines[at:])
    if kind == "duplicate_section":  # a section written twice
        starts = [number for number, line in enumerate(lines) if line and not line.startswith(b" ")]
        start = starts[int(argument * (len(starts) - 1))]
        end = next((number for number in starts if number > start), len(lines))
        return text + b"\n" + b"\n".join(lines[start:end]) + b"\n"
    if kind == "deep":
        return text + b"run: {executors: " + b"[" * argument + b"]" * argument + b"}\n"
    if kind == "alias_bomb":
        bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n" for previous, name in zip("abcdefg", "bcdefgh")
        )
        bomb = bomb.encode()
        return b"schedule:\n" + b"\n".join(b"  " + line for line in bomb.split(b"\n")) + b"\n" + text
    if kind == "recursive":
        return text + b"run: &r {executors: *r}\n"
    if kind == "tab":
        at = int(argument * (len(lines) - 1))
        return b"\n".join(lines[:at] + [b"\t" + lines[at]] + lines[at + 1 :])
    if kind == "documents":
        return text + b"---\nschedule: {}\n"
    raise AssertionError(kind)


def _assert_contract(code: int, output: str, file: Path, case: Any) -> None:
    assert code in (0, 2), f"exit {code} for {case!r}:\n{output}"
    assert "Traceback" not in output, f"a traceback for {case!r}:\n{output}"
    assert SECRET not in output and SECRET_CORE not in output, f"a secret printed for {case!r}:\n{output}"
    if code == 2:
        assert "a bug in Latigo" not in output, f"an unexpected error for {case!r}:\n{output}"
        names = re.search(rf"\b({'|'.join(SECTIONS)})\b", output) or "LATIGO_" in output or str(file) in output
        assert names, f"the message names no key for {case!r}:\n{output}"


def _clean_environment(case_env: dict[str, str], file: Path) -> dict[str, str | None]:
    """The variables of one case, and every other LATIGO_* variable unset."""
    env: dict[str, str | None] = {name: None for name in os.environ if name.upper().startswith("LATIGO_")}
    env.update(case_env)
    env["LATIGO_CONFIG"] = str(file)
    return env


def test_base_configurations_pass(tmp_path: Path) -> None:
    file = tmp_path / "latigo.yaml"
    for queue in QUEUES:
        for env in ({}, SECRET_VARIABLES):
            file.write_text(yaml.safe_dump({**BASE, "queue": queue}))
            result = CliRunner().invoke(main, ["config", "check"], env=_clean_environment(env, file))
            assert result.exit_code == 0, result.output


def test_every_mutation_exits_0_or_2_naming_the_key_without_secrets(tmp_path: Path) -> None:
    file = tmp_path / "latigo.yaml"
    runner = CliRunner()
    exits: Counter[int] = Counter()
    sample: list[tuple[bytes, dict[str, str], list, int]] = []
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(cases())
    def check(case: tuple[bytes, dict[str, str], list]) -> None:
        text, env, applied = case
        file.write_bytes(text)
        environment = _clean_environment(env, file)
        result = runner.invoke(main, ["config", "check"], env=environment)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{type(result.exception).__name__} for {applied!r}:\n{result.output}"
        )
        _assert_contract(result.exit_code, result.output, file, applied)
        if result.exit_code == 0:
            shown = runner.invoke(main, ["config", "show"], env=environment)
            _assert_contract(shown.exit_code, shown.output, file, applied)
            assert shown.exit_code == 0
        exits[result.exit_code] += 1
        if sum(exits.values()) % (EXAMPLES // SUBPROCESS_SAMPLE) == 0 and len(sample) < SUBPROCESS_SAMPLE:
            sample.append((text, env, applied, result.exit_code))

    try:
        check()
    finally:
        root.handlers[:], root.level = handlers, level
    print(f"\nconfig fuzz: {sum(exits.values())} mutations in-process: exit 0: {exits[0]}, exit 2: {exits[2]}")
    assert sum(exits.values()) >= 500 and exits[2] > exits[0] > 0

    # the same contract from the real command, for a sample
    def run(index: int, case: tuple[bytes, dict[str, str], list, int]) -> tuple[int, str, Path, list, int]:
        text, env, applied, expected = case
        path = tmp_path / f"sample-{index}.yaml"
        path.write_bytes(text)
        clean = {name: value for name, value in os.environ.items() if not name.upper().startswith("LATIGO_")}
        done = subprocess.run(
            [sys.executable, "-m", "latigo", "config", "check"], capture_output=True, timeout=PROCESS_TIMEOUT,
            env={**clean, **env, "LATIGO_CONFIG": str(path)},
        )
        output = (done.stdout + done.stderr).decode("utf-8", "backslashreplace")
        return done.returncode, output, path, applied, expected

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda item: run(*item), enumerate(sample)))
    assert len(results) == SUBPROCESS_SAMPLE
    for code, output, path, applied, expected in results:
        _assert_contract(code, output, path, applied)
        assert code == expected, f"{applied!r}: the command exits {code}, in-process {expected}:\n{output}"
    print(f"config fuzz: {len(results)} as `latigo config check` processes: "
          f"exit 0: {sum(code == 0 for code, *_ in results)}, exit 2: {sum(code == 2 for code, *_ in results)}")


def test_a_datetime_anchor_far_away_is_refused_not_overflowed(tmp_path: Path) -> None:
    file = tmp_path / "latigo.yaml"
    file.write_text(yaml.safe_dump({"schedule": {"anchor": datetime(9999, 12, 31, 23, tzinfo=timezone.utc)}}))
    result = CliRunner().invoke(main, ["config", "check"], env=_clean_environment({}, file))
    assert result.exit_code == 2 and "schedule.anchor" in result.output


# what a slip of the keyboard puts inside a secret: blanks (which end a URL's password for
# the pattern that finds one) and line breaks (which leave the secret's rest on a line of its own)
SPLITTERS = ("\t", " ", "\t\t", "\n ", "\n", "\n\n  ")


def test_a_secret_split_by_a_blank_or_a_line_break_is_never_quoted(tmp_path: Path) -> None:
    """Found by the fuzz test above (a tab inside database.url's password): every place of
    every secret of a base configuration, split at every character by every splitter, exits 0
    or 2 and prints no part of the secret, not even in a YAML error that quotes the line."""
    file = tmp_path / "latigo.yaml"
    runner = CliRunner()
    document = copy.deepcopy(BASE)
    document["queue"] = copy.deepcopy(QUEUES[-1])
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    places = [at for at in range(len(text)) if text.startswith(SECRET, at)]
    assert len(places) >= 5  # URL passwords, secret keys, a connection string, queue options
    refused = 0
    for place in places:
        for split in range(1, len(SECRET)):
            for splitter in SPLITTERS:
                at = place + split
                file.write_text(text[:at] + splitter + text[at:])
                result = runner.invoke(main, ["config", "check"], env=_clean_environment({}, file))
                _assert_contract(result.exit_code, result.output, file, (place, split, splitter))
                refused += result.exit_code == 2
    assert refused  # the YAML errors that quote a line were among the cases


def test_a_port_before_a_line_with_an_at_sign_is_not_taken_for_a_split_password() -> None:
    from latigo.config.masking import Secrets

    secrets = Secrets()
    lines = ["models:", "  base_url: https://gordo.example:8443", "  owner: ops@example.com"]
    assert secrets.add_text(lines) == set()
    assert secrets.redact("owner: ops@example.com, port 8443") == "owner: ops@example.com, port 8443"
    split = Secrets()
    assert split.add_text(["  url: http://reader:Fz8-q0", "  uiet@influx.example:8086"]) == {0, 1}
    assert "Fz8-q0" not in split.redact("Fz8-q0 and uiet")
