"""Sensor checks: which of a model's tags the sensor store does not know, as a pure function
and through ``latigo sensors`` against the session's real Gordo and a real SQLite store."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from latigo.cli import main
from latigo.components import build
from latigo.config import CONFIG_PATH_VARIABLE, load_config
from latigo.demo.gordo import free_port
from latigo.demo.models import MODEL_TAGS
from latigo.discovery import Model
from latigo.errors import TransientError
from latigo.providers.models import ModelMetadata
from latigo.sensorcheck import check_models, missing_tags, model_tags

TAG = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
# a tag name that would retitle the terminal and start a forged line if printed as it is
HOSTILE_TAG = "\x1b]0;pwned\x07\nFORGED"


def metadata(name: str, tags: tuple[str, ...], targets: tuple[str, ...]) -> ModelMetadata:
    return ModelMetadata("demo", name, "1", tags, targets, timedelta(minutes=10))


@given(st.lists(TAG), st.sets(TAG))
def test_missing_tags_are_those_the_store_lacks_once_each_in_the_models_order(tags, known):
    missing = missing_tags(tags, known)
    assert list(missing) == [tag for tag in dict.fromkeys(tags) if tag not in known]
    assert set(missing) | (set(tags) & known) == set(tags)


def test_a_models_tags_are_its_inputs_then_its_other_targets_once_each():
    assert model_tags(metadata("m", ("a", "b"), ("b", "c"))) == ("a", "b", "c")


class Metadata:
    """Model information answering metadata from a dict; a model missing from it cannot be read."""

    def __init__(self, known: dict[str, ModelMetadata]) -> None:
        self.known = known

    def metadata(self, project: str, model: str, revision: str) -> ModelMetadata:
        if model not in self.known:
            raise TransientError(f"{model}: Gordo answered 503")
        return self.known[model]


def test_a_model_whose_metadata_cannot_be_read_is_reported_and_the_others_checked():
    info = Metadata({"ok": metadata("ok", ("a", "z"), ("a",))})
    checks = check_models([Model("demo", "gone", "1"), Model("demo", "ok", "1")], info, ["a"])

    assert [(c.model, c.missing, c.error) for c in checks] == [
        ("gone", (), "gone: Gordo answered 503"),
        ("ok", ("z",), None),
    ]


def store_with(tmp_path, gordo_server, tags: list[str]) -> list[str]:
    """A config file for a SQLite store holding a day of ``tags``; its command line."""
    path = tmp_path / "config.yaml"
    settings = {
        "database": {"url": f"sqlite:///{tmp_path / 'latigo.db'}"},
        "models": {"base_url": gordo_server.base_url, "projects": [gordo_server.project]},
    }
    path.write_text(yaml.safe_dump(settings))
    index = pd.date_range("2026-03-01", periods=6, freq="10min", tz="UTC", name="time")
    with build(load_config(path)) as parts:
        parts.sensors.write(pd.DataFrame({tag: range(6) for tag in tags}, index=index, dtype=float))
    return ["--config", str(path)]



def test_latigo_sensors_lists_the_store_and_each_model_missing_tags(gordo_server, tmp_path):
    present = [*MODEL_TAGS["pump-1"], *MODEL_TAGS["compressor-1"][:2]]
    config = store_with(tmp_path, gordo_server, present)
    result = CliRunner().invoke(main, [*config, "sensors"], env={CONFIG_PATH_VARIABLE: None})

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[: len(present) + 1] == [f"sensor store: {len(present)} sensors", *(f"  {t}" for t in sorted(present))]
    revision = gordo_server.revision
    compressor_missing = MODEL_TAGS["compressor-1"][2:]
    assert f"demo/compressor-1 @ {revision}: missing 6 of 8 tags: {', '.join(compressor_missing)}" in lines
    assert not any(line.startswith("demo/pump-1") for line in lines)  # nothing missing, nothing said
    assert lines[-1] == f"{len(gordo_server.models)} models, {len(gordo_server.models) - 1} with missing tags"


def test_latigo_sensors_for_one_model_marks_each_tag_and_answers_json(gordo_server, tmp_path):
    config = store_with(tmp_path, gordo_server, MODEL_TAGS["pump-1"][:2])
    result = CliRunner().invoke(main, [*config, "sensors", "--model", "pump-1"], env={CONFIG_PATH_VARIABLE: None})

    assert result.exit_code == 0, result.output
    first, second, third = MODEL_TAGS["pump-1"]
    assert result.stdout.splitlines() == [
        f"demo/pump-1 @ {gordo_server.revision}: 3 tags, 1 missing",
        f"  {first}",
        f"  {second}",
        f"  {third}  MISSING",
    ]
    answer = CliRunner().invoke(main, [*config, "sensors", "--json"], env={CONFIG_PATH_VARIABLE: None})
    document = json.loads(answer.stdout)
    assert document["sensors"] == sorted([first, second])
    pump = next(entry for entry in document["models"] if entry["model"] == "pump-1")
    assert pump == {"project": "demo", "model": "pump-1", "revision": gordo_server.revision,
                    "tags": [first, second, third], "missing": [third], "error": None}  # fmt: skip
    assert {entry["model"] for entry in document["models"]} == set(gordo_server.models)


def test_latigo_sensors_for_an_unknown_model_exits_2_naming_it(gordo_server, tmp_path):
    config = store_with(tmp_path, gordo_server, ["A"])
    result = CliRunner().invoke(main, [*config, "sensors", "--model", "nope"], env={CONFIG_PATH_VARIABLE: None})
    assert result.exit_code == 2 and result.stderr == "latigo: no such model: nope\n"


def test_latigo_sensors_escapes_control_characters_in_tag_names(gordo_server, tmp_path):
    config = store_with(tmp_path, gordo_server, [HOSTILE_TAG])
    result = CliRunner().invoke(main, [*config, "sensors"], env={CONFIG_PATH_VARIABLE: None})

    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "  \\x1b]0;pwned\\x07\\nFORGED" in result.stdout.splitlines()


def test_latigo_sensors_exits_1_naming_a_project_gordo_does_not_answer_for(tmp_path):
    path = tmp_path / "config.yaml"
    base_url = f"http://127.0.0.1:{free_port()}"
    settings = {"database": {"url": f"sqlite:///{tmp_path / 'latigo.db'}"},
                "models": {"base_url": base_url, "projects": ["demo"], "connect_timeout": 1}}  # fmt: skip
    path.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(main, ["--config", str(path), "sensors"], env={CONFIG_PATH_VARIABLE: None})

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == ["sensor store: 0 sensors", "0 models, 0 with missing tags"]
    assert result.stderr.startswith("demo: ")
