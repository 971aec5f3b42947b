"""Predictions in the Latigo database (table ``predictions``), one row per
(project, model, time, output, tag). A store deletes the model's rows in the span and
upserts the new ones in one transaction: readers see the old rows or the new ones, never a
mix, and two executors storing the same task at once (a redelivery while the first still
runs) both end with one copy."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine, delete, func, select

from latigo import db
from latigo.frames import check_inside, output_series
from latigo.outages import PREDICTION_STORE
from latigo.providers.predictions import PredictionStorageProvider
from latigo.schema import predictions as predictions_table
from latigo.window import Window

# the most of one model's predictions one retention delete removes: a day of a 20-tag model
# is about 15,000 rows, one short transaction
EXPIRE_SLICE = timedelta(days=1)


class SqlPredictions(PredictionStorageProvider):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._upsert = db.PreparedUpsert(engine, predictions_table)

    def store(self, project: str, model: str, revision: str, span: Window, predictions: pd.DataFrame) -> int:
        check_inside(predictions, span)
        stale = delete(predictions_table).where(
            predictions_table.c.project == project,
            predictions_table.c.model == model,
            predictions_table.c.time >= span.start,
            predictions_table.c.time < span.end,
        )
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
        with db.translate_outage(PREDICTION_STORE), self._engine.begin() as connection:
            connection.execute(stale)
            return self._upsert.execute(connection, rows)

    def expire(self, project: str, model: str, before: datetime) -> int:
        """Delete the model's oldest day of predictions older than ``before`` (a seek on the
        primary key, then one bounded range); PostgreSQL and SQLite alike, until the table is
        partitioned by time."""
        of_model = (predictions_table.c.project == project, predictions_table.c.model == model)
        with db.translate_outage(PREDICTION_STORE), self._engine.begin() as connection:
            oldest = connection.execute(select(func.min(predictions_table.c.time)).where(*of_model)).scalar()
            if oldest is None or oldest >= before:
                return 0
            until = min(before, oldest + EXPIRE_SLICE)
            range_ = (predictions_table.c.time >= oldest, predictions_table.c.time < until)
            return connection.execute(delete(predictions_table).where(*of_model, *range_)).rowcount

    def probe(self) -> None:
        db.probe(self._engine)
