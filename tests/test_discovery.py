"""Discovery against the session's real Gordo: the latest revision, its built models, the
expected ones that were not built, and the scheduler's cache of the answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import yaml
from click.testing import CliRunner

from latigo.cli import main
from latigo.config import CONFIG_PATH_VARIABLE, GordoConfig
from latigo.demo.gordo import free_port
from latigo.discovery import Discovery, Model
from latigo.providers.models.gordo import GordoModels
from tests.clock import Clock

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


def gordo_of(gordo_server) -> GordoModels:
    config = GordoConfig(base_url=gordo_server.base_url, projects=[gordo_server.project])
    return GordoModels(config)


def test_a_survey_finds_each_projects_latest_revision_and_models(gordo_server):
    survey = Discovery(gordo_of(gordo_server)).survey([gordo_server.project])

    [found] = survey.found
    assert (found.project, found.revision) == (gordo_server.project, gordo_server.revision)
    assert list(found.built) == sorted(gordo_server.models) and found.unbuilt == ()
    assert survey.models() == [Model(gordo_server.project, name, gordo_server.revision) for name in found.built]
    assert survey.failed == {}


def test_a_survey_names_the_projects_it_could_not_ask():
    unreachable = GordoConfig(base_url=f"http://127.0.0.1:{free_port()}", projects=["demo"], connect_timeout=1)
    survey = Discovery(GordoModels(unreachable)).survey(["demo", "other"])
    assert survey.found == [] and list(survey.failed) == ["demo", "other"]


def test_built_asks_for_no_expected_models(gordo_server):
    found = Discovery(gordo_of(gordo_server)).built(gordo_server.project)
    assert found.revision == gordo_server.revision and found.unbuilt == ()
    assert [model.name for model in found.models()] == sorted(gordo_server.models)


def test_an_answer_is_reused_for_the_ttl_and_asked_again_after_it(gordo_server):
    clock = Clock(NOW)
    discovery = Discovery(gordo_of(gordo_server), timedelta(minutes=5), clock)
    first = discovery.project(gordo_server.project)

    clock.advance(timedelta(minutes=4))
    assert discovery.project(gordo_server.project) is first
    clock.advance(timedelta(minutes=1))
    again = discovery.project(gordo_server.project)
    assert again is not first and again == first


def test_latigo_models_lists_each_projects_models(gordo_server, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": {"base_url": gordo_server.base_url, "projects": [gordo_server.project]}}))
    result = CliRunner().invoke(main, ["--config", str(path), "models"], env={CONFIG_PATH_VARIABLE: None})

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{gordo_server.project} @ {gordo_server.revision}: {len(gordo_server.models)} models",
        *(f"  {name}" for name in sorted(gordo_server.models)),
    ]


def test_latigo_models_exits_1_naming_a_project_it_could_not_ask(tmp_path):
    path = tmp_path / "config.yaml"
    base_url = f"http://127.0.0.1:{free_port()}"
    path.write_text(yaml.safe_dump({"models": {"base_url": base_url, "projects": ["demo"], "connect_timeout": 1}}))
    result = CliRunner().invoke(main, ["--config", str(path), "models"], env={CONFIG_PATH_VARIABLE: None})

    assert result.exit_code == 1, result.output
    assert result.stdout == "" and result.stderr.startswith("demo: ")
