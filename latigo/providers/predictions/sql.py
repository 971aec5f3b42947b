"""Predictions in the Latigo database (table ``predictions``), one row per
(project, model, time, output, tag): an upsert on that key makes storing idempotent."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine

from latigo import db
from latigo.frames import to_long
from latigo.providers.predictions import PredictionStorageProvider
from latigo.schema import predictions as predictions_table


class SqlPredictions(PredictionStorageProvider):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def store(self, project: str, model: str, revision: str, predictions: pd.DataFrame) -> int:
        long = to_long(predictions)
        times = pd.to_datetime(long["time"], utc=True).dt.to_pydatetime()
        rows = [
            {
                "project": project,
                "model": model,
                "time": time,
                "output": output,
                "tag": tag,
                "value": None if value != value else float(value),  # NaN is stored as NULL
                "revision": revision,
            }
            for time, output, tag, value in zip(times, long["output"], long["tag"], long["value"])
        ]
        with db.translate_outage("prediction store"), self._engine.begin() as connection:
            return db.upsert(connection, predictions_table, rows)
