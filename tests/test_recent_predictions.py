"""`latigo predictions`: one output group's recent values, found by an index whatever the
store holds (every model's through the output-and-time index, one model's through the key
with its project), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from click.testing import CliRunner

from latigo import cli
from latigo.components import build
from latigo.config import Config, dump_config
from latigo.status import recent_predictions
from latigo.window import Window
from tests.clock import Clock

NOW = datetime(2026, 3, 30, 12, 7, tzinfo=UTC)


def answer(start: datetime, hours: int, value: float) -> pd.DataFrame:
    """A 2-tag answer every 10 minutes from ``start``, shaped like Gordo's."""
    index = pd.date_range(start, periods=hours * 6, freq="10min", tz="UTC", name="time")
    columns = pd.MultiIndex.from_tuples([("model-output", "A"), ("model-output", "B"), ("total-anomaly-scaled", "")])
    return pd.DataFrame(np.full((len(index), 3), value), index=index, columns=columns)


def stored(parts, now: datetime = NOW) -> None:
    """Two days of two models in project north, and of one model of the same name in south."""
    start = now - timedelta(days=2)
    for project, model, value in (("north", "m-1", 1.0), ("north", "m-2", 2.0), ("south", "m-1", 3.0)):
        parts.predictions.store(project, model, "1", Window(start, now), answer(start, 48, value))


def test_recent_values_of_every_model_and_of_one(database_url):
    settings = Config(database={"url": database_url}, models={"projects": ["north", "south"]})
    with build(settings, clock=Clock(NOW)) as parts:
        stored(parts)
        since = NOW - timedelta(hours=6)
        every = recent_predictions(parts.engine, "total-anomaly-scaled", since)
        assert sorted(every.columns) == ["m-1", "m-2"]
        assert len(every) == 36 and every.index.min() >= since
        tags = recent_predictions(parts.engine, "model-output", since, "m-2", ["north"])
        assert sorted(tags.columns) == ["m-2:A", "m-2:B"] and (tags.to_numpy() == 2.0).all()
        # the same name in a project not asked about is not shown
        north = recent_predictions(parts.engine, "total-anomaly-scaled", since, "m-1", ["north"])
        assert (north.to_numpy() == 1.0).all() and len(north) == 36


def test_the_command_shows_the_configured_projects_model(sqlite_url, tmp_path):
    settings = Config(database={"url": sqlite_url}, models={"projects": ["south"]})
    now = pd.Timestamp.now(tz="UTC").floor("10min").to_pydatetime()  # the command's clock is the system's
    with build(settings) as parts:
        stored(parts, now)
    config_file = tmp_path / "latigo.yaml"
    config_file.write_text(dump_config(settings))
    result = CliRunner().invoke(
        cli.main, ["--config", str(config_file), "predictions", "--model", "m-1", "--since", "6h"]
    )
    assert result.exit_code == 0, result.output
    assert "3.0" in result.output and "1.0" not in result.output


def test_the_queries_use_an_index_not_a_scan_of_the_table(sqlite_url):
    settings = Config(database={"url": sqlite_url}, models={"projects": ["north"]})
    with build(settings, clock=Clock(NOW)) as parts:
        stored(parts)
        plans = []

        def explain(connection, cursor, statement, parameters, context, executemany):
            if statement.lstrip().startswith("SELECT") and "FROM predictions" in statement:
                plans.append(" / ".join(row[-1] for row in cursor.connection.execute(
                    f"EXPLAIN QUERY PLAN {statement}", parameters)))  # fmt: skip

        from sqlalchemy import event

        event.listen(parts.engine, "before_cursor_execute", explain)
        since = NOW - timedelta(hours=6)
        recent_predictions(parts.engine, "total-anomaly-scaled", since)
        recent_predictions(parts.engine, "model-output", since, "m-1", ["north"])
    assert len(plans) == 2
    assert "USING INDEX ix_predictions_output_time" in plans[0], plans[0]
    assert "USING PRIMARY KEY (project=? AND model=? AND time>?)" in plans[1], plans[1]
