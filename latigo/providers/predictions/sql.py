"""Predictions in the Latigo database (table ``predictions``), one row per
(project, model, time, output, tag): an upsert on that key makes storing idempotent."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine

from latigo import db
from latigo.frames import output_series
from latigo.providers.predictions import PredictionStorageProvider
from latigo.schema import predictions as predictions_table


class SqlPredictions(PredictionStorageProvider):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._upsert = db.PreparedUpsert(engine, predictions_table)

    def store(self, project: str, model: str, revision: str, predictions: pd.DataFrame) -> int:
        series, values = output_series(predictions)
        bind = self._upsert.bind
        project, model, revision = bind("project", project), bind("model", model), bind("revision", revision)
        times = [bind("time", time) for time in predictions.index.to_pydatetime()]
        series = [(bind("output", output), bind("tag", tag)) for output, tag in series]
        rows = [
            # in the table's column order; NaN is stored as NULL
            (project, model, time, output, tag, None if value != value else bind("value", value), revision)
            for time, row in zip(times, values.tolist())
            for (output, tag), value in zip(series, row)
        ]
        with db.translate_outage("prediction store"), self._engine.begin() as connection:
            return self._upsert.execute(connection, rows)
