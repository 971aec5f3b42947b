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

    def store(self, project: str, model: str, revision: str, predictions: pd.DataFrame) -> int:
        series, values = output_series(predictions)
        rows = [
            {
                "project": project,
                "model": model,
                "time": time,
                "output": output,
                "tag": tag,
                "value": None if value != value else value,  # NaN is stored as NULL
                "revision": revision,
            }
            for time, row in zip(predictions.index.to_pydatetime(), values.tolist())
            for (output, tag), value in zip(series, row)
        ]
        with db.translate_outage("prediction store"), self._engine.begin() as connection:
            return db.upsert(connection, predictions_table, rows)
